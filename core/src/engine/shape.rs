//! A task's shape decided at run time: which of its template's steps exist.
//!
//! A template declares every step that may run. A step with no decision above it is created
//! with the task ([`crate::template::StepTemplate::created_at_start`]); every other step is
//! created, or never is, once the decisions above it have decided. Whether a step exists
//! follows from its parents, one edge at a time:
//!
//! * the edge from a decision is *open* once it decided for this child, *closed* once it
//!   decided otherwise (or the decision itself will never exist), *unknown* before; the edge
//!   from a `batchable` step to a `batch_worker` is open once it fanned out (its choice is
//!   its batch workers), whatever the number of items: the batch worker then *exists* as its
//!   instances, none for no items;
//! * the edge from any other step is open when that step exists, closed when it never will,
//!   unknown before.
//!
//! A standard step (or a decision) exists when all its edges are open and never will when
//! one is closed. A `deferred_convergence` step waits until no edge is unknown, then exists if
//! one is open (its results hold only the parents that exist), and never will otherwise.
//!
//! These are pure functions: the engine reads the rows and the recorded choices, calls
//! [`expand`], and records the new steps ([`super::outcome`]).

use std::collections::HashMap;

use crate::template::{StepKind, TaskTemplate};

/// What is known of a step's existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Created,
    Absent,
    Unknown,
}

/// The steps a task's decisions so far call for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Positions to create now, in template order.
    pub create: Vec<usize>,
    /// How many steps will never exist.
    pub absent: usize,
}

/// The presence of every step of `t`, given what its rows say (`rows`: `Created` for a step
/// with a row, `Absent` for one whose row was cancelled, which its children treat as never
/// created; `Unknown` or missing for no row) and what each decided decision chose (`choices`:
/// position -> chosen children's positions; a decision resolved by an operator, or bypassed,
/// chose none).
pub fn presence(
    t: &TaskTemplate,
    rows: &[Presence],
    choices: &HashMap<usize, Vec<usize>>,
) -> Vec<Presence> {
    let mut out = vec![Presence::Unknown; t.steps.len()];
    let order = petgraph::algo::toposort(&t.graph, None).expect("validated acyclic");
    for n in order {
        let i = n.index();
        let row = rows.get(i).copied().unwrap_or(Presence::Unknown);
        if row != Presence::Unknown {
            out[i] = row;
            continue;
        }
        let s = &t.steps[i];
        let edge = |p: usize| -> Presence {
            let parent = &t.steps[p];
            let decides = parent.kind == StepKind::Decision
                || (parent.kind == StepKind::Batchable && s.kind == StepKind::BatchWorker);
            match (out[p], decides) {
                (Presence::Created, true) => match choices.get(&p) {
                    Some(chosen) if chosen.contains(&i) => Presence::Created,
                    Some(_) => Presence::Absent,
                    None => Presence::Unknown,
                },
                (other, _) => other,
            }
        };
        let edges: Vec<Presence> = s.parents.iter().map(|&p| edge(p)).collect();
        let any = |x| edges.contains(&x);
        out[i] = match s.kind {
            StepKind::DeferredConvergence if any(Presence::Unknown) => Presence::Unknown,
            StepKind::DeferredConvergence if any(Presence::Created) => Presence::Created,
            StepKind::DeferredConvergence => Presence::Absent,
            _ if any(Presence::Absent) => Presence::Absent,
            _ if any(Presence::Unknown) => Presence::Unknown,
            _ => Presence::Created,
        };
    }
    out
}

/// The steps without a row to create now, and how many steps without a row will never exist
/// (see [`presence`]).
pub fn expand(
    t: &TaskTemplate,
    rows: &[Presence],
    choices: &HashMap<usize, Vec<usize>>,
) -> Expansion {
    let p = presence(t, rows, choices);
    let mut e = Expansion::default();
    for (i, x) in p.into_iter().enumerate() {
        if rows.get(i).is_some_and(|r| *r != Presence::Unknown) {
            continue;
        }
        match x {
            Presence::Created => e.create.push(i),
            Presence::Absent => e.absent += 1,
            Presence::Unknown => {}
        }
    }
    e
}

/// The positions a decision step at `position` chose, checked: each name must be a step that
/// depends on it directly. The error names the allowed ones.
pub fn check_choice(
    t: &TaskTemplate,
    position: usize,
    names: &[String],
) -> Result<Vec<usize>, String> {
    let s = &t.steps[position];
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        match s.children.iter().find(|&&c| t.steps[c].name == *name) {
            Some(&c) if !chosen.contains(&c) => chosen.push(c),
            Some(_) => {}
            None => {
                let allowed: Vec<&str> = s
                    .children
                    .iter()
                    .map(|&c| t.steps[c].name.as_str())
                    .collect();
                return Err(format!(
                    "decision step {:?} chose {name:?}, which is not one of the steps that depend on it directly: {}",
                    s.name,
                    allowed.join(", ")
                ));
            }
        }
    }
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> TaskTemplate {
        TaskTemplate::from_yaml(yaml, None).expect("valid template")
    }

    /// tasker-core's conditional approval: validate -> routing (decision) -> three branches
    /// -> finalize (convergence of the three).
    fn approval() -> TaskTemplate {
        template(
            r#"
name: approval_routing
steps:
  - {name: validate_request}
  - {name: routing_decision, type: decision, dependencies: [validate_request]}
  - {name: finalize_approval, type: deferred_convergence,
     dependencies: [auto_approve, manager_approval, finance_review]}
  - {name: auto_approve, dependencies: [routing_decision]}
  - {name: manager_approval, dependencies: [routing_decision]}
  - {name: finance_review, dependencies: [routing_decision]}
  - {name: notify, dependencies: [finalize_approval]}
"#,
        )
    }

    /// Rows for steps `0..n` where `has[i]`.
    fn rows(has: &[bool]) -> Vec<Presence> {
        has.iter()
            .map(|&b| {
                if b {
                    Presence::Created
                } else {
                    Presence::Unknown
                }
            })
            .collect()
    }

    fn names(t: &TaskTemplate, ps: &[usize]) -> Vec<String> {
        ps.iter().map(|&p| t.steps[p].name.clone()).collect()
    }

    #[test]
    fn a_task_starts_with_the_steps_above_its_decisions() {
        let t = approval();
        let e = expand(&t, &[], &HashMap::new());
        assert_eq!(
            names(&t, &e.create),
            ["validate_request", "routing_decision"]
        );
        assert_eq!(e.absent, 0);
    }

    #[test]
    fn a_decision_creates_its_chosen_branches_and_the_convergence_below_them() {
        let t = approval();
        let present = [true, true, false, false, false, false, false];
        let choices = HashMap::from([(1, vec![4, 5])]);
        let e = expand(&t, &rows(&present), &choices);
        assert_eq!(
            names(&t, &e.create),
            [
                "finalize_approval",
                "manager_approval",
                "finance_review",
                "notify"
            ]
        );
        assert_eq!(e.absent, 1, "auto_approve is never created");
    }

    #[test]
    fn a_decision_choosing_nothing_leaves_out_everything_below_it() {
        let t = approval();
        let present = [true, true, false, false, false, false, false];
        let e = expand(&t, &rows(&present), &HashMap::from([(1, vec![])]));
        assert!(e.create.is_empty());
        assert_eq!(e.absent, 5);
    }

    #[test]
    fn a_convergence_waits_for_every_decision_above_it() {
        let t = template(
            r#"
name: two_decisions
steps:
  - {name: d1, type: decision}
  - {name: d2, type: decision}
  - {name: a, dependencies: [d1]}
  - {name: b, dependencies: [d2]}
  - {name: join, type: deferred_convergence, dependencies: [a, b]}
  - {name: plain, dependencies: [a, b]}
"#,
        );
        let present = [true, true, false, false, false, false];
        let e = expand(&t, &rows(&present), &HashMap::from([(0, vec![2])]));
        assert_eq!(names(&t, &e.create), ["a"], "join still waits for d2");
        let present = [true, true, true, false, false, false];
        let e = expand(
            &t,
            &rows(&present),
            &HashMap::from([(0, vec![2]), (1, vec![])]),
        );
        assert_eq!(names(&t, &e.create), ["join"]);
        assert_eq!(e.absent, 2, "b, and plain (which needs b)");
    }

    #[test]
    fn nested_decisions_decide_in_turn() {
        let t = template(
            r#"
name: nested
steps:
  - {name: outer, type: decision}
  - {name: inner, type: decision, dependencies: [outer]}
  - {name: other, dependencies: [outer]}
  - {name: x, dependencies: [inner]}
  - {name: y, dependencies: [inner]}
"#,
        );
        let e = expand(
            &t,
            &rows(&[true, false, false, false, false]),
            &HashMap::from([(0, vec![1])]),
        );
        assert_eq!(names(&t, &e.create), ["inner"]);
        assert_eq!(e.absent, 1);
        let e = expand(
            &t,
            &rows(&[true, true, false, false, false]),
            &HashMap::from([(0, vec![1]), (1, vec![4])]),
        );
        assert_eq!(names(&t, &e.create), ["y"]);
        assert_eq!(e.absent, 2);
    }

    #[test]
    fn a_cancelled_step_counts_as_never_created_for_the_steps_below_it() {
        let t = approval();
        let mut r = rows(&[true, false, false, false, false, false, false]);
        r[1] = Presence::Absent;
        let e = expand(&t, &r, &HashMap::new());
        assert!(e.create.is_empty());
        assert_eq!(e.absent, 5, "every step below the cancelled decision");
    }

    #[test]
    fn a_choice_outside_the_children_names_the_allowed_ones() {
        let t = approval();
        let err = check_choice(&t, 1, &["notify".into()]).unwrap_err();
        assert!(err.contains("\"notify\""), "{err}");
        assert!(
            err.contains("auto_approve, manager_approval, finance_review"),
            "{err}"
        );
        assert_eq!(
            check_choice(
                &t,
                1,
                &[
                    "finance_review".into(),
                    "auto_approve".into(),
                    "auto_approve".into()
                ]
            ),
            Ok(vec![3, 5])
        );
    }
}
