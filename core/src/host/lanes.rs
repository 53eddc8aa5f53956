//! What the lanes of one worker share: their wake-ups, the tasks of each lane's cycle in
//! flight ([`LaneShare`]), and which lane holds each job handed to the host ([`Owners`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
