//! The worker cycle: recording outcomes and claiming the next jobs in one transaction
//! ([`Engine::report`]), planned from known rows where the store can run it as one statement;
//! leases (heartbeats, expiry); and the waiting half of a poll.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, debug_span, Instrument};

use super::tx::TxCx;
use super::{Engine, CHILD_SWEEP_EVERY_MS, REAP_EVERY_MS};
use crate::error::{Error, Result};
use crate::protocol::{Claim, Cycle, Job, JobKey, Outcome, Report, StepFailure};
use crate::store::{ClaimSpec, LeaseExtension};

impl Engine {
    /// Records outcomes and claims the next jobs in one transaction. Also returns expired leases
    /// to the claimable pool (at most every 500 ms of engine time).
    pub async fn report(&self, reports: &[Report], claim: Option<&Claim>) -> Result<Cycle> {
        self.report_with(reports, claim, false).await
    }

    /// [`Engine::report`] for a worker that found nothing at its last claim and heard of no
    /// new work since (`quiet`): the cycle's claim runs only if the cycle's own writes made a
    /// step claimable (else it would read the ready steps to find none).
    pub(crate) async fn report_with(
        &self,
        reports: &[Report],
        claim: Option<&Claim>,
        quiet: bool,
    ) -> Result<Cycle> {
        let span = debug_span!(
            "tasker.report",
            reports = reports.len(),
            claim = claim.map(|c| c.max)
        );
        let started = Instant::now();
        async move {
            let now = self.now();
            let last = self.inner.last_reap_ms.load(Ordering::Relaxed);
            let reap = last == i64::MIN || now - last >= REAP_EVERY_MS || now < last;
            // Before the cycle, so that its claim takes what the sweep made claimable.
            let swept = self.inner.last_child_sweep_ms.load(Ordering::Relaxed);
            if swept == i64::MIN || now - swept >= CHILD_SWEEP_EVERY_MS || now < swept {
                self.inner.last_child_sweep_ms.store(now, Ordering::Relaxed);
                if let Err(e) = self.settle_orphaned_children().await {
                    tracing::warn!(error = %e, "the sweep for finished child tasks failed");
                }
            }
            let mut done = None;
            if !reap && self.inner.opts.planned_cycles && self.inner.store.executes_plans() {
                let cx = TxCx::planning(self, now, !reports.is_empty());
                match self.cycle(cx, reports, claim, quiet, false).await {
                    Ok(c) => {
                        self.inner.planned[0].fetch_add(1, Ordering::Relaxed);
                        done = Some(c);
                    }
                    Err(Error::PlanStale) => {
                        self.inner.planned[1].fetch_add(1, Ordering::Relaxed);
                        debug!("planned cycle refused: running it the general way");
                    }
                    Err(e) => return Err(e),
                }
            }
            let (jobs, stale) = match done {
                Some(c) => c,
                None => {
                    // A claim alone need not reach the disk before the handler runs: lost in a
                    // crash, the step is simply claimable again. Outcomes always are durable.
                    let cx = TxCx::begin_with(self, now, !reports.is_empty()).await?;
                    self.cycle(cx, reports, claim, quiet, reap).await?
                }
            };
            self.record_cycle_metrics(reports, claim, &jobs, started);
            if !stale.is_empty() {
                debug!(
                    count = stale.len(),
                    "reports for attempts that were taken over were ignored"
                );
            }
            Ok(Cycle { jobs, stale })
        }
        .instrument(span)
        .await
    }

    /// One cycle in `cx`: the reports, expired leases with `reap`, the claim, one apply.
    /// Planned (`cx` from known rows), [`Error::PlanStale`] when it cannot be (nothing written).
    async fn cycle(
        &self,
        mut cx: TxCx<'_>,
        reports: &[Report],
        claim: Option<&Claim>,
        quiet: bool,
        reap: bool,
    ) -> Result<(Vec<Job>, Vec<JobKey>)> {
        let now = cx.now;
        let mut stale = cx.apply_reports(reports).await?;
        if !stale.is_empty() && cx.db().is_err() {
            // A report that no longer applies is sorted out by the general path.
            return Err(Error::PlanStale);
        }
        if reap {
            self.inner.last_reap_ms.store(now, Ordering::Relaxed);
            stale.extend(cx.reap_expired().await?);
            stale.extend(cx.reap_expired_waits().await?);
            stale.extend(cx.reap_deadlines().await?);
        }
        let claim = claim.filter(|c| c.max > 0);
        let spec = claim.map(|c| ClaimSpec {
            only_if_readied: quiet,
            ..self.claim_spec(c, now)
        });
        // The writes and the claim are one statement: traced as the claim when it claims.
        let out = match claim {
            Some(c) => {
                cx.finish(spec.as_ref())
                    .instrument(debug_span!("tasker.claim", max = c.max, worker = %c.worker_id))
                    .await?
            }
            None => cx.finish(None).await?,
        };
        let mut jobs = match claim {
            Some(c) => self.jobs_of_claimed(&out.claimed, c, now).await?,
            None => Vec::new(),
        };
        // Children that finished here handed their outcomes to their parents after the claim
        // ran ([`super::child`]): what that made claimable is claimed too.
        if let Some(c) = claim.filter(|c| out.children_settled && jobs.len() < c.max) {
            let rest = Claim {
                max: c.max - jobs.len(),
                ..c.clone()
            };
            let more = Box::pin(self.report_with(&[], Some(&rest), false)).await?;
            jobs.extend(more.jobs);
        }
        Ok((jobs, stale))
    }

    fn record_cycle_metrics(
        &self,
        reports: &[Report],
        claim: Option<&Claim>,
        jobs: &[Job],
        started: Instant,
    ) {
        if !self.metrics_on() {
            return;
        }
        let part = match (reports.is_empty(), claim.is_some_and(|c| c.max > 0)) {
            (false, true) => "report_and_claim",
            (false, false) => "report",
            _ => "claim",
        };
        metrics::histogram!("tasker_worker_cycle_seconds", "part" => part)
            .record(started.elapsed().as_secs_f64());
        if !jobs.is_empty() {
            metrics::counter!("tasker_steps_claimed_total").increment(jobs.len() as u64);
        }
    }

    /// Claims up to `claim.max` jobs, waiting up to `wait` (real time) for work to appear.
    pub async fn poll(&self, claim: &Claim, wait: Duration) -> Result<Vec<Job>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cycle = self.report(&[], Some(claim)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !cycle.jobs.is_empty() || left.is_zero() {
                return Ok(cycle.jobs);
            }
            let nap = self
                .time_to_next_work(claim.handlers.as_deref())
                .await?
                .min(left);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// How long until a step becomes claimable or a lease expires (engine clock), at most 1 s.
    pub async fn time_to_next_work(&self, handlers: Option<&[String]>) -> Result<Duration> {
        let now = self.now();
        let mut next = now + 1000;
        let times = self.inner.store.next_times(handlers).await?;
        if let Some(t) = times.ready_at {
            next = next.min(t);
        }
        if let Some(t) = times.lease_expiry {
            next = next.min(t + 1);
        }
        Ok(Duration::from_millis((next - now).clamp(1, 1000) as u64))
    }

    /// Makes `connections` of the store's connections ready for work ([`crate::store::Store::warm`]).
    pub(crate) async fn warm_store(&self, connections: usize) -> Result<()> {
        self.inner.store.warm(connections).await
    }

    /// Who is woken when new work may have appeared in this process (for a loop that keeps its
    /// wake-up across calls: `notified_owned`).
    pub(crate) fn work_notify(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inner.work.clone()
    }

    /// A future that resolves when new work may have appeared in this process.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.work.notified()
    }

    /// Records one successful attempt.
    pub async fn complete(&self, key: JobKey, results: Value) -> Result<bool> {
        let report = Report {
            key,
            outcome: Outcome::Complete(results),
        };
        Ok(self.report(&[report], None).await?.stale.is_empty())
    }

    /// Records one failed attempt.
    pub async fn fail(&self, key: JobKey, failure: StepFailure) -> Result<bool> {
        let report = Report {
            key,
            outcome: Outcome::Failed(failure),
        };
        Ok(self.report(&[report], None).await?.stale.is_empty())
    }

    /// Extends the leases of running attempts by the engine's lease duration; returns how many
    /// are still held (an attempt that was taken over is not extended).
    pub async fn heartbeat(&self, keys: &[JobKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        self.inner
            .store
            .extend_leases(&LeaseExtension {
                steps: keys.iter().map(|k| (k.step_id, k.attempt as i64)).collect(),
                until: now + self.inner.opts.lease.as_millis() as i64,
                now,
            })
            .await
    }
}
