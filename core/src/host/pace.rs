//! The pace of a lane's handlers, which sets its adaptive prefetch.

use std::time::Duration;

/// How far ahead an adaptive prefetch claims: the jobs that would start within this time at
/// the handlers' recent pace (see [`Pace::prefetch`]).
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(50);

/// The recent run time of a lane's handlers (a moving average, in nanoseconds; 0 before the
/// first one finished).
#[derive(Default)]
pub(super) struct Pace(std::sync::atomic::AtomicU64);

impl Pace {
    pub(super) fn observe(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = (took.as_nanos() as u64).max(1);
        let old = self.0.load(Relaxed);
        // One writer (the lane's own loop): a plain load and store.
        self.0
            .store(if old == 0 { ns } else { old - old / 8 + ns / 8 }, Relaxed);
    }

    /// Jobs to claim ahead of `concurrency` free slots: as many as would start within
    /// [`PREFETCH_HORIZON`], at least twice and at most ten times `concurrency`. Fast handlers
    /// get large batches (fewer transactions per step); slow ones claim no more than before.
    pub(super) fn prefetch(&self, concurrency: usize) -> usize {
        let ns = self.0.load(std::sync::atomic::Ordering::Relaxed);
        if ns == 0 {
            return 2 * concurrency;
        }
        let ahead = (concurrency as u128 * PREFETCH_HORIZON.as_nanos() / ns as u128) as usize;
        ahead.clamp(2 * concurrency, 10 * concurrency)
    }
}
