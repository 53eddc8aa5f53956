//! Analytics over a recent window: throughput, completion and error rates, the slowest tasks and
//! steps (p50/p95 by template and step), the steps that fail most (the original engine's
//! `/analytics/performance` and `/analytics/bottlenecks`, computed from one read of the steps
//! of the tasks created in the window).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::Engine;
use crate::clock::format_ms;
use crate::error::Result;
use crate::state::{StepState, TaskState};
use crate::store::AnalyticsRow;

/// At most this many step rows are read for one window (the newest tasks first).
pub const MAX_ANALYTICS_ROWS: i64 = 200_000;

/// A window's figures.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Analytics {
    pub window_seconds: u64,
    pub since: String,
    pub calculated_at: String,
    /// True when the window held more than [`MAX_ANALYTICS_ROWS`] steps: the figures then
    /// cover the newest tasks only.
    pub truncated: bool,
    pub tasks_created: u64,
    pub tasks_complete: u64,
    pub tasks_error: u64,
    pub tasks_cancelled: u64,
    /// Pending or in progress.
    pub tasks_active: u64,
    /// Complete / (complete + error), 0 to 1; 1 when neither happened.
    pub completion_rate: f64,
    /// Error / (complete + error), 0 to 1.
    pub error_rate: f64,
    /// Tasks finished per second over the window.
    pub throughput_per_second: f64,
    pub avg_task_duration_ms: Option<f64>,
    pub steps_processed: u64,
    pub avg_step_duration_ms: Option<f64>,
    /// Tasks created, completed and failed per slice of the window, oldest first.
    pub series: Vec<Slice>,
    /// Templates by p95 task duration, slowest first (at most 10).
    pub slowest_tasks: Vec<DurationStat>,
    /// Steps by p95 duration, slowest first (at most 10).
    pub slowest_steps: Vec<DurationStat>,
    /// Steps by failed attempts, most first (at most 10).
    pub failing_steps: Vec<FailureStat>,
}

/// Tasks of one slice of the window.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Slice {
    pub start: String,
    pub created: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Durations of a template's tasks, or of one step of a template.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DurationStat {
    pub namespace: String,
    pub name: String,
    /// The step (absent for a task statistic).
    pub step: Option<String>,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// Failed attempts of one step of a template.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureStat {
    pub namespace: String,
    pub name: String,
    pub step: String,
    /// Attempts that failed (a completed step's attempts but the last; a failed step's all).
    pub failed_attempts: u64,
    /// Steps in `error` now.
    pub in_error: u64,
    pub runs: u64,
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn durations(mut by: BTreeMap<(String, String, Option<String>), Vec<f64>>) -> Vec<DurationStat> {
    let mut out: Vec<DurationStat> = by
        .iter_mut()
        .map(|((ns, name, step), v)| {
            v.sort_by(f64::total_cmp);
            DurationStat {
                namespace: ns.clone(),
                name: name.clone(),
                step: step.clone(),
                count: v.len() as u64,
                p50_ms: quantile(v, 0.5),
                p95_ms: quantile(v, 0.95),
                max_ms: *v.last().expect("non-empty"),
            }
        })
        .collect();
    out.sort_by(|a, b| b.p95_ms.total_cmp(&a.p95_ms));
    out.truncate(10);
    out
}

const SLICES: i64 = 12;

impl Engine {
    /// Figures for the tasks created in the last `window` (and their steps), optionally of one
    /// namespace and template name.
    pub async fn analytics(
        &self,
        window: Duration,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Analytics> {
        let mut all = self.analytics_windows(&[window], namespace, name).await?;
        Ok(all.remove(0))
    }

    /// [`Engine::analytics`] for several windows from one read (of the widest), in the order
    /// given.
    pub async fn analytics_windows(
        &self,
        windows: &[Duration],
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Analytics>> {
        let now = self.now();
        let widest = windows.iter().max().copied().unwrap_or_default();
        let since = now - (widest.as_millis() as i64).max(1);
        let mut rows = match self.first_task_created_at(since).await? {
            Some(from) => {
                self.inner
                    .store
                    .analytics_rows(from, MAX_ANALYTICS_ROWS + 1)
                    .await?
            }
            None => Vec::new(),
        };
        let truncated = rows.len() as i64 > MAX_ANALYTICS_ROWS;
        rows.truncate(MAX_ANALYTICS_ROWS as usize);
        rows.retain(|r| {
            namespace.is_none_or(|n| r.namespace == n) && name.is_none_or(|n| r.name == n)
        });
        Ok(windows
            .iter()
            .map(|w| {
                let span = (w.as_millis() as i64).max(1);
                let since = now - span;
                let mine: Vec<&AnalyticsRow> =
                    rows.iter().filter(|r| r.task_created_at >= since).collect();
                figures(&mine, *w, span, since, now, truncated)
            })
            .collect())
    }
}

type FailureKey = (String, String, String);

/// Adds a step's failed attempts (and whether it is in error) to its template step's tally.
fn count_failures(failing: &mut BTreeMap<FailureKey, FailureStat>, r: &AnalyticsRow) {
    let failed = match r.step_state {
        StepState::Complete => (r.attempts - 1).max(0),
        StepState::Error | StepState::Cancelled | StepState::ResolvedManually => r.attempts,
        StepState::Pending | StepState::InProgress | StepState::Waiting => (r.attempts - 1).max(0),
    } as u64;
    if r.attempts == 0 {
        return;
    }
    let f = failing
        .entry((r.namespace.clone(), r.name.clone(), r.step.clone()))
        .or_insert_with(|| FailureStat {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            step: r.step.clone(),
            failed_attempts: 0,
            in_error: 0,
            runs: 0,
        });
    f.failed_attempts += failed;
    f.in_error += (r.step_state == StepState::Error) as u64;
    f.runs += 1;
}

/// The ten steps with the most failed attempts.
fn top_failing(failing: BTreeMap<FailureKey, FailureStat>) -> Vec<FailureStat> {
    let mut failing: Vec<FailureStat> = failing
        .into_values()
        .filter(|f| f.failed_attempts > 0)
        .collect();
    failing.sort_by_key(|f| std::cmp::Reverse(f.failed_attempts));
    failing.truncate(10);
    failing
}

/// The figures of one window from its rows (steps with their tasks, grouped by task).
fn figures(
    rows: &[&AnalyticsRow],
    window: Duration,
    span: i64,
    since: i64,
    now: i64,
    truncated: bool,
) -> Analytics {
    let slice_ms = (span / SLICES).max(1);
    let mut series: Vec<Slice> = (0..SLICES)
        .map(|i| Slice {
            start: format_ms(since + i * slice_ms),
            created: 0,
            completed: 0,
            failed: 0,
        })
        .collect();
    let slot = |t: i64| (((t - since) / slice_ms).clamp(0, SLICES - 1)) as usize;
    let (mut created, mut complete, mut error, mut cancelled, mut active) = (0, 0, 0, 0, 0);
    let mut task_ms: BTreeMap<(String, String, Option<String>), Vec<f64>> = BTreeMap::new();
    let mut step_ms = task_ms.clone();
    let mut failing: BTreeMap<FailureKey, FailureStat> = BTreeMap::new();
    let (mut task_sum, mut task_n, mut step_sum, mut step_n) = (0.0, 0u64, 0.0, 0u64);
    let mut last_task = None;
    for r in rows {
        if last_task != Some(r.task_id) {
            last_task = Some(r.task_id);
            created += 1;
            series[slot(r.task_created_at)].created += 1;
            match r.task_state {
                TaskState::Complete => {
                    complete += 1;
                    if let Some(done) = r.task_completed_at {
                        series[slot(done)].completed += 1;
                        let ms = (done - r.task_created_at).max(0) as f64;
                        task_sum += ms;
                        task_n += 1;
                        task_ms
                            .entry((r.namespace.clone(), r.name.clone(), None))
                            .or_default()
                            .push(ms);
                    }
                }
                TaskState::Error => {
                    error += 1;
                    series[slot(r.task_completed_at.unwrap_or(r.task_created_at))].failed += 1;
                }
                TaskState::Cancelled => cancelled += 1,
                TaskState::Pending | TaskState::InProgress => active += 1,
                TaskState::ResolvedManually => complete += 1,
            }
        }
        if r.step_state == StepState::Complete {
            if let (Some(start), Some(end)) = (r.last_attempted_at, r.processed_at) {
                let ms = (end - start).max(0) as f64;
                step_sum += ms;
                step_n += 1;
                step_ms
                    .entry((r.namespace.clone(), r.name.clone(), Some(r.step.clone())))
                    .or_default()
                    .push(ms);
            }
        }
        count_failures(&mut failing, r);
    }
    let failing = top_failing(failing);
    let finished = complete + error;
    let avg = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
    Analytics {
        window_seconds: window.as_secs(),
        since: format_ms(since),
        calculated_at: format_ms(now),
        truncated,
        tasks_created: created,
        tasks_complete: complete,
        tasks_error: error,
        tasks_cancelled: cancelled,
        tasks_active: active,
        completion_rate: if finished == 0 {
            1.0
        } else {
            complete as f64 / finished as f64
        },
        error_rate: if finished == 0 {
            0.0
        } else {
            error as f64 / finished as f64
        },
        throughput_per_second: finished as f64 / (span as f64 / 1000.0),
        avg_task_duration_ms: avg(task_sum, task_n),
        steps_processed: step_n,
        avg_step_duration_ms: avg(step_sum, step_n),
        series,
        slowest_tasks: durations(task_ms),
        slowest_steps: durations(step_ms),
        failing_steps: failing,
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
    }
}
