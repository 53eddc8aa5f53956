//! Task and step states, their transition tables, and the lifecycle event of every transition.
//!
//! This is the one place where legal transitions are decided. Every state change in the engine
//! is checked against [`TaskState::event`] or [`StepState::event`], which answer with the event
//! name to emit or `None`; the engine turns `None` into an `IllegalTransition` error, never a
//! silent no-op.
//!
//! The tables are the reference engine's (tasker-engine 1.0, §2.2 and §2.3), with `from_state`
//! stored so the (from, to) pairs are honoured (its gap §11.4), and these deliberate changes:
//! * `error -> cancelled` added for tasks and steps, so that a task waiting on a failed step can
//!   be cancelled (the reference table leaves such a task uncancellable);
//! * `complete -> cancelled` and `resolved_manually -> cancelled` removed for tasks: cancelling
//!   a finished task would only erase how it ended.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! states {
    ($name:ident, $doc:literal, [$($variant:ident => $text:literal),+ $(,)?]) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| {
                        format!(
                            "unknown state {s:?}: expected one of {}",
                            [$($text),+].join(", ")
                        )
                    })
            }
        }
    };
}

states!(TaskState, "The state of a task.", [
    Pending => "pending",
    InProgress => "in_progress",
    Complete => "complete",
    Error => "error",
    Cancelled => "cancelled",
    ResolvedManually => "resolved_manually",
]);
states!(StepState, "The state of a workflow step. `waiting`: an attempt has ended and the step \
    waits for something outside it (a child task); it holds no lease and no worker slot.", [
    Pending => "pending",
    InProgress => "in_progress",
    Complete => "complete",
    Error => "error",
    Cancelled => "cancelled",
    ResolvedManually => "resolved_manually",
    Waiting => "waiting",
]);

impl TaskState {
    /// The event emitted for `from -> to`, or `None` when the transition is illegal.
    /// `from = None` is the initial transition of a new task.
    pub fn event(from: Option<TaskState>, to: TaskState) -> Option<&'static str> {
        use TaskState::*;
        Some(match (from, to) {
            (None, Pending) => "task.initialize_requested",
            (None, InProgress) => "task.start_requested",
            (None, Complete) => "task.completed",
            (None, Error) => "task.failed",
            (None, Cancelled) => "task.cancelled",
            (None, ResolvedManually) => "task.resolved_manually",
            (Some(Pending), InProgress) => "task.start_requested",
            (Some(Pending), Cancelled) => "task.cancelled",
            (Some(Pending), Error) => "task.failed",
            (Some(InProgress), Complete) => "task.completed",
            (Some(InProgress), Error) => "task.failed",
            (Some(InProgress), Cancelled) => "task.cancelled",
            (Some(InProgress), Pending) => "task.initialize_requested",
            (Some(Error), Pending) => "task.retry_requested",
            (Some(Error), ResolvedManually) => "task.resolved_manually",
            (Some(Error), Cancelled) => "task.cancelled",
            (Some(Complete), Pending) => "task.rerun_requested",
            (Some(ResolvedManually), Pending) => "task.rerun_requested",
            _ => return None,
        })
    }

    /// True for states no work follows: `complete`, `cancelled`, `resolved_manually`.
    /// `error` is not final: an operator may retry or resolve a step.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Cancelled | TaskState::ResolvedManually
        )
    }

    /// True when the task no longer runs steps on its own (`complete`, `error`, `cancelled`,
    /// `resolved_manually`).
    pub fn is_terminal(self) -> bool {
        self.is_finished() || self == TaskState::Error
    }
}

impl StepState {
    /// The event emitted for `from -> to`, or `None` when the transition is illegal.
    pub fn event(from: Option<StepState>, to: StepState) -> Option<&'static str> {
        use StepState::*;
        Some(match (from, to) {
            (None, Pending) => "step.initialize_requested",
            (None, InProgress) => "step.execution_requested",
            (None, Complete) => "step.completed",
            (None, Error) => "step.failed",
            (None, Cancelled) => "step.cancelled",
            (None, ResolvedManually) => "step.resolved_manually",
            (Some(Pending), InProgress) => "step.execution_requested",
            (Some(Pending), Error) => "step.failed",
            (Some(Pending), Cancelled) => "step.cancelled",
            (Some(Pending), ResolvedManually) => "step.resolved_manually",
            (Some(InProgress), Complete) => "step.completed",
            (Some(InProgress), Error) => "step.failed",
            (Some(InProgress), Cancelled) => "step.cancelled",
            (Some(Error), Pending) => "step.retry_requested",
            (Some(Error), ResolvedManually) => "step.resolved_manually",
            (Some(Error), Cancelled) => "step.cancelled",
            (Some(InProgress), Waiting) => "step.waiting",
            (Some(Waiting), Complete) => "step.completed",
            (Some(Waiting), Error) => "step.failed",
            (Some(Waiting), Cancelled) => "step.cancelled",
            (Some(Waiting), ResolvedManually) => "step.resolved_manually",
            (Some(Complete), Pending) => "step.rerun_requested",
            (Some(ResolvedManually), Pending) => "step.rerun_requested",
            (Some(Cancelled), Pending) => "step.rerun_requested",
            _ => return None,
        })
    }

    /// `complete` or `resolved_manually`: the states that satisfy a child's dependency.
    pub fn satisfies_dependents(self) -> bool {
        matches!(self, StepState::Complete | StepState::ResolvedManually)
    }

    /// States in which a step will not run again without an operator.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
        )
    }
}

/// Every event name the engine can emit, for subscribers that validate their patterns.
pub fn all_event_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    for &to in TaskState::ALL {
        for from in std::iter::once(None).chain(TaskState::ALL.iter().copied().map(Some)) {
            if let Some(e) = TaskState::event(from, to) {
                names.push(e);
            }
        }
    }
    for &to in StepState::ALL {
        for from in std::iter::once(None).chain(StepState::ALL.iter().copied().map(Some)) {
            if let Some(e) = StepState::event(from, to) {
                names.push(e);
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_state_transition_is_illegal() {
        for &s in TaskState::ALL {
            assert_eq!(TaskState::event(Some(s), s), None, "{s}");
        }
        for &s in StepState::ALL {
            assert_eq!(StepState::event(Some(s), s), None, "{s}");
        }
    }

    #[test]
    fn error_to_in_progress_must_go_through_pending() {
        assert_eq!(
            StepState::event(Some(StepState::Error), StepState::InProgress),
            None
        );
        assert_eq!(
            StepState::event(Some(StepState::Error), StepState::Pending),
            Some("step.retry_requested")
        );
    }

    #[test]
    fn states_round_trip_through_strings() {
        for &s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        for &s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>().unwrap(), s);
        }
        assert!("waiting".parse::<TaskState>().is_err());
        assert!("done".parse::<StepState>().is_err());
    }

    #[test]
    fn event_names_match_the_reference() {
        let names = all_event_names();
        for n in [
            "task.start_requested",
            "task.completed",
            "task.failed",
            "task.cancelled",
            "task.retry_requested",
            "step.execution_requested",
            "step.completed",
            "step.failed",
            "step.retry_requested",
            "step.resolved_manually",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }
}
