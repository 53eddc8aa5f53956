-- tasker:function tasker_apply_v3 revision 1
--
-- The write path on PostgreSQL: a plan the engine recorded (`core/src/store/plan.rs`, whose
-- module docs give the order and the contract), applied in one statement. A worker cycle
-- planned from known rows runs it on its own (autocommit, guarded); every other transaction
-- (a cycle the general way, a creation, an operator's action) runs it inside its
-- transaction after reading and locking what it decided from. It executes what the engine
-- decided; it decides nothing but whether a quiet claim runs and whether a short claim makes
-- the steps-ready notification needless.
--
-- A guard that does not match, or a step update that does not apply to the state and version
-- assumed, raises SQLSTATE TK409: nothing is written.
--
-- Every write names its rows by key (`= ANY` of ids: index scans whatever the plan cache
-- assumes about array lengths; see migrations 20261128000003 and 20261129000002).
--
-- v2 (issue 25): a new step may be a fan-out instance (`batch_index`, `batch`), a task update
-- changes `steps_total` too (`d_total`), and the claim's answer is `tasker_claimed_v2`.
-- v3 (issue 25, child tasks): a new task may name its parent (`tasker_new_task_v2`:
-- `parent_task_id`, `parent_step_id`), a finished task carries them (`tasker_task_v2`), and the
-- answer lists the child tasks the plan brought to complete, error or cancelled
-- (`finished_children`), whose parents' steps have an outcome to take. (tasker_apply_v2 stays
-- installed for workers of older builds.)

DO $$ BEGIN
    CREATE TYPE tasker_guard_v1 AS (task_id bigint, state text, steps_done bigint,
        steps_blocked bigint, version bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_new_task_v2 AS (named_task_id bigint, state text, context text,
        initiator text, source_system text, reason text, tags text, bypass_steps text,
        idempotency_key text, steps_total bigint, steps_done bigint, version bigint,
        parent_task_id bigint, parent_step_id bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_new_step_v2 AS (task_id bigint, position bigint, name text,
        handler text, state text, retry_limit bigint, remaining_parents bigint,
        ready_at bigint, priority bigint, version bigint, parents bigint[], born bool,
        batch_index bigint, batch text);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_step_update_v1 AS (step_id bigint, expect_state text,
        expect_attempts bigint, expect_version bigint, state text, attempts bigint,
        set_results bool, results text, set_error bool, error text, ready_at bigint,
        processed_at bigint, transitions bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_decrement_v1 AS (task_id bigint, position bigint, by bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_task_update_v2 AS (task_id bigint, d_done bigint, d_blocked bigint,
        state text, transitions bigint, completed_at bigint, d_total bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_transition_v1 AS (task_id bigint, step_id bigint, from_state text,
        to_state text, metadata text, sort_key bigint, created_at bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_notify_v1 AS (channel text, work bool, task_changed bool,
        quiet_if_claim_short bool);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

-- A finished task and its steps as the plan left them (`PlanOutcome::finished`).
DO $$ BEGIN
    CREATE TYPE tasker_task_v2 AS (task_id bigint, named_task_id bigint, state text,
        steps_total bigint, steps_done bigint, steps_blocked bigint, version bigint,
        context text, initiator text, source_system text, reason text, tags text,
        bypass_steps text, idempotency_key text, requested_at bigint, created_at bigint,
        updated_at bigint, completed_at bigint, namespace text, name text,
        template_version text, parent_task_id bigint, parent_step_id bigint,
        parent_step text);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_step_v1 AS (step_id bigint, task_id bigint, position bigint, name text,
        handler text, state text, attempts bigint, retry_limit bigint,
        remaining_parents bigint, ready_at bigint, parked_ready_at bigint, claimed_by text,
        lease_expires_at bigint, results text, error text, last_attempted_at bigint,
        processed_at bigint, version bigint);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE OR REPLACE FUNCTION tasker_apply_v3(
    p_now bigint, p_durable bool, p_guards tasker_guard_v1[],
    p_new_tasks tasker_new_task_v2[], p_new_steps tasker_new_step_v2[],
    p_step_updates tasker_step_update_v1[], p_decrements tasker_decrement_v1[],
    p_park bigint[], p_unpark bigint[], p_task_updates tasker_task_update_v2[],
    p_transitions tasker_transition_v1[], p_claim tasker_claim_spec_v1,
    p_notify tasker_notify_v1, p_watched bigint[])
RETURNS TABLE (claimed tasker_claimed_v2[], ready bigint, claim_ran bool, task_ids bigint[],
    step_ids bigint[], finished_tasks tasker_task_v2[], finished_steps tasker_step_v1[],
    finished_children bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    matched bigint;
    n_ready bigint := 0;
    tids bigint[] := '{}';
    sids bigint[] := '{}';
    got tasker_claimed_v2[] := '{}';
    did_claim bool := false;
    born tasker_born_step_v1[] := '{}';
    kids bigint[] := '{}';
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- 1. Guards: the tasks as the engine assumed them, locked in id order.
    IF cardinality(p_guards) > 0 THEN
        PERFORM 1 FROM tasks t WHERE t.task_id = ANY(ARRAY(SELECT g.task_id FROM unnest(p_guards) g))
            ORDER BY t.task_id FOR UPDATE;
        SELECT count(*) INTO matched
        FROM tasks t JOIN unnest(p_guards) g ON g.task_id = t.task_id
        WHERE t.state = g.state AND t.steps_done = g.steps_done
          AND t.steps_blocked = g.steps_blocked AND t.version = g.version;
        IF matched <> cardinality(p_guards) THEN
            RAISE EXCEPTION 'tasker: a task changed since the engine last saw it' USING ERRCODE = 'TK409';
        END IF;
    END IF;
    -- 2. New tasks and steps; ids from the sequences, in plan order (-k: the k-th new one).
    IF cardinality(p_new_tasks) > 0 THEN
        -- Both sequences in one statement (a creation's ids, in order).
        SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('tasks', 'task_id'))
                     FROM generate_series(1, cardinality(p_new_tasks)) ORDER BY 1),
               ARRAY(SELECT nextval(pg_get_serial_sequence('steps', 'step_id'))
                     FROM generate_series(1, COALESCE(cardinality(p_new_steps), 0)) ORDER BY 1)
        INTO tids, sids;
        INSERT INTO tasks (task_id, named_task_id, state, context, initiator, source_system,
            reason, tags, bypass_steps, idempotency_key, steps_total, steps_done, version,
            requested_at, created_at, updated_at, parent_task_id, parent_step_id)
        SELECT tids[v.o], v.named_task_id, v.state, v.context::jsonb, v.initiator,
            v.source_system, v.reason, v.tags::jsonb, v.bypass_steps::jsonb, v.idempotency_key,
            v.steps_total, v.steps_done, v.version, p_now, p_now, p_now, v.parent_task_id,
            v.parent_step_id
        FROM unnest(p_new_tasks) WITH ORDINALITY AS v(named_task_id, state, context, initiator,
            source_system, reason, tags, bypass_steps, idempotency_key, steps_total,
            steps_done, version, parent_task_id, parent_step_id, o);
    END IF;
    IF cardinality(p_new_steps) > 0 THEN
        IF cardinality(sids) < cardinality(p_new_steps) THEN
            -- (Steps of tasks that exist already: their ids come here.)
            sids := ARRAY(SELECT nextval(pg_get_serial_sequence('steps', 'step_id'))
                          FROM generate_series(1, cardinality(p_new_steps)) ORDER BY 1);
        END IF;
        born := ARRAY(
            SELECT ROW(sids[v.o], CASE WHEN v.task_id < 0 THEN tids[-v.task_id] ELSE v.task_id END,
                v.position, v.name, v.handler, v.retry_limit, v.priority, v.version,
                v.parents)::tasker_born_step_v1
            FROM unnest(p_new_steps) WITH ORDINALITY AS v(task_id, position, name, handler,
                state, retry_limit, remaining_parents, ready_at, priority, version, parents,
                born, batch_index, batch, o)
            WHERE v.born ORDER BY v.o);
        -- (The born ones are the claim's to insert, below.)
        IF cardinality(born) < cardinality(p_new_steps) THEN
            INSERT INTO steps (step_id, task_id, position, name, handler, state, retry_limit,
                remaining_parents, ready_at, priority, version, parents, created_at, updated_at,
                batch_index, batch)
            SELECT sids[v.o], CASE WHEN v.task_id < 0 THEN tids[-v.task_id] ELSE v.task_id END,
                v.position, v.name, v.handler, v.state, v.retry_limit, v.remaining_parents,
                v.ready_at, v.priority, v.version, v.parents, p_now, p_now, v.batch_index,
                v.batch::jsonb
            FROM unnest(p_new_steps) WITH ORDINALITY AS v(task_id, position, name, handler, state,
                retry_limit, remaining_parents, ready_at, priority, version, parents, born,
                batch_index, batch, o)
            WHERE NOT v.born;
        END IF;
    END IF;
    -- 3. Step updates, each at the state and version assumed.
    IF cardinality(p_step_updates) > 0 THEN
        WITH done AS (
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
            FROM unnest(p_step_updates) v
            WHERE s.step_id = v.step_id
              AND s.step_id = ANY(ARRAY(SELECT x.step_id FROM unnest(p_step_updates) x))
              AND s.state = v.expect_state AND s.version = v.expect_version
              AND (v.expect_attempts IS NULL OR s.attempts = v.expect_attempts)
            RETURNING 1)
        SELECT count(*) INTO matched FROM done;
        IF matched <> cardinality(p_step_updates) THEN
            RAISE EXCEPTION 'tasker: a step changed since the engine last saw it' USING ERRCODE = 'TK409';
        END IF;
    END IF;
    -- 4. Counter-based readiness: a pending step whose last parent finished is claimable now.
    IF cardinality(p_decrements) > 0 THEN
        WITH d AS (
            UPDATE steps s SET remaining_parents = s.remaining_parents - v.by,
                ready_at = CASE WHEN s.remaining_parents - v.by <= 0 AND s.state = 'pending'
                                THEN p_now ELSE s.ready_at END,
                updated_at = p_now
            FROM unnest(p_decrements) v
            WHERE s.task_id = v.task_id AND s.position = v.position
              AND s.task_id = ANY(ARRAY(SELECT x.task_id FROM unnest(p_decrements) x))
            RETURNING (s.ready_at IS NOT NULL AND s.remaining_parents <= 0) AS now_ready)
        SELECT count(*) FILTER (WHERE d.now_ready) INTO n_ready FROM d;
    END IF;
    -- 5. Parking: a blocked task's claimable steps are hidden from claims, and come back.
    IF cardinality(p_park) > 0 THEN
        UPDATE steps SET parked_ready_at = ready_at, ready_at = NULL, updated_at = p_now
        WHERE task_id = ANY(p_park) AND ready_at IS NOT NULL;
    END IF;
    IF cardinality(p_unpark) > 0 THEN
        UPDATE steps SET ready_at = parked_ready_at, parked_ready_at = NULL, updated_at = p_now
        WHERE task_id = ANY(p_unpark) AND parked_ready_at IS NOT NULL
          AND state IN ('pending', 'error');
    END IF;
    -- 6. Task counters and states (in task id order, the order rows are locked everywhere);
    --    the child tasks among those that end here.
    IF cardinality(p_task_updates) > 0 THEN
        WITH u AS (
        UPDATE tasks t SET steps_done = t.steps_done + v.d_done,
            steps_blocked = t.steps_blocked + v.d_blocked,
            steps_total = t.steps_total + v.d_total,
            state = COALESCE(v.state, t.state), version = t.version + v.transitions,
            completed_at = COALESCE(v.completed_at, t.completed_at), updated_at = p_now
        FROM (SELECT CASE WHEN x.task_id < 0 THEN tids[-x.task_id] ELSE x.task_id END AS id, x.*
              FROM unnest(p_task_updates) x) v
        WHERE t.task_id = v.id
          AND t.task_id = ANY(ARRAY(SELECT CASE WHEN x.task_id < 0 THEN tids[-x.task_id] ELSE x.task_id END
                                    FROM unnest(p_task_updates) x))
        RETURNING t.task_id, t.parent_step_id, v.state AS new_state)
        SELECT ARRAY(SELECT u.task_id FROM u WHERE u.parent_step_id IS NOT NULL
                       AND u.new_state IN ('complete', 'error', 'cancelled') ORDER BY u.task_id)
        INTO kids;
    END IF;
    -- 7. Transition rows (a step transition has step_id).
    IF cardinality(p_transitions) > 0 THEN
        INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT CASE WHEN x.task_id < 0 THEN tids[-x.task_id] ELSE x.task_id END, x.from_state,
            x.to_state, x.metadata::jsonb, x.sort_key, x.created_at
        FROM unnest(p_transitions) x WHERE x.step_id IS NULL;
        INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT CASE WHEN x.step_id < 0 THEN sids[-x.step_id] ELSE x.step_id END,
            CASE WHEN x.task_id < 0 THEN tids[-x.task_id] ELSE x.task_id END, x.from_state,
            x.to_state, x.metadata::jsonb, x.sort_key, x.created_at
        FROM unnest(p_transitions) x WHERE x.step_id IS NOT NULL;
    END IF;
    -- 8. The claim (a quiet one only if these writes made a step claimable: the same test as
    --    Plan::readies_steps, and a decrement that readied one).
    -- (A row's IS NULL / IS NOT NULL look at every field: test the fields that are never NULL.)
    IF cardinality(born) > 0 AND (p_claim).worker IS NULL THEN
        RAISE EXCEPTION 'tasker: a step born claimed needs a claim';
    END IF;
    IF COALESCE((p_claim).max, 0) > 0
       AND (cardinality(born) > 0 OR NOT (p_claim).only_if_readied OR n_ready > 0
            OR cardinality(p_unpark) > 0
            OR EXISTS (SELECT 1 FROM unnest(p_step_updates) u WHERE u.ready_at <= p_now)
            OR EXISTS (SELECT 1 FROM unnest(p_new_steps) n WHERE n.ready_at IS NOT NULL)) THEN
        got := ARRAY(SELECT c FROM tasker_claim_v2(p_now, p_claim, born) c);
        did_claim := true;
    END IF;
    -- 9. Notifications, delivered at commit. A claim that came back short took everything
    --    claimable: there is nothing to wake other workers for.
    IF ((p_notify).work OR n_ready > 0)
       AND NOT ((p_notify).quiet_if_claim_short AND did_claim
                AND cardinality(got) < (p_claim).max) THEN
        PERFORM pg_notify((p_notify).channel, '');
    END IF;
    IF (p_notify).task_changed THEN
        PERFORM pg_notify((p_notify).channel || '_tasks', '');
    END IF;
    -- The answer; finished tasks only when a waiter of the engine's process watches them.
    RETURN QUERY SELECT got, n_ready, did_claim, tids, sids,
        CASE WHEN cardinality(p_watched) > 0 THEN ARRAY(
            SELECT ROW(t.task_id, t.named_task_id, t.state, t.steps_total, t.steps_done,
                t.steps_blocked, t.version, t.context::text, t.initiator, t.source_system,
                t.reason, t.tags::text, t.bypass_steps::text, t.idempotency_key, t.requested_at,
                t.created_at, t.updated_at, t.completed_at, n.namespace, n.name,
                n.version, t.parent_task_id, t.parent_step_id,
                (SELECT ps.name FROM steps ps WHERE ps.step_id = t.parent_step_id))::tasker_task_v2
            FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id
            WHERE t.task_id = ANY(p_watched) ORDER BY t.task_id) ELSE '{}' END,
        CASE WHEN cardinality(p_watched) > 0 THEN ARRAY(
            SELECT ROW(s.step_id, s.task_id, s.position, s.name, s.handler, s.state, s.attempts,
                s.retry_limit, s.remaining_parents, s.ready_at, s.parked_ready_at, s.claimed_by,
                s.lease_expires_at, s.results::text, s.error::text, s.last_attempted_at,
                s.processed_at, s.version)::tasker_step_v1
            FROM steps s WHERE s.task_id = ANY(p_watched) ORDER BY s.task_id, s.position)
        ELSE '{}' END,
        kids;
END $$;
