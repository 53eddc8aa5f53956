//! What the lanes of one worker share ([`LaneShare`]), and running them side by side
//! ([`Lanes`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lane::Lane;
use super::RunStats;
use crate::error::Result;
use crate::protocol::{JobKey, Report};

/// What a worker's lanes share.
#[derive(Default)]
pub(super) struct LaneShare {
    /// Rung when a lane ends.
    pub ended: tokio::sync::Notify,
    /// Rung when a lane's cycle lands.
    pub landed: tokio::sync::Notify,
    /// The tasks of each lane's cycle in flight.
    pub flying: Mutex<Vec<Vec<i64>>>,
}

/// How long outcomes wait for another lane's cycle on their tasks to land (then they go
/// anyway, and a plan made stale is run the general way).
pub(super) const HOLD_MAX: Duration = Duration::from_millis(50);

impl LaneShare {
    /// Whether another lane's cycle in flight changes one of these outcomes' tasks.
    pub(super) fn collides(&self, lane: usize, reports: &[Report]) -> bool {
        let flying = self.flying.lock().unwrap();
        flying.iter().enumerate().any(|(i, tasks)| {
            i != lane && !tasks.is_empty() && reports.iter().any(|r| tasks.contains(&r.key.task_id))
        })
    }

    pub(super) fn set_flying(&self, lane: usize, tasks: Vec<i64>) {
        self.flying.lock().unwrap()[lane] = tasks;
    }
}

/// Which lane holds each job handed to the host (None with one lane).
pub(super) type Owners = Option<Arc<Mutex<HashMap<JobKey, usize>>>>;

/// A worker's lanes, run side by side on one task.
pub(super) struct Lanes(pub Vec<Lane>);

impl Lanes {
    /// Runs every lane to its end and adds up what they did. The first lane to fail ends the
    /// run (the others are dropped: like a failed single loop, the jobs they held return at
    /// lease expiry).
    pub(super) async fn run(self) -> Result<RunStats> {
        let mut lanes = self.0;
        if lanes.len() == 1 {
            return lanes.pop().expect("one lane").run_instrumented().await;
        }
        // The lanes start together: on connections ready for their first cycles (a lane
        // that starts late finds the work taken, and what a lane holds stays with it). A
        // database not answering yet is the lanes' to wait out.
        if let Err(e) = lanes[0].engine().warm_store(lanes.len()).await {
            tracing::debug!(error = %e, "could not warm the store's connections");
        }
        let all = futures_util::future::try_join_all(lanes.into_iter().map(|l| {
            let share = l.share();
            async move {
                let r = l.run_instrumented().await;
                // A lane that found the run over wakes the others, which may be asleep
                // waiting for work it was finishing.
                share.ended.notify_waiters();
                r
            }
        }))
        .await?;
        Ok(all.into_iter().fold(RunStats::default(), |a, b| RunStats {
            completed: a.completed + b.completed,
            failed: a.failed + b.failed,
            stale: a.stale + b.stale,
            cycles: a.cycles + b.cycles,
        }))
    }
}
