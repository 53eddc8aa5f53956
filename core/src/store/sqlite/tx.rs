//! A write transaction on SQLite: `BEGIN IMMEDIATE` on the one writer connection, held behind
//! an async mutex for the transaction's life (SQLite has one writer at a time; queuing here is
//! fairer and faster than its busy handler). Its reads see its own writes; nothing else writes
//! meanwhile, so a row read is a row locked.

use async_trait::async_trait;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, OptionalExtension};
use tokio::sync::OwnedMutexGuard;

use super::read::lite;
use super::rows::*;
use super::{blocking_io, Durability, SqliteStore, WriteConn};
use crate::error::Result;
use crate::store::sql::{self, task_cols};
use crate::store::*;

pub(super) struct SqliteTx {
    pub(super) c: OwnedMutexGuard<WriteConn>,
    open: bool,
}

impl SqliteStore {
    pub(super) async fn begin_tx(&self, durable: bool) -> Result<SqliteTx> {
        let mut guard = self.write.clone().lock_owned().await;
        // A transaction that may be lost on power failure without harm (a claim: the step stays
        // claimable) skips the fsync; the next durable commit syncs the WAL up to it.
        let want = if durable {
            self.durability
        } else {
            Durability::Off
        };
        if guard.sync != want {
            guard.c.pragma_update(None, "synchronous", want.pragma())?;
            guard.sync = want;
        }
        guard.execute_batch("BEGIN IMMEDIATE")?;
        Ok(SqliteTx {
            c: guard,
            open: true,
        })
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            let _ = self.c.execute_batch("ROLLBACK");
        }
    }
}

const UPDATE_TASK_DETAILS: &str =
    "UPDATE tasks SET reason = COALESCE(?1, reason), tags = COALESCE(?2, tags), \
     paused = COALESCE(?5, paused), updated_at = ?3 WHERE task_id = ?4";

const INSERT_TEMPLATE: &str =
    "INSERT INTO named_tasks (namespace, name, version, description, definition, definition_hash, created_at, revision) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING named_task_id";

#[async_trait]
impl StoreTx for SqliteTx {
    async fn apply(&mut self, plan: &Plan, claim: Option<&ClaimSpec<'_>>) -> Result<PlanOutcome> {
        super::apply::apply(&self.c, plan, claim)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let c = &*self.c;
        if c.sync == Durability::Off {
            c.execute_batch("COMMIT")?;
        } else {
            blocking_io(|| c.execute_batch("COMMIT"))?;
        }
        self.open = false;
        Ok(())
    }

    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        let mut out = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(CHUNK) {
            let sql = format!(
                concat!(
                    "SELECT ",
                    task_cols!(),
                    " FROM tasks WHERE task_id IN ({}) ORDER BY task_id"
                ),
                list(chunk.len())
            );
            out.extend(query_all::<TaskRow>(
                &self.c,
                &sql,
                params_from_iter(chunk),
            )?);
        }
        Ok(out)
    }

    async fn lock_steps(&mut self, step_ids: &[i64]) -> Result<Vec<StepLock>> {
        let mut out = Vec::with_capacity(step_ids.len());
        for chunk in step_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT step_id, task_id, state, attempts, version, retry_limit FROM steps \
                 WHERE step_id IN ({})",
                list(chunk.len())
            );
            out.extend(query_all::<StepLock>(
                &self.c,
                &sql,
                params_from_iter(chunk),
            )?);
        }
        Ok(out)
    }

    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        query_all(&self.c, lite!(STEPS_OF_TASK), [task_id])
    }

    async fn decisions(&mut self, task_id: i64) -> Result<Vec<DecisionRow>> {
        super::read::decisions(&self.c, task_id)
    }

    async fn child_tasks(&mut self, task_id: i64) -> Result<Vec<ChildLink>> {
        super::read::child_tasks(&self.c, task_id)
    }

    async fn insert_wait(&mut self, w: &NewWait<'_>) -> Result<()> {
        self.c.prepare_cached(lite!(UPSERT_WAIT))?.execute(params![
            w.step_id,
            w.task_id,
            w.attempt,
            w.signal,
            w.correlation_id,
            w.deadline_at,
            w.now
        ])?;
        Ok(())
    }

    async fn waits_for_signal(&mut self, task_id: i64, name: &str) -> Result<Vec<WaitRow>> {
        super::read::waits(&self.c, lite!(WAITS_FOR_SIGNAL), params![task_id, name])
    }

    async fn waits_by_correlation(&mut self, correlation_id: &str) -> Result<Vec<WaitRow>> {
        super::read::waits(
            &self.c,
            lite!(WAITS_BY_CORRELATION),
            params![correlation_id],
        )
    }

    async fn expired_waits(&mut self, now: i64, limit: i64) -> Result<Vec<WaitRow>> {
        super::read::waits(&self.c, lite!(EXPIRED_WAITS), params![now, limit])
    }

    async fn insert_signal(
        &mut self,
        task_id: i64,
        name: &str,
        payload: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.c
            .prepare_cached(lite!(INSERT_SIGNAL))?
            .execute(params![task_id, name, payload, now])?;
        Ok(())
    }

    async fn take_signal(&mut self, task_id: i64, name: &str) -> Result<Option<SignalRow>> {
        Ok(self
            .c
            .prepare_cached(lite!(TAKE_SIGNAL))?
            .query_row(params![task_id, name], |r| {
                Ok(SignalRow {
                    signal_id: r.get(0)?,
                    payload: r.get(1)?,
                })
            })
            .optional()?)
    }

    async fn step_child(&mut self, step_id: i64) -> Result<Option<StepChild>> {
        Ok(self
            .c
            .prepare_cached(lite!(STEP_CHILD))?
            .query_row([step_id], |r| {
                Ok((r.get(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?
            .map(|(position, state, attempts, child)| {
                Ok::<_, crate::error::Error>(StepChild {
                    position,
                    state: state.parse().map_err(crate::error::Error::Corrupt)?,
                    attempts,
                    child,
                })
            })
            .transpose()?)
    }

    async fn task_priority(&mut self, task_id: i64) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(lite!(TASK_PRIORITY))?
            .query_row([task_id], |r| r.get(0))?)
    }

    async fn count_running(&mut self, task_id: i64) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(lite!(COUNT_RUNNING))?
            .query_row([task_id], |r| r.get(0))?)
    }

    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<ExpiredLease>> {
        query_all(&self.c, lite!(EXPIRED_LEASES), params![now, limit])
    }

    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>> {
        query_opt(
            &self.c,
            lite!(FIND_TEMPLATE),
            params![namespace, name, version],
        )
    }

    async fn template_by_id(&mut self, id: i64) -> Result<Option<TemplateRow>> {
        query_opt(&self.c, lite!(TEMPLATE_BY_ID), [id])
    }

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>> {
        Ok(self
            .c
            .prepare_cached(lite!(TASK_BY_IDEMPOTENCY_KEY))?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    async fn insert_template(&mut self, t: &NewTemplate<'_>) -> Result<i64> {
        // The writer is this transaction's alone: no other process registers meanwhile.
        Ok(self.c.prepare_cached(INSERT_TEMPLATE)?.query_row(
            params![
                t.namespace,
                t.name,
                t.version,
                t.description,
                t.definition,
                t.definition_hash,
                t.now,
                t.revision
            ],
            |r| r.get(0),
        )?)
    }

    async fn insert_deadline(&mut self, task_id: i64, deadline_at: i64) -> Result<()> {
        self.c
            .prepare_cached(lite!(INSERT_DEADLINE))?
            .execute([task_id, deadline_at])?;
        Ok(())
    }

    async fn expired_deadlines(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64)>> {
        let mut st = self.c.prepare_cached(lite!(EXPIRED_DEADLINES))?;
        let rows = st.query_map([now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn delete_deadline(&mut self, task_id: i64) -> Result<()> {
        self.c
            .prepare_cached(lite!(DELETE_DEADLINE))?
            .execute([task_id])?;
        Ok(())
    }

    async fn bump_reschedules(&mut self, step_id: i64) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(lite!(BUMP_RESCHEDULES))?
            .query_row([step_id], |r| r.get(0))?)
    }

    async fn reset_reschedules(&mut self, step_id: i64) -> Result<()> {
        self.c
            .prepare_cached(lite!(RESET_RESCHEDULES))?
            .execute([step_id])?;
        Ok(())
    }

    async fn prune_tasks(&mut self, p: &PruneBatch<'_>) -> Result<u64> {
        // Their steps, transitions, waits, signals, decisions and deadlines go by the foreign
        // keys' cascades (each through an index).
        let sql = sql::sqlite_params(concat!(
            "DELETE FROM tasks WHERE task_id IN (",
            sql::prune_victims!(),
            ")"
        ));
        let n = self
            .c
            .prepare_cached(&sql)?
            .execute(params![p.state, p.before, p.limit])?;
        Ok(n as u64)
    }

    async fn lock_schedule(&mut self, name: &str) -> Result<Option<ScheduleRow>> {
        query_opt(&self.c, lite!(SCHEDULE), [name])
    }

    async fn due_schedules(&mut self, now: i64, limit: i64) -> Result<Vec<ScheduleRow>> {
        query_all(&self.c, lite!(DUE_SCHEDULES), params![now, limit])
    }

    async fn insert_schedule(&mut self, s: &ScheduleRow) -> Result<bool> {
        let mut p = schedule_params(s);
        p.extend([Sql::from(s.created_at), Sql::from(s.updated_at)]);
        let n = self
            .c
            .prepare_cached(lite!(INSERT_SCHEDULE))?
            .execute(params_from_iter(p))?;
        Ok(n == 1)
    }

    async fn update_schedule(&mut self, s: &ScheduleRow) -> Result<()> {
        let mut p = schedule_params(s);
        p.push(Sql::from(s.updated_at));
        self.c
            .prepare_cached(lite!(UPDATE_SCHEDULE))?
            .execute(params_from_iter(p))?;
        Ok(())
    }

    async fn delete_schedule(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .c
            .prepare_cached(lite!(DELETE_SCHEDULE))?
            .execute([name])?
            == 1)
    }

    async fn upsert_event_definition(&mut self, d: &EventDefinitionRow) -> Result<()> {
        self.c
            .prepare_cached(lite!(UPSERT_EVENT_DEFINITION))?
            .execute(params![d.name, d.definition, d.registered_at])?;
        Ok(())
    }

    async fn update_task_details(&mut self, p: &TaskDetailsUpdate<'_>) -> Result<()> {
        self.c
            .prepare_cached(UPDATE_TASK_DETAILS)?
            .execute(params![p.reason, p.tags, p.now, p.task_id, p.paused])?;
        Ok(())
    }

    async fn save_checkpoint(&mut self, p: &CheckpointSave<'_>) -> Result<bool> {
        let n = self
            .c
            .prepare_cached(lite!(SAVE_CHECKPOINT))?
            .execute(rusqlite::params![p.checkpoint, p.now, p.step_id, p.attempt])?;
        Ok(n == 1)
    }

    async fn set_retry_limit(&mut self, p: &RetryLimitUpdate) -> Result<()> {
        let params: [Sql; 5] = [
            Sql::Integer(p.step_id),
            Sql::Integer(p.limit),
            Sql::Integer(p.ready_at.is_some() as i64),
            opt_i64(p.ready_at.flatten()),
            Sql::Integer(p.now),
        ];
        self.c
            .prepare_cached(lite!(SET_RETRY_LIMIT))?
            .execute(params_from_iter(params))?;
        Ok(())
    }
}

/// A schedule's first 15 columns (the SQL of `INSERT_SCHEDULE` and `UPDATE_SCHEDULE`).
fn schedule_params(s: &ScheduleRow) -> Vec<Sql> {
    vec![
        s.name.clone().into(),
        s.namespace.clone().into(),
        s.template.clone().into(),
        s.version.clone().into(),
        s.cron.clone().into(),
        s.timezone.clone().into(),
        s.context.clone().into(),
        s.overlap.clone().into(),
        s.catch_up.clone().into(),
        s.paused.into(),
        s.next_run_at.into(),
        s.last_tick_at.into(),
        s.fired.into(),
        s.skipped.into(),
        s.origin.clone().into(),
    ]
}
