-- The writes of a worker cycle as server-side functions (issue 13, "one round trip per cycle").
--
-- Each function executes row changes the engine already decided; none decides a state, a
-- retry or a settlement. The general path (a transaction of several statements, used when the
-- engine must read before it decides) calls them one by one; `tasker_cycle` calls them all in
-- one statement for a cycle the engine could plan from what it already knew, after checking
-- that what it knew is still true (the guards). The SQL of each write therefore exists once.

-- Parent positions of a step (NULL: none, or a row written before this migration), so a claim
-- can return the results of the claimed steps' parents in the same statement.
ALTER TABLE steps ADD COLUMN parents BIGINT[];

-- Conditional step updates: applied only to steps still in `expect_state` (and at
-- `expect_attempts` / `expect_version` when given). Returns the new versions of those applied.
CREATE FUNCTION tasker_update_steps(
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
    WHERE s.step_id = v.step_id AND s.state = v.expect_state
      AND (v.expect_attempts IS NULL OR s.attempts = v.expect_attempts)
      AND (v.expect_version IS NULL OR s.version = v.expect_version)
    RETURNING s.step_id, s.version;
END $$;

-- Counter-based readiness: each (task, position) loses `n` remaining parents; a pending step
-- that reaches zero becomes claimable now. Returns how many became claimable.
CREATE FUNCTION tasker_decrement_parents(p_now bigint, p_task bigint[], p_pos bigint[], p_n bigint[])
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE ready bigint;
BEGIN
    WITH d AS (
        UPDATE steps s SET remaining_parents = s.remaining_parents - v.n,
            ready_at = CASE WHEN s.remaining_parents - v.n <= 0 AND s.state = 'pending' THEN p_now ELSE s.ready_at END,
            updated_at = p_now
        FROM UNNEST(p_task, p_pos, p_n) AS v(task_id, position, n)
        WHERE s.task_id = v.task_id AND s.position = v.position
        RETURNING (s.ready_at IS NOT NULL AND s.remaining_parents <= 0) AS ready)
    SELECT count(*) FILTER (WHERE d.ready) INTO ready FROM d;
    RETURN ready;
END $$;

-- Parking: the claimable steps of blocked tasks are hidden from claims.
CREATE FUNCTION tasker_park(p_now bigint, p_tasks bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE steps SET parked_ready_at = ready_at, ready_at = NULL, updated_at = p_now
    WHERE task_id = ANY(p_tasks) AND ready_at IS NOT NULL;
END $$;

CREATE FUNCTION tasker_unpark(p_now bigint, p_tasks bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE steps SET ready_at = parked_ready_at, parked_ready_at = NULL, updated_at = p_now
    WHERE task_id = ANY(p_tasks) AND parked_ready_at IS NOT NULL AND state IN ('pending', 'error');
END $$;

-- The last writes of a transaction: task counters and states, then both transition tables.
CREATE FUNCTION tasker_write_final(
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
        WHERE t.task_id = v.task_id;
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

-- A claimed step with what its job needs (tasker_claim, tasker_cycle); the last row of
-- tasker_cycle has step_id NULL and carries in `attempts` how many steps became claimable.
CREATE TYPE tasker_claimed AS (step_id bigint, task_id bigint, step_position bigint,
    attempts bigint, version bigint, lease_expires_at bigint, retry_limit bigint,
    named_task_id bigint, task_state text, context text, task_created_at bigint,
    started_version bigint, steps_total bigint, steps_done bigint, steps_blocked bigint,
    task_version bigint, parent_results text);

-- Claims up to `p_max` ready steps (`FOR UPDATE SKIP LOCKED`, priority then age), starts their
-- tasks that are still pending and not held by the calling transaction, records the
-- transitions of both, and returns each claimed step with its task and its parents' results
-- (`{name: results}`, NULL when the row does not list its parents).
CREATE FUNCTION tasker_claim(
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
        FROM c WHERE s.step_id = c.step_id
        RETURNING s.step_id, s.task_id, s.position, s.attempts, s.version, s.lease_expires_at,
            s.retry_limit, s.parents),
    st AS (
        UPDATE tasks t SET state = 'in_progress', version = t.version + 1, updated_at = p_now
        WHERE t.task_id IN (SELECT u.task_id FROM u) AND t.state = 'pending'
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
        CASE WHEN st.task_id IS NULL THEN t.state ELSE 'in_progress' END, t.context::text,
        t.created_at, st.version, t.steps_total, t.steps_done, t.steps_blocked,
        COALESCE(st.version, t.version),
        CASE WHEN u.parents IS NOT NULL THEN
            (SELECT jsonb_object_agg(p.name, p.results) FROM steps p
             WHERE p.task_id = u.task_id AND p.position = ANY(u.parents))::text END
    FROM u JOIN tasks t ON t.task_id = u.task_id LEFT JOIN st ON st.task_id = u.task_id;
END $$;

-- A whole worker cycle in one statement, for a cycle the engine planned from task and step rows
-- it already knew (from its own earlier claims and commits): the guards say what it assumed.
-- The task rows are locked (in id order) and compared with the guards; any difference, or a
-- step update that does not apply to the version assumed, raises SQLSTATE TK409 and nothing of
-- the cycle is written: the engine then runs the general path, reading before deciding.
-- After the guards: the planned writes in the order the general path makes them (steps,
-- parents, parking, counters and transitions), then the claim, then the notifications (the
-- engine says whether a short claim makes the steps-ready one needless: `n_unless_drained`). A
-- cycle that records no outcome (`p_durable` false) commits without waiting for the disk.
-- Returns the claimed steps (as tasker_claim) and a last row with step_id NULL whose
-- `attempts` column carries how many steps the outcomes made claimable.
CREATE FUNCTION tasker_cycle(
    p_now bigint, p_durable bool,
    g_task bigint[], g_state text[], g_done bigint[], g_blocked bigint[], g_version bigint[],
    u_step bigint[], u_state text[], u_attempts bigint[], u_set_results bool[], u_results text[],
    u_set_error bool[], u_error text[], u_ready_at bigint[], u_processed_at bigint[],
    u_transitions bigint[], u_expect_state text[], u_expect_attempts bigint[],
    u_expect_version bigint[],
    d_task bigint[], d_pos bigint[], d_n bigint[],
    p_park bigint[], p_unpark bigint[],
    f_task bigint[], f_d_done bigint[], f_d_blocked bigint[], f_state text[],
    f_transitions bigint[], f_completed_at bigint[],
    tt_task bigint[], tt_from text[], tt_to text[], tt_meta jsonb[], tt_sort bigint[], tt_at bigint[],
    st_step bigint[], st_task bigint[], st_from text[], st_to text[], st_meta jsonb[],
    st_sort bigint[], st_at bigint[],
    c_max bigint, c_handlers text[], c_worker text, c_lease_until bigint,
    n_channel text, n_work bool, n_task_changed bool, n_unless_drained bool)
RETURNS SETOF tasker_claimed
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    matched bigint;
    ready bigint := 0;
    claimed bigint := 0;
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    IF cardinality(g_task) > 0 THEN
        PERFORM 1 FROM tasks t WHERE t.task_id = ANY(g_task) ORDER BY t.task_id FOR UPDATE;
        SELECT count(*) INTO matched
        FROM tasks t JOIN UNNEST(g_task, g_state, g_done, g_blocked, g_version)
            AS g(task_id, state, done, blocked, version) ON g.task_id = t.task_id
        WHERE t.state = g.state AND t.steps_done = g.done AND t.steps_blocked = g.blocked
          AND t.version = g.version;
        IF matched <> cardinality(g_task) THEN
            RAISE EXCEPTION 'tasker: a task changed since the engine last saw it' USING ERRCODE = 'TK409';
        END IF;
    END IF;
    IF cardinality(u_step) > 0 THEN
        SELECT count(*) INTO matched FROM tasker_update_steps(p_now, u_step, u_state, u_attempts,
            u_set_results, u_results, u_set_error, u_error, u_ready_at, u_processed_at,
            u_transitions, u_expect_state, u_expect_attempts, u_expect_version);
        IF matched <> cardinality(u_step) THEN
            RAISE EXCEPTION 'tasker: a step changed since the engine last saw it' USING ERRCODE = 'TK409';
        END IF;
    END IF;
    IF cardinality(d_task) > 0 THEN
        ready := tasker_decrement_parents(p_now, d_task, d_pos, d_n);
    END IF;
    IF cardinality(p_park) > 0 THEN
        PERFORM tasker_park(p_now, p_park);
    END IF;
    IF cardinality(p_unpark) > 0 THEN
        PERFORM tasker_unpark(p_now, p_unpark);
    END IF;
    PERFORM tasker_write_final(p_now, f_task, f_d_done, f_d_blocked, f_state, f_transitions,
        f_completed_at, tt_task, tt_from, tt_to, tt_meta, tt_sort, tt_at,
        st_step, st_task, st_from, st_to, st_meta, st_sort, st_at);
    IF c_max > 0 THEN
        RETURN QUERY SELECT * FROM tasker_claim(p_now, c_handlers, c_max, c_worker, c_lease_until, '{}'::bigint[]);
        GET DIAGNOSTICS claimed = ROW_COUNT;
    END IF;
    -- With n_unless_drained, a claim that came back short took everything claimable: there is
    -- nothing to wake other workers for.
    IF (n_work OR ready > 0) AND NOT (n_unless_drained AND c_max > 0 AND claimed < c_max) THEN
        PERFORM pg_notify(n_channel, '');
    END IF;
    IF n_task_changed THEN
        PERFORM pg_notify(n_channel || '_tasks', '');
    END IF;
    RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bigint, ready, NULL::bigint,
        NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::bigint,
        NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text;
END $$;

-- A creation in one statement: new tasks and steps (given column by column, ids assigned here
-- from their sequences, in order), then the plan's last writes, where the k-th new task or
-- step is referred to as -k. Returns the ids given, in order.
CREATE FUNCTION tasker_create(
    p_now bigint,
    t_named bigint[], t_state text[], t_context text[], t_initiator text[], t_source text[],
    t_reason text[], t_tags text[], t_bypass text[], t_total bigint[], t_done bigint[],
    t_version bigint[],
    s_task bigint[], s_position bigint[], s_name text[], s_handler text[], s_state text[],
    s_retry_limit bigint[], s_remaining bigint[], s_ready_at bigint[], s_priority bigint[],
    s_version bigint[], s_parents text[],
    f_task bigint[], f_d_done bigint[], f_d_blocked bigint[], f_state text[],
    f_transitions bigint[], f_completed_at bigint[],
    tt_task bigint[], tt_from text[], tt_to text[], tt_meta jsonb[], tt_sort bigint[], tt_at bigint[],
    st_step bigint[], st_task bigint[], st_from text[], st_to text[], st_meta jsonb[],
    st_sort bigint[], st_at bigint[],
    n_channel text, n_work bool, n_task_changed bool)
RETURNS TABLE (task_ids bigint[], step_ids bigint[]) LANGUAGE plpgsql AS $$
DECLARE
    tids bigint[];
    sids bigint[];
BEGIN
    SELECT COALESCE(array_agg(x ORDER BY x), '{}') INTO tids FROM (
        SELECT nextval(pg_get_serial_sequence('tasks', 'task_id')) AS x
        FROM generate_series(1, cardinality(t_named))) q;
    SELECT COALESCE(array_agg(x ORDER BY x), '{}') INTO sids FROM (
        SELECT nextval(pg_get_serial_sequence('steps', 'step_id')) AS x
        FROM generate_series(1, cardinality(s_task))) q;
    INSERT INTO tasks (task_id, named_task_id, state, context, initiator, source_system, reason,
        tags, bypass_steps, steps_total, steps_done, version, requested_at, created_at, updated_at)
    SELECT tids[v.o], v.named, v.state, v.context::jsonb, v.initiator, v.source, v.reason,
        v.tags::jsonb, v.bypass::jsonb, v.total, v.done, v.version, p_now, p_now, p_now
    FROM UNNEST(t_named, t_state, t_context, t_initiator, t_source, t_reason, t_tags, t_bypass,
                t_total, t_done, t_version) WITH ORDINALITY
        AS v(named, state, context, initiator, source, reason, tags, bypass, total, done, version, o);
    INSERT INTO steps (step_id, task_id, position, name, handler, state, retry_limit,
        remaining_parents, ready_at, priority, version, parents, created_at, updated_at)
    SELECT sids[v.o], tids[v.task], v.position, v.name, v.handler, v.state, v.retry_limit,
        v.remaining, v.ready_at, v.priority, v.version, v.parents::bigint[], p_now, p_now
    FROM UNNEST(s_task, s_position, s_name, s_handler, s_state, s_retry_limit, s_remaining,
                s_ready_at, s_priority, s_version, s_parents) WITH ORDINALITY
        AS v(task, position, name, handler, state, retry_limit, remaining, ready_at, priority,
             version, parents, o);
    PERFORM tasker_write_final(p_now,
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(f_task) WITH ORDINALITY u(x, o) ORDER BY o),
        f_d_done, f_d_blocked, f_state, f_transitions, f_completed_at,
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(tt_task) WITH ORDINALITY u(x, o) ORDER BY o),
        tt_from, tt_to, tt_meta, tt_sort, tt_at,
        ARRAY(SELECT CASE WHEN x < 0 THEN sids[-x] ELSE x END FROM unnest(st_step) WITH ORDINALITY u(x, o) ORDER BY o),
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(st_task) WITH ORDINALITY u(x, o) ORDER BY o),
        st_from, st_to, st_meta, st_sort, st_at);
    IF n_work THEN
        PERFORM pg_notify(n_channel, '');
    END IF;
    IF n_task_changed THEN
        PERFORM pg_notify(n_channel || '_tasks', '');
    END IF;
    RETURN QUERY SELECT tids, sids;
END $$;
