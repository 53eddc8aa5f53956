-- Steps born claimed (issue 13, W3): a creation that hands its ready steps to an idle worker
-- of its process inserts them already claimed (in_progress, attempt 1, the worker, the lease)
-- and the task started, with the claim's transitions among the creation's, instead of
-- inserting them ready and claiming them in a second statement of the function. The claim
-- cost a third of the creation (measured with pgbench on this function: 0.69-0.77 ms with
-- the claim, 0.42 ms born claimed). The engine decides which steps (engine/create.rs);
-- tasker_claim still serves a creation whose ready steps need their parents' results.
DROP FUNCTION tasker_create;

CREATE FUNCTION tasker_create(
    p_now bigint,
    t_named bigint[], t_state text[], t_context text[], t_initiator text[], t_source text[],
    t_reason text[], t_tags text[], t_bypass text[], t_total bigint[], t_done bigint[],
    t_version bigint[],
    s_task bigint[], s_position bigint[], s_name text[], s_handler text[], s_state text[],
    s_retry_limit bigint[], s_remaining bigint[], s_ready_at bigint[], s_priority bigint[],
    s_version bigint[], s_parents text[],
    s_attempts bigint[], s_claimed_by text[], s_lease_expires_at bigint[],
    s_last_attempted_at bigint[],
    f_task bigint[], f_d_done bigint[], f_d_blocked bigint[], f_state text[],
    f_transitions bigint[], f_completed_at bigint[],
    tt_task bigint[], tt_from text[], tt_to text[], tt_meta jsonb[], tt_sort bigint[], tt_at bigint[],
    st_step bigint[], st_task bigint[], st_from text[], st_to text[], st_meta jsonb[],
    st_sort bigint[], st_at bigint[],
    c_max bigint, c_handlers text[], c_worker text, c_lease_until bigint,
    n_channel text, n_work bool, n_task_changed bool, n_unless_drained bool)
RETURNS TABLE (claimed tasker_claimed, task_ids bigint[], step_ids bigint[]) LANGUAGE plpgsql AS $$
DECLARE
    tids bigint[];
    sids bigint[];
    n_claimed bigint := 0;
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
        remaining_parents, ready_at, priority, version, parents, attempts, claimed_by,
        lease_expires_at, last_attempted_at, created_at, updated_at)
    SELECT sids[v.o], tids[v.task], v.position, v.name, v.handler, v.state, v.retry_limit,
        v.remaining, v.ready_at, v.priority, v.version, v.parents::bigint[], v.attempts,
        v.claimed_by, v.lease_expires_at, v.last_attempted_at, p_now, p_now
    FROM UNNEST(s_task, s_position, s_name, s_handler, s_state, s_retry_limit, s_remaining,
                s_ready_at, s_priority, s_version, s_parents, s_attempts, s_claimed_by,
                s_lease_expires_at, s_last_attempted_at) WITH ORDINALITY
        AS v(task, position, name, handler, state, retry_limit, remaining, ready_at, priority,
             version, parents, attempts, claimed_by, lease_expires_at, last_attempted_at, o);
    PERFORM tasker_write_final(p_now,
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(f_task) WITH ORDINALITY u(x, o) ORDER BY o),
        f_d_done, f_d_blocked, f_state, f_transitions, f_completed_at,
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(tt_task) WITH ORDINALITY u(x, o) ORDER BY o),
        tt_from, tt_to, tt_meta, tt_sort, tt_at,
        ARRAY(SELECT CASE WHEN x < 0 THEN sids[-x] ELSE x END FROM unnest(st_step) WITH ORDINALITY u(x, o) ORDER BY o),
        ARRAY(SELECT CASE WHEN x < 0 THEN tids[-x] ELSE x END FROM unnest(st_task) WITH ORDINALITY u(x, o) ORDER BY o),
        st_from, st_to, st_meta, st_sort, st_at);
    IF c_max > 0 THEN
        RETURN QUERY SELECT c, NULL::bigint[], NULL::bigint[]
            FROM tasker_claim(p_now, c_handlers, c_max, c_worker, c_lease_until, '{}'::bigint[]) c;
        GET DIAGNOSTICS n_claimed = ROW_COUNT;
    END IF;
    IF n_work AND NOT (n_unless_drained AND c_max > 0 AND n_claimed < c_max) THEN
        PERFORM pg_notify(n_channel, '');
    END IF;
    IF n_task_changed THEN
        PERFORM pg_notify(n_channel || '_tasks', '');
    END IF;
    RETURN QUERY SELECT NULL::tasker_claimed, tids, sids;
END $$;
