//! The embedded SQLite store: one file, WAL, `synchronous=FULL` unless configured.
//!
//! Writes go through a pool of exactly one connection (SQLite has one writer at a time; queuing
//! in-process is fairer and faster than SQLite's busy handler), each transaction opened with
//! `BEGIN IMMEDIATE` so a read-then-write transaction never fails on a stale snapshot. Reads use
//! their own small pool and see committed data only (WAL).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use super::*;
use crate::error::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Rows per multi-row statement (SQLite allows 32,766 bound parameters).
const CHUNK: usize = 500;

/// Durability of commits (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync at every commit (the default): a committed outcome survives power loss.
    #[default]
    Full,
    /// WAL with `synchronous=NORMAL`: survives a process crash; the last commits may be lost on
    /// power loss.
    Normal,
    /// No fsync at all; for throwaway databases.
    Off,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            "off" => Ok(Durability::Off),
            other => Err(format!(
                "unknown durability {other:?}: expected full, normal or off"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url` (`sqlite://PATH`,
    /// `sqlite:PATH` or `sqlite::memory:`).
    pub async fn open(url: &str, durability: Durability) -> Result<SqliteStore> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Validation(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Off => SqliteSynchronous::Off,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .statement_cache_capacity(256);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        // An in-memory database exists once per connection: share the single connection.
        let read = if memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts.read_only(true))
                .await?
        };
        Ok(SqliteStore { write, read })
    }
}

fn task_state(s: &str) -> Result<TaskState> {
    s.parse().map_err(Error::Corrupt)
}

fn step_state(s: &str) -> Result<StepState> {
    s.parse().map_err(Error::Corrupt)
}

const TASK_COLS: &str = "task_id, named_task_id, state, steps_total, steps_done, steps_blocked, steps_in_flight, version";

fn task_row(r: &SqliteRow) -> Result<TaskRow> {
    Ok(TaskRow {
        task_id: r.try_get(0)?,
        named_task_id: r.try_get(1)?,
        state: task_state(r.try_get::<&str, _>(2)?)?,
        steps_total: r.try_get(3)?,
        steps_done: r.try_get(4)?,
        steps_blocked: r.try_get(5)?,
        steps_in_flight: r.try_get(6)?,
        version: r.try_get(7)?,
    })
}

const DETAIL_COLS: &str = "t.task_id, t.named_task_id, t.state, t.steps_total, t.steps_done, t.steps_blocked, t.steps_in_flight, t.version, \
     t.context, t.initiator, t.source_system, t.reason, t.tags, t.bypass_steps, t.idempotency_key, t.requested_at, t.created_at, t.updated_at, t.completed_at, \
     n.namespace, n.name, n.version";

fn task_detail(r: &SqliteRow) -> Result<(TaskDetail, String, String, String)> {
    Ok((
        TaskDetail {
            row: task_row(r)?,
            context: r.try_get(8)?,
            initiator: r.try_get(9)?,
            source_system: r.try_get(10)?,
            reason: r.try_get(11)?,
            tags: r.try_get(12)?,
            bypass_steps: r.try_get(13)?,
            idempotency_key: r.try_get(14)?,
            requested_at: r.try_get(15)?,
            created_at: r.try_get(16)?,
            updated_at: r.try_get(17)?,
            completed_at: r.try_get(18)?,
        },
        r.try_get(19)?,
        r.try_get(20)?,
        r.try_get(21)?,
    ))
}

const STEP_COLS: &str = "step_id, task_id, position, name, handler, state, attempts, retry_limit, remaining_parents, ready_at, \
     claimed_by, lease_expires_at, results, error, last_attempted_at, processed_at, version";

fn step_row(r: &SqliteRow) -> Result<StepRow> {
    Ok(StepRow {
        step_id: r.try_get(0)?,
        task_id: r.try_get(1)?,
        position: r.try_get(2)?,
        name: r.try_get(3)?,
        handler: r.try_get(4)?,
        state: step_state(r.try_get::<&str, _>(5)?)?,
        attempts: r.try_get(6)?,
        retry_limit: r.try_get(7)?,
        remaining_parents: r.try_get(8)?,
        ready_at: r.try_get(9)?,
        claimed_by: r.try_get(10)?,
        lease_expires_at: r.try_get(11)?,
        results: r.try_get(12)?,
        error: r.try_get(13)?,
        last_attempted_at: r.try_get(14)?,
        processed_at: r.try_get(15)?,
        version: r.try_get(16)?,
    })
}

fn template_row(r: &SqliteRow) -> Result<TemplateRow> {
    Ok(TemplateRow {
        named_task_id: r.try_get(0)?,
        namespace: r.try_get(1)?,
        name: r.try_get(2)?,
        version: r.try_get(3)?,
        definition: r.try_get(4)?,
        definition_hash: r.try_get(5)?,
    })
}

const TEMPLATE_COLS: &str =
    "named_task_id, namespace, name, version, definition, definition_hash";

fn push_handler_filter(qb: &mut QueryBuilder<Sqlite>, handlers: Option<&[String]>) {
    if let Some(hs) = handlers {
        qb.push(" AND s.handler IN (");
        let mut sep = qb.separated(", ");
        if hs.is_empty() {
            sep.push("NULL");
        }
        for h in hs {
            sep.push_bind(h.clone());
        }
        qb.push(")");
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx { tx }))
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>> {
        let sql = format!("SELECT {TEMPLATE_COLS} FROM named_tasks ORDER BY namespace, name, named_task_id");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(template_row)
            .collect()
    }

    async fn template_by_id(&self, id: i64) -> Result<Option<TemplateRow>> {
        let sql = format!("SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(template_row)
            .transpose()
    }

    async fn task(&self, task_id: i64) -> Result<Option<(TaskDetail, String, String, String)>> {
        let sql = format!(
            "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE t.task_id = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(task_id)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(task_detail)
            .transpose()
    }

    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>> {
        let s: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE task_id = ?")
            .bind(task_id)
            .fetch_optional(&self.read)
            .await?;
        s.as_deref().map(task_state).transpose()
    }

    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>> {
        let sql = format!("SELECT {STEP_COLS} FROM steps WHERE task_id = ? ORDER BY position");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(task_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(step_row)
            .collect()
    }

    async fn list_tasks(
        &self,
        f: &TaskFilter,
    ) -> Result<Vec<(TaskDetail, String, String, String)>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE 1 = 1"
        ));
        if let Some(s) = f.state {
            qb.push(" AND t.state = ").push_bind(s.as_str());
        }
        if let Some(n) = &f.name {
            qb.push(" AND n.name = ").push_bind(n.clone());
        }
        if let Some(ns) = &f.namespace {
            qb.push(" AND n.namespace = ").push_bind(ns.clone());
        }
        qb.push(" ORDER BY t.task_id DESC LIMIT ")
            .push_bind(f.limit.unwrap_or(100))
            .push(" OFFSET ")
            .push_bind(f.offset.unwrap_or(0));
        qb.build()
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(task_detail)
            .collect()
    }

    async fn next_ready_at(&self, handlers: Option<&[String]>) -> Result<Option<i64>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT s.ready_at FROM steps s JOIN tasks t ON t.task_id = s.task_id \
             WHERE s.ready_at IS NOT NULL AND t.steps_blocked = 0 AND t.state IN ('pending', 'in_progress')",
        );
        push_handler_filter(&mut qb, handlers);
        qb.push(" ORDER BY s.ready_at LIMIT 1");
        Ok(qb
            .build_query_scalar::<i64>()
            .fetch_optional(&self.read)
            .await?)
    }

    async fn next_lease_expiry(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(lease_expires_at) FROM steps WHERE state = 'in_progress'",
        )
        .fetch_one(&self.read)
        .await?)
    }

    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        let rows = sqlx::query(
            "SELECT task_id, NULL AS step_id, from_state, to_state, metadata, sort_key, created_at, id, 0 AS kind \
               FROM task_transitions WHERE task_id = ?1 \
             UNION ALL \
             SELECT task_id, step_id, from_state, to_state, metadata, sort_key, created_at, id, 1 AS kind \
               FROM step_transitions WHERE task_id = ?1 \
             ORDER BY created_at, kind, id",
        )
        .bind(task_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get(2)?;
                let to: String = r.try_get(3)?;
                Ok(TransitionRow {
                    task_id: r.try_get(0)?,
                    step_id: r.try_get(1)?,
                    from_state: from.as_deref().map(static_state).transpose()?,
                    to_state: static_state(&to)?,
                    metadata: r.try_get(4)?,
                    sort_key: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                })
            })
            .collect()
    }
}

fn static_state(s: &str) -> Result<&'static str> {
    Ok(step_state(s)?.as_str())
}

struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>> {
        let sql = format!(
            "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE namespace = ? AND name = ? AND version = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(namespace)
            .bind(name)
            .bind(version)
            .fetch_optional(&mut *self.tx)
            .await?
            .as_ref()
            .map(template_row)
            .transpose()
    }

    async fn insert_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
        description: Option<&str>,
        definition: &str,
        definition_hash: &str,
        now: i64,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO named_tasks (namespace, name, version, description, definition, definition_hash, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING named_task_id",
        )
        .bind(namespace)
        .bind(name)
        .bind(version)
        .bind(description)
        .bind(definition)
        .bind(definition_hash)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn template_by_id(&mut self, id: i64) -> Result<Option<TemplateRow>> {
        let sql = format!("SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .as_ref()
            .map(template_row)
            .transpose()
    }

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT task_id FROM tasks WHERE idempotency_key = ?")
                .bind(key)
                .fetch_optional(&mut *self.tx)
                .await?,
        )
    }

    async fn insert_task(&mut self, t: &NewTask<'_>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO tasks (named_task_id, state, context, initiator, source_system, reason, tags, bypass_steps, \
               idempotency_key, steps_total, steps_done, version, requested_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING task_id",
        )
        .bind(t.named_task_id)
        .bind(t.state.as_str())
        .bind(t.context)
        .bind(t.initiator)
        .bind(t.source_system)
        .bind(t.reason)
        .bind(t.tags)
        .bind(t.bypass_steps)
        .bind(t.idempotency_key)
        .bind(t.steps_total)
        .bind(t.steps_done)
        .bind(t.version)
        .bind(t.now)
        .bind(t.now)
        .bind(t.now)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn insert_steps(
        &mut self,
        task_id: i64,
        steps: &[NewStep<'_>],
        now: i64,
    ) -> Result<Vec<(i32, i64)>> {
        let mut out = Vec::with_capacity(steps.len());
        for chunk in steps.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO steps (task_id, position, name, handler, state, retry_limit, remaining_parents, ready_at, version, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(task_id)
                    .push_bind(s.position)
                    .push_bind(s.name.to_owned())
                    .push_bind(s.handler.to_owned())
                    .push_bind(s.state.as_str())
                    .push_bind(s.retry_limit)
                    .push_bind(s.remaining_parents)
                    .push_bind(s.ready_at)
                    .push_bind(s.version)
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.push(" RETURNING position, step_id");
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        let mut out = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("SELECT {TASK_COLS} FROM tasks WHERE task_id IN ("));
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push(task_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn contexts(&mut self, task_ids: &[i64]) -> Result<Vec<(i64, String)>> {
        let mut out = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT task_id, context FROM tasks WHERE task_id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        let sql = format!("SELECT {STEP_COLS} FROM steps WHERE task_id = ? ORDER BY position");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(task_id)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(step_row)
            .collect()
    }

    async fn update_steps(&mut self, updates: &[StepUpdate], now: i64) -> Result<Vec<(i64, i64)>> {
        let mut out = Vec::with_capacity(updates.len());
        for chunk in updates.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE steps SET state = v.column2, \
                   attempts = COALESCE(v.column3, steps.attempts), \
                   results = CASE WHEN v.column4 THEN v.column5 ELSE steps.results END, \
                   error = CASE WHEN v.column6 THEN v.column7 ELSE steps.error END, \
                   ready_at = v.column8, \
                   processed_at = COALESCE(v.column9, steps.processed_at), \
                   version = steps.version + v.column10, \
                   claimed_by = CASE WHEN v.column2 = 'in_progress' THEN steps.claimed_by END, \
                   lease_expires_at = CASE WHEN v.column2 = 'in_progress' THEN steps.lease_expires_at END, \
                   updated_at = ",
            );
            qb.push_bind(now).push(" FROM (");
            qb.push_values(chunk, |mut b, u| {
                b.push_bind(u.step_id)
                    .push_bind(u.state.as_str())
                    .push_bind(u.attempts)
                    .push_bind(u.results.is_some())
                    .push_bind(u.results.clone().flatten())
                    .push_bind(u.error.is_some())
                    .push_bind(u.error.clone().flatten())
                    .push_bind(u.ready_at)
                    .push_bind(u.processed_at)
                    .push_bind(u.transitions)
                    .push_bind(u.expect_state.as_str())
                    .push_bind(u.expect_attempts);
            });
            qb.push(
                ") AS v WHERE steps.step_id = v.column1 AND steps.state = v.column11 \
                 AND (v.column12 IS NULL OR steps.attempts = v.column12) \
                 RETURNING step_id, version",
            );
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    async fn decrement_parents(&mut self, decs: &[(i64, i32, i64)], now: i64) -> Result<u64> {
        let mut ready = 0;
        for chunk in decs.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE steps SET remaining_parents = steps.remaining_parents - v.column3, \
                   ready_at = CASE WHEN steps.remaining_parents - v.column3 <= 0 AND steps.state = 'pending' THEN ",
            );
            qb.push_bind(now)
                .push(" ELSE steps.ready_at END, updated_at = ")
                .push_bind(now)
                .push(" FROM (");
            qb.push_values(chunk, |mut b, (t, p, c)| {
                b.push_bind(*t).push_bind(*p).push_bind(*c);
            });
            qb.push(
                ") AS v WHERE steps.task_id = v.column1 AND steps.position = v.column2 \
                 RETURNING ready_at IS NOT NULL AND remaining_parents <= 0",
            );
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                if r.try_get::<bool, _>(0)? {
                    ready += 1;
                }
            }
        }
        Ok(ready)
    }

    async fn update_tasks(&mut self, updates: &[TaskUpdate], now: i64) -> Result<Vec<TaskRow>> {
        let mut out = Vec::with_capacity(updates.len());
        for chunk in updates.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE tasks SET steps_done = tasks.steps_done + v.column2, \
                   steps_blocked = tasks.steps_blocked + v.column3, \
                   steps_in_flight = tasks.steps_in_flight + v.column4, \
                   state = COALESCE(v.column5, tasks.state), \
                   version = tasks.version + v.column6, \
                   completed_at = COALESCE(v.column7, tasks.completed_at), \
                   updated_at = ",
            );
            qb.push_bind(now).push(" FROM (");
            qb.push_values(chunk, |mut b, u| {
                b.push_bind(u.task_id)
                    .push_bind(u.d_done)
                    .push_bind(u.d_blocked)
                    .push_bind(u.d_in_flight)
                    .push_bind(u.state.map(|s| s.as_str()))
                    .push_bind(u.transitions)
                    .push_bind(u.completed_at);
            });
            qb.push(format!(") AS v WHERE tasks.task_id = v.column1 RETURNING {TASK_COLS}"));
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push(task_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn claim(&mut self, spec: &ClaimSpec<'_>) -> Result<Vec<ClaimedStep>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE steps SET state = 'in_progress', attempts = attempts + 1, ready_at = NULL, claimed_by = ",
        );
        qb.push_bind(spec.worker_id.to_owned())
            .push(", lease_expires_at = ")
            .push_bind(spec.lease_until)
            .push(", last_attempted_at = ")
            .push_bind(spec.now)
            .push(", updated_at = ")
            .push_bind(spec.now)
            .push(
                ", version = version + CASE WHEN attempts = 0 THEN 1 ELSE 2 END \
                 WHERE step_id IN (SELECT s.step_id FROM steps s JOIN tasks t ON t.task_id = s.task_id \
                 WHERE s.ready_at IS NOT NULL AND s.ready_at <= ",
            )
            .push_bind(spec.now)
            .push(" AND t.steps_blocked = 0 AND t.state IN ('pending', 'in_progress')");
        push_handler_filter(&mut qb, spec.handlers);
        qb.push(" ORDER BY s.ready_at, s.step_id LIMIT ")
            .push_bind(spec.max)
            .push(") RETURNING step_id, task_id, position, attempts, version, lease_expires_at");
        qb.build()
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(|r| {
                Ok(ClaimedStep {
                    step_id: r.try_get(0)?,
                    task_id: r.try_get(1)?,
                    position: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    version: r.try_get(4)?,
                    lease_expires_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn results(
        &mut self,
        keys: &[(i64, i32)],
    ) -> Result<Vec<(i64, i32, String, Option<String>)>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT task_id, position, name, results FROM steps WHERE (task_id, position) IN (",
            );
            qb.push_values(chunk, |mut b, (t, p)| {
                b.push_bind(*t).push_bind(*p);
            });
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self.tx).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
        }
        Ok(out)
    }

    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64, i32, i64)>> {
        let rows = sqlx::query(
            "SELECT step_id, task_id, position, attempts FROM steps \
             WHERE state = 'in_progress' AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    async fn extend_leases(&mut self, steps: &[(i64, i64)], until: i64, now: i64) -> Result<u64> {
        let mut n = 0;
        for chunk in steps.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("UPDATE steps SET lease_expires_at = ");
            qb.push_bind(until)
                .push(", updated_at = ")
                .push_bind(now)
                .push(" FROM (");
            qb.push_values(chunk, |mut b, (s, a)| {
                b.push_bind(*s).push_bind(*a);
            });
            qb.push(
                ") AS v WHERE steps.step_id = v.column1 AND steps.attempts = v.column2 AND steps.state = 'in_progress'",
            );
            n += qb.build().execute(&mut *self.tx).await?.rows_affected();
        }
        Ok(n)
    }

    async fn insert_transitions(&mut self, rows: &[TransitionRow]) -> Result<()> {
        let (steps, tasks): (Vec<&TransitionRow>, Vec<&TransitionRow>) =
            rows.iter().partition(|r| r.step_id.is_some());
        for chunk in tasks.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.task_id)
                    .push_bind(r.from_state)
                    .push_bind(r.to_state)
                    .push_bind(r.metadata.clone())
                    .push_bind(r.sort_key)
                    .push_bind(r.created_at);
            });
            qb.build().execute(&mut *self.tx).await?;
        }
        for chunk in steps.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.step_id)
                    .push_bind(r.task_id)
                    .push_bind(r.from_state)
                    .push_bind(r.to_state)
                    .push_bind(r.metadata.clone())
                    .push_bind(r.sort_key)
                    .push_bind(r.created_at);
            });
            qb.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}
