-- W3 (issue 13): two savings in a worker's cycle.
--
-- * A quiet claim (c_if_readied): a worker whose last claim came back short and that heard of
--   no new work since asks the cycle to claim only when its own writes made a step claimable
--   (a decrement readied a step, a retry is due now, a task was unparked). Otherwise the claim
--   would read the ready-steps index to find nothing.
-- * Finished tasks in the answer (w_tasks): the tasks of this cycle that reach a final state
--   and that someone in the engine's process waits for come back as rows (the task, its
--   template's name, each step), read after the cycle's writes. The waiter takes them instead
--   of reading the task again after the commit.
--
-- The answer is now a table: a claimed step, or the last row (`ready`, and whether the claim
-- ran), or a finished task's step (ft, fn, fs: the rows of tasks, named_tasks and steps).
DROP FUNCTION tasker_cycle;

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
    c_max bigint, c_handlers text[], c_worker text, c_lease_until bigint, c_if_readied bool,
    n_channel text, n_work bool, n_task_changed bool, n_unless_drained bool,
    w_tasks bigint[])
RETURNS TABLE (claimed tasker_claimed, ready bigint, claim_ran bool, ft tasks, fn named_tasks, fs steps)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    matched bigint;
    n_ready bigint := 0;
    claimed_n bigint := 0;
    did_claim bool := false;
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
        n_ready := tasker_decrement_parents(p_now, d_task, d_pos, d_n);
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
    IF c_max > 0 AND (NOT c_if_readied OR n_ready > 0 OR cardinality(p_unpark) > 0
                      OR EXISTS (SELECT 1 FROM unnest(u_ready_at) r WHERE r <= p_now)) THEN
        RETURN QUERY SELECT c, NULL::bigint, NULL::bool, NULL::tasks, NULL::named_tasks, NULL::steps
            FROM tasker_claim(p_now, c_handlers, c_max, c_worker, c_lease_until, '{}'::bigint[]) c;
        GET DIAGNOSTICS claimed_n = ROW_COUNT;
        did_claim := true;
    END IF;
    -- With n_unless_drained, a claim that came back short took everything claimable: there is
    -- nothing to wake other workers for.
    IF (n_work OR n_ready > 0) AND NOT (n_unless_drained AND did_claim AND claimed_n < c_max) THEN
        PERFORM pg_notify(n_channel, '');
    END IF;
    IF n_task_changed THEN
        PERFORM pg_notify(n_channel || '_tasks', '');
    END IF;
    IF cardinality(w_tasks) > 0 THEN
        RETURN QUERY SELECT NULL::tasker_claimed, NULL::bigint, NULL::bool, t, n, s
            FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id
            JOIN steps s ON s.task_id = t.task_id
            WHERE t.task_id = ANY(w_tasks)
            ORDER BY t.task_id, s.position;
    END IF;
    RETURN QUERY SELECT NULL::tasker_claimed, n_ready, did_claim, NULL::tasks, NULL::named_tasks, NULL::steps;
END $$;
