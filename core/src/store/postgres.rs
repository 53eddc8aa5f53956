//! The PostgreSQL store: many worker processes, on many machines, against one database.
//!
//! * Every batch operation is one statement over `UNNEST`ed arrays, so its SQL text is fixed
//!   and prepared once per connection whatever the batch size.
//! * Claims lock the steps they take with `FOR UPDATE SKIP LOCKED` over the `steps_claimable`
//!   partial index, in priority then age order; concurrent workers never wait on each other's
//!   candidates.
//! * The task rows an outcome touches are locked (`FOR UPDATE`, in id order) before their
//!   counters change, so two workers finishing sibling steps settle the task once.
//! * A commit that made steps ready sends `NOTIFY tasker_work` in the same round trip;
//!   [`PgStore::listen`] turns those into local wake-ups (with a poll fallback in the worker).
//! * Transactions are plain `BEGIN` / `COMMIT` on a pooled connection; a transaction dropped
//!   before commit closes its connection instead of returning it to the pool mid-transaction.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres, Row};
use tokio::sync::Notify;

use super::*;

/// The WHERE clause of a task listing: `$1` state, `$2` name, `$3` namespace (NULL: any).
const TASK_FILTER: &str = "($1::text IS NULL OR t.state = $1) AND ($2::text IS NULL OR n.name = $2) AND ($3::text IS NULL OR n.namespace = $3) \
    AND ($6::bigint IS NULL OR t.task_id >= $6) AND ($7::bigint IS NULL OR t.task_id < $7)";
use crate::error::Error;

const ANALYTICS_SQL_PG: &str = "SELECT t.task_id, n.namespace, n.name, t.state, t.created_at, t.completed_at, \
       s.name, s.state, s.attempts, s.last_attempted_at, s.processed_at \
     FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id JOIN steps s ON s.task_id = t.task_id \
     WHERE t.task_id >= $1 ORDER BY t.task_id DESC, s.position LIMIT $2";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel steps-ready notifications travel on (per schema).
fn channel(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("tasker_work_{s}"),
        None => "tasker_work".to_owned(),
    }
}

/// How to open a PostgreSQL store.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Use (and create if missing) this schema instead of the search path's first.
    pub schema: Option<String>,
    /// Connections in the pool (default 8).
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections kept checked out between uses (see [`Conns`]).
    conns: Conns,
    channel: String,
    /// Statements sent (each one round trip), for benchmarks.
    statements: Arc<AtomicU64>,
    /// Process ids of this pool's server connections.
    own_backends: Arc<std::sync::Mutex<HashSet<u32>>>,
}

fn check_schema(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "schema name {s:?}: use lowercase letters, digits and _ (at most 48), starting with a letter or _"
        )))
    }
}

impl PgStore {
    /// A planned creation ([`Plan::new_rows`]): `tasker_create` inserts the rows, gives them
    /// their ids, makes the plan's last writes and claims (for an idle worker of this
    /// process, [`crate::engine`]'s hand-off), in one statement.
    async fn execute_creation(
        &self,
        plan: &Plan,
        claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        if !plan.guards.is_empty()
            || !plan.step_updates.is_empty()
            || !plan.decrements.is_empty()
            || !plan.park.is_empty()
            || !plan.unpark.is_empty()
        {
            return Err(Error::Internal(
                "a planned creation only inserts and records".into(),
            ));
        }
        let n = &plan.new_rows;
        let mut conn = self.conns.get().await?;
        self.statements.fetch_add(1, Ordering::Relaxed);
        let q = sqlx::query(
            "SELECT (claimed).*, task_ids, step_ids FROM tasker_create($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
               $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, \
               $28, $29, $30, $31, $32, $33, $34, $35, $36, $37::jsonb[], $38, $39, $40, $41, $42, $43, $44::jsonb[], $45, $46, \
               $47, $48, $49, $50, $51, $52, $53, $54)",
        )
        .bind(plan.now)
        .bind(n.task_named.as_slice())
        .bind(n.task_state.as_slice())
        .bind(n.task_context.as_slice())
        .bind(n.task_initiator.as_slice())
        .bind(n.task_source.as_slice())
        .bind(n.task_reason.as_slice())
        .bind(n.task_tags.as_slice())
        .bind(n.task_bypass.as_slice())
        .bind(n.task_steps_total.as_slice())
        .bind(n.task_steps_done.as_slice())
        .bind(n.task_version.as_slice())
        .bind(n.step_task.as_slice())
        .bind(n.step_position.as_slice())
        .bind(n.step_name.as_slice())
        .bind(n.step_handler.as_slice())
        .bind(n.step_state.as_slice())
        .bind(n.step_retry_limit.as_slice())
        .bind(n.step_remaining.as_slice())
        .bind(n.step_ready_at.as_slice())
        .bind(n.step_priority.as_slice())
        .bind(n.step_version.as_slice())
        .bind(
            n.step_parents
                .iter()
                .map(|p| parents_literal(p))
                .collect::<Vec<_>>(),
        )
        .bind(n.step_attempts.as_slice())
        .bind(n.step_claimed_by.as_slice())
        .bind(n.step_lease_expires_at.as_slice())
        .bind(n.step_last_attempted_at.as_slice());
        let rows = bind_final(q, &plan.task_updates, &plan.transitions)
            .bind(claim.map_or(0, |c| c.max))
            .bind(handlers_param(claim.and_then(|c| c.handlers)))
            .bind(claim.map_or("", |c| c.worker_id))
            .bind(claim.map_or(0, |c| c.lease_until))
            .bind(&self.channel)
            .bind(plan.work)
            .bind(plan.task_changed)
            .bind(plan.quiet_if_claim_short)
            .fetch_all(&mut *conn)
            .await?;
        self.conns.put(conn);
        let mut out = plan_outcome(&rows, |r, out| {
            out.task_ids = r.try_get(17)?;
            out.step_ids = r.try_get(18)?;
            Ok(())
        })?;
        // A creation's claim always runs.
        out.claim_ran = claim.is_some_and(|c| c.max > 0);
        Ok(out)
    }

    /// Connects, creates the schema if asked, and applies the migrations (under PostgreSQL's
    /// advisory lock, so concurrent processes migrate once).
    pub async fn open(url: String, opts: PgOptions) -> Result<PgStore> {
        let mut connect = PgConnectOptions::from_str(&url)
            .map_err(|e| Error::Validation(format!("bad PostgreSQL URL: {e}")))?
            .application_name("tasker")
            .statement_cache_capacity(256);
        // One direct connection first: an unreachable server, an unknown host, a bad password
        // or a missing database is reported at once with the driver's own error, not after the
        // pool's acquire timeout as "pool timed out".
        let target = format!(
            "{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("")
        );
        let mut first = PgConnection::connect_with(&connect)
            .await
            .map_err(|source| Error::Connect { target, source })?;
        if let Some(schema) = &opts.schema {
            check_schema(schema)?;
            first
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}"
                )))
                .await?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let _ = first.close().await;
        // Every statement the engine runs has an index path, and a plan must not depend on
        // how small a table was when a session first planned it (a generic plan cached then
        // would keep scanning whole tables as they grow): sequential scans are off for the
        // engine's sessions, set at connection start (no round trip, no cost per statement).
        //
        // And their plans are generic: with custom plans (PostgreSQL's default for the first
        // executions, and for good when a generic plan looks costlier, as one over an array
        // parameter of unknown length does) the cycle functions' statements were planned
        // again at every call, 0.4 ms of a 1 ms cycle at low load (W3, pg_stat_statements:
        // plans = calls). Every statement names its rows by key; its plan does not depend on
        // the values.
        connect = connect.options([
            ("enable_seqscan", "off"),
            ("plan_cache_mode", "force_generic_plan"),
        ]);
        // The server processes behind this pool: their NOTIFYs come from this process's own
        // commits, whose waiters were already woken in memory (see `listen`).
        let own_backends: Arc<std::sync::Mutex<HashSet<u32>>> = Arc::default();
        let own = own_backends.clone();
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| {
                let own = own.clone();
                Box::pin(async move {
                    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut *conn)
                        .await?;
                    own.lock().unwrap().insert(pid as u32);
                    Ok(())
                })
            })
            .max_connections(opts.max_connections.unwrap_or(8))
            // None kept open by the pool itself: `Conns` keeps the connections in use, and
            // with a minimum the pool replaces a connection `Spare` closes outside a runtime
            // on a task of its own (which needs a runtime).
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            // A broken connection fails its statement and the caller retries: no ping per
            // transaction (a round trip each).
            .test_before_acquire(false)
            .connect_with(connect)
            .await?;
        {
            // `run_direct` is `run` without its generic `Acquire`, whose higher-ranked lifetime
            // makes the future unprovably `Send` (sqlx's own comment says so); async hosts
            // such as napi need it `Send`.
            let mut conn = pool.acquire().await?;
            MIGRATOR.run_direct(None, &mut *conn, false).await?;
        }
        Ok(PgStore {
            conns: Conns {
                pool: pool.clone(),
                spare: Arc::default(),
                keep: (opts.max_connections.unwrap_or(8) / 2).max(1) as usize,
            },
            pool,
            channel: channel(opts.schema.as_deref()),
            statements: Arc::default(),
            own_backends,
        })
    }

    /// Listens for notifications from every other process: steps ready (wakes `work`) and task
    /// state changes (wakes `tasks`), reconnecting after errors. Runs until the pool closes.
    /// Notifications sent by this process's own connections are skipped: the engine woke its
    /// waiters when it committed, and a second wake-up would only make an idle worker claim
    /// nothing (W3 did ~0.7 such empty claims per task).
    pub fn listen(&self, work: Arc<Notify>, tasks: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        let pool = self.pool.clone();
        let own = self.own_backends.clone();
        let channel = self.channel.clone();
        let tasks_channel = format!("{channel}_tasks");
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if pool.is_closed() {
                    return;
                }
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if let Err(e) = listener
                    .listen_all([channel.as_str(), tasks_channel.as_str()])
                    .await
                {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::from_millis(100);
                // Anything committed while we were not listening: look once.
                work.notify_waiters();
                tasks.notify_waiters();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) if own.lock().unwrap().contains(&n.process_id()) => {}
                        Ok(Some(n)) if n.channel() == tasks_channel => tasks.notify_waiters(),
                        Ok(Some(_)) => work.notify_waiters(),
                        Ok(None) => {
                            // The connection dropped; sqlx reconnects on the next call.
                            work.notify_waiters();
                            tasks.notify_waiters();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        })
    }
}

/// Connections this process keeps between statements. sqlx's pool tests every connection it
/// takes back with a `Sync` round trip (on a task of its own), which doubled the round trips of
/// the hot path; a connection whose statement or transaction completed is known to be ready,
/// so it is kept here and used next, never given back. Anything else (an error, a cancelled
/// statement, a transaction dropped open) drops the connection to the pool, whose test sorts
/// it out. At most `keep` connections wait here; the pool owns the rest.
#[derive(Clone, Debug)]
struct Conns {
    pool: PgPool,
    spare: Arc<Spare>,
    keep: usize,
}

/// The kept connections, and a signal rung when one is put back.
#[derive(Debug, Default)]
struct Spare(
    std::sync::Mutex<Vec<PoolConnection<Postgres>>>,
    tokio::sync::Notify,
);

impl Drop for Spare {
    fn drop(&mut self) {
        let conns = std::mem::take(self.0.get_mut().unwrap_or_else(|e| e.into_inner()));
        if tokio::runtime::Handle::try_current().is_err() {
            // The pool takes a connection back on a task of its own, which needs a runtime;
            // without one (an engine dropped after its runtime), close them here.
            for c in conns {
                drop(c.leak());
            }
        }
    }
}

impl Conns {
    /// A kept connection, else the pool's: whichever comes first. The pool's acquire is never
    /// cut short (opening a connection takes longer than any slice of it would allow: after a
    /// server restart, retrying it in short slices never got one), and a connection kept
    /// meanwhile wins.
    async fn get(&self) -> Result<PoolConnection<Postgres>> {
        if let Some(c) = self.spare.0.lock().unwrap().pop() {
            return Ok(c);
        }
        let acquire = self.pool.acquire();
        tokio::pin!(acquire);
        loop {
            let kept = self.spare.1.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(c) = self.spare.0.lock().unwrap().pop() {
                return Ok(c);
            }
            tokio::select! {
                c = &mut acquire => return Ok(c?),
                _ = &mut kept => {}
            }
        }
    }

    /// Keeps a connection whose last statement completed (its transaction, if any, ended).
    fn put(&self, c: PoolConnection<Postgres>) {
        let mut spare = self.spare.0.lock().unwrap();
        if spare.len() < self.keep && !self.pool.is_closed() {
            spare.push(c);
            drop(spare);
            self.spare.1.notify_one();
        }
    }
}

fn task_state(s: &str) -> Result<TaskState> {
    s.parse().map_err(Error::Corrupt)
}

fn step_state(s: &str) -> Result<StepState> {
    s.parse().map_err(Error::Corrupt)
}

const TASK_COLS: &str =
    "task_id, named_task_id, state, steps_total, steps_done, steps_blocked, version";

fn task_row(r: &PgRow) -> Result<TaskRow> {
    task_row_at(r, 0)
}

fn task_row_at(r: &PgRow, at: usize) -> Result<TaskRow> {
    Ok(TaskRow {
        task_id: r.try_get(at)?,
        named_task_id: r.try_get(at + 1)?,
        state: task_state(r.try_get::<&str, _>(at + 2)?)?,
        steps_total: r.try_get(at + 3)?,
        steps_done: r.try_get(at + 4)?,
        steps_blocked: r.try_get(at + 5)?,
        version: r.try_get(at + 6)?,
    })
}

const DETAIL_COLS: &str = "t.task_id, t.named_task_id, t.state, t.steps_total, t.steps_done, t.steps_blocked, t.version, \
     t.context::text, t.initiator, t.source_system, t.reason, t.tags::text, t.bypass_steps::text, t.idempotency_key, \
     t.requested_at, t.created_at, t.updated_at, t.completed_at, n.namespace, n.name, n.version";

fn task_detail(r: &PgRow) -> Result<TaskWithName> {
    task_detail_at(r, 0)
}

/// A task's detail from the columns of [`DETAIL_COLS`] starting at column `at`.
fn task_detail_at(r: &PgRow, at: usize) -> Result<TaskWithName> {
    Ok((
        TaskDetail {
            row: task_row_at(r, at)?,
            context: r.try_get(at + 7)?,
            initiator: r.try_get(at + 8)?,
            source_system: r.try_get(at + 9)?,
            reason: r.try_get(at + 10)?,
            tags: r.try_get(at + 11)?,
            bypass_steps: r.try_get(at + 12)?,
            idempotency_key: r.try_get(at + 13)?,
            requested_at: r.try_get(at + 14)?,
            created_at: r.try_get(at + 15)?,
            updated_at: r.try_get(at + 16)?,
            completed_at: r.try_get(at + 17)?,
        },
        r.try_get(at + 18)?,
        r.try_get(at + 19)?,
        r.try_get(at + 20)?,
    ))
}

const STEP_COLS: &str = "step_id, task_id, position, name, handler, state, attempts, retry_limit, remaining_parents, ready_at, \
     claimed_by, lease_expires_at, results::text, error::text, last_attempted_at, processed_at, version, parked_ready_at";

fn step_row(r: &PgRow) -> Result<StepRow> {
    step_row_at(r, 0)
}

/// A step from the columns of [`STEP_COLS`] starting at column `at`.
fn step_row_at(r: &PgRow, at: usize) -> Result<StepRow> {
    Ok(StepRow {
        step_id: r.try_get(at)?,
        task_id: r.try_get(at + 1)?,
        position: r.try_get::<i64, _>(at + 2)? as i32,
        name: r.try_get(at + 3)?,
        handler: r.try_get(at + 4)?,
        state: step_state(r.try_get::<&str, _>(at + 5)?)?,
        attempts: r.try_get(at + 6)?,
        retry_limit: r.try_get(at + 7)?,
        remaining_parents: r.try_get(at + 8)?,
        ready_at: r.try_get(at + 9)?,
        claimed_by: r.try_get(at + 10)?,
        lease_expires_at: r.try_get(at + 11)?,
        results: r.try_get(at + 12)?,
        error: r.try_get(at + 13)?,
        last_attempted_at: r.try_get(at + 14)?,
        processed_at: r.try_get(at + 15)?,
        version: r.try_get(at + 16)?,
        parked_ready_at: r.try_get(at + 17)?,
    })
}

/// [`STEP_COLS`] of a query that names the steps table `s`.
static STEP_COLS_OF_S: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    STEP_COLS
        .split(',')
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
});

/// The states [`TaskState::is_terminal`] names: a waiter's task is finished in these.
static TERMINAL_STATES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    TaskState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect()
});

/// Columns of [`DETAIL_COLS`] in a row.
const DETAIL_COUNT: usize = 21;

/// [`DETAIL_COLS`] then [`STEP_COLS`] of `tasker_cycle`'s finished-task rows (the row-typed
/// columns `ft`, `fn`, `fs` of its answer `c`), which start at column [`FINISHED_AT`] (after
/// the claimed step's columns, `ready` and `claim_ran`).
static FINISHED_COLS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    DETAIL_COLS
        .split(',')
        .map(|c| {
            let c = c.trim();
            match c.split_at(2) {
                ("t.", rest) => format!("(c.ft).{rest}"),
                ("n.", rest) => format!("(c.fn).{rest}"),
                _ => unreachable!("a detail column of tasks t or named_tasks n: {c}"),
            }
        })
        .chain(STEP_COLS.split(',').map(|c| format!("(c.fs).{}", c.trim())))
        .collect::<Vec<_>>()
        .join(", ")
});
const FINISHED_AT: usize = 19;

const TEMPLATE_COLS: &str =
    "named_task_id, namespace, name, version, definition, definition_hash, revision, created_at";

fn template_row(r: &PgRow) -> Result<TemplateRow> {
    Ok(TemplateRow {
        named_task_id: r.try_get(0)?,
        namespace: r.try_get(1)?,
        name: r.try_get(2)?,
        version: r.try_get(3)?,
        definition: r.try_get(4)?,
        definition_hash: r.try_get(5)?,
        revision: r.try_get::<i32, _>(6)? as i64,
        created_at: r.try_get(7)?,
    })
}

fn handlers_param(h: Option<&[String]>) -> Option<Vec<String>> {
    h.map(|h| h.to_vec())
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the thirteen arrays of `tasker_update_steps` after its `now`; `expect_versions`
/// NULL when not given.
fn bind_step_updates<'q>(
    q: PgQuery<'q>,
    updates: &[StepUpdate],
    expect_versions: Option<&[i64]>,
) -> PgQuery<'q> {
    q.bind(updates.iter().map(|u| u.step_id).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.state.as_str()).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.attempts).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.results.is_some())
                .collect::<Vec<_>>(),
        )
        .bind(
            updates
                .iter()
                .map(|u| u.results.clone().flatten())
                .collect::<Vec<_>>(),
        )
        .bind(
            updates
                .iter()
                .map(|u| u.error.is_some())
                .collect::<Vec<_>>(),
        )
        .bind(
            updates
                .iter()
                .map(|u| u.error.clone().flatten())
                .collect::<Vec<_>>(),
        )
        .bind(updates.iter().map(|u| u.ready_at).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.processed_at).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.transitions).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.expect_state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            updates
                .iter()
                .map(|u| u.expect_attempts)
                .collect::<Vec<_>>(),
        )
        .bind(match expect_versions {
            Some(v) => v.iter().map(|&v| Some(v)).collect::<Vec<_>>(),
            None => vec![None::<i64>; updates.len()],
        })
}

/// Binds the three arrays of `tasker_decrement_parents` after its `now`.
fn bind_decrements<'q, O>(
    q: sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>,
    decs: &[(i64, i32, i64)],
) -> sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(decs.iter().map(|d| d.0).collect::<Vec<_>>())
        .bind(decs.iter().map(|d| d.1 as i64).collect::<Vec<_>>())
        .bind(decs.iter().map(|d| d.2).collect::<Vec<_>>())
}

/// Binds the nineteen arrays of `tasker_write_final` after its `now`: task updates (in task
/// id order, the order rows are locked everywhere), task and step transitions.
fn bind_final<'q>(q: PgQuery<'q>, updates: &[TaskUpdate], rows: &[TransitionRow]) -> PgQuery<'q> {
    let mut ups: Vec<&TaskUpdate> = updates.iter().collect();
    ups.sort_by_key(|u| u.task_id);
    let (steps, tasks): (Vec<&TransitionRow>, Vec<&TransitionRow>) =
        rows.iter().partition(|r| r.step_id.is_some());
    q.bind(ups.iter().map(|u| u.task_id).collect::<Vec<_>>())
        .bind(ups.iter().map(|u| u.d_done).collect::<Vec<_>>())
        .bind(ups.iter().map(|u| u.d_blocked).collect::<Vec<_>>())
        .bind(
            ups.iter()
                .map(|u| u.state.map(|s| s.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(ups.iter().map(|u| u.transitions).collect::<Vec<_>>())
        .bind(ups.iter().map(|u| u.completed_at).collect::<Vec<_>>())
        .bind(tasks.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(tasks.iter().map(|r| r.from_state).collect::<Vec<_>>())
        .bind(tasks.iter().map(|r| r.to_state).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|r| r.metadata.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|r| r.sort_key).collect::<Vec<_>>())
        .bind(tasks.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|r| r.step_id.unwrap_or_default())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(steps.iter().map(|r| r.from_state).collect::<Vec<_>>())
        .bind(steps.iter().map(|r| r.to_state).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|r| r.metadata.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|r| r.sort_key).collect::<Vec<_>>())
        .bind(steps.iter().map(|r| r.created_at).collect::<Vec<_>>())
}

/// A step's parent positions as an array literal (`{0,2}`), NULL when it has none.
fn parents_literal<T: ToString>(parents: &[T]) -> Option<String> {
    (!parents.is_empty()).then(|| {
        let list: Vec<String> = parents.iter().map(|p| p.to_string()).collect();
        format!("{{{}}}", list.join(","))
    })
}

/// The columns `tasker_claim` and `tasker_cycle` return, in [`claimed_row`]'s order.
const CLAIMED_COLS: &str = "step_id, task_id, step_position, attempts, version, lease_expires_at, retry_limit, \
     named_task_id, task_state, context, task_created_at, started_version, steps_total, steps_done, \
     steps_blocked, task_version, parent_results";

fn claimed_row(r: &PgRow) -> Result<ClaimedStep> {
    Ok(ClaimedStep {
        step_id: r.try_get(0)?,
        task_id: r.try_get(1)?,
        position: r.try_get::<i64, _>(2)? as i32,
        attempts: r.try_get(3)?,
        version: r.try_get(4)?,
        lease_expires_at: r.try_get(5)?,
        retry_limit: r.try_get(6)?,
        named_task_id: r.try_get(7)?,
        task_state: task_state(r.try_get::<&str, _>(8)?)?,
        context: r.try_get(9)?,
        task_created_at: r.try_get(10)?,
        started_version: r.try_get(11)?,
        steps_total: r.try_get(12)?,
        steps_done: r.try_get(13)?,
        steps_blocked: r.try_get(14)?,
        task_version: r.try_get(15)?,
        parent_results: r.try_get(16)?,
    })
}

/// The rows of `tasker_cycle` / `tasker_create`: claimed steps, then one last row (step_id
/// NULL) whose other columns `last` reads.
fn plan_outcome(
    rows: &[PgRow],
    last: impl Fn(&PgRow, &mut PlanOutcome) -> Result<()>,
) -> Result<PlanOutcome> {
    let mut out = PlanOutcome::default();
    for r in rows {
        match r.try_get::<Option<i64>, _>(0)? {
            Some(_) => out.claimed.push(claimed_row(r)?),
            None => last(r, &mut out)?,
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for PgStore {
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>> {
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
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PgTx {
            conn: Some(conn),
            conns: self.conns.clone(),
            open: true,
            channel: self.channel.clone(),
            statements: self.statements.clone(),
        }))
    }

    fn executes_plans(&self) -> bool {
        true
    }

    fn parallel_writers(&self) -> bool {
        true
    }

    async fn execute_plan(
        &self,
        plan: &Plan,
        claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        if !plan.new_rows.is_empty() {
            return self.execute_creation(plan, claim).await;
        }
        let mut conn = self.conns.get().await?;
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut guards: Vec<&TaskRow> = plan.guards.iter().collect();
        guards.sort_by_key(|g| g.task_id);
        let finished_cols = &*FINISHED_COLS;
        let q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT (c.claimed).*, c.ready, c.claim_ran, {finished_cols} FROM tasker_cycle($1, $2, $3, $4, $5, $6, $7, \
               $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
               $21, $22, $23, $24, $25, \
               $26, $27, $28, $29, $30, $31, $32, $33, $34, $35::jsonb[], $36, $37, $38, $39, $40, $41, $42::jsonb[], $43, $44, \
               $45, $46, $47, $48, $49, $50, $51, $52, $53, $54) c"
        )))
        .bind(plan.now)
        .bind(plan.durable)
        .bind(guards.iter().map(|g| g.task_id).collect::<Vec<_>>())
        .bind(guards.iter().map(|g| g.state.as_str()).collect::<Vec<_>>())
        .bind(guards.iter().map(|g| g.steps_done).collect::<Vec<_>>())
        .bind(guards.iter().map(|g| g.steps_blocked).collect::<Vec<_>>())
        .bind(guards.iter().map(|g| g.version).collect::<Vec<_>>());
        let q = bind_step_updates(q, &plan.step_updates, Some(&plan.expect_versions))
            .bind(plan.decrements.iter().map(|d| d.0).collect::<Vec<_>>())
            .bind(
                plan.decrements
                    .iter()
                    .map(|d| d.1 as i64)
                    .collect::<Vec<_>>(),
            )
            .bind(plan.decrements.iter().map(|d| d.2).collect::<Vec<_>>())
            .bind(plan.park.as_slice())
            .bind(plan.unpark.as_slice());
        let q = bind_final(q, &plan.task_updates, &plan.transitions)
            .bind(claim.map_or(0, |c| c.max))
            .bind(handlers_param(claim.and_then(|c| c.handlers)))
            .bind(claim.map_or("", |c| c.worker_id))
            .bind(claim.map_or(0, |c| c.lease_until))
            .bind(claim.is_some_and(|c| c.only_if_readied))
            .bind(&self.channel)
            .bind(plan.work)
            .bind(plan.task_changed)
            .bind(plan.quiet_if_claim_short)
            .bind(plan.watched.as_slice());
        let rows = match q.fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("TK409") => {
                self.conns.put(conn);
                return Err(Error::PlanStale);
            }
            Err(e) => return Err(e.into()),
        };
        self.conns.put(conn);
        // Each row: a claimed step, a step of a finished task (after the claimed columns and
        // `ready`), or the last row (`ready`).
        let mut out = PlanOutcome::default();
        for r in &rows {
            if r.try_get::<Option<i64>, _>(0)?.is_some() {
                out.claimed.push(claimed_row(r)?);
            } else if r.try_get::<Option<i64>, _>(FINISHED_AT)?.is_some() {
                let task = task_detail_at(r, FINISHED_AT)?;
                let step = step_row_at(r, FINISHED_AT + DETAIL_COUNT)?;
                match out.finished.last_mut() {
                    Some((t, steps)) if t.0.row.task_id == task.0.row.task_id => steps.push(step),
                    _ => out.finished.push((task, vec![step])),
                }
            } else {
                out.ready = r.try_get::<i64, _>(FINISHED_AT - 2)? as u64;
                out.claim_ran = r.try_get(FINISHED_AT - 1)?;
            }
        }
        Ok(out)
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TEMPLATE_COLS} FROM named_tasks ORDER BY namespace, name, version, revision"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(template_row)
        .collect()
    }

    async fn template_by_id(&self, id: i64) -> Result<Option<TemplateRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(template_row)
        .transpose()
    }

    async fn task(&self, task_id: i64) -> Result<Option<TaskWithName>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conns.get().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id WHERE t.task_id = $1"
        )))
        .bind(task_id)
        .fetch_optional(&mut *conn)
        .await?;
        self.conns.put(conn);
        row.as_ref().map(task_detail).transpose()
    }

    async fn task_if_finished(
        &self,
        task_id: i64,
    ) -> Result<Option<(TaskWithName, Option<Vec<StepRow>>)>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let step_cols = &*STEP_COLS_OF_S;
        let mut conn = self.conns.get().await?;
        // One row per step when finished (the task's columns repeated), else one row with
        // no step.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DETAIL_COLS}, {step_cols} FROM tasks t \
             JOIN named_tasks n ON n.named_task_id = t.named_task_id \
             LEFT JOIN steps s ON s.task_id = t.task_id AND t.state = ANY($2) \
             WHERE t.task_id = $1 ORDER BY s.position"
        )))
        .bind(task_id)
        .bind(&*TERMINAL_STATES)
        .fetch_all(&mut *conn)
        .await?;
        self.conns.put(conn);
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let detail = task_detail(first)?;
        let steps = if detail.0.row.state.is_terminal() {
            Some(
                rows.iter()
                    .filter(|r| matches!(r.try_get::<Option<i64>, _>(DETAIL_COUNT), Ok(Some(_))))
                    .map(|r| step_row_at(r, DETAIL_COUNT))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok(Some((detail, steps)))
    }

    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conns.get().await?;
        let s: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
        self.conns.put(conn);
        s.as_deref().map(task_state).transpose()
    }

    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conns.get().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM steps WHERE task_id = $1 ORDER BY position"
        )))
        .bind(task_id)
        .fetch_all(&mut *conn)
        .await?;
        self.conns.put(conn);
        rows.iter().map(step_row).collect()
    }

    async fn list_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<Vec<TaskWithName>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let order = if f.oldest_first { "ASC" } else { "DESC" };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DETAIL_COLS} FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id \
             WHERE {TASK_FILTER} ORDER BY t.task_id {order} LIMIT $4 OFFSET $5"
        )))
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.name.as_deref())
        .bind(f.namespace.as_deref())
        .bind(f.limit.unwrap_or(100))
        .bind(f.offset.unwrap_or(0))
        .bind(ids.from)
        .bind(ids.until)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_detail)
        .collect()
    }

    async fn count_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<i64> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id \
             WHERE $4::bigint IS NULL AND $5::bigint IS NULL AND {TASK_FILTER}"
        )))
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.name.as_deref())
        .bind(f.namespace.as_deref())
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(ids.from)
        .bind(ids.until)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn task_at_or_after(&self, id: i64) -> Result<Option<(i64, i64)>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let row = sqlx::query(
            "SELECT task_id, created_at FROM tasks WHERE task_id >= $1 ORDER BY task_id LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    async fn max_task_id(&self) -> Result<Option<i64>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(sqlx::query_scalar("SELECT max(task_id) FROM tasks")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn analytics_rows(&self, from_id: i64, limit: i64) -> Result<Vec<AnalyticsRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(ANALYTICS_SQL_PG)
            .bind(from_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AnalyticsRow {
                    task_id: r.try_get(0)?,
                    namespace: r.try_get(1)?,
                    name: r.try_get(2)?,
                    task_state: task_state(r.try_get::<&str, _>(3)?)?,
                    task_created_at: r.try_get(4)?,
                    task_completed_at: r.try_get(5)?,
                    step: r.try_get(6)?,
                    step_state: step_state(r.try_get::<&str, _>(7)?)?,
                    attempts: r.try_get(8)?,
                    last_attempted_at: r.try_get(9)?,
                    processed_at: r.try_get(10)?,
                })
            })
            .collect()
    }

    async fn state_counts(&self, now: i64) -> Result<StateCounts> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(sqlx::AssertSqlSafe(STATE_COUNTS_SQL.replace('?', "$1")))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, String, i64)>>>()?;
        Ok(StateCounts::from_rows(rows))
    }

    async fn next_times(&self, handlers: Option<&[String]>) -> Result<NextTimes> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conns.get().await?;
        let (ready_at, lease_expiry) = sqlx::query_as(
            "SELECT (SELECT MIN(s.ready_at) FROM steps s WHERE s.ready_at IS NOT NULL AND ($1::text[] IS NULL OR s.handler = ANY($1))), \
                    (SELECT MIN(lease_expires_at) FROM steps WHERE state = 'in_progress')",
        )
        .bind(handlers_param(handlers))
        .fetch_one(&mut *conn)
        .await?;
        self.conns.put(conn);
        Ok(NextTimes {
            ready_at,
            lease_expiry,
        })
    }

    async fn durability(&self) -> Result<DurabilityReport> {
        let mut vals = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
        ] {
            let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&self.pool)
                .await?;
            vals.push(v);
        }
        let durable = vals[0] == "on" && vals[1] != "off" && vals[2] == "on";
        Ok(DurabilityReport {
            description: format!(
                "PostgreSQL fsync={} synchronous_commit={} full_page_writes={} wal_sync_method={}{}",
                vals[0],
                vals[1],
                vals[2],
                vals[3],
                if durable {
                    " (commits that record outcomes or create tasks wait for the WAL flush; claim-only commits do not)"
                } else {
                    ""
                }
            ),
            durable,
        })
    }

    fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(
            "SELECT task_id, NULL::bigint AS step_id, from_state, to_state, metadata::text, sort_key, created_at, id, 0 AS kind \
               FROM task_transitions WHERE task_id = $1 \
             UNION ALL \
             SELECT task_id, step_id, from_state, to_state, metadata::text, sort_key, created_at, id, 1 AS kind \
               FROM step_transitions WHERE step_id IN (SELECT step_id FROM steps WHERE task_id = $1) \
             ORDER BY created_at, kind, sort_key, id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get(2)?;
                Ok(TransitionRow {
                    task_id: r.try_get(0)?,
                    step_id: r.try_get(1)?,
                    from_state: from
                        .as_deref()
                        .map(step_state)
                        .transpose()?
                        .map(StepState::as_str),
                    to_state: step_state(r.try_get::<&str, _>(3)?)?.as_str(),
                    metadata: r.try_get(4)?,
                    sort_key: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                })
            })
            .collect()
    }
}

struct PgTx {
    /// Taken back by [`Conns`] at commit.
    conn: Option<PoolConnection<Postgres>>,
    conns: Conns,
    open: bool,
    channel: String,
    statements: Arc<AtomicU64>,
}

impl PgTx {
    fn c(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a transaction's connection until commit")
    }

    /// Parking and unparking: `sql` takes `$1` = now and `$2` = the task ids.
    async fn move_ready(&mut self, task_ids: &[i64], now: i64, sql: &'static str) -> Result<()> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sql)
            .bind(now)
            .bind(task_ids)
            .execute(self.c())
            .await?;
        Ok(())
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

#[async_trait]
impl StoreTx for PgTx {
    async fn commit(mut self: Box<Self>, work_ready: bool, task_changed: bool) -> Result<()> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut sql = String::new();
        if work_ready {
            sql.push_str(&format!("SELECT pg_notify('{}', ''); ", self.channel));
        }
        if task_changed {
            sql.push_str(&format!("SELECT pg_notify('{}_tasks', ''); ", self.channel));
        }
        sql.push_str("COMMIT");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.c())
            .await?;
        self.open = false;
        if let Some(c) = self.conn.take() {
            self.conns.put(c);
        }
        Ok(())
    }

    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE namespace = $1 AND name = $2 AND version = $3 ORDER BY revision DESC LIMIT 1"
        )))
        .bind(namespace)
        .bind(name)
        .bind(version)
        .fetch_optional(self.c())
        .await?
        .as_ref()
        .map(template_row)
        .transpose()
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
        self.statements.fetch_add(1, Ordering::Relaxed);
        // Two processes registering the same template at once: the second sees the first's row.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO named_tasks (namespace, name, version, description, definition, definition_hash, created_at, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (namespace, name, version, revision) DO NOTHING RETURNING named_task_id",
        )
        .bind(namespace)
        .bind(name)
        .bind(version)
        .bind(description)
        .bind(definition)
        .bind(definition_hash)
        .bind(now)
        .bind(revision as i32)
        .fetch_optional(self.c())
        .await?;
        match id {
            Some(id) => Ok(id),
            None => {
                let row = self
                    .find_template(namespace, name, version)
                    .await?
                    .ok_or_else(|| {
                        Error::Corrupt("template vanished during registration".into())
                    })?;
                if row.definition_hash != definition_hash {
                    // Another process registered a different body as this revision meanwhile.
                    return Err(Error::Conflict(format!(
                        "template {namespace}.{name}@{version} revision {revision} was registered by another process with a different body at the same moment; register again"
                    )));
                }
                Ok(row.named_task_id)
            }
        }
    }

    async fn template_by_id(&mut self, id: i64) -> Result<Option<TemplateRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TEMPLATE_COLS} FROM named_tasks WHERE named_task_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.c())
        .await?
        .as_ref()
        .map(template_row)
        .transpose()
    }

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(
            sqlx::query_scalar("SELECT task_id FROM tasks WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(self.c())
                .await?,
        )
    }

    async fn insert_task(&mut self, t: &NewTask<'_>) -> Result<i64> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        // A concurrent insert with the same idempotency key wins; this one returns its id.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tasks (named_task_id, state, context, initiator, source_system, reason, tags, bypass_steps, \
               idempotency_key, steps_total, steps_done, version, requested_at, created_at, updated_at) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13, $13, $13) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING task_id",
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
        .fetch_optional(self.c())
        .await?;
        match id {
            Some(id) => Ok(id),
            None => Err(Error::Conflict(format!(
                "a task with idempotency key {:?} was created concurrently; retry to get its id",
                t.idempotency_key.unwrap_or_default()
            ))),
        }
    }

    async fn insert_steps(
        &mut self,
        task_id: i64,
        steps: &[NewStep<'_>],
        now: i64,
    ) -> Result<Vec<(i32, i64)>> {
        only_planned_creations_are_born_claimed(steps)?;
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(
            "INSERT INTO steps (task_id, position, name, handler, state, retry_limit, remaining_parents, ready_at, priority, version, parents, created_at, updated_at) \
             SELECT $1, v.position, v.name, v.handler, v.state, v.retry_limit, v.remaining_parents, v.ready_at, v.priority, v.version, v.parents::bigint[], $2, $2 \
             FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) \
               AS v(position, name, handler, state, retry_limit, remaining_parents, ready_at, priority, version, parents) \
             RETURNING position, step_id",
        )
        .bind(task_id)
        .bind(now)
        .bind(steps.iter().map(|s| s.position as i64).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.name).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.handler).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.state.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.retry_limit).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.remaining_parents).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.ready_at).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.priority as i64).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.version).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| parents_literal(s.parents)).collect::<Vec<_>>())
        .fetch_all(self.c())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)? as i32, r.try_get(1)?)))
            .collect()
    }

    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLS} FROM tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE"
        )))
        .bind(task_ids)
        .fetch_all(self.c())
        .await?
        .iter()
        .map(task_row)
        .collect()
    }

    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM steps WHERE task_id = $1 ORDER BY position FOR UPDATE"
        )))
        .bind(task_id)
        .fetch_all(self.c())
        .await?
        .iter()
        .map(step_row)
        .collect()
    }

    async fn update_task_details(
        &mut self,
        task_id: i64,
        reason: Option<&str>,
        tags: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(
            "UPDATE tasks SET reason = COALESCE($1, reason), tags = COALESCE($2::jsonb, tags), updated_at = $3 WHERE task_id = $4",
        )
        .bind(reason)
        .bind(tags)
        .bind(now)
        .bind(task_id)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn count_running(&mut self, task_id: i64) -> Result<i64> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM steps WHERE task_id = $1 AND state = 'in_progress'",
        )
        .bind(task_id)
        .fetch_one(self.c())
        .await?)
    }

    async fn update_steps(&mut self, updates: &[StepUpdate], now: i64) -> Result<Vec<(i64, i64)>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        let q = sqlx::query(
            "SELECT step_id, version FROM tasker_update_steps($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(now);
        let rows = bind_step_updates(q, updates, None)
            .fetch_all(self.c())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn retry_limits(&mut self, step_ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query("SELECT step_id, retry_limit FROM steps WHERE step_id = ANY($1)")
            .bind(step_ids)
            .fetch_all(self.c())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn set_retry_limit(
        &mut self,
        step_id: i64,
        limit: i64,
        ready_at: Option<Option<i64>>,
        now: i64,
    ) -> Result<()> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(
            "UPDATE steps SET retry_limit = $2, \
               ready_at = CASE WHEN $3 THEN $4 ELSE ready_at END, \
               parked_ready_at = CASE WHEN $3 THEN NULL ELSE parked_ready_at END, \
               updated_at = $5 WHERE step_id = $1",
        )
        .bind(step_id)
        .bind(limit)
        .bind(ready_at.is_some())
        .bind(ready_at.flatten())
        .bind(now)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn decrement_parents(&mut self, decs: &[(i64, i32, i64)], now: i64) -> Result<u64> {
        if decs.is_empty() {
            return Ok(0);
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        let q = sqlx::query_scalar("SELECT tasker_decrement_parents($1, $2, $3, $4)").bind(now);
        let ready: i64 = bind_decrements(q, decs).fetch_one(self.c()).await?;
        Ok(ready as u64)
    }

    async fn update_tasks(&mut self, updates: &[TaskUpdate], now: i64) -> Result<()> {
        self.write_final(updates, &[], now).await
    }

    async fn park(&mut self, task_ids: &[i64], now: i64) -> Result<()> {
        self.move_ready(task_ids, now, "SELECT tasker_park($1, $2)")
            .await
    }

    async fn unpark(&mut self, task_ids: &[i64], now: i64) -> Result<()> {
        self.move_ready(task_ids, now, "SELECT tasker_unpark($1, $2)")
            .await
    }

    async fn claim(&mut self, spec: &ClaimSpec<'_>) -> Result<Vec<ClaimedStep>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLAIMED_COLS} FROM tasker_claim($1, $2, $3, $4, $5, $6)"
        )))
        .bind(spec.now)
        .bind(handlers_param(spec.handlers))
        .bind(spec.max)
        .bind(spec.worker_id)
        .bind(spec.lease_until)
        .bind(spec.held_tasks)
        .fetch_all(self.c())
        .await?;
        rows.iter().map(claimed_row).collect()
    }

    async fn results(
        &mut self,
        keys: &[(i64, i32)],
    ) -> Result<Vec<(i64, i32, String, Option<String>)>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT s.task_id, s.position, s.name, s.results::text \
             FROM UNNEST($1::bigint[], $2::bigint[]) AS v(task_id, position) \
             JOIN steps s ON s.task_id = v.task_id AND s.position = v.position",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1 as i64).collect::<Vec<_>>())
        .fetch_all(self.c())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<i64, _>(1)? as i32,
                    r.try_get(2)?,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64, i32, i64)>> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        // Read, not locked: locks are taken tasks first, then steps (as every cycle does) when
        // the expiries are applied as reports, which re-check each step's attempt. Locking the
        // steps here, before their tasks, deadlocked against a cycle reporting one of them late.
        let rows = sqlx::query(
            "SELECT step_id, task_id, position, attempts FROM steps \
             WHERE state = 'in_progress' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.c())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get::<i64, _>(2)? as i32,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    async fn extend_leases(&mut self, steps: &[(i64, i64)], until: i64, now: i64) -> Result<u64> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        if steps.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE steps s SET lease_expires_at = $1, updated_at = $2 \
             FROM UNNEST($3::bigint[], $4::bigint[]) AS v(step_id, attempts) \
             WHERE s.step_id = v.step_id AND s.attempts = v.attempts AND s.state = 'in_progress'",
        )
        .bind(until)
        .bind(now)
        .bind(steps.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.1).collect::<Vec<_>>())
        .execute(self.c())
        .await?
        .rows_affected())
    }

    async fn insert_task_with_steps(
        &mut self,
        t: &NewTask<'_>,
        steps: &[NewStep<'_>],
    ) -> Result<(i64, Vec<(i32, i64)>)> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        // One round trip: the task row, then its steps from the returned id.
        let rows = sqlx::query(
            "WITH t AS ( \
               INSERT INTO tasks (named_task_id, state, context, initiator, source_system, reason, tags, bypass_steps, \
                 idempotency_key, steps_total, steps_done, version, requested_at, created_at, updated_at) \
               VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13, $13, $13) \
               ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING task_id) \
             INSERT INTO steps (task_id, position, name, handler, state, retry_limit, remaining_parents, ready_at, priority, version, parents, created_at, updated_at) \
             SELECT t.task_id, v.position, v.name, v.handler, v.state, v.retry_limit, v.remaining_parents, v.ready_at, v.priority, v.version, v.parents::bigint[], $13, $13 \
             FROM t, UNNEST($14::bigint[], $15::text[], $16::text[], $17::text[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::text[]) \
               AS v(position, name, handler, state, retry_limit, remaining_parents, ready_at, priority, version, parents) \
             RETURNING task_id, position, step_id",
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
        .bind(steps.iter().map(|s| s.position as i64).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.name).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.handler).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.state.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.retry_limit).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.remaining_parents).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.ready_at).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.priority as i64).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.version).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| parents_literal(s.parents)).collect::<Vec<_>>())
        .fetch_all(self.c())
        .await?;
        let Some(first) = rows.first() else {
            return Err(Error::Conflict(format!(
                "a task with idempotency key {:?} was created concurrently; retry to get its id",
                t.idempotency_key.unwrap_or_default()
            )));
        };
        let task_id: i64 = first.try_get(0)?;
        let ids = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(1)? as i32, r.try_get(2)?)))
            .collect::<Result<_>>()?;
        Ok((task_id, ids))
    }

    async fn write_final(
        &mut self,
        updates: &[TaskUpdate],
        rows: &[TransitionRow],
        now: i64,
    ) -> Result<()> {
        if updates.is_empty() && rows.is_empty() {
            return Ok(());
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        // Counters and states, and both transition tables, in one round trip.
        let q = sqlx::query(
            "SELECT tasker_write_final($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb[], $12, $13, $14, $15, $16, $17, $18::jsonb[], $19, $20)",
        )
        .bind(now);
        bind_final(q, updates, rows).execute(self.c()).await?;
        Ok(())
    }

    async fn insert_transitions(&mut self, rows: &[TransitionRow]) -> Result<()> {
        self.write_final(&[], rows, 0).await
    }
}
