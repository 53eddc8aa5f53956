//! Watches: a waiter's task, finished by a cycle of this process, handed over with the cycle's
//! answer instead of read again after the commit (issue 13, W3).
//!
//! [`Engine::wait_for_task`] registers its task before its first read. A planned cycle that
//! brings a watched task to a terminal state asks the store for the task and its steps as the
//! cycle's writes left them ([`crate::store::Plan::watched`]); once the statement has committed
//! the engine files them here and wakes the waiters, who take them without a read.
//!
//! The contract:
//!
//! * a filed snapshot is the committed state of the task at the end of that cycle; a waiter
//!   takes only snapshots filed after it registered (an older one, kept for another waiter,
//!   may predate an operator's retry);
//! * a store that does not return them (SQLite, a cycle run the general way) files nothing:
//!   the waiter reads the task as before;
//! * the entry lives as long as a waiter holds its [`Watch`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Engine;
use crate::store::{FinishedTask, TaskUpdate};

/// A finished task as a cycle left it: its detail and its steps by position.
pub(super) type Finished = Arc<FinishedTask>;

#[derive(Default)]
pub(super) struct Watches {
    by_task: Mutex<HashMap<i64, Entry>>,
    /// Numbers filings and registrations, to tell a waiter which filings are news to it.
    seq: AtomicU64,
    /// Waits answered with a filed snapshot ([`Engine::waits_handed_over`]).
    served: AtomicU64,
}

struct Entry {
    waiters: usize,
    finished: Option<(u64, Finished)>,
}

/// A waiter's registration; dropped, it leaves the registry.
pub(super) struct Watch<'a> {
    watches: &'a Watches,
    task_id: i64,
    since: u64,
}

impl Watch<'_> {
    /// The task as a cycle of this process finished it since this watch began, if one did.
    pub(super) fn take(&self) -> Option<Finished> {
        let by_task = self.watches.by_task.lock().unwrap();
        match &by_task.get(&self.task_id)?.finished {
            Some((seq, f)) if *seq > self.since => {
                self.watches.served.fetch_add(1, Ordering::Relaxed);
                Some(f.clone())
            }
            _ => None,
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut by_task = self.watches.by_task.lock().unwrap();
        if let Some(e) = by_task.get_mut(&self.task_id) {
            e.waiters -= 1;
            if e.waiters == 0 {
                by_task.remove(&self.task_id);
            }
        }
    }
}

impl Watches {
    pub(super) fn watch(&self, task_id: i64) -> Watch<'_> {
        let since = self.seq.fetch_add(1, Ordering::Relaxed);
        self.by_task
            .lock()
            .unwrap()
            .entry(task_id)
            .or_insert(Entry {
                waiters: 0,
                finished: None,
            })
            .waiters += 1;
        Watch {
            watches: self,
            task_id,
            since,
        }
    }

    /// Watched tasks among those these updates bring to a terminal state.
    pub(super) fn finishing(&self, updates: &[TaskUpdate]) -> Vec<i64> {
        let by_task = self.by_task.lock().unwrap();
        if by_task.is_empty() {
            return Vec::new();
        }
        updates
            .iter()
            .filter(|u| u.state.is_some_and(|s| s.is_terminal()))
            .map(|u| u.task_id)
            .filter(|id| by_task.contains_key(id))
            .collect()
    }

    /// Files snapshots of a committed cycle (call before waking the waiters).
    pub(super) fn file(&self, finished: Vec<FinishedTask>) {
        if finished.is_empty() {
            return;
        }
        let mut by_task = self.by_task.lock().unwrap();
        for f in finished {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(e) = by_task.get_mut(&f.task.row.task_id) {
                e.finished = Some((seq, Arc::new(f)));
            }
        }
    }
}

impl Engine {
    pub(super) fn watches(&self) -> &Watches {
        &self.inner.watches
    }

    /// Waits for a task that a cycle of this process finished and handed over, without a read
    /// of their own (for benchmarks and tests).
    pub fn waits_handed_over(&self) -> u64 {
        self.inner.watches.served.load(Ordering::Relaxed)
    }

    /// Tasks waiters of this process are waiting for (for tests).
    #[doc(hidden)]
    pub fn watched_tasks(&self) -> usize {
        self.inner.watches.by_task.lock().unwrap().len()
    }
}
