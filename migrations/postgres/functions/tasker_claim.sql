-- tasker:function tasker_claim_v2 revision 2
--
-- The claim rule on PostgreSQL, whole: which steps a claim takes, what a claimed step row is,
-- what a claim does to its task, and the transition rows it leaves. `tasker_apply_v2` calls it
-- after a plan's writes (the Rust side never claims any other way).
--
-- * Selection: up to `max` (less the born steps) claimable steps (`ready_at <= now`) whose
--   handler is among `handlers` (NULL: any), priority first, then oldest `ready_at`, then id,
--   `FOR UPDATE SKIP LOCKED` over the `steps_claimable` partial index.
-- * A claimed step: `in_progress`, `attempts + 1`, no `ready_at`, leased to `worker` until
--   `lease_until`, `last_attempted_at = now`; its version grows by 1, or by 2 when it re-runs a
--   failed step (`error -> pending -> in_progress`).
-- * Born steps (`p_born`): steps the same statement creates for this worker, inserted here as
--   a claim leaves a new step (attempt 1, version 2) instead of inserted ready and then
--   claimed (a second row version: 0.05-0.07 ms more per creation, pgbench).
-- * Their tasks still `pending` start (`in_progress`, version + 1). Only pending tasks are
--   locked, so a claim never waits for a task another worker is settling.
-- * Transitions: `error -> pending` ({attempt}) before a retry, `pending -> in_progress`
--   ({attempt, worker}); the task's `pending -> in_progress` ({"reason": "step_claimed"}).
--   `engine/claim.rs` announces the same rows after commit.
-- * Answer: each claimed step with what its job needs: its task's context and counters as the
--   claim left them, and its parents' results (`{name: results}`; NULL for a row stored without
--   its parents, whose parents the engine reads: a row stored before steps kept them, and a
--   step below a fan-out, whose parents are many rows); a fan-out instance's `batch_index` and
--   `batch`; the step's saved `checkpoint`.
--
-- v2 (issue 25): the answer has `batch_index`, `batch` and `checkpoint`.

DO $$ BEGIN
    CREATE TYPE tasker_claim_spec_v1 AS (max bigint, handlers text[], worker text,
        lease_until bigint, only_if_readied bool);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_born_step_v1 AS (step_id bigint, task_id bigint, position bigint,
        name text, handler text, retry_limit bigint, priority bigint, version bigint,
        parents bigint[]);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

DO $$ BEGIN
    CREATE TYPE tasker_claimed_v2 AS (step_id bigint, task_id bigint, position bigint,
        attempts bigint, version bigint, lease_expires_at bigint, retry_limit bigint,
        named_task_id bigint, task_state text, context text, task_created_at bigint,
        started_version bigint, steps_total bigint, steps_done bigint, steps_blocked bigint,
        task_version bigint, parent_results text, batch_index bigint, batch text,
        checkpoint text);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE OR REPLACE FUNCTION tasker_claim_v2(
    p_now bigint, p_spec tasker_claim_spec_v1, p_born tasker_born_step_v1[])
RETURNS SETOF tasker_claimed_v2
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    w text := (p_spec).worker;
    lease bigint := (p_spec).lease_until;
    take bigint := (p_spec).max - COALESCE(cardinality(p_born), 0);
BEGIN
    IF cardinality(p_born) > 0 THEN
        INSERT INTO steps (step_id, task_id, position, name, handler, state, retry_limit,
            remaining_parents, ready_at, priority, version, parents, attempts, claimed_by,
            lease_expires_at, last_attempted_at, created_at, updated_at)
        SELECT b.step_id, b.task_id, b.position, b.name, b.handler, 'in_progress',
            b.retry_limit, 0, NULL, b.priority, b.version + 1, b.parents, 1, w, lease, p_now,
            p_now, p_now
        FROM unnest(p_born) b;
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT s.step_id FROM steps s
        WHERE take > 0 AND s.ready_at IS NOT NULL AND s.ready_at <= p_now
          AND ((p_spec).handlers IS NULL OR s.handler = ANY((p_spec).handlers))
        ORDER BY s.priority DESC, s.ready_at, s.step_id
        LIMIT greatest(take, 0) FOR UPDATE SKIP LOCKED),
    upd AS (
        UPDATE steps s SET state = 'in_progress', attempts = s.attempts + 1, ready_at = NULL,
            claimed_by = w, lease_expires_at = lease, last_attempted_at = p_now,
            updated_at = p_now, version = s.version + CASE WHEN s.attempts = 0 THEN 1 ELSE 2 END
        WHERE s.step_id = ANY (ARRAY(SELECT c.step_id FROM c))
        RETURNING s.step_id, s.task_id, s.position, s.attempts, s.version, s.lease_expires_at,
            s.retry_limit, s.parents, s.batch_index, s.batch::text AS batch,
            s.checkpoint::text AS checkpoint),
    u AS (
        SELECT * FROM upd
        UNION ALL
        SELECT b.step_id, b.task_id, b.position, 1::bigint, b.version + 1, lease, b.retry_limit,
            b.parents, NULL::bigint, NULL::text, NULL::text
        FROM unnest(p_born) b),
    st AS (
        UPDATE tasks t SET state = 'in_progress', version = t.version + 1, updated_at = p_now
        WHERE t.task_id = ANY (ARRAY(SELECT u.task_id FROM u)) AND t.state = 'pending'
        RETURNING t.task_id, t.version),
    tt AS (
        INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT st.task_id, 'pending', 'in_progress', '{"reason": "step_claimed"}'::jsonb,
            st.version, p_now
        FROM st),
    sx AS (
        INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at)
        SELECT u.step_id, u.task_id, 'error', 'pending', jsonb_build_object('attempt', u.attempts),
            u.version - 1, p_now
        FROM u WHERE u.attempts > 1
        UNION ALL
        SELECT u.step_id, u.task_id, 'pending', 'in_progress',
            jsonb_build_object('attempt', u.attempts, 'worker', w), u.version, p_now
        FROM u)
    SELECT u.step_id, u.task_id, u.position, u.attempts, u.version, u.lease_expires_at,
        u.retry_limit, t.named_task_id,
        CASE WHEN st.task_id IS NULL THEN t.state ELSE 'in_progress' END, t.context,
        t.created_at, st.version, t.steps_total, t.steps_done, t.steps_blocked,
        COALESCE(st.version, t.version),
        CASE WHEN u.parents IS NOT NULL THEN
            -- One index probe per parent (task, position), forced by LATERAL: `position =
            -- ANY(parents)` was planned as a filter over every step of the task, which a
            -- fan-out makes large (quadratic claims).
            COALESCE((SELECT jsonb_object_agg(x.name, x.results)
             FROM unnest(u.parents) AS pp(pos)
             CROSS JOIN LATERAL (SELECT p.name, p.results FROM steps p
                 WHERE p.task_id = u.task_id AND p.position = pp.pos OFFSET 0) x),
             '{}'::jsonb)::text END,
        u.batch_index, u.batch, u.checkpoint
    FROM u
    CROSS JOIN LATERAL (
        SELECT t.named_task_id, t.state, t.context::text AS context, t.created_at,
            t.steps_total, t.steps_done, t.steps_blocked, t.version
        FROM tasks t WHERE t.task_id = u.task_id OFFSET 0) t
    LEFT JOIN st ON st.task_id = u.task_id;
END $$;
