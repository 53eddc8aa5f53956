//! The embedded SQLite store: one file, WAL, `synchronous=FULL` unless configured.
//!
//! Migrations are sqlx migrations (`migrations/sqlite`, embedded), applied on open. The
//! statements themselves run through rusqlite on the calling thread: sqlx's SQLite driver hands
//! every statement and every row to a worker thread, and on this workload those wake-ups cost
//! more than SQLite itself (measured: half the CPU in futex wake/switch, under 4,000 steps/s
//! even with fsync off). A transaction here is a few multi-row statements at a few
//! microseconds each plus one fsync at commit.
//!
//! Writes go through exactly one connection behind an async mutex (SQLite has one writer at a
//! time; queuing in-process is fairer and faster than SQLite's busy handler), each transaction
//! opened with `BEGIN IMMEDIATE` so a read-then-write transaction never fails on a stale
//! snapshot. Reads use their own connections and see committed data only (WAL).
//!
//! The claim reads the steps table alone, through the `steps_claimable` partial index in
//! priority and `ready_at` order (named with `INDEXED BY`: without statistics SQLite's planner
//! would rather sort). The parent-results query uses `CROSS JOIN`, SQLite's way to fix a join
//! order, for the same reason.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::OwnedMutexGuard;

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

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}

/// Read connections: a small stack, one taken per read.
#[derive(Debug)]
enum Readers {
    Own(Mutex<Vec<Connection>>, String),
    /// In-memory databases exist once per connection: reads share the writer.
    Shared,
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: Arc<tokio::sync::Mutex<WriteConn>>,
    read: Arc<Readers>,
    durability: Durability,
}

/// The writer and the `synchronous` level it is set to now.
#[derive(Debug)]
struct WriteConn {
    c: Connection,
    sync: Durability,
}

impl std::ops::Deref for WriteConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.c
    }
}

/// Runs blocking work (an fsync) without stalling the other tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn path_of(url: &str) -> Result<(String, bool)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| Error::UnsupportedUrl(url.to_owned()))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(Error::Validation(format!(
            "bad SQLite URL {url:?}: no file path (use sqlite://PATH or sqlite::memory:)"
        )));
    }
    Ok((path.to_owned(), path == ":memory:"))
}

fn configure(c: &Connection, durability: Durability, memory: bool) -> Result<()> {
    c.busy_timeout(Duration::from_secs(10))?;
    c.set_prepared_statement_cache_capacity(256);
    if !memory {
        c.pragma_update(None, "journal_mode", "WAL")?;
    }
    c.pragma_update(None, "synchronous", durability.pragma())?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url` (`sqlite://PATH`,
    /// `sqlite:PATH` or `sqlite::memory:`).
    pub async fn open(url: &str, durability: Durability) -> Result<SqliteStore> {
        let (path, memory) = path_of(url)?;
        let write = if memory {
            // sqlx cannot reach a private in-memory database: share one through a named
            // in-memory URI that both open.
            let name = format!(
                "file:tasker-mem-{:016x}?mode=memory&cache=shared",
                rand::random::<u64>()
            );
            let keep = Connection::open_with_flags(
                &name,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            configure(&keep, durability, true)?;
            run_migrations(&format!("sqlite:{name}")).await?;
            keep
        } else {
            if let Some(parent) = std::path::Path::new(&path).parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    return Err(Error::Validation(format!(
                        "bad SQLite URL {url:?}: directory {} does not exist",
                        parent.display()
                    )));
                }
            }
            let c = Connection::open(&path).map_err(|e| {
                Error::Validation(format!("cannot open SQLite database {path:?}: {e}"))
            })?;
            configure(&c, durability, false)?;
            run_migrations(&format!("sqlite://{path}")).await?;
            c
        };
        let read = if memory {
            Readers::Shared
        } else {
            Readers::Own(Mutex::new(Vec::new()), path)
        };
        Ok(SqliteStore {
            write: Arc::new(tokio::sync::Mutex::new(WriteConn {
                c: write,
                sync: durability,
            })),
            read: Arc::new(read),
            durability,
        })
    }

    /// Runs `f` on a read connection.
    async fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match &*self.read {
            Readers::Shared => {
                let c = self.write.lock().await;
                f(&c)
            }
            Readers::Own(pool, path) => {
                let conn = pool.lock().unwrap().pop();
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = Connection::open_with_flags(
                            path,
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )?;
                        c.busy_timeout(Duration::from_secs(10))?;
                        c.set_prepared_statement_cache_capacity(64);
                        c
                    }
                };
                let out = f(&conn);
                let mut p = pool.lock().unwrap();
                if p.len() < 4 {
                    p.push(conn);
                }
                out
            }
        }
    }
}

async fn run_migrations(url: &str) -> Result<()> {
    use sqlx::ConnectOptions;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = opts.connect().await?;
    // `run_direct`: see the PostgreSQL store (keeps the future provably `Send`).
    MIGRATOR.run_direct(None, &mut conn, false).await?;
    use sqlx::Connection as _;
    conn.close().await?;
    Ok(())
}

fn task_state(s: &str) -> rusqlite::Result<TaskState> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn step_state(s: &str) -> rusqlite::Result<StepState> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

const TASK_COLS: &str =
    "task_id, named_task_id, state, steps_total, steps_done, steps_blocked, version";

fn task_row(r: &Row) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        task_id: r.get(0)?,
        named_task_id: r.get(1)?,
        state: task_state(&r.get::<_, String>(2)?)?,
        steps_total: r.get(3)?,
        steps_done: r.get(4)?,
        steps_blocked: r.get(5)?,
        version: r.get(6)?,
    })
}

const DETAIL_COLS: &str = "t.task_id, t.named_task_id, t.state, t.steps_total, t.steps_done, t.steps_blocked, t.version, \
     t.context, t.initiator, t.source_system, t.reason, t.tags, t.bypass_steps, t.idempotency_key, t.requested_at, t.created_at, t.updated_at, t.completed_at, \
     n.namespace, n.name, n.version";

fn task_detail(r: &Row) -> rusqlite::Result<TaskWithName> {
    Ok((
        TaskDetail {
            row: task_row(r)?,
            context: r.get(7)?,
            initiator: r.get(8)?,
            source_system: r.get(9)?,
            reason: r.get(10)?,
            tags: r.get(11)?,
            bypass_steps: r.get(12)?,
            idempotency_key: r.get(13)?,
            requested_at: r.get(14)?,
            created_at: r.get(15)?,
            updated_at: r.get(16)?,
            completed_at: r.get(17)?,
        },
        r.get(18)?,
        r.get(19)?,
        r.get(20)?,
    ))
}

const STEP_COLS: &str = "step_id, task_id, position, name, handler, state, attempts, retry_limit, remaining_parents, ready_at, \
     claimed_by, lease_expires_at, results, error, last_attempted_at, processed_at, version, parked_ready_at";

fn step_row(r: &Row) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        step_id: r.get(0)?,
        task_id: r.get(1)?,
        position: r.get(2)?,
        name: r.get(3)?,
        handler: r.get(4)?,
        state: step_state(&r.get::<_, String>(5)?)?,
        attempts: r.get(6)?,
        retry_limit: r.get(7)?,
        remaining_parents: r.get(8)?,
        ready_at: r.get(9)?,
        claimed_by: r.get(10)?,
        lease_expires_at: r.get(11)?,
        results: r.get(12)?,
        error: r.get(13)?,
        last_attempted_at: r.get(14)?,
        processed_at: r.get(15)?,
        version: r.get(16)?,
        parked_ready_at: r.get(17)?,
    })
}

const TEMPLATE_COLS: &str =
    "named_task_id, namespace, name, version, definition, definition_hash, revision, created_at";

fn template_row(r: &Row) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        named_task_id: r.get(0)?,
        namespace: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        definition: r.get(4)?,
        definition_hash: r.get(5)?,
        revision: r.get(6)?,
        created_at: r.get(7)?,
    })
}

/// `(?, ?, ?), (?, ?, ?)` for `rows` rows of `cols` columns.
fn placeholders(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

fn list(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn opt_i64(v: Option<i64>) -> Sql {
    v.map(Sql::Integer).unwrap_or(Sql::Null)
}

fn opt_text(v: Option<&str>) -> Sql {
    v.map(|s| Sql::Text(s.to_owned())).unwrap_or(Sql::Null)
}

fn text(s: &str) -> Sql {
    Sql::Text(s.to_owned())
}

/// ` AND s.handler IN (...)` and its parameters.
fn handler_filter(handlers: Option<&[String]>, params: &mut Vec<Sql>) -> String {
    match handlers {
        None => String::new(),
        Some([]) => " AND 0".to_owned(),
        Some(hs) => {
            params.extend(hs.iter().map(|h| text(h)));
            format!(" AND s.handler IN ({})", list(hs.len()))
        }
    }
}

/// The WHERE clause of a task listing and its parameters.
fn task_filter(f: &TaskFilter, ids: IdRange) -> (String, Vec<Sql>) {
    let mut sql = String::from("1 = 1");
    let mut p: Vec<Sql> = Vec::new();
    if let Some(s) = f.state {
        sql.push_str(" AND t.state = ?");
        p.push(text(s.as_str()));
    }
    if let Some(n) = &f.name {
        sql.push_str(" AND n.name = ?");
        p.push(text(n));
    }
    if let Some(ns) = &f.namespace {
        sql.push_str(" AND n.namespace = ?");
        p.push(text(ns));
    }
    if let Some(id) = ids.from {
        sql.push_str(" AND t.task_id >= ?");
        p.push(Sql::Integer(id));
    }
    if let Some(id) = ids.until {
        sql.push_str(" AND t.task_id < ?");
        p.push(Sql::Integer(id));
    }
    (sql, p)
}

fn query_rows<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params, f)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

fn next_times_sql(handlers: Option<&[String]>) -> (String, Vec<Sql>) {
    let mut p = Vec::new();
    let filter = handler_filter(handlers, &mut p);
    (
        format!(
            "SELECT (SELECT MIN(s.ready_at) FROM steps AS s WHERE s.ready_at IS NOT NULL{filter}), \
                    (SELECT MIN(lease_expires_at) FROM steps WHERE state = 'in_progress')"
        ),
        p,
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>> {
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
        Ok(Box::new(SqliteTx {
            c: guard,
            open: true,
            claim_rows: Vec::new(),
        }))
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>> {
        self.read(|c| {
            query_rows(
                c,
                &format!("SELECT {TEMPLATE_COLS} FROM named_tasks ORDER BY namespace, name, version, revision"),
                [],
                template_row,
            )
        })
        .await
    }

    async fn template_by_id(&self, id: i64) -> Result<Option<TemplateRow>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = ?"
            ))?
            .query_row([id], template_row)
            .optional()?)
        })
        .await
    }

    async fn task(&self, task_id: i64) -> Result<Option<TaskWithName>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE t.task_id = ?"
            ))?
            .query_row([task_id], task_detail)
            .optional()?)
        })
        .await
    }

    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT state FROM tasks WHERE task_id = ?")?
                    .query_row([task_id], |r| task_state(&r.get::<_, String>(0)?))
                    .optional()?,
            )
        })
        .await
    }

    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>> {
        self.read(|c| {
            query_rows(
                c,
                &format!("SELECT {STEP_COLS} FROM steps WHERE task_id = ? ORDER BY position"),
                [task_id],
                step_row,
            )
        })
        .await
    }

    async fn list_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<Vec<TaskWithName>> {
        let (filter, mut p) = task_filter(f, ids);
        let order = if f.oldest_first { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE {filter} \
             ORDER BY t.task_id {order} LIMIT ? OFFSET ?"
        );
        p.push(Sql::Integer(f.limit.unwrap_or(100)));
        p.push(Sql::Integer(f.offset.unwrap_or(0)));
        self.read(|c| query_rows(c, &sql, params_from_iter(p), task_detail))
            .await
    }

    async fn count_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<i64> {
        let (filter, p) = task_filter(f, ids);
        let sql = format!(
            "SELECT count(*) FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE {filter}"
        );
        self.read(|c| {
            Ok(c.prepare_cached(&sql)?
                .query_row(params_from_iter(p), |r| r.get(0))?)
        })
        .await
    }

    async fn task_at_or_after(&self, id: i64) -> Result<Option<(i64, i64)>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT task_id, created_at FROM tasks WHERE task_id >= ?1 ORDER BY task_id LIMIT 1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
        })
        .await
    }

    async fn max_task_id(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT max(task_id) FROM tasks")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn analytics_rows(&self, from_id: i64, limit: i64) -> Result<Vec<AnalyticsRow>> {
        self.read(|c| {
            query_rows(
                c,
                "SELECT t.task_id, n.namespace, n.name, t.state, t.created_at, t.completed_at, \
                   s.name, s.state, s.attempts, s.last_attempted_at, s.processed_at \
                 FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id JOIN steps s ON s.task_id = t.task_id \
                 WHERE t.task_id >= ?1 ORDER BY t.task_id DESC, s.position LIMIT ?2",
                params![from_id, limit],
                |r| {
                    Ok(AnalyticsRow {
                        task_id: r.get(0)?,
                        namespace: r.get(1)?,
                        name: r.get(2)?,
                        task_state: task_state(&r.get::<_, String>(3)?)?,
                        task_created_at: r.get(4)?,
                        task_completed_at: r.get(5)?,
                        step: r.get(6)?,
                        step_state: step_state(&r.get::<_, String>(7)?)?,
                        attempts: r.get(8)?,
                        last_attempted_at: r.get(9)?,
                        processed_at: r.get(10)?,
                    })
                },
            )
        })
        .await
    }

    async fn state_counts(&self, now: i64) -> Result<StateCounts> {
        let rows = self
            .read(|c| {
                query_rows(c, STATE_COUNTS_SQL, params![now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .await?;
        Ok(StateCounts::from_rows(rows))
    }

    async fn next_times(&self, handlers: Option<&[String]>) -> Result<NextTimes> {
        let (sql, p) = next_times_sql(handlers);
        self.read(|c| {
            Ok(c.prepare_cached(&sql)?
                .query_row(params_from_iter(p), |r| {
                    Ok(NextTimes {
                        ready_at: r.get(0)?,
                        lease_expiry: r.get(1)?,
                    })
                })?)
        })
        .await
    }

    async fn durability(&self) -> Result<DurabilityReport> {
        let journal: String = self
            .read(|c| Ok(c.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .await?;
        let durable = matches!(self.durability, Durability::Full);
        Ok(DurabilityReport {
            description: format!(
                "SQLite journal_mode={journal} synchronous={}{}",
                self.durability.pragma(),
                if durable {
                    " (commits that record outcomes or create tasks are fsynced; claim-only commits are not)"
                } else {
                    ""
                }
            ),
            durable,
        })
    }

    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.read(|c| {
            query_rows(
                c,
                "SELECT task_id, NULL AS step_id, from_state, to_state, metadata, sort_key, created_at, id, 0 AS kind \
                   FROM task_transitions WHERE task_id = ?1 \
                 UNION ALL \
                 SELECT task_id, step_id, from_state, to_state, metadata, sort_key, created_at, id, 1 AS kind \
                   FROM step_transitions WHERE task_id = ?1 \
                 ORDER BY created_at, kind, sort_key, id",
                [task_id],
                |r| {
                    let from: Option<String> = r.get(2)?;
                    Ok(TransitionRow {
                        task_id: r.get(0)?,
                        step_id: r.get(1)?,
                        from_state: from.as_deref().map(step_state).transpose()?.map(StepState::as_str),
                        to_state: step_state(&r.get::<_, String>(3)?)?.as_str(),
                        metadata: r.get(4)?,
                        sort_key: r.get(5)?,
                        created_at: r.get(6)?,
                    })
                },
            )
        })
        .await
    }
}

struct SqliteTx {
    c: OwnedMutexGuard<WriteConn>,
    open: bool,
    /// The claim's transition rows, written with the transaction's other rows (one insert per
    /// table, as before claims wrote their own) or at commit.
    claim_rows: Vec<TransitionRow>,
}

impl SqliteTx {
    /// `UPDATE steps SET {set} WHERE task_id IN (...) AND {cond}`: parking and unparking.
    fn move_ready(&mut self, task_ids: &[i64], now: i64, set: &str, cond: &str) -> Result<()> {
        for chunk in task_ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE steps SET {set}, updated_at = ? WHERE task_id IN ({}) AND {cond}",
                list(chunk.len())
            );
            let mut p = vec![Sql::Integer(now)];
            p.extend(chunk.iter().map(|t| Sql::Integer(*t)));
            self.c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            let _ = self.c.execute_batch("ROLLBACK");
        }
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn commit(mut self: Box<Self>, _work_ready: bool, _task_changed: bool) -> Result<()> {
        if !self.claim_rows.is_empty() {
            let rows = std::mem::take(&mut self.claim_rows);
            self.write_transitions(&rows)?;
        }
        let c = &*self.c;
        if c.sync == Durability::Off {
            c.execute_batch("COMMIT")?;
        } else {
            blocking(|| c.execute_batch("COMMIT"))?;
        }
        self.open = false;
        Ok(())
    }

    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>> {
        Ok(self
            .c
            .prepare_cached(&format!(
                "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE namespace = ? AND name = ? AND version = ? ORDER BY revision DESC LIMIT 1"
            ))?
            .query_row(params![namespace, name, version], template_row)
            .optional()?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
        description: Option<&str>,
        definition: &str,
        definition_hash: &str,
        now: i64,
        revision: i64,
    ) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(
                "INSERT INTO named_tasks (namespace, name, version, description, definition, definition_hash, created_at, revision) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING named_task_id",
            )?
            .query_row(params![namespace, name, version, description, definition, definition_hash, now, revision], |r| r.get(0))?)
    }

    async fn template_by_id(&mut self, id: i64) -> Result<Option<TemplateRow>> {
        Ok(self
            .c
            .prepare_cached(&format!(
                "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = ?"
            ))?
            .query_row([id], template_row)
            .optional()?)
    }

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>> {
        Ok(self
            .c
            .prepare_cached("SELECT task_id FROM tasks WHERE idempotency_key = ?")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    async fn insert_task(&mut self, t: &NewTask<'_>) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(
                "INSERT INTO tasks (named_task_id, state, context, initiator, source_system, reason, tags, bypass_steps, \
                   idempotency_key, steps_total, steps_done, version, requested_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING task_id",
            )?
            .query_row(
                params![
                    t.named_task_id,
                    t.state.as_str(),
                    t.context,
                    t.initiator,
                    t.source_system,
                    t.reason,
                    t.tags,
                    t.bypass_steps,
                    t.idempotency_key,
                    t.steps_total,
                    t.steps_done,
                    t.version,
                    t.now,
                    t.now,
                    t.now
                ],
                |r| r.get(0),
            )?)
    }

    async fn insert_steps(
        &mut self,
        task_id: i64,
        steps: &[NewStep<'_>],
        now: i64,
    ) -> Result<Vec<(i32, i64)>> {
        only_planned_creations_are_born_claimed(steps)?;
        let mut out = Vec::with_capacity(steps.len());
        for chunk in steps.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO steps (task_id, position, name, handler, state, retry_limit, remaining_parents, ready_at, priority, version, created_at, updated_at) \
                 VALUES {} RETURNING position, step_id",
                placeholders(chunk.len(), 12)
            );
            let mut p = Vec::with_capacity(chunk.len() * 12);
            for s in chunk {
                p.extend([
                    Sql::Integer(task_id),
                    Sql::Integer(s.position as i64),
                    text(s.name),
                    text(s.handler),
                    text(s.state.as_str()),
                    Sql::Integer(s.retry_limit),
                    Sql::Integer(s.remaining_parents),
                    opt_i64(s.ready_at),
                    Sql::Integer(s.priority as i64),
                    Sql::Integer(s.version),
                    Sql::Integer(now),
                    Sql::Integer(now),
                ]);
            }
            out.extend(query_rows(&self.c, &sql, params_from_iter(p), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?);
        }
        Ok(out)
    }

    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        let mut out = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {TASK_COLS} FROM tasks WHERE task_id IN ({})",
                list(chunk.len())
            );
            out.extend(query_rows(
                &self.c,
                &sql,
                params_from_iter(chunk),
                task_row,
            )?);
        }
        Ok(out)
    }

    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        query_rows(
            &self.c,
            &format!("SELECT {STEP_COLS} FROM steps WHERE task_id = ? ORDER BY position"),
            [task_id],
            step_row,
        )
    }

    async fn update_task_details(
        &mut self,
        task_id: i64,
        reason: Option<&str>,
        tags: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.c
            .prepare_cached(
                "UPDATE tasks SET reason = COALESCE(?, reason), tags = COALESCE(?, tags), updated_at = ? WHERE task_id = ?",
            )?
            .execute(params![reason, tags, now, task_id])?;
        Ok(())
    }

    async fn count_running(&mut self, task_id: i64) -> Result<i64> {
        Ok(self
            .c
            .prepare_cached(
                "SELECT COUNT(*) FROM steps WHERE task_id = ? AND state = 'in_progress'",
            )?
            .query_row([task_id], |r| r.get(0))?)
    }

    async fn update_steps(&mut self, updates: &[StepUpdate], now: i64) -> Result<Vec<(i64, i64)>> {
        let mut out = Vec::with_capacity(updates.len());
        for chunk in updates.chunks(CHUNK) {
            let sql = format!(
                "UPDATE steps SET state = v.column2, \
                   attempts = COALESCE(v.column3, steps.attempts), \
                   results = CASE WHEN v.column4 THEN v.column5 ELSE steps.results END, \
                   error = CASE WHEN v.column6 THEN v.column7 ELSE steps.error END, \
                   ready_at = v.column8, parked_ready_at = NULL, \
                   processed_at = COALESCE(v.column9, steps.processed_at), \
                   version = steps.version + v.column10, \
                   claimed_by = CASE WHEN v.column2 = 'in_progress' THEN steps.claimed_by END, \
                   lease_expires_at = CASE WHEN v.column2 = 'in_progress' THEN steps.lease_expires_at END, \
                   updated_at = ? \
                 FROM (VALUES {}) AS v \
                 WHERE steps.step_id = v.column1 AND steps.state = v.column11 \
                   AND (v.column12 IS NULL OR steps.attempts = v.column12) \
                 RETURNING step_id, version",
                placeholders(chunk.len(), 12)
            );
            let mut p = Vec::with_capacity(1 + chunk.len() * 12);
            p.push(Sql::Integer(now));
            for u in chunk {
                p.extend([
                    Sql::Integer(u.step_id),
                    text(u.state.as_str()),
                    opt_i64(u.attempts),
                    Sql::Integer(u.results.is_some() as i64),
                    opt_text(u.results.as_ref().and_then(|r| r.as_deref())),
                    Sql::Integer(u.error.is_some() as i64),
                    opt_text(u.error.as_ref().and_then(|r| r.as_deref())),
                    opt_i64(u.ready_at),
                    opt_i64(u.processed_at),
                    Sql::Integer(u.transitions),
                    text(u.expect_state.as_str()),
                    opt_i64(u.expect_attempts),
                ]);
            }
            out.extend(query_rows(&self.c, &sql, params_from_iter(p), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?);
        }
        Ok(out)
    }

    async fn retry_limits(&mut self, step_ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        let mut out = Vec::with_capacity(step_ids.len());
        for chunk in step_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT step_id, retry_limit FROM steps WHERE step_id IN ({})",
                list(chunk.len())
            );
            out.extend(query_rows(&self.c, &sql, params_from_iter(chunk), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?);
        }
        Ok(out)
    }

    async fn set_retry_limit(
        &mut self,
        step_id: i64,
        limit: i64,
        ready_at: Option<Option<i64>>,
        now: i64,
    ) -> Result<()> {
        self.c
            .prepare_cached(
                "UPDATE steps SET retry_limit = ?2, \
                   ready_at = CASE WHEN ?3 THEN ?4 ELSE ready_at END, \
                   parked_ready_at = CASE WHEN ?3 THEN NULL ELSE parked_ready_at END, \
                   updated_at = ?5 WHERE step_id = ?1",
            )?
            .execute(params![
                step_id,
                limit,
                ready_at.is_some(),
                ready_at.flatten(),
                now
            ])?;
        Ok(())
    }

    async fn decrement_parents(&mut self, decs: &[(i64, i32, i64)], now: i64) -> Result<u64> {
        let mut ready = 0;
        for chunk in decs.chunks(CHUNK) {
            let sql = format!(
                "UPDATE steps SET remaining_parents = steps.remaining_parents - v.column3, \
                   ready_at = CASE WHEN steps.remaining_parents - v.column3 <= 0 AND steps.state = 'pending' THEN ?1 ELSE steps.ready_at END, \
                   updated_at = ?1 \
                 FROM (VALUES {}) AS v WHERE steps.task_id = v.column1 AND steps.position = v.column2 \
                 RETURNING ready_at IS NOT NULL AND remaining_parents <= 0",
                placeholders(chunk.len(), 3)
            );
            // ?1 is `now`; the VALUES placeholders are numbered after it.
            let mut p = Vec::with_capacity(1 + chunk.len() * 3);
            p.push(Sql::Integer(now));
            for (t, pos, n) in chunk {
                p.extend([
                    Sql::Integer(*t),
                    Sql::Integer(*pos as i64),
                    Sql::Integer(*n),
                ]);
            }
            let sql = number_placeholders(&sql, 2);
            for became_ready in
                query_rows(&self.c, &sql, params_from_iter(p), |r| r.get::<_, bool>(0))?
            {
                ready += became_ready as u64;
            }
        }
        Ok(ready)
    }

    async fn update_tasks(&mut self, updates: &[TaskUpdate], now: i64) -> Result<()> {
        for chunk in updates.chunks(CHUNK) {
            let sql = format!(
                "UPDATE tasks SET steps_done = tasks.steps_done + v.column2, \
                   steps_blocked = tasks.steps_blocked + v.column3, \
                   state = COALESCE(v.column4, tasks.state), \
                   version = tasks.version + v.column5, \
                   completed_at = COALESCE(v.column6, tasks.completed_at), \
                   updated_at = ? \
                 FROM (VALUES {}) AS v WHERE tasks.task_id = v.column1",
                placeholders(chunk.len(), 6)
            );
            let mut p = Vec::with_capacity(1 + chunk.len() * 6);
            p.push(Sql::Integer(now));
            for u in chunk {
                p.extend([
                    Sql::Integer(u.task_id),
                    Sql::Integer(u.d_done),
                    Sql::Integer(u.d_blocked),
                    opt_text(u.state.map(|s| s.as_str())),
                    Sql::Integer(u.transitions),
                    opt_i64(u.completed_at),
                ]);
            }
            self.c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
        }
        Ok(())
    }

    async fn park(&mut self, task_ids: &[i64], now: i64) -> Result<()> {
        self.move_ready(
            task_ids,
            now,
            "parked_ready_at = ready_at, ready_at = NULL",
            "ready_at IS NOT NULL",
        )
    }

    async fn unpark(&mut self, task_ids: &[i64], now: i64) -> Result<()> {
        self.move_ready(
            task_ids,
            now,
            "ready_at = parked_ready_at, parked_ready_at = NULL",
            "parked_ready_at IS NOT NULL AND state IN ('pending', 'error')",
        )
    }

    async fn claim(&mut self, spec: &ClaimSpec<'_>) -> Result<Vec<ClaimedStep>> {
        let mut p = vec![
            text(spec.worker_id),
            Sql::Integer(spec.lease_until),
            Sql::Integer(spec.now),
            Sql::Integer(spec.now),
            Sql::Integer(spec.now),
        ];
        let filter = handler_filter(spec.handlers, &mut p);
        p.push(Sql::Integer(spec.max));
        let sql = format!(
            "UPDATE steps SET state = 'in_progress', attempts = attempts + 1, ready_at = NULL, claimed_by = ?, \
               lease_expires_at = ?, last_attempted_at = ?, updated_at = ?, \
               version = version + CASE WHEN attempts = 0 THEN 1 ELSE 2 END \
             WHERE step_id IN (SELECT s.step_id FROM steps AS s INDEXED BY steps_claimable \
               WHERE s.ready_at IS NOT NULL AND s.ready_at <= ?{filter} \
               ORDER BY s.priority DESC, s.ready_at, s.step_id LIMIT ?) \
             RETURNING step_id, task_id, position, attempts, version, lease_expires_at, retry_limit"
        );
        let mut steps = query_rows(&self.c, &sql, params_from_iter(p), |r| {
            Ok(ClaimedStep {
                step_id: r.get(0)?,
                task_id: r.get(1)?,
                position: r.get(2)?,
                attempts: r.get(3)?,
                version: r.get(4)?,
                lease_expires_at: r.get(5)?,
                retry_limit: r.get(6)?,
                named_task_id: 0,
                task_state: TaskState::Pending,
                context: String::new(),
                task_created_at: 0,
                started_version: None,
                steps_total: 0,
                steps_done: 0,
                steps_blocked: 0,
                task_version: 0,
                parent_results: None,
            })
        })?;
        if steps.is_empty() {
            return Ok(steps);
        }
        let mut ids: Vec<i64> = steps.iter().map(|s| s.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        type ClaimedTask = (i64, TaskState, String, i64, [i64; 4]);
        let mut tasks: HashMap<i64, ClaimedTask> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT task_id, named_task_id, state, context, created_at, steps_total, steps_done, steps_blocked, version \
                 FROM tasks WHERE task_id IN ({})",
                list(chunk.len())
            );
            for (id, task) in query_rows(&self.c, &sql, params_from_iter(chunk), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    (
                        r.get::<_, i64>(1)?,
                        task_state(&r.get::<_, String>(2)?)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        [r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
                    ),
                ))
            })? {
                tasks.insert(id, task);
            }
        }
        for s in &mut steps {
            let (named, state, ctx, created, [total, done, blocked, version]) = tasks
                .get(&s.task_id)
                .cloned()
                .ok_or_else(|| Error::Corrupt(format!("step {} has no task", s.step_id)))?;
            s.named_task_id = named;
            s.task_state = state;
            s.context = ctx;
            s.task_created_at = created;
            s.steps_total = total;
            s.steps_done = done;
            s.steps_blocked = blocked;
            s.task_version = version;
        }
        // Start the tasks of the claimed steps that are still pending and not held.
        let mut start: Vec<i64> = steps
            .iter()
            .filter(|s| s.task_state == TaskState::Pending && !spec.held_tasks.contains(&s.task_id))
            .map(|s| s.task_id)
            .collect();
        start.sort_unstable();
        start.dedup();
        let mut started: HashMap<i64, i64> = HashMap::with_capacity(start.len());
        for chunk in start.chunks(CHUNK) {
            let sql = format!(
                "UPDATE tasks SET state = 'in_progress', version = version + 1, updated_at = ? \
                 WHERE task_id IN ({}) AND state = 'pending' RETURNING task_id, version",
                list(chunk.len())
            );
            let mut p = vec![Sql::Integer(spec.now)];
            p.extend(chunk.iter().map(|t| Sql::Integer(*t)));
            started.extend(query_rows(&self.c, &sql, params_from_iter(p), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })?);
        }
        let mut rows = Vec::with_capacity(steps.len() + started.len());
        for s in &mut steps {
            s.started_version = started.get(&s.task_id).copied();
            if let Some(v) = s.started_version {
                s.task_state = TaskState::InProgress;
                s.task_version = v;
            }
            rows.extend(claim_transitions(s, spec));
        }
        let mut started: Vec<(i64, i64)> = started.into_iter().collect();
        started.sort_unstable();
        rows.extend(started.into_iter().map(|(task_id, version)| TransitionRow {
            task_id,
            step_id: None,
            from_state: Some(TaskState::Pending.as_str()),
            to_state: TaskState::InProgress.as_str(),
            metadata: r#"{"reason":"step_claimed"}"#.to_owned(),
            sort_key: version,
            created_at: spec.now,
        }));
        self.claim_rows.extend(rows);
        Ok(steps)
    }

    async fn results(
        &mut self,
        keys: &[(i64, i32)],
    ) -> Result<Vec<(i64, i32, String, Option<String>)>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "SELECT s.task_id, s.position, s.name, s.results FROM (VALUES {}) AS v \
                 CROSS JOIN steps AS s ON s.task_id = v.column1 AND s.position = v.column2",
                placeholders(chunk.len(), 2)
            );
            let p = chunk
                .iter()
                .flat_map(|(t, pos)| [Sql::Integer(*t), Sql::Integer(*pos as i64)]);
            out.extend(query_rows(&self.c, &sql, params_from_iter(p), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?);
        }
        Ok(out)
    }

    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64, i32, i64)>> {
        query_rows(
            &self.c,
            "SELECT step_id, task_id, position, attempts FROM steps \
             WHERE state = 'in_progress' AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?",
            params![now, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    async fn extend_leases(&mut self, steps: &[(i64, i64)], until: i64, now: i64) -> Result<u64> {
        let mut n = 0;
        for chunk in steps.chunks(CHUNK) {
            let sql = format!(
                "UPDATE steps SET lease_expires_at = ?, updated_at = ? FROM (VALUES {}) AS v \
                 WHERE steps.step_id = v.column1 AND steps.attempts = v.column2 AND steps.state = 'in_progress'",
                placeholders(chunk.len(), 2)
            );
            let mut p = vec![Sql::Integer(until), Sql::Integer(now)];
            p.extend(
                chunk
                    .iter()
                    .flat_map(|(s, a)| [Sql::Integer(*s), Sql::Integer(*a)]),
            );
            n += self.c.prepare_cached(&sql)?.execute(params_from_iter(p))? as u64;
        }
        Ok(n)
    }

    async fn insert_transitions(&mut self, rows: &[TransitionRow]) -> Result<()> {
        if self.claim_rows.is_empty() {
            return self.write_transitions(rows);
        }
        // The claim's rows last: a step created or failed in this transaction and claimed in
        // it too has its earlier rows first.
        let mut all = rows.to_vec();
        all.append(&mut self.claim_rows);
        self.write_transitions(&all)
    }
}

impl SqliteTx {
    /// Inserts transition rows, many per statement.
    fn write_transitions(&mut self, rows: &[TransitionRow]) -> Result<()> {
        let (steps, tasks): (Vec<&TransitionRow>, Vec<&TransitionRow>) =
            rows.iter().partition(|r| r.step_id.is_some());
        for chunk in tasks.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at) VALUES {}",
                placeholders(chunk.len(), 6)
            );
            let p = chunk.iter().flat_map(|r| {
                [
                    Sql::Integer(r.task_id),
                    opt_text(r.from_state),
                    text(r.to_state),
                    text(&r.metadata),
                    Sql::Integer(r.sort_key),
                    Sql::Integer(r.created_at),
                ]
            });
            self.c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
        }
        for chunk in steps.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at) VALUES {}",
                placeholders(chunk.len(), 7)
            );
            let p = chunk.iter().flat_map(|r| {
                [
                    opt_i64(r.step_id),
                    Sql::Integer(r.task_id),
                    opt_text(r.from_state),
                    text(r.to_state),
                    text(&r.metadata),
                    Sql::Integer(r.sort_key),
                    Sql::Integer(r.created_at),
                ]
            });
            self.c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
        }
        Ok(())
    }
}

/// Rewrites plain `?` placeholders as `?N, ?N+1, ...` starting at `first` (for statements that
/// also use a numbered `?1`).
fn number_placeholders(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut n = first;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '?' && !chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            out.push_str(&format!("?{n}"));
            n += 1;
        } else {
            out.push(ch);
        }
    }
    out
}
