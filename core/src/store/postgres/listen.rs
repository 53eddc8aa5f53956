//! LISTEN: wake-ups from the commits of other processes ([`crate::store::Store::listen`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::store::Wakeups;

/// Listens for notifications from every other process: steps ready (wakes `work`) and task
/// state changes (wakes `tasks`), reconnecting after errors. Runs until the pool closes.
/// Notifications sent by this process's own connections are skipped: the engine woke its
/// waiters when it committed, and a second wake-up would only make an idle worker claim
/// nothing (W3 did ~0.7 such empty claims per task).
pub(super) fn listen(
    pool: PgPool,
    own: Arc<Mutex<HashSet<u32>>>,
    channel: String,
    wake: Wakeups,
) -> tokio::task::JoinHandle<()> {
    let (work, tasks) = (wake.work, wake.tasks);
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
