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

//!
//! Files: this one opens the database; `read.rs` holds the reads ([`crate::store::Store`]),
//! `tx.rs` the transaction's locking reads and small writes, `apply.rs` a plan's writes,
//! `claim.rs` the claim (the whole claim rule on SQLite), `rows.rs` the row decoders.

mod apply;
mod claim;
mod read;
mod rows;
mod tx;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

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
pub(super) fn blocking_io<T>(f: impl FnOnce() -> T) -> T {
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
