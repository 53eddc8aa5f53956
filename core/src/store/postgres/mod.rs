//! The PostgreSQL store: many worker processes, on many machines, against one database.
//!
//! * Every write of a transaction is one call of `tasker_apply_v2` ([`apply`]), a function of
//!   `migrations/postgres/functions/` ([`functions`] installs them), with the plan's rows as
//!   arrays of composite types ([`wire`]); a plan made from known rows runs it on its own, in
//!   one round trip.
//! * Claims lock the steps they take with `FOR UPDATE SKIP LOCKED` over the `steps_claimable`
//!   partial index, in priority then age order; concurrent workers never wait on each other's
//!   candidates (`tasker_claim_v2`).
//! * The task rows an outcome touches are locked (`FOR UPDATE`, in id order) before their
//!   counters change, so two workers finishing sibling steps settle the task once.
//! * A commit that made steps ready sends `NOTIFY` in the same round trip; [`listen`] turns
//!   those into local wake-ups (with a poll fallback in the worker).
//! * Connections whose statement completed are kept for the next one ([`conns`]); a
//!   transaction dropped before commit closes its connection instead of returning it to the
//!   pool mid-transaction.
//!
//! Files: this one opens the store; `read.rs` the reads, `tx.rs` the transaction, `apply.rs`
//! the plan's call, `wire.rs` the shapes on the wire.

mod apply;
mod conns;
pub(crate) mod functions;
mod listen;
mod read;
mod tx;
pub(crate) mod wire;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::error::{Error, Result};
use conns::Conns;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel steps-ready notifications travel on (per schema); task changes go on
/// `{channel}_tasks`.
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
    own_backends: Arc<Mutex<HashSet<u32>>>,
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
    /// Connects, creates the schema if asked, applies the migrations (under PostgreSQL's
    /// advisory lock, so concurrent processes migrate once) and installs the functions.
    pub async fn open(url: String, opts: PgOptions) -> Result<PgStore> {
        let connect = connect_options(&url, opts.schema.as_deref()).await?;
        let own_backends: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let keep = opts.max_connections.unwrap_or(8);
        let pool = pool(connect, keep, own_backends.clone()).await?;
        {
            // `run_direct` is `run` without its generic `Acquire`, whose higher-ranked lifetime
            // makes the future unprovably `Send` (sqlx's own comment says so); async hosts
            // such as napi need it `Send`.
            let mut conn = pool.acquire().await?;
            MIGRATOR.run_direct(None, &mut *conn, false).await?;
            functions::install(&mut conn).await?;
        }
        Ok(PgStore {
            conns: Conns {
                pool: pool.clone(),
                spare: Arc::default(),
                keep: (keep / 2).max(1) as usize,
            },
            pool,
            channel: channel(opts.schema.as_deref()),
            statements: Arc::default(),
            own_backends,
        })
    }

    /// Counts a round trip (for [`crate::store::Store::statements`]).
    fn count(&self) {
        self.statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The engine's session settings, after one direct connection (an unreachable server, an
/// unknown host, a bad password or a missing database is reported at once with the driver's
/// own error, not after the pool's acquire timeout as "pool timed out") that creates the
/// schema if asked.
async fn connect_options(url: &str, schema: Option<&str>) -> Result<PgConnectOptions> {
    let mut connect = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Validation(format!("bad PostgreSQL URL: {e}")))?
        .application_name("tasker")
        .statement_cache_capacity(256);
    let target = format!(
        "{}:{}/{}",
        connect.get_host(),
        connect.get_port(),
        connect.get_database().unwrap_or("")
    );
    let mut first = PgConnection::connect_with(&connect)
        .await
        .map_err(|source| Error::Connect { target, source })?;
    if let Some(schema) = schema {
        check_schema(schema)?;
        first
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .await?;
        connect = connect.options([("search_path", schema)]);
    }
    let _ = first.close().await;
    // Every statement the engine runs has an index path, and a plan must not depend on how
    // small a table was when a session first planned it (a generic plan cached then would keep
    // scanning whole tables as they grow): sequential scans are off for the engine's sessions,
    // set at connection start (no round trip, no cost per statement).
    //
    // And their plans are generic: with custom plans (PostgreSQL's default for the first
    // executions, and for good when a generic plan looks costlier, as one over an array
    // parameter of unknown length does) the cycle functions' statements were planned again at
    // every call, 0.4 ms of a 1 ms cycle at low load (W3, pg_stat_statements: plans = calls).
    // Every statement names its rows by key; its plan does not depend on the values.
    Ok(connect.options([
        ("enable_seqscan", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]))
}

/// The pool; `own` learns the server process of each connection (their NOTIFYs come from this
/// process's own commits, whose waiters were already woken in memory: see [`listen`]).
async fn pool(
    connect: PgConnectOptions,
    max: u32,
    own: Arc<Mutex<HashSet<u32>>>,
) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
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
        .max_connections(max)
        // None kept open by the pool itself: `Conns` keeps the connections in use, and with a
        // minimum the pool replaces a connection `Spare` closes outside a runtime on a task of
        // its own (which needs a runtime).
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        // A broken connection fails its statement and the caller retries: no ping per
        // transaction (a round trip each).
        .test_before_acquire(false)
        .connect_with(connect)
        .await?)
}
