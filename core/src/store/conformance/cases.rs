//! The cases of the suite (see the table in `mod.rs`).

use super::super::plan::claim_transitions;
use super::super::*;
use super::build::*;
use crate::state::StepState;

pub(super) async fn inserts_in_plan_order(s: &dyn Store) {
    let named = template(s).await;
    let mut plan = Plan::new(NOW, true);
    plan.new_tasks.push(new_task(named, 2));
    plan.new_tasks.push(new_task(named, 1));
    plan.new_steps.push(new_step(-1, 0, "a", Some(NOW)));
    plan.new_steps.push(new_step(-1, 1, "b", None));
    plan.new_steps.push(new_step(-2, 0, "a", Some(NOW)));
    let out = apply(s, &plan, None).await.unwrap();
    assert_eq!(out.task_ids.len(), 2);
    assert!(out.task_ids[0] < out.task_ids[1]);
    assert_eq!(out.step_ids.len(), 3);
    assert!(
        out.step_ids.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        out.step_ids
    );
    let t = s.task(out.task_ids[0]).await.unwrap().expect("task");
    assert_eq!(
        (
            t.row.state,
            t.row.steps_total,
            t.row.version,
            json(&t.context)
        ),
        (TaskState::Pending, 2, 1, serde_json::json!({"k": 1}))
    );
    assert_eq!(
        (
            t.namespace.as_str(),
            t.name.as_str(),
            t.template_version.as_str()
        ),
        ("conf", "t", "1.0.0")
    );
    let steps = s.steps(out.task_ids[0]).await.unwrap();
    assert_eq!(
        steps.iter().map(|r| r.step_id).collect::<Vec<_>>(),
        out.step_ids[..2]
    );
    assert_eq!(
        (
            steps[0].ready_at,
            steps[1].ready_at,
            steps[1].remaining_parents,
            steps[0].attempts
        ),
        (Some(NOW), None, 1, 0)
    );
}

pub(super) async fn claim_order(s: &dyn Store) {
    let named = template(s).await;
    let (t1, a) = seed(
        s,
        named,
        &[
            ("a", Some(NOW - 10)),
            ("b", Some(NOW - 20)),
            ("a", Some(NOW + 5)),
        ],
    )
    .await;
    let (_, b) = seed(s, named, &[("a", Some(NOW - 10))]).await;
    // A higher-priority step later in time still goes first.
    let mut plan = Plan::new(NOW, true);
    let mut urgent = new_step(t1, 3, "a", Some(NOW - 1));
    urgent.priority = 5;
    plan.new_steps.push(urgent);
    let urgent = apply(s, &plan, None).await.unwrap().step_ids[0];
    let hs = vec!["a".to_owned()];
    let got: Vec<i64> = claim(s, 2, Some(&hs))
        .await
        .iter()
        .map(|c| c.step_id)
        .collect();
    assert_eq!(
        got.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [urgent, a[0]].into()
    );
    let got: Vec<i64> = claim(s, 5, Some(&hs))
        .await
        .iter()
        .map(|c| c.step_id)
        .collect();
    assert_eq!(
        got,
        vec![b[0]],
        "the step not yet due and the other handler's stay"
    );
    assert!(
        claim(s, 5, Some(&[])).await.is_empty(),
        "no handlers, nothing"
    );
    assert_eq!(
        claim(s, 5, None)
            .await
            .iter()
            .map(|c| c.step_id)
            .collect::<Vec<_>>(),
        vec![a[1]]
    );
}

pub(super) async fn claim_effects(s: &dyn Store) {
    let named = template(s).await;
    let (t, ids) = seed(s, named, &[("a", Some(NOW)), ("a", Some(NOW))]).await;
    let claimed = claim(s, 5, None).await;
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        assert_eq!(
            (
                c.task_id,
                c.attempts,
                c.version,
                c.lease_expires_at,
                c.task_state,
                c.started_version
            ),
            (t, 1, 2, NOW + 30_000, TaskState::InProgress, Some(2))
        );
        assert_eq!(
            (json(&c.context), c.task_version, c.steps_total),
            (serde_json::json!({"k": 1}), 2, 2)
        );
        let row = step(s, t, c.step_id).await;
        assert_eq!(
            (
                row.state,
                row.attempts,
                row.ready_at,
                row.claimed_by.as_deref(),
                row.last_attempted_at
            ),
            (StepState::InProgress, 1, None, Some("w1"), Some(NOW))
        );
    }
    let task = s.task(t).await.unwrap().unwrap();
    assert_eq!(
        (task.row.state, task.row.version),
        (TaskState::InProgress, 2)
    );
    let mut expected = claim_transitions(&claimed, "w1", NOW);
    let mut stored: Vec<TransitionRow> = s.transitions(t).await.unwrap();
    normalize(&mut expected);
    normalize(&mut stored);
    assert_eq!(
        stored, expected,
        "the claim's rows are claim_transitions' ({ids:?})"
    );
}

pub(super) async fn reclaim_failed(s: &dyn Store) {
    let named = template(s).await;
    let (t, ids) = seed(s, named, &[("a", Some(NOW))]).await;
    let first = claim(s, 1, None).await.remove(0);
    // The attempt fails; the step is due again now.
    let mut plan = Plan::new(NOW, true);
    plan.step_updates.push(StepUpdate {
        expect_attempts: Some(1),
        ready_at: Some(NOW),
        error: Some(Some(r#"{"message":"x"}"#.into())),
        ..StepUpdate::new(
            ids[0],
            first.version,
            StepState::InProgress,
            StepState::Error,
        )
    });
    apply(s, &plan, None).await.unwrap();
    let again = claim(s, 1, None).await.remove(0);
    assert_eq!(
        (again.attempts, again.version, again.started_version),
        (2, 5, None)
    );
    let rows = claim_transitions(std::slice::from_ref(&again), "w1", NOW);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].from_state, rows[0].to_state, rows[0].sort_key),
        (Some("error"), "pending", 4)
    );
    let stored = s.transitions(t).await.unwrap();
    assert!(stored
        .iter()
        .any(|r| r.step_id == Some(ids[0]) && r.to_state == "pending" && r.sort_key == 4));
    assert_eq!(
        step(s, t, ids[0])
            .await
            .error
            .as_deref()
            .map(|e| e.contains("x")),
        Some(true)
    );
}

pub(super) async fn born_steps(s: &dyn Store) {
    let named = template(s).await;
    // An older ready step the born claim must leave alone.
    let (_, older) = seed(s, named, &[("a", Some(NOW - 100))]).await;
    let mut plan = Plan::new(NOW, true);
    plan.new_tasks.push(new_task(named, 2));
    let mut born = new_step(-1, 0, "a", Some(NOW));
    born.born = true;
    plan.new_steps.push(born);
    plan.new_steps.push(new_step(-1, 1, "a", None));
    let out = apply(s, &plan, Some(&spec(1, None))).await.unwrap();
    let (t, id) = (out.task_ids[0], out.step_ids[0]);
    assert_eq!(out.claimed.len(), 1);
    let c = &out.claimed[0];
    assert_eq!(
        (
            c.step_id,
            c.attempts,
            c.version,
            c.task_state,
            c.started_version
        ),
        (id, 1, 2, TaskState::InProgress, Some(2))
    );
    let row = step(s, t, id).await;
    assert_eq!(
        (
            row.state,
            row.attempts,
            row.version,
            row.ready_at,
            row.claimed_by.as_deref(),
            row.lease_expires_at
        ),
        (
            StepState::InProgress,
            1,
            2,
            None,
            Some("w1"),
            Some(NOW + 30_000)
        )
    );
    let other = s.steps(t).await.unwrap()[1].clone();
    assert_eq!(other.state, StepState::Pending);
    let mut expected = claim_transitions(&out.claimed, "w1", NOW);
    let mut stored = s.transitions(t).await.unwrap();
    normalize(&mut expected);
    normalize(&mut stored);
    assert_eq!(stored, expected);
    let rest = claim(s, 5, None).await;
    assert_eq!(
        rest.iter().map(|c| c.step_id).collect::<Vec<_>>(),
        older,
        "the older step was left"
    );
}

pub(super) async fn quiet_claim(s: &dyn Store) {
    let named = template(s).await;
    let (_, ids) = seed(s, named, &[("a", Some(NOW))]).await;
    let quiet = ClaimSpec {
        only_if_readied: true,
        ..spec(5, None)
    };
    let out = apply(s, &Plan::new(NOW, false), Some(&quiet))
        .await
        .unwrap();
    assert!(
        !out.claim_ran && out.claimed.is_empty(),
        "nothing readied: no claim"
    );
    let (t2, child) = seed(s, named, &[("a", None)]).await;
    let mut plan = Plan::new(NOW, true);
    plan.decrements.push(Decrement {
        task_id: t2,
        position: 0,
        by: 1,
    });
    let out = apply(s, &plan, Some(&quiet)).await.unwrap();
    assert!(out.claim_ran);
    assert_eq!(out.ready, 1);
    assert_eq!(out.claimed.len(), 2, "{:?} {:?}", ids, child);
}

pub(super) async fn stale_update(s: &dyn Store) {
    let named = template(s).await;
    let (t, ids) = seed(s, named, &[("a", Some(NOW)), ("a", Some(NOW))]).await;
    let claimed = claim(s, 2, None).await;
    let mut plan = Plan::new(NOW, true);
    for c in &claimed {
        let version = if c.step_id == ids[1] {
            c.version - 1
        } else {
            c.version
        };
        plan.step_updates.push(StepUpdate {
            results: Some(Some("1".into())),
            ..StepUpdate::new(
                c.step_id,
                version,
                StepState::InProgress,
                StepState::Complete,
            )
        });
    }
    plan.task_updates.push(TaskUpdate {
        task_id: t,
        d_done: 2,
        ..Default::default()
    });
    let mut tx = s.begin(true).await.unwrap();
    assert!(matches!(tx.apply(&plan, None).await, Err(Error::PlanStale)));
    drop(tx);
    if s.executes_plans() {
        assert!(matches!(
            s.execute_plan(&plan, None).await,
            Err(Error::PlanStale)
        ));
    }
    assert!(s
        .steps(t)
        .await
        .unwrap()
        .iter()
        .all(|r| r.state == StepState::InProgress));
    assert_eq!(s.task(t).await.unwrap().unwrap().row.steps_done, 0);
}

pub(super) async fn stale_guard(s: &dyn Store) {
    let named = template(s).await;
    let (t, _) = seed(s, named, &[("a", None)]).await;
    let row = s.task(t).await.unwrap().unwrap().row;
    let mut plan = Plan::new(NOW, true);
    plan.guards.push(TaskRow {
        version: row.version + 1,
        ..row.clone()
    });
    plan.task_updates.push(TaskUpdate {
        task_id: t,
        d_done: 1,
        ..Default::default()
    });
    let mut tx = s.begin(true).await.unwrap();
    assert!(matches!(tx.apply(&plan, None).await, Err(Error::PlanStale)));
    drop(tx);
    assert_eq!(s.task(t).await.unwrap().unwrap().row, row);
    plan.guards[0] = row.clone();
    apply(s, &plan, None).await.unwrap();
    assert_eq!(s.task(t).await.unwrap().unwrap().row.steps_done, 1);
}

pub(super) async fn decrements(s: &dyn Store) {
    let named = template(s).await;
    let (t, ids) = seed(s, named, &[("a", Some(NOW)), ("b", None)]).await;
    let mut plan = Plan::new(NOW, true);
    let mut two = new_step(t, 2, "c", None);
    two.remaining_parents = 2;
    plan.new_steps.push(two);
    apply(s, &plan, None).await.unwrap();
    let mut plan = Plan::new(NOW + 1, true);
    plan.decrements = vec![
        Decrement {
            task_id: t,
            position: 1,
            by: 1,
        },
        Decrement {
            task_id: t,
            position: 2,
            by: 1,
        },
    ];
    assert_eq!(apply(s, &plan, None).await.unwrap().ready, 1);
    let steps = s.steps(t).await.unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|r| (r.remaining_parents, r.ready_at))
            .collect::<Vec<_>>(),
        vec![(0, Some(NOW)), (0, Some(NOW + 1)), (1, None)],
        "{ids:?}"
    );
}

pub(super) async fn parking(s: &dyn Store) {
    let named = template(s).await;
    let (t, _) = seed(s, named, &[("a", Some(NOW)), ("a", Some(NOW))]).await;
    let mut plan = Plan::new(NOW, true);
    plan.park.push(t);
    apply(s, &plan, None).await.unwrap();
    assert!(s
        .steps(t)
        .await
        .unwrap()
        .iter()
        .all(|r| r.ready_at.is_none() && r.parked_ready_at == Some(NOW)));
    assert!(claim(s, 5, None).await.is_empty());
    let mut plan = Plan::new(NOW, true);
    plan.unpark.push(t);
    let out = apply(
        s,
        &plan,
        Some(&ClaimSpec {
            only_if_readied: true,
            ..spec(5, None)
        }),
    )
    .await
    .unwrap();
    assert_eq!(out.claimed.len(), 2, "unparked steps are claimable at once");
}

pub(super) async fn task_updates(s: &dyn Store) {
    let named = template(s).await;
    let (t, ids) = seed(s, named, &[("a", Some(NOW))]).await;
    let mut plan = Plan::new(NOW + 7, true);
    plan.task_updates.push(TaskUpdate {
        task_id: t,
        d_done: 1,
        d_blocked: 0,
        state: Some(TaskState::InProgress),
        transitions: 1,
        completed_at: None,
        d_total: 0,
    });
    let mk = |step: Option<i64>, from: &'static str, to: &'static str, key: i64| TransitionRow {
        task_id: t,
        step_id: step,
        from_state: Some(from),
        to_state: to,
        metadata: r#"{"n":1}"#.into(),
        sort_key: key,
        created_at: NOW + 7,
    };
    plan.transitions = vec![
        mk(Some(ids[0]), "pending", "in_progress", 2),
        mk(None, "pending", "in_progress", 2),
    ];
    apply(s, &plan, None).await.unwrap();
    let task = s.task(t).await.unwrap().unwrap();
    assert_eq!(
        (task.row.state, task.row.steps_done, task.row.version),
        (TaskState::InProgress, 1, 2)
    );
    let rows = s.transitions(t).await.unwrap();
    // By time, the task's rows before its steps'.
    assert_eq!(
        rows.iter().map(|r| r.step_id).collect::<Vec<_>>(),
        vec![None, Some(ids[0])]
    );
    assert_eq!(json(&rows[0].metadata), serde_json::json!({"n": 1}));
}

pub(super) async fn leases(s: &dyn Store) {
    let named = template(s).await;
    let (_, ids) = seed(s, named, &[("a", Some(NOW)), ("a", Some(NOW))]).await;
    let claimed = claim(s, 2, None).await;
    assert_eq!(claimed.len(), 2);
    let n = s
        .extend_leases(&LeaseExtension {
            steps: vec![(ids[0], 1), (ids[1], 7)],
            until: NOW + 60_000,
            now: NOW,
        })
        .await
        .unwrap();
    assert_eq!(n, 1, "only the attempt held is extended");
    let mut tx = s.begin(false).await.unwrap();
    let expired = tx.expired_leases(NOW + 40_000, 10).await.unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|e| (e.step_id, e.attempts))
            .collect::<Vec<_>>(),
        vec![(ids[1], 1)]
    );
    let locks = tx.lock_steps(&ids).await.unwrap();
    assert!(locks
        .iter()
        .all(|l| l.state == StepState::InProgress && l.attempts == 1 && l.retry_limit == 3));
    assert_eq!(tx.count_running(claimed[0].task_id).await.unwrap(), 2);
    tx.commit().await.unwrap();
    assert_eq!(
        s.next_times(None).await.unwrap().lease_expiry,
        Some(NOW + 30_000)
    );
}

pub(super) async fn idempotency(s: &dyn Store) {
    let named = template(s).await;
    let keyed = |k: &str| NewTask {
        idempotency_key: Some(k.into()),
        ..new_task(named, 0)
    };
    let mut plan = Plan::new(NOW, true);
    plan.new_tasks.push(keyed("k1"));
    let id = apply(s, &plan, None).await.unwrap().task_ids[0];
    let mut tx = s.begin(true).await.unwrap();
    assert_eq!(tx.task_by_idempotency_key("k1").await.unwrap(), Some(id));
    drop(tx);
    let err = apply(s, &plan, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("\"k1\"") && m.contains("concurrently")),
        "{err}"
    );
}

pub(super) async fn reads(s: &dyn Store) {
    let named = template(s).await;
    let (t1, ids) = seed(s, named, &[("a", Some(NOW + 50)), ("b", None)]).await;
    let (t2, _) = seed(s, named, &[("a", Some(NOW))]).await;
    let newest = s
        .list_tasks(&TaskFilter::default(), IdRange::default())
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|d| d.row.task_id).collect::<Vec<_>>(),
        vec![t2, t1]
    );
    let f = TaskFilter {
        oldest_first: true,
        limit: Some(1),
        ..TaskFilter::default()
    };
    assert_eq!(
        s.list_tasks(&f, IdRange::default()).await.unwrap()[0]
            .row
            .task_id,
        t1
    );
    let range = IdRange {
        from: Some(t2),
        until: None,
    };
    assert_eq!(
        s.count_tasks(&TaskFilter::default(), range).await.unwrap(),
        1
    );
    assert_eq!(
        s.task_at_or_after(t1 + 1).await.unwrap().map(|r| r.0),
        Some(t2)
    );
    assert_eq!(s.max_task_id().await.unwrap(), Some(t2));
    let a = vec!["a".to_owned()];
    assert_eq!(s.next_times(Some(&a)).await.unwrap().ready_at, Some(NOW));
    let c = s.state_counts(NOW).await.unwrap();
    assert_eq!(
        (c.tasks["pending"], c.steps["pending"], c.in_backoff),
        (2, 3, 0)
    );
    let results = s
        .parent_results(&[StepKey {
            task_id: t1,
            position: 0,
        }])
        .await
        .unwrap();
    assert_eq!(
        (results[0].name.as_str(), results[0].results.as_deref()),
        ("s0", None)
    );
    assert_eq!(s.task_state(t1).await.unwrap(), Some(TaskState::Pending));
    let (d, steps) = s.task_if_finished(t1).await.unwrap().unwrap();
    assert_eq!((d.row.task_id, steps), (t1, None), "{ids:?}");
}

pub(super) async fn event_definitions(s: &dyn Store) {
    assert!(s.event_definitions().await.unwrap().is_empty());
    let row = |name: &str, definition: &str, at: i64| EventDefinitionRow {
        name: name.into(),
        definition: definition.into(),
        registered_at: at,
    };
    let mut tx = s.begin(true).await.unwrap();
    tx.upsert_event_definition(&row("order.shipped", "{\"v\":1}", NOW))
        .await
        .unwrap();
    tx.upsert_event_definition(&row("audit.logged", "{}", NOW))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin(true).await.unwrap();
    tx.upsert_event_definition(&row("order.shipped", "{\"v\":2}", NOW + 5))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.event_definitions().await.unwrap(),
        [
            row("audit.logged", "{}", NOW),
            row("order.shipped", "{\"v\":2}", NOW + 5)
        ]
    );
}

pub(super) async fn decisions_and_steps_of_a_task_that_exists(s: &dyn Store) {
    let named = template(s).await;
    let (task, ids) = seed(s, named, &[("d", Some(NOW))]).await;
    assert!(s.decisions(task).await.unwrap().is_empty());
    // A decision recorded with the steps it creates, in an existing task.
    let mut plan = Plan::new(NOW, true);
    plan.decisions.push(NewDecision {
        task_id: task,
        step_id: ids[0],
        chosen: r#"["s2"]"#.into(),
    });
    let mut child = new_step(task, 2, "c", Some(NOW));
    child.parents = vec![0];
    plan.new_steps.push(child);
    let out = apply(s, &plan, None).await.unwrap();
    assert_eq!(out.step_ids.len(), 1);
    let mut tx = s.begin(true).await.unwrap();
    let in_tx = tx.decisions(task).await.unwrap();
    assert_eq!(tx.task_priority(task).await.unwrap(), 0);
    tx.commit().await.unwrap();
    let read = s.decisions(task).await.unwrap();
    assert_eq!(read, in_tx);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].step_id, ids[0]);
    assert_eq!(json(&read[0].chosen), serde_json::json!(["s2"]));
    let steps = s.steps(task).await.unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|r| (r.position, r.step_id))
            .collect::<Vec<_>>(),
        [(0, ids[0]), (2, out.step_ids[0])]
    );
}

pub(super) async fn fan_out_instances_and_checkpoints(s: &dyn Store) {
    let named = template(s).await;
    let (task, _) = seed(s, named, &[("plan", None)]).await;
    // Three instances of one template step share its position; steps_total grows by two.
    let mut plan = Plan::new(NOW, true);
    for k in 0..3 {
        let mut st = new_step(task, 1, "work", Some(NOW));
        st.name = format!("work_{:03}", k + 1);
        st.batch_index = Some(k);
        st.batch = Some(format!(r#"{{"start":{}}}"#, k * 10));
        plan.new_steps.push(st);
    }
    plan.task_updates.push(TaskUpdate {
        task_id: task,
        d_total: 2,
        ..Default::default()
    });
    let out = apply(s, &plan, None).await.unwrap();
    assert_eq!(out.step_ids.len(), 3);
    assert_eq!(s.task(task).await.unwrap().unwrap().row.steps_total, 3);
    // A second row at the same (position, batch_index) is refused.
    let mut dup = Plan::new(NOW, true);
    let mut st = new_step(task, 1, "work", Some(NOW));
    st.batch_index = Some(1);
    dup.new_steps.push(st);
    assert!(apply(s, &dup, None).await.is_err(), "one row per instance");
    // The claim hands each instance its item and place.
    let handlers = vec!["work".to_owned()];
    let claimed = apply(s, &Plan::new(NOW, false), Some(&spec(3, Some(&handlers))))
        .await
        .unwrap()
        .claimed;
    let mut got: Vec<(Option<i64>, serde_json::Value)> = claimed
        .iter()
        .map(|c| (c.batch_index, json(c.batch.as_deref().unwrap())))
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        (0..3)
            .map(|k| (Some(k), serde_json::json!({"start": k * 10})))
            .collect::<Vec<_>>()
    );
    assert!(claimed.iter().all(|c| c.checkpoint.is_none()));
    // A checkpoint is saved only at the attempt that holds the step.
    let c = &claimed[0];
    let mut tx = s.begin(true).await.unwrap();
    let save = |attempt, text| CheckpointSave {
        step_id: c.step_id,
        attempt,
        checkpoint: text,
        now: NOW,
    };
    assert!(tx
        .save_checkpoint(&save(c.attempts, r#"{"done":5}"#))
        .await
        .unwrap());
    assert!(!tx
        .save_checkpoint(&save(c.attempts + 1, "{}"))
        .await
        .unwrap());
    tx.commit().await.unwrap();
    // Parents' results name each instance's place.
    let parents = s
        .parent_results(&[StepKey {
            task_id: task,
            position: 1,
        }])
        .await
        .unwrap();
    let mut places: Vec<Option<i64>> = parents.iter().map(|p| p.batch_index).collect();
    places.sort_unstable();
    assert_eq!(places, [Some(0), Some(1), Some(2)]);
}
