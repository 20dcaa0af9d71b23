//! The rollout's rules, each shown on a three-slot service.

use super::*;
use crate::{
    hlc,
    state::{store::MergeOutcome, Kind, Record, RecordKey, Stamp, Store},
    testing::{self, node},
};

const N1: NodeId = NodeId([1; 16]);
const N2: NodeId = NodeId([2; 16]);
const N3: NodeId = NodeId([3; 16]);
/// The rollout starts at this wall time (ms).
const T0: u64 = 1_000_000;

fn stamp_at(ms: u64) -> Stamp {
    Stamp {
        hlc: hlc::compose(ms, 0),
        writer: N1,
    }
}

fn web_v1() -> Service {
    testing::service("web", Mode::Replicated { replicas: 3 }, stamp_at(1))
}

/// `web` updated at [`T0`] with `V=2` and `config`.
fn web_v2(config: UpdateConfig) -> Service {
    let mut next = web_v1();
    next.env.push(("V".into(), "2".into()));
    updated(&web_v1(), next, config, T0)
}

/// Slot `slot`'s task on `node` running `def`, in `state` since `since`, created at `at`.
fn task_of(
    def: &Service,
    slot: u32,
    node: NodeId,
    state: TaskState,
    since: u64,
    at: u64,
) -> (NodeId, Task) {
    let mut task = testing::task(
        &format!("t{slot}-{at}"),
        def,
        slot,
        [10, 0, 0, 2 + slot as u8],
    );
    task.state = state;
    task.since_ms = since;
    task.created = stamp_at(at);
    (node, task)
}

fn old_tasks() -> Vec<(NodeId, Task)> {
    [N1, N2, N3]
        .iter()
        .enumerate()
        .map(|(slot, n)| task_of(&web_v1(), slot as u32, *n, TaskState::Running, 10, 10))
        .collect()
}

/// The service in effect after the writer's next step on the user record `user`.
fn next_record(user: &Service, progress: &Progress, now_ms: u64) -> Option<Service> {
    next_step(user, progress, now_ms).map(|step| effective(user.clone(), Some(&step)))
}

fn config(parallelism: u32, delay_ms: u64, failure_action: FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms,
        failure_action,
        monitor_ms: 1_000,
        order: UpdateOrder::StopFirst,
    }
}

#[test]
fn the_fingerprint_follows_what_tasks_run_and_nothing_else() {
    let v1 = web_v1();
    let mut scaled = v1.clone();
    scaled.mode = Mode::Replicated { replicas: 7 };
    scaled.ports = vec!["8080:80".parse().unwrap()];
    assert_eq!(spec_fingerprint(&v1), spec_fingerprint(&scaled));
    let mut env = v1.clone();
    env.env.push(("V".into(), "2".into()));
    assert_ne!(spec_fingerprint(&v1), spec_fingerprint(&env));
    let mut command = v1.clone();
    command.command = vec!["false".into()];
    assert_ne!(spec_fingerprint(&v1), spec_fingerprint(&command));
}

#[test]
fn an_update_keeps_the_previous_definition_and_only_task_changes_start_a_rollout() {
    let v2 = web_v2(UpdateConfig::default());
    assert_eq!(v2.update.state, RolloutState::Updating);
    assert_eq!(v2.update.previous.as_deref().map(|p| p.env.len()), Some(0));
    assert_eq!(v2.created, web_v1().created);
    let mut scaled = web_v1();
    scaled.mode = Mode::Replicated { replicas: 5 };
    let scaled = updated(&web_v1(), scaled, UpdateConfig::default(), T0);
    assert_eq!(scaled.update.state, RolloutState::Completed);
}

#[test]
fn batches_of_parallelism_wait_for_the_monitor_and_the_delay() {
    let v2 = web_v2(config(1, 2_000, FailureAction::Pause));
    let mut tasks = old_tasks();
    let p = progress(&v2, &tasks, T0);
    assert_eq!(p.pending.len(), 3);
    assert_eq!(replaceable(&v2, &p, T0), BTreeSet::from([(0, None)]));

    // Slot 1's old task drains, its replacement starts: busy, nothing else moves.
    tasks[0].1.state = TaskState::Draining;
    tasks.push(task_of(&v2, 0, N1, TaskState::Starting, T0 + 10, T0 + 10));
    let p = progress(&v2, &tasks, T0 + 100);
    assert_eq!((p.busy, p.pending.len()), (1, 2));
    assert!(replaceable(&v2, &p, T0 + 100).is_empty());

    // Running, but not for the monitor period yet.
    tasks[3].1.state = TaskState::Running;
    tasks[3].1.since_ms = T0 + 500;
    assert!(replaceable(&v2, &progress(&v2, &tasks, T0 + 1_000), T0 + 1_000).is_empty());
    // Monitored (done at T0 + 1500), but the delay runs until T0 + 3500.
    let p = progress(&v2, &tasks, T0 + 2_000);
    assert_eq!((p.done, p.busy), (1, 0));
    assert!(replaceable(&v2, &p, T0 + 2_000).is_empty());
    let p = progress(&v2, &tasks, T0 + 3_500);
    assert_eq!(
        replaceable(&v2, &p, T0 + 3_500),
        BTreeSet::from([(1, None)])
    );
    assert_eq!(next_record(&v2, &p, T0 + 3_500), None, "not finished yet");
}

#[test]
fn parallelism_zero_replaces_every_slot_at_once_and_a_paused_rollout_none() {
    let v2 = web_v2(config(0, 0, FailureAction::Pause));
    let p = progress(&v2, &old_tasks(), T0);
    assert_eq!(replaceable(&v2, &p, T0).len(), 3);
    let mut paused = v2.clone();
    paused.update.state = RolloutState::Paused { reason: "x".into() };
    assert!(replaceable(&paused, &p, T0).is_empty());
}

#[test]
fn a_finished_update_completes() {
    let v2 = web_v2(config(1, 0, FailureAction::Pause));
    let tasks: Vec<_> = (0..3)
        .map(|slot| task_of(&v2, slot, N1, TaskState::Running, T0 + 10, T0 + 10))
        .collect();
    let p = progress(&v2, &tasks, T0 + 5_000);
    assert!(p.finished());
    let next = next_record(&v2, &p, T0 + 5_000).unwrap();
    assert_eq!(next.update.state, RolloutState::Completed);
    assert_eq!(next.env, v2.env);
}

fn failing(v2: &Service) -> Vec<(NodeId, Task)> {
    let mut tasks = old_tasks();
    tasks[0].1.state = TaskState::Draining;
    tasks[1].1.restarts = 2;
    let mut new = task_of(v2, 0, N1, TaskState::Exited, T0 + 50, T0 + 10);
    new.1.message = "exited with code 1".into();
    tasks.push(new);
    tasks
}

#[test]
fn a_failing_new_task_rolls_back_pauses_or_is_ignored_as_configured() {
    let v2 = web_v2(config(1, 0, FailureAction::Rollback));
    let p = progress(&v2, &failing(&v2), T0 + 100);
    assert!(p.failure.as_deref().unwrap().contains("exited with code 1"));
    let back = next_record(&v2, &p, T0 + 100).unwrap();
    assert!(matches!(
        back.update.state,
        RolloutState::RollingBack { .. }
    ));
    assert_eq!(spec_fingerprint(&back), spec_fingerprint(&web_v1()));
    assert_eq!(back.created, v2.created);
    // The old tasks are the current definition again: only the failed slot is replaced.
    let p = progress(&back, &failing(&v2), T0 + 5_000);
    assert_eq!(
        p.failure, None,
        "old tasks' history is no failure of the rollback"
    );
    assert_eq!(p.pending, vec![(0, None)]);

    let paused = web_v2(config(1, 0, FailureAction::Pause));
    let p = progress(&paused, &failing(&paused), T0 + 100);
    let next = next_record(&paused, &p, T0 + 100).unwrap();
    assert!(matches!(next.update.state, RolloutState::Paused { .. }));
    assert!(replaceable(&next, &p, T0 + 100).is_empty());

    let go_on = web_v2(config(1, 0, FailureAction::Continue));
    let p = progress(&go_on, &failing(&go_on), T0 + 100);
    assert_eq!(next_record(&go_on, &p, T0 + 100), None);
    assert_eq!(
        replaceable(&go_on, &p, T0 + 100),
        BTreeSet::from([(1, None)])
    );
}

#[test]
fn a_finished_rollback_is_rolled_back_and_without_previous_there_is_none() {
    let v2 = web_v2(config(1, 0, FailureAction::Rollback));
    let back = rolled_back(&v2, "manually requested rollback".into(), T0).unwrap();
    let p = progress(&back, &old_tasks(), T0 + 5_000);
    let next = next_record(&back, &p, T0 + 5_000).unwrap();
    assert!(matches!(next.update.state, RolloutState::RolledBack { .. }));
    assert_eq!(rolled_back(&web_v1(), "x".into(), T0), None);
}

#[test]
fn the_writer_is_the_lowest_live_node() {
    let mut view = ClusterView {
        self_id: N1,
        store_version: 0,
        nodes: vec![
            node(2, true, [10, 0, 0, 2]),
            node(1, false, [10, 0, 0, 1]),
            node(3, true, [10, 0, 0, 3]),
        ],
        networks: Default::default(),
        endpoints: Default::default(),
        vteps: vec![],
        services: Default::default(),
        tasks: vec![],
        overlay_mtu: None,
    };
    assert_eq!(writer(&view), Some(N2));
    view.nodes[1].up = true;
    assert_eq!(writer(&view), Some(N1));
}

fn record(kind: Kind, name: &str, ms: u64, writer: NodeId, value: Vec<u8>) -> Record {
    Record {
        key: RecordKey::cluster(kind, name),
        stamp: Stamp {
            hlc: hlc::compose(ms, 0),
            writer,
        },
        value: Some(value),
    }
}

/// The race the separate step record closes: the writer completes generation 1 from its
/// view while, a moment earlier by the clock, a user on another node writes generation 2.
/// With the transition written into the service record (the earlier design), the writer's
/// later write won last-writer-wins and the update was lost on every node.
#[test]
fn a_writer_step_racing_a_user_update_never_loses_the_update_in_any_merge_order() {
    let v2 = web_v2(config(1, 0, FailureAction::Pause));
    let tasks: Vec<_> = (0..3)
        .map(|slot| task_of(&v2, slot, N1, TaskState::Running, T0 + 10, T0 + 10))
        .collect();
    let done = next_step(&v2, &progress(&v2, &tasks, T0 + 5_000), T0 + 5_000).unwrap();
    assert_eq!(
        (done.generation, &done.state),
        (1, &RolloutState::Completed)
    );
    let mut v3_def = v2.clone();
    v3_def.env = vec![("V".into(), "3".into())];
    let v3 = updated(&v2, v3_def, config(1, 0, FailureAction::Pause), T0 + 5_000);
    assert_eq!(v3.update.generation, 2);

    let base = record(Kind::Service, "web", T0, N1, v2.encode());
    let user = record(Kind::Service, "web", T0 + 5_000, N3, v3.encode());
    let writer = record(Kind::RolloutStep, "web", T0 + 5_001, N1, done.encode());
    let orders = [
        [base.clone(), user.clone(), writer.clone()],
        [base.clone(), writer.clone(), user.clone()],
        [writer.clone(), user.clone(), base.clone()],
        [user, writer, base],
    ];
    for (i, order) in orders.into_iter().enumerate() {
        let mut store = Store::new();
        for r in order {
            assert!(
                !matches!(store.merge(r), MergeOutcome::Rejected(_)),
                "order {i}"
            );
        }
        let services = crate::state::valid_services(&store);
        let web = services.get("web").unwrap();
        assert_eq!(web.env, vec![("V".into(), "3".into())], "order {i}");
        assert_eq!(web.update.state, RolloutState::Updating, "order {i}");
        assert_eq!(web.update.generation, 2, "order {i}");
    }

    // The earlier design (the transition written into the service record) loses it.
    let mut store = Store::new();
    store.merge(record(Kind::Service, "web", T0 + 5_000, N3, v3.encode()));
    let completed_v2 = effective(v2.clone(), Some(&done)).encode();
    store.merge(record(Kind::Service, "web", T0 + 5_001, N1, completed_v2));
    let lost = crate::state::valid_services(&store);
    assert_eq!(lost.get("web").unwrap().env, vec![("V".into(), "2".into())]);

    // Without the race the step applies: generation 1 completes.
    let mut store = Store::new();
    store.merge(record(Kind::Service, "web", T0, N1, v2.encode()));
    store.merge(record(
        Kind::RolloutStep,
        "web",
        T0 + 5_001,
        N1,
        done.encode(),
    ));
    let services = crate::state::valid_services(&store);
    assert_eq!(
        services.get("web").unwrap().update.state,
        RolloutState::Completed
    );
}

#[test]
fn an_automatic_rollback_step_puts_the_previous_definition_in_effect_until_the_next_update() {
    let v2 = web_v2(config(1, 0, FailureAction::Rollback));
    let step = next_step(&v2, &progress(&v2, &failing(&v2), T0 + 100), T0 + 100).unwrap();
    assert!(step.rolled_back);
    let back = effective(v2.clone(), Some(&step));
    assert_eq!(spec_fingerprint(&back), spec_fingerprint(&web_v1()));
    assert_eq!(back.update.generation, v2.update.generation);
    // The rollback finishing keeps the previous definition in effect.
    let finished = next_step(
        &back,
        &progress(&back, &old_tasks(), T0 + 9_000),
        T0 + 9_000,
    )
    .unwrap();
    assert!(finished.rolled_back);
    let done = effective(v2.clone(), Some(&finished));
    assert!(matches!(done.update.state, RolloutState::RolledBack { .. }));
    assert_eq!(spec_fingerprint(&done), spec_fingerprint(&web_v1()));
    // A step of another incarnation of `web` (removed and created again) applies to nothing.
    let mut other = finished.clone();
    other.created = stamp_at(2);
    assert_eq!(effective(v2.clone(), Some(&other)), v2);
}

#[test]
fn a_rollback_replaces_tasks_with_the_rollback_config() {
    let mut v2 = web_v2(config(1, 0, FailureAction::Pause));
    v2.update.rollback = config(0, 0, FailureAction::Continue);
    let back = rolled_back(&v2, "manually requested rollback".into(), T0 + 10).unwrap();
    assert_eq!(back.update.generation, v2.update.generation + 1);
    let new_tasks: Vec<_> = (0..3)
        .map(|slot| task_of(&v2, slot, N1, TaskState::Running, T0 + 5, T0 + 5))
        .collect();
    let p = progress(&back, &new_tasks, T0 + 20);
    assert_eq!(
        replaceable(&back, &p, T0 + 20).len(),
        3,
        "rollback parallelism 0"
    );
    assert_eq!(
        replaceable(&v2, &progress(&v2, &old_tasks(), T0), T0).len(),
        1
    );
    // Its failure action `continue`: a failing rollback task pauses nothing.
    let mut failed = task_of(&web_v1(), 0, N1, TaskState::Exited, T0 + 30, T0 + 20);
    failed.1.message = "exited with code 1".into();
    let p = progress(&back, &[failed], T0 + 40);
    assert!(p.failure.is_some());
    assert!(!matches!(
        next_step(&back, &p, T0 + 40).map(|s| s.state),
        Some(RolloutState::Paused { .. })
    ));
}
