//! Connections this process keeps between statements (see [`Conns`]).

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use crate::error::Result;

/// Connections this process keeps between statements. sqlx's pool tests every connection it
/// takes back with a `Sync` round trip (on a task of its own), which doubled the round trips of
/// the hot path; a connection whose statement or transaction completed is known to be ready,
/// so it is kept here and used next, never given back. Anything else (an error, a cancelled
/// statement, a transaction dropped open) drops the connection to the pool, whose test sorts
/// it out. At most `keep` connections wait here; the pool owns the rest.
#[derive(Clone, Debug)]
pub(super) struct Conns {
    pub(super) pool: PgPool,
    pub(super) spare: Arc<Spare>,
    pub(super) keep: usize,
}

/// The kept connections, and a signal rung when one is put back.
#[derive(Debug, Default)]
pub(super) struct Spare(
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
    pub(super) async fn get(&self) -> Result<PoolConnection<Postgres>> {
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
    pub(super) fn put(&self, c: PoolConnection<Postgres>) {
        let mut spare = self.spare.0.lock().unwrap();
        if spare.len() < self.keep && !self.pool.is_closed() {
            spare.push(c);
            drop(spare);
            self.spare.1.notify_one();
        }
    }
}
