//! The engine's decisions that need no database, as pure functions: is a step out of attempts,
//! what a failed attempt does to its step, what a task settles to. The transaction code in the
//! sibling modules asks these and executes the answer; the tables in the tests below are the
//! specification.

use serde_json::{json, Value};

use crate::protocol::{FailureKind, Outcome, Shaped, StepFailure};
use crate::state::{StepState, TaskState};
use crate::template::{StepKind, StepTemplate, TaskTemplate};

/// True when a step is out of attempts and blocks its task until an operator acts.
///
/// An `error` step that will run again has a time at which it becomes claimable: `ready_at`, or
/// `parked_ready_at` while its task is blocked by another step. Only an `error` step with
/// neither is exhausted. (Looking at `ready_at` alone mistakes a parked step for an exhausted
/// one: issue 8.)
pub fn is_exhausted(state: StepState, ready_at: Option<i64>, parked_ready_at: Option<i64>) -> bool {
    state == StepState::Error && ready_at.is_none() && parked_ready_at.is_none()
}

/// True when a task's claimable steps are held back from claims (parked): a step of it is out
/// of attempts (`steps_blocked`), or an operator paused it. Its running steps finish either way.
pub fn holds_steps(steps_blocked: i64, paused: bool) -> bool {
    steps_blocked > 0 || paused
}

/// The positions a rerun from `from` puts back to pending: that step and every step below
/// it, ascending.
pub fn rerun_positions(t: &TaskTemplate, from: usize) -> Vec<usize> {
    let mut seen = vec![false; t.steps.len()];
    let mut todo = vec![from];
    while let Some(p) = todo.pop() {
        if !std::mem::replace(&mut seen[p], true) {
            todo.extend(t.steps[p].children.iter().copied());
        }
    }
    (0..seen.len()).filter(|&p| seen[p]).collect()
}

/// How many parents each step of a rerun (`rerun`, from [`rerun_positions`]) waits for
/// afterwards: those rerun with it and those not finished (`states` by position). Refused,
/// with the reason, while a step to rerun is running or waiting, or when a step to rerun has a
/// cancelled parent that is not rerun (it would wait for ever).
pub fn rerun_waits(
    t: &TaskTemplate,
    rerun: &[usize],
    states: &[StepState],
) -> Result<Vec<i64>, String> {
    let mut out = Vec::with_capacity(rerun.len());
    for &p in rerun {
        let name = &t.steps[p].name;
        if matches!(states[p], StepState::InProgress | StepState::Waiting) {
            return Err(format!(
                "step {name:?} is {}; rerun once it has finished",
                states[p]
            ));
        }
        let mut wait = 0;
        for &q in &t.steps[p].parents {
            let again = rerun.binary_search(&q).is_ok();
            if !again && states[q] == StepState::Cancelled {
                return Err(format!(
                    "step {name:?} has a cancelled parent {:?}; rerun from it instead",
                    t.steps[q].name
                ));
            }
            if again || !matches!(states[q], StepState::Complete | StepState::ResolvedManually) {
                wait += 1;
            }
        }
        out.push(wait);
    }
    Ok(out)
}

/// The steps a completed decision or fan-out calls for (created by the engine's `grow`).
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// The children it opened (positions): a decision's choice, a fan-out's batch workers.
    pub chosen: Vec<usize>,
    /// A fan-out's items: one instance of each chosen batch worker per item.
    pub items: Option<Vec<Value>>,
}

/// What a reported outcome means for a step of `kind` at `position` of `t`: results that carry
/// a shape ([`Shaped`]) are read here. A decision step completes with its decision's results and
/// its choice (positions); a batchable step with its own results and its items, within its
/// batch workers' `max_instances`. Either fails permanently when it returns plain results (or
/// the other's shape), names a step outside its children, or exceeds the limit; a standard
/// step fails permanently when it returns a shape.
pub fn shaped_outcome(
    t: &TaskTemplate,
    position: usize,
    outcome: &Outcome,
) -> (Outcome, Option<Growth>) {
    let Outcome::Complete(v) = outcome else {
        return (outcome.clone(), None);
    };
    let s = &t.steps[position];
    let fail = |m: String| (Outcome::Failed(StepFailure::permanent(m)), None);
    match (Shaped::of(v), s.kind) {
        // Any step may ask to run again later (the outcome rules give the attempt back).
        (Some(Ok(Shaped::Reschedule(_))), _) => (outcome.clone(), None),
        (
            None | Some(Ok(Shaped::Decision(_) | Shaped::ChildTask(_) | Shaped::Wait(_))),
            StepKind::Batchable,
        ) => fail(format!(
            "batchable step {:?} returned {}; it must return Batches(items): one instance of {} per item (an empty list creates none)",
            s.name,
            match Shaped::of(v) {
                None => "plain results",
                Some(Ok(Shaped::ChildTask(_))) => "a ChildTask",
                Some(Ok(Shaped::Wait(_))) => "a Wait",
                _ => "a Decision",
            },
            batch_workers(t, s).join(", ")
        )),
        (Some(Ok(Shaped::Batches(b))), StepKind::Batchable) => {
            let workers: Vec<usize> = s
                .children
                .iter()
                .copied()
                .filter(|&c| t.steps[c].kind == StepKind::BatchWorker)
                .collect();
            if let Some(&c) = workers
                .iter()
                .find(|&&c| b.items.len() > t.steps[c].max_instances)
            {
                return fail(format!(
                    "batchable step {:?} returned {} items; batch_worker {:?} allows at most {} instances per fan-out (batch_config.max_instances)",
                    s.name,
                    b.items.len(),
                    t.steps[c].name,
                    t.steps[c].max_instances
                ));
            }
            (
                Outcome::Complete(b.results),
                Some(Growth {
                    chosen: workers,
                    items: Some(b.items),
                }),
            )
        }
        (Some(Ok(Shaped::Batches(_))), kind) => fail(format!(
            "step {:?} returned Batches, but it is a {} step: only a step of type: batchable may fan out",
            s.name,
            kind.as_str()
        )),
        (Some(Ok(Shaped::ChildTask(_))), StepKind::Decision) => fail(format!(
            "decision step {:?} returned a ChildTask; it must return a Decision naming which of its children to create",
            s.name
        )),
        (Some(Ok(Shaped::Wait(_))), StepKind::Decision) => fail(format!(
            "decision step {:?} returned a Wait; it must return a Decision naming which of its children to create",
            s.name
        )),
        // A child task is created by the engine ([`super::child`]), a wait recorded
        // ([`super::wait`]): the step then waits.
        (Some(Ok(Shaped::ChildTask(_) | Shaped::Wait(_))), _) => (outcome.clone(), None),
        (None, StepKind::Decision) => {
            let children: Vec<&str> = s.children.iter().map(|&c| t.steps[c].name.as_str()).collect();
            fail(format!(
                "decision step {:?} returned plain results; it must return a Decision naming which of its children to create (among: {}; an empty list creates none)",
                s.name,
                children.join(", ")
            ))
        }
        (None, _) => (outcome.clone(), None),
        (Some(Err(m)), _) => fail(format!("step {:?}: {m}", s.name)),
        (Some(Ok(Shaped::Decision(d))), StepKind::Decision) => {
            match super::shape::check_choice(t, position, &d.steps) {
                Ok(chosen) => (
                    Outcome::Complete(d.results),
                    Some(Growth {
                        chosen,
                        items: None,
                    }),
                ),
                Err(m) => fail(m),
            }
        }
        (Some(Ok(Shaped::Decision(_))), kind) => fail(format!(
            "step {:?} returned a Decision, but it is a {} step: only a step of type: decision may decide",
            s.name,
            kind.as_str()
        )),
    }
}

fn batch_workers<'t>(t: &'t TaskTemplate, s: &StepTemplate) -> Vec<&'t str> {
    s.children
        .iter()
        .filter(|&&c| t.steps[c].kind == StepKind::BatchWorker)
        .map(|&c| t.steps[c].name.as_str())
        .collect()
}

/// What a failed attempt does to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureEffect {
    /// The task was cancelled while the attempt ran: the step is cancelled.
    Cancel,
    /// The step goes to `error` and runs again after its backoff (or the `retry_after`).
    Retry,
    /// The step goes to `error` for good (out of attempts, or a permanent failure): its task is
    /// blocked.
    Exhaust,
    /// The job was handed back before its handler started (a worker shutting down): the attempt
    /// is given back and the step is claimable at once.
    Release,
}

/// Decides [`FailureEffect`] for attempt number `attempt` (1 = the first) of a step allowed
/// `max_attempts`.
pub fn failure_effect(
    kind: FailureKind,
    attempt: u32,
    max_attempts: u32,
    task_cancelled: bool,
) -> FailureEffect {
    if task_cancelled {
        return FailureEffect::Cancel;
    }
    match kind {
        FailureKind::Released => FailureEffect::Release,
        FailureKind::Permanent => FailureEffect::Exhaust,
        _ if attempt >= max_attempts => FailureEffect::Exhaust,
        _ => FailureEffect::Retry,
    }
}

/// What an operator's new `retry_limit` does to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitEffect {
    /// Nothing changes but the limit.
    Keep,
    /// A failed step waiting to run again has no attempt left under the new limit: it is out
    /// of attempts now and blocks its task.
    Exhaust,
    /// An exhausted step has attempts left under the new limit: it runs again at once and
    /// stops blocking its task. Not after a permanent failure (only a retry does that).
    Unexhaust,
}

/// Decides [`LimitEffect`] for a step in `state` that has used `attempts`, is or is not
/// [`is_exhausted`], failed permanently last time or not, given `new_limit` (total attempts).
pub fn retry_limit_effect(
    state: StepState,
    attempts: i64,
    exhausted: bool,
    failed_permanently: bool,
    new_limit: i64,
) -> LimitEffect {
    if state != StepState::Error {
        return LimitEffect::Keep;
    }
    match (exhausted, attempts >= new_limit) {
        (false, true) => LimitEffect::Exhaust,
        (true, false) if !failed_permanently => LimitEffect::Unexhaust,
        _ => LimitEffect::Keep,
    }
}

/// True when a claim took every step its transaction made claimable, so announcing them would
/// only wake other workers to claim nothing: the claim asks for every handler those steps have
/// (`covers`) and came back with fewer than it asked for, so nothing it could take was left.
/// (W4 with 8 worker processes spent most of its round trips on such empty claims: each chain
/// step's completion woke every process, while the completing worker had already claimed the
/// next step in the same statement.)
pub fn claim_took_everything(covers: bool, asked: usize, got: usize) -> bool {
    covers && asked > 0 && got < asked
}

/// A task's state and counters, as [`settle_path`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCounts {
    pub state: TaskState,
    pub steps_total: i64,
    /// Steps `complete` or `resolved_manually`, or cancelled by an operator.
    pub steps_done: i64,
    /// Steps out of attempts ([`is_exhausted`]).
    pub steps_blocked: i64,
}

impl TaskCounts {
    /// True when [`settle_path`] needs to know how many steps are in flight (only a blocked,
    /// running task asks: it fails once nothing is in flight).
    pub fn needs_running_count(&self) -> bool {
        matches!(self.state, TaskState::Pending | TaskState::InProgress)
            && self.steps_done < self.steps_total
            && self.steps_blocked > 0
    }
}

/// The task transitions a change of counters calls for, with the transition metadata; `None`
/// when the task stays as it is. `running` is the number of steps in flight when
/// [`TaskCounts::needs_running_count`] says it is needed (else ignored).
///
/// * every step done: `complete` (through `in_progress`, and from `error` through `pending`);
/// * a step exhausted and nothing in flight: `error`;
/// * an `error` task with nothing exhausted any more (an operator acted): back to `pending`.
pub fn settle_path(c: &TaskCounts, running: Option<i64>) -> Option<(&'static [TaskState], Value)> {
    use TaskState::*;
    let all_done = c.steps_done >= c.steps_total;
    let completed = || json!({"steps_total": c.steps_total});
    match c.state {
        Pending if all_done => Some((&[InProgress, Complete], completed())),
        InProgress if all_done => Some((&[Complete], completed())),
        Pending | InProgress if c.needs_running_count() && running == Some(0) => Some((
            &[Error],
            json!({"error_message": "steps_in_error_state", "failed_steps_count": c.steps_blocked}),
        )),
        Error if all_done => Some((&[Pending, InProgress, Complete], completed())),
        Error if c.steps_blocked <= 0 => {
            Some((&[Pending], json!({"reason": "unblocked_by_operator"})))
        }
        _ => None,
    }
}

/// The JSON path of the first string or key holding a NUL character (`\u0000`), which
/// PostgreSQL cannot store in `jsonb` (SQLite can): such a value is refused on every backend so
/// that both behave alike.
pub fn nul_path(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().enumerate().any(|(i, x)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(x, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(m) => m.iter().any(|(k, x)| {
                let len = path.len();
                // Shown with the NUL written out, so the path itself is storable.
                path.push_str(&format!(".{}", k.replace('\0', "\\u0000")));
                let found = k.contains('\0') || walk(x, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::from("$");
    walk(v, &mut path).then_some(path)
}

/// Replaces NUL characters in every string and key (for text Tasker must store whatever it
/// holds, such as a failure's message or detail).
pub fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        Value::Array(a) => a.iter_mut().for_each(strip_nul),
        Value::Object(m) if m.keys().any(|k| k.contains('\0')) => {
            let old = std::mem::take(m);
            for (k, mut x) in old {
                strip_nul(&mut x);
                m.insert(k.replace('\0', "\u{fffd}"), x);
            }
        }
        Value::Object(m) => m.values_mut().for_each(strip_nul),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureKind as K;
    use StepState as S;
    use TaskState::*;

    #[test]
    fn only_an_error_step_with_no_time_to_run_again_is_exhausted() {
        let table = [
            (S::Error, None, None, true),
            (S::Error, Some(5), None, false), // waiting for its backoff
            (S::Error, None, Some(5), false), // parked while its task is blocked
            (S::Pending, None, None, false),
            (S::InProgress, None, None, false),
            (S::Complete, None, None, false),
            (S::Cancelled, None, None, false),
            (S::ResolvedManually, None, None, false),
        ];
        for (state, ready, parked, want) in table {
            assert_eq!(
                is_exhausted(state, ready, parked),
                want,
                "{state} {ready:?} {parked:?}"
            );
        }
    }

    #[test]
    fn retry_limit_effects() {
        use LimitEffect::*;
        let table = [
            // state, attempts, exhausted, permanent, new limit -> effect
            (S::Error, 3, true, false, 5, Unexhaust),
            (S::Error, 3, true, false, 3, Keep),
            (S::Error, 1, true, true, 5, Keep), // a permanent failure needs a retry
            (S::Error, 2, false, false, 2, Exhaust),
            (S::Error, 2, false, false, 1, Exhaust),
            (S::Error, 1, false, false, 3, Keep),
            (S::Pending, 0, false, false, 1, Keep),
            (S::InProgress, 4, false, false, 2, Keep), // its report decides
            (S::Complete, 1, false, false, 1, Keep),
        ];
        for (state, attempts, exhausted, permanent, limit, want) in table {
            assert_eq!(
                retry_limit_effect(state, attempts, exhausted, permanent, limit),
                want,
                "{state} attempts={attempts} exhausted={exhausted} permanent={permanent} limit={limit}"
            );
        }
    }

    #[test]
    fn only_a_short_claim_covering_what_was_made_ready_took_everything() {
        assert!(claim_took_everything(true, 10, 3));
        assert!(claim_took_everything(true, 10, 0));
        assert!(
            !claim_took_everything(true, 10, 10),
            "a full claim may have left more"
        );
        assert!(!claim_took_everything(true, 0, 0), "no claim was made");
        assert!(
            !claim_took_everything(false, 10, 3),
            "a step made ready for a handler the claim does not take is waiting"
        );
    }

    #[test]
    fn failure_effects() {
        use FailureEffect::*;
        let table = [
            // kind, attempt, max, cancelled -> effect
            (K::Retryable, 1, 3, false, Retry),
            (K::Retryable, 3, 3, false, Exhaust),
            (K::Retryable, 4, 3, false, Exhaust),
            (K::Permanent, 1, 3, false, Exhaust),
            (K::Timeout, 1, 2, false, Retry),
            (K::Timeout, 2, 2, false, Exhaust),
            (K::LeaseExpired, 1, 2, false, Retry),
            (K::LeaseExpired, 2, 2, false, Exhaust),
            (K::WorkerShutdown, 1, 2, false, Retry),
            (K::WorkerShutdown, 2, 2, false, Exhaust),
            (K::Released, 1, 1, false, Release),
            (K::Released, 3, 3, false, Release),
            (K::Permanent, 1, 3, true, Cancel),
            (K::Released, 1, 3, true, Cancel),
            (K::Retryable, 1, 3, true, Cancel),
        ];
        for (kind, attempt, max, cancelled, want) in table {
            assert_eq!(
                failure_effect(kind, attempt, max, cancelled),
                want,
                "{kind:?} attempt {attempt}/{max} cancelled={cancelled}"
            );
        }
    }

    fn counts(state: TaskState, total: i64, done: i64, blocked: i64) -> TaskCounts {
        TaskCounts {
            state,
            steps_total: total,
            steps_done: done,
            steps_blocked: blocked,
        }
    }

    #[test]
    fn settle_paths() {
        let none: Option<&[TaskState]> = None;
        let table: [(TaskCounts, Option<i64>, Option<&[TaskState]>); 13] = [
            (
                counts(Pending, 3, 3, 0),
                None,
                Some(&[InProgress, Complete]),
            ),
            (counts(InProgress, 3, 3, 0), None, Some(&[Complete])),
            (counts(InProgress, 3, 1, 0), None, none),
            (counts(InProgress, 3, 1, 1), Some(1), none), // blocked, a step still in flight
            (counts(InProgress, 3, 1, 1), Some(0), Some(&[Error])),
            (counts(Pending, 3, 0, 1), Some(0), Some(&[Error])),
            (counts(Error, 3, 1, 1), None, none), // still exhausted
            (counts(Error, 3, 1, 0), None, Some(&[Pending])), // operator unblocked it
            (
                counts(Error, 3, 3, 0),
                None,
                Some(&[Pending, InProgress, Complete]),
            ),
            (counts(Error, 3, 1, 2), None, none),
            (counts(Complete, 3, 3, 0), None, none),
            (counts(Cancelled, 3, 1, 1), Some(0), none),
            (counts(ResolvedManually, 3, 1, 0), None, none),
        ];
        for (c, running, want) in table {
            let running = if c.needs_running_count() {
                running
            } else {
                None
            };
            let got = settle_path(&c, running).map(|(p, _)| p);
            assert_eq!(got, want, "{c:?} running={running:?}");
        }
    }

    #[test]
    fn nul_characters_are_found_by_path_and_stripped() {
        let table = [
            (json!("plain"), None),
            (json!("a\u{0}b"), Some("$")),
            (json!({"a": [1, {"b": "x\u{0}"}]}), Some("$.a[1].b")),
            (json!({"k\u{0}": 1}), Some("$.k\\u0000")),
            (json!([null, 2.5, true]), None),
        ];
        for (v, want) in table {
            assert_eq!(nul_path(&v).as_deref(), want, "{v}");
            let mut w = v.clone();
            strip_nul(&mut w);
            assert_eq!(nul_path(&w), None, "{w}");
        }
    }

    #[test]
    fn only_a_blocked_running_task_needs_the_running_count() {
        assert!(counts(InProgress, 3, 1, 1).needs_running_count());
        assert!(counts(Pending, 3, 1, 1).needs_running_count());
        assert!(!counts(InProgress, 3, 1, 0).needs_running_count());
        assert!(!counts(InProgress, 3, 3, 1).needs_running_count());
        assert!(!counts(Error, 3, 1, 1).needs_running_count());
    }
}
