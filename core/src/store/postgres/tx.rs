//! A write transaction on PostgreSQL: `BEGIN` ... `COMMIT` on a kept connection; its reads
//! lock what they read (tasks first, then steps, in id order, as every cycle does), its plan
//! is one call of `tasker_apply_v2`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, Postgres, Row};

use super::conns::Conns;
use super::wire::*;
use super::PgStore;
use crate::error::{Error, Result};
use crate::state::StepState;
use crate::store::sql::{self, step_cols, task_cols};
use crate::store::*;

pub(super) struct PgTx {
    /// Taken back by [`Conns`] at commit.
    conn: Option<PoolConnection<Postgres>>,
    conns: Conns,
    open: bool,
    channel: String,
    statements: Arc<AtomicU64>,
}

impl PgStore {
    pub(super) async fn begin_tx(&self, durable: bool) -> Result<PgTx> {
        // A transaction that may be lost in a crash (a claim alone: its steps simply become
        // claimable again) commits without waiting for its WAL to reach the disk; any later
        // durable commit flushes it too (the WAL is written in order). Every other commit waits
        // as the server's `synchronous_commit` says.
        let mut conn = self.conns.get().await?;
        if durable {
            conn.execute("BEGIN").await?;
        } else {
            sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *conn)
                .await?;
        }
        self.count();
        Ok(PgTx {
            conn: Some(conn),
            conns: self.conns.clone(),
            open: true,
            channel: self.channel.clone(),
            statements: self.statements.clone(),
        })
    }
}

impl PgTx {
    /// The transaction's connection, counting the round trip about to be made.
    fn c(&mut self) -> &mut PgConnection {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.conn
            .as_mut()
            .expect("a transaction's connection until commit")
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let (true, Some(c)) = (self.open, self.conn.as_mut()) {
            // Never hand a connection with an open transaction back to the pool.
            c.close_on_drop();
        }
    }
}

const LOCK_TASKS: &str = concat!(
    "SELECT ",
    task_cols!(),
    " FROM tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE"
);

const LOCK_STEPS: &str =
    "SELECT step_id, task_id, state, attempts, version, retry_limit FROM steps \
     WHERE step_id = ANY($1) ORDER BY step_id FOR UPDATE";

const TASK_STEPS: &str = concat!(
    "SELECT ",
    step_cols!(),
    " FROM steps WHERE task_id = $1 ORDER BY position, batch_index FOR UPDATE"
);

const INSERT_TEMPLATE: &str = "INSERT INTO named_tasks (namespace, name, version, description, definition, definition_hash, created_at, revision) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (namespace, name, version, revision) DO NOTHING \
     RETURNING named_task_id";

const INSERT_DECISIONS: &str = "INSERT INTO step_decisions (step_id, task_id, chosen, created_at) \
     SELECT s, t, c::jsonb, $4 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS d(s, t, c)";

const UPDATE_TASK_DETAILS: &str =
    "UPDATE tasks SET reason = COALESCE($1, reason), tags = COALESCE($2::jsonb, tags), \
     paused = COALESCE($5, paused), updated_at = $3 WHERE task_id = $4";

#[async_trait]
impl StoreTx for PgTx {
    async fn apply(&mut self, plan: &Plan, claim: Option<&ClaimSpec<'_>>) -> Result<PlanOutcome> {
        let channel = self.channel.clone();
        if !plan.decisions.is_empty() {
            // Rows of steps that exist, keyed by them: beside the function, in the same
            // transaction (a plan with decisions is never executed on its own).
            let (steps, tasks, chosen): (Vec<i64>, Vec<i64>, Vec<&str>) = plan
                .decisions
                .iter()
                .map(|d| (d.step_id, d.task_id, d.chosen.as_str()))
                .collect();
            sqlx::query(INSERT_DECISIONS)
                .bind(steps)
                .bind(tasks)
                .bind(chosen)
                .bind(plan.now)
                .execute(self.c())
                .await?;
        }
        super::apply::apply(self.c(), &channel, plan, claim).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.c().execute("COMMIT").await?;
        self.open = false;
        if let Some(c) = self.conn.take() {
            self.conns.put(c);
        }
        Ok(())
    }

    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        let rows: Vec<PgTaskRow> = sqlx::query_as(LOCK_TASKS)
            .bind(task_ids)
            .fetch_all(self.c())
            .await?;
        rows.into_iter().map(PgTaskRow::into_row).collect()
    }

    async fn lock_steps(&mut self, step_ids: &[i64]) -> Result<Vec<StepLock>> {
        let rows = sqlx::query(LOCK_STEPS)
            .bind(step_ids)
            .fetch_all(self.c())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StepLock {
                    step_id: r.try_get("step_id")?,
                    task_id: r.try_get("task_id")?,
                    state: r
                        .try_get::<&str, _>("state")?
                        .parse::<StepState>()
                        .map_err(Error::Corrupt)?,
                    attempts: r.try_get("attempts")?,
                    version: r.try_get("version")?,
                    retry_limit: r.try_get("retry_limit")?,
                })
            })
            .collect()
    }

    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        let rows: Vec<PgStep> = sqlx::query_as(TASK_STEPS)
            .bind(task_id)
            .fetch_all(self.c())
            .await?;
        rows.into_iter().map(PgStep::into_row).collect()
    }

    async fn decisions(&mut self, task_id: i64) -> Result<Vec<DecisionRow>> {
        let rows: Vec<PgDecision> = sqlx::query_as(sql::DECISIONS_OF_TASK)
            .bind(task_id)
            .fetch_all(self.c())
            .await?;
        Ok(rows.into_iter().map(PgDecision::into_row).collect())
    }

    async fn child_tasks(&mut self, task_id: i64) -> Result<Vec<ChildLink>> {
        let rows: Vec<PgChildLink> = sqlx::query_as(sql::CHILD_TASKS)
            .bind(task_id)
            .fetch_all(self.c())
            .await?;
        rows.into_iter().map(PgChildLink::into_row).collect()
    }

    async fn insert_wait(&mut self, w: &NewWait<'_>) -> Result<()> {
        sqlx::query(sql::UPSERT_WAIT)
            .bind(w.step_id)
            .bind(w.task_id)
            .bind(w.attempt)
            .bind(w.signal)
            .bind(w.correlation_id)
            .bind(w.deadline_at)
            .bind(w.now)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn waits_for_signal(&mut self, task_id: i64, name: &str) -> Result<Vec<WaitRow>> {
        let rows: Vec<PgWait> = sqlx::query_as(sql::WAITS_FOR_SIGNAL)
            .bind(task_id)
            .bind(name)
            .fetch_all(self.c())
            .await?;
        Ok(rows.into_iter().map(PgWait::into_row).collect())
    }

    async fn waits_by_correlation(&mut self, correlation_id: &str) -> Result<Vec<WaitRow>> {
        let rows: Vec<PgWait> = sqlx::query_as(sql::WAITS_BY_CORRELATION)
            .bind(correlation_id)
            .fetch_all(self.c())
            .await?;
        Ok(rows.into_iter().map(PgWait::into_row).collect())
    }

    async fn expired_waits(&mut self, now: i64, limit: i64) -> Result<Vec<WaitRow>> {
        let rows: Vec<PgWait> = sqlx::query_as(sql::EXPIRED_WAITS)
            .bind(now)
            .bind(limit)
            .fetch_all(self.c())
            .await?;
        Ok(rows.into_iter().map(PgWait::into_row).collect())
    }

    async fn insert_signal(
        &mut self,
        task_id: i64,
        name: &str,
        payload: Option<&str>,
        now: i64,
    ) -> Result<()> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| sql::INSERT_SIGNAL.replacen("$3", "$3::jsonb", 1));
        sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(task_id)
            .bind(name)
            .bind(payload)
            .bind(now)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn take_signal(&mut self, task_id: i64, name: &str) -> Result<Option<SignalRow>> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(sql::TAKE_SIGNAL)
            .bind(task_id)
            .bind(name)
            .fetch_optional(self.c())
            .await?;
        Ok(row.map(|(signal_id, payload)| SignalRow { signal_id, payload }))
    }

    async fn step_child(&mut self, step_id: i64) -> Result<Option<StepChild>> {
        let row: Option<(i64, String, i64, Option<i64>)> = sqlx::query_as(sql::STEP_CHILD)
            .bind(step_id)
            .fetch_optional(self.c())
            .await?;
        row.map(|(position, state, attempts, child)| {
            Ok(StepChild {
                position: position as i32,
                state: state.parse().map_err(Error::Corrupt)?,
                attempts,
                child,
            })
        })
        .transpose()
    }

    async fn task_priority(&mut self, task_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(sql::TASK_PRIORITY)
            .bind(task_id)
            .fetch_one(self.c())
            .await?)
    }

    async fn count_running(&mut self, task_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(sql::COUNT_RUNNING)
            .bind(task_id)
            .fetch_one(self.c())
            .await?)
    }

    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<ExpiredLease>> {
        // Read, not locked: locks are taken tasks first, then steps (as every cycle does) when
        // the expiries are applied as reports, which re-check each step's attempt. Locking the
        // steps here, before their tasks, deadlocked against a cycle reporting one of them late.
        let rows = sqlx::query(sql::EXPIRED_LEASES)
            .bind(now)
            .bind(limit)
            .fetch_all(self.c())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ExpiredLease {
                    step_id: r.try_get("step_id")?,
                    task_id: r.try_get("task_id")?,
                    position: r.try_get::<i64, _>("position")? as i32,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>> {
        let row: Option<PgTemplate> = sqlx::query_as(sql::FIND_TEMPLATE)
            .bind(namespace)
            .bind(name)
            .bind(version)
            .fetch_optional(self.c())
            .await?;
        Ok(row.map(PgTemplate::into_row))
    }

    async fn template_by_id(&mut self, id: i64) -> Result<Option<TemplateRow>> {
        let row: Option<PgTemplate> = sqlx::query_as(sql::TEMPLATE_BY_ID)
            .bind(id)
            .fetch_optional(self.c())
            .await?;
        Ok(row.map(PgTemplate::into_row))
    }

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(sql::TASK_BY_IDEMPOTENCY_KEY)
            .bind(key)
            .fetch_optional(self.c())
            .await?)
    }

    async fn insert_deadline(&mut self, task_id: i64, deadline_at: i64) -> Result<()> {
        sqlx::query(sql::INSERT_DEADLINE)
            .bind(task_id)
            .bind(deadline_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn expired_deadlines(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(sql::EXPIRED_DEADLINES)
            .bind(now)
            .bind(limit)
            .fetch_all(self.c())
            .await?)
    }

    async fn delete_deadline(&mut self, task_id: i64) -> Result<()> {
        sqlx::query(sql::DELETE_DEADLINE)
            .bind(task_id)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn bump_reschedules(&mut self, step_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(sql::BUMP_RESCHEDULES)
            .bind(step_id)
            .fetch_one(self.c())
            .await?)
    }

    async fn reset_reschedules(&mut self, step_id: i64) -> Result<()> {
        sqlx::query(sql::RESET_RESCHEDULES)
            .bind(step_id)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn prune_tasks(&mut self, p: &PruneBatch<'_>) -> Result<u64> {
        // Transitions have no foreign keys (20261126000003): deleted by task. Steps and the
        // rows kept for tasks and steps go by the cascades.
        const PRUNE: &str = concat!(
            "WITH v AS (",
            sql::prune_victims!(),
            " FOR UPDATE SKIP LOCKED), \
             st AS (DELETE FROM step_transitions WHERE task_id IN (SELECT task_id FROM v)), \
             tt AS (DELETE FROM task_transitions WHERE task_id IN (SELECT task_id FROM v)), \
             d AS (DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM v) RETURNING 1) \
             SELECT count(*) FROM d"
        );
        let n: i64 = sqlx::query_scalar(PRUNE)
            .bind(p.state)
            .bind(p.before)
            .bind(p.limit)
            .fetch_one(self.c())
            .await?;
        Ok(n as u64)
    }

    async fn lock_schedule(&mut self, name: &str) -> Result<Option<ScheduleRow>> {
        let row: Option<PgSchedule> = sqlx::query_as(sql::SCHEDULE_LOCKED)
            .bind(name)
            .fetch_optional(self.c())
            .await?;
        Ok(row.map(PgSchedule::into_row))
    }

    async fn due_schedules(&mut self, now: i64, limit: i64) -> Result<Vec<ScheduleRow>> {
        let rows: Vec<PgSchedule> = sqlx::query_as(sql::DUE_SCHEDULES_LOCKED)
            .bind(now)
            .bind(limit)
            .fetch_all(self.c())
            .await?;
        Ok(rows.into_iter().map(PgSchedule::into_row).collect())
    }

    async fn insert_schedule(&mut self, s: &ScheduleRow) -> Result<bool> {
        let done = bind_schedule(sqlx::query(sql::INSERT_SCHEDULE), s)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(self.c())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn update_schedule(&mut self, s: &ScheduleRow) -> Result<()> {
        bind_schedule(sqlx::query(sql::UPDATE_SCHEDULE), s)
            .bind(s.updated_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_schedule(&mut self, name: &str) -> Result<bool> {
        let done = sqlx::query(sql::DELETE_SCHEDULE)
            .bind(name)
            .execute(self.c())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn upsert_event_definition(&mut self, d: &EventDefinitionRow) -> Result<()> {
        sqlx::query(sql::UPSERT_EVENT_DEFINITION)
            .bind(&d.name)
            .bind(&d.definition)
            .bind(d.registered_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn insert_template(&mut self, t: &NewTemplate<'_>) -> Result<i64> {
        // Two processes registering the same template at once: the second sees the first's row.
        let id: Option<i64> = sqlx::query_scalar(INSERT_TEMPLATE)
            .bind(t.namespace)
            .bind(t.name)
            .bind(t.version)
            .bind(t.description)
            .bind(t.definition)
            .bind(t.definition_hash)
            .bind(t.now)
            .bind(t.revision as i32)
            .fetch_optional(self.c())
            .await?;
        if let Some(id) = id {
            return Ok(id);
        }
        let row = self
            .find_template(t.namespace, t.name, t.version)
            .await?
            .ok_or_else(|| Error::Corrupt("template vanished during registration".into()))?;
        if row.definition_hash != t.definition_hash {
            // Another process registered a different body as this revision meanwhile.
            return Err(Error::Conflict(format!(
                "template {}.{}@{} revision {} was registered by another process with a different body at the same moment; register again",
                t.namespace, t.name, t.version, t.revision
            )));
        }
        Ok(row.named_task_id)
    }

    async fn update_task_details(&mut self, p: &TaskDetailsUpdate<'_>) -> Result<()> {
        sqlx::query(UPDATE_TASK_DETAILS)
            .bind(p.reason)
            .bind(p.tags)
            .bind(p.now)
            .bind(p.task_id)
            .bind(p.paused)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn save_checkpoint(&mut self, p: &CheckpointSave<'_>) -> Result<bool> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| sql::SAVE_CHECKPOINT.replacen("$1", "$1::jsonb", 1));
        let n = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(p.checkpoint)
            .bind(p.now)
            .bind(p.step_id)
            .bind(p.attempt)
            .execute(self.c())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn set_retry_limit(&mut self, p: &RetryLimitUpdate) -> Result<()> {
        sqlx::query(sql::SET_RETRY_LIMIT)
            .bind(p.step_id)
            .bind(p.limit)
            .bind(p.ready_at.is_some())
            .bind(p.ready_at.flatten())
            .bind(p.now)
            .execute(self.c())
            .await?;
        Ok(())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A schedule's first 15 columns ([`sql::INSERT_SCHEDULE`], [`sql::UPDATE_SCHEDULE`]).
fn bind_schedule<'q>(q: PgQuery<'q>, s: &'q ScheduleRow) -> PgQuery<'q> {
    q.bind(&s.name)
        .bind(&s.namespace)
        .bind(&s.template)
        .bind(&s.version)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.context)
        .bind(&s.overlap)
        .bind(&s.catch_up)
        .bind(s.paused)
        .bind(s.next_run_at)
        .bind(s.last_tick_at)
        .bind(s.fired)
        .bind(s.skipped)
        .bind(&s.origin)
}
