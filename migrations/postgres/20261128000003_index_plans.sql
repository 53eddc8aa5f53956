-- Plans that do not depend on the tables' sizes. A PL/pgSQL statement runs with a generic
-- plan after a few calls, and a generic plan cannot know how few rows its array parameters
-- carry (it assumes 100 for an UNNEST) or that `LIMIT p_max` keeps a claim small: it joined
-- them to `steps` and `tasks` by hashing a sequential scan of the whole table (seen with
-- auto_explain in W1-W4: most of a cycle's server time at 20,000 steps, and in a large
-- database every cycle). Each write now also names its rows by key (`= ANY` of the
-- ids, an index scan), and the claim passes the claimed ids as arrays and finds each claimed
-- step's task through the primary key. Same rows, same results, same transitions.

CREATE OR REPLACE FUNCTION tasker_update_steps(
    p_now bigint, p_step bigint[], p_state text[], p_attempts bigint[], p_set_results bool[],
    p_results text[], p_set_error bool[], p_error text[], p_ready_at bigint[],
    p_processed_at bigint[], p_transitions bigint[], p_expect_state text[],
    p_expect_attempts bigint[], p_expect_version bigint[])
RETURNS TABLE (step_id bigint, version bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE steps s SET state = v.state,
        attempts = COALESCE(v.attempts, s.attempts),
        results = CASE WHEN v.set_results THEN v.results::jsonb ELSE s.results END,
        error = CASE WHEN v.set_error THEN v.error::jsonb ELSE s.error END,
        ready_at = v.ready_at, parked_ready_at = NULL,
        processed_at = COALESCE(v.processed_at, s.processed_at),
        version = s.version + v.transitions,
        claimed_by = CASE WHEN v.state = 'in_progress' THEN s.claimed_by END,
        lease_expires_at = CASE WHEN v.state = 'in_progress' THEN s.lease_expires_at END,
        updated_at = p_now
    FROM UNNEST(p_step, p_state, p_attempts, p_set_results, p_results, p_set_error, p_error,
                p_ready_at, p_processed_at, p_transitions, p_expect_state, p_expect_attempts,
                p_expect_version)
        AS v(step_id, state, attempts, set_results, results, set_error, error, ready_at,
             processed_at, transitions, expect_state, expect_attempts, expect_version)
    WHERE s.step_id = v.step_id AND s.step_id = ANY(p_step) AND s.state = v.expect_state
      AND (v.expect_attempts IS NULL OR s.attempts = v.expect_attempts)
      AND (v.expect_version IS NULL OR s.version = v.expect_version)
    RETURNING s.step_id, s.version;
END $$;

CREATE OR REPLACE FUNCTION tasker_decrement_parents(p_now bigint, p_task bigint[], p_pos bigint[], p_n bigint[])
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE ready bigint;
BEGIN
    WITH d AS (
        UPDATE steps s SET remaining_parents = s.remaining_parents - v.n,
            ready_at = CASE WHEN s.remaining_parents - v.n <= 0 AND s.state = 'pending' THEN p_now ELSE s.ready_at END,
            updated_at = p_now
        FROM UNNEST(p_task, p_pos, p_n) AS v(task_id, position, n)
        WHERE s.task_id = v.task_id AND s.position = v.position AND s.task_id = ANY(p_task)
        RETURNING (s.ready_at IS NOT NULL AND s.remaining_parents <= 0) AS ready)
    SELECT count(*) FILTER (WHERE d.ready) INTO ready FROM d;
    RETURN ready;
END $$;

CREATE OR REPLACE FUNCTION tasker_write_final(
    p_now bigint,
    p_task bigint[], p_d_done bigint[], p_d_blocked bigint[], p_state text[],
    p_transitions bigint[], p_completed_at bigint[],
    tt_task bigint[], tt_from text[], tt_to text[], tt_meta jsonb[], tt_sort bigint[], tt_at bigint[],
    st_step bigint[], st_task bigint[], st_from text[], st_to text[], st_meta jsonb[],
    st_sort bigint[], st_at bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_task) > 0 THEN
        UPDATE tasks t SET steps_done = t.steps_done + v.d_done,
            steps_blocked = t.steps_blocked + v.d_blocked,
            state = COALESCE(v.state, t.state), version = t.version + v.transitions,
            completed_at = COALESCE(v.completed_at, t.completed_at), updated_at = p_now
        FROM UNNEST(p_task, p_d_done, p_d_blocked, p_state, p_transitions, p_completed_at)
            AS v(task_id, d_done, d_blocked, state, transitions, completed_at)
        WHERE t.task_id = v.task_id AND t.task_id = ANY(p_task);
    END IF;
    IF cardinality(tt_task) > 0 THEN
        INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT * FROM UNNEST(tt_task, tt_from, tt_to, tt_meta, tt_sort, tt_at);
    END IF;
    IF cardinality(st_step) > 0 THEN
        INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT * FROM UNNEST(st_step, st_task, st_from, st_to, st_meta, st_sort, st_at);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION tasker_claim(
    p_now bigint, p_handlers text[], p_max bigint, p_worker text, p_lease_until bigint,
    p_held bigint[])
RETURNS SETOF tasker_claimed
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT s.step_id FROM steps s
        WHERE s.ready_at IS NOT NULL AND s.ready_at <= p_now
          AND (p_handlers IS NULL OR s.handler = ANY(p_handlers))
        ORDER BY s.priority DESC, s.ready_at, s.step_id
        LIMIT p_max FOR UPDATE SKIP LOCKED),
    u AS (
        UPDATE steps s SET state = 'in_progress', attempts = s.attempts + 1, ready_at = NULL,
            claimed_by = p_worker, lease_expires_at = p_lease_until, last_attempted_at = p_now,
            updated_at = p_now, version = s.version + CASE WHEN s.attempts = 0 THEN 1 ELSE 2 END
        WHERE s.step_id = ANY (ARRAY(SELECT c.step_id FROM c))
        RETURNING s.step_id, s.task_id, s.position, s.attempts, s.version, s.lease_expires_at,
            s.retry_limit, s.parents),
    st AS (
        UPDATE tasks t SET state = 'in_progress', version = t.version + 1, updated_at = p_now
        WHERE t.task_id = ANY (ARRAY(SELECT u.task_id FROM u)) AND t.state = 'pending'
          AND NOT (t.task_id = ANY(p_held))
        RETURNING t.task_id, t.version),
    tt AS (
        INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT st.task_id, 'pending', 'in_progress', '{"reason": "step_claimed"}'::jsonb, st.version, p_now
        FROM st),
    sx AS (
        INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT u.step_id, u.task_id, 'error', 'pending', jsonb_build_object('attempt', u.attempts), u.version - 1, p_now
        FROM u WHERE u.attempts > 1
        UNION ALL
        SELECT u.step_id, u.task_id, 'pending', 'in_progress',
            jsonb_build_object('attempt', u.attempts, 'worker', p_worker), u.version, p_now
        FROM u)
    SELECT u.step_id, u.task_id, u.position, u.attempts, u.version, u.lease_expires_at,
        u.retry_limit, t.named_task_id,
        CASE WHEN st.task_id IS NULL THEN t.state ELSE 'in_progress' END, t.context,
        t.created_at, st.version, t.steps_total, t.steps_done, t.steps_blocked,
        COALESCE(st.version, t.version),
        CASE WHEN u.parents IS NOT NULL THEN
            (SELECT jsonb_object_agg(p.name, p.results) FROM steps p
             WHERE p.task_id = u.task_id AND p.position = ANY(u.parents))::text END
    FROM u
    CROSS JOIN LATERAL (
        SELECT t.named_task_id, t.state, t.context::text AS context, t.created_at,
            t.steps_total, t.steps_done, t.steps_blocked, t.version
        FROM tasks t WHERE t.task_id = u.task_id OFFSET 0) t
    LEFT JOIN st ON st.task_id = u.task_id;
END $$;

-- And while they run, a sequential scan is never the plan: every statement of a cycle has an
-- index path, and a plan cached while the tables were small (a fresh database, before the
-- first ANALYZE) would otherwise keep scanning them as they grow.
ALTER FUNCTION tasker_update_steps SET enable_seqscan = off;
ALTER FUNCTION tasker_decrement_parents SET enable_seqscan = off;
ALTER FUNCTION tasker_park SET enable_seqscan = off;
ALTER FUNCTION tasker_unpark SET enable_seqscan = off;
ALTER FUNCTION tasker_write_final SET enable_seqscan = off;
ALTER FUNCTION tasker_claim SET enable_seqscan = off;
ALTER FUNCTION tasker_cycle SET enable_seqscan = off;
ALTER FUNCTION tasker_create SET enable_seqscan = off;
