//! Rollouts in the plan: an outdated task the rollout picks is drained and replaced
//! (stop-first), or replaced beside it and drained once its replacement serves
//! (start-first); a paused rollout replaces nothing.

use manager::rollout::{updated, RolloutState, UpdateConfig, UpdateOrder};

use super::{fixtures::*, *};

const WINDOW: Duration = Duration::from_secs(10);

/// `web` (1 replica) updated with `V=2` in `order`, and its old definition's task here.
fn updated_web(order: UpdateOrder) -> (Service, Task) {
    let old = web(Some(1));
    let mut next = old.clone();
    next.env.push(("V".into(), "2".into()));
    let config = UpdateConfig {
        order,
        ..UpdateConfig::default()
    };
    let new = updated(&old, next, config, WALL_MS - 1);
    (new, task("old", &old, 0, 10))
}

fn replaced(actions: &[Action]) -> (bool, bool) {
    let drained = actions
        .iter()
        .any(|a| matches!(a, Action::Drain { task, reason: StopReason::Updated } if task == "old"));
    let started = actions
        .iter()
        .any(|a| matches!(a, Action::Start { slot: 0, .. }));
    (drained, started)
}

#[test]
fn stop_first_drains_the_outdated_task_and_starts_its_replacement_meanwhile() {
    let clock = Clock::new();
    let (service, old) = updated_web(UpdateOrder::StopFirst);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![(id(1), old.clone())], vec![]);
    let mut local = settled(&clock, vec![running(&old)], &stopping, &backoff);
    local.drain_window = WINDOW;
    assert_eq!(replaced(&plan(&view, &local, clock.now())), (true, true));

    // Paused: the outdated task stays.
    let mut paused = service.clone();
    paused.update.state = RolloutState::Paused { reason: "x".into() };
    let view = super::fixtures::view(vec![paused], vec![(id(1), old.clone())], vec![]);
    assert_eq!(replaced(&plan(&view, &local, clock.now())), (false, false));
}

#[test]
fn start_first_starts_the_replacement_beside_and_drains_once_it_serves() {
    let clock = Clock::new();
    let (service, old) = updated_web(UpdateOrder::StartFirst);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view1 = view(vec![service.clone()], vec![(id(1), old.clone())], vec![]);
    let mut local = settled(&clock, vec![running(&old)], &stopping, &backoff);
    local.drain_window = WINDOW;
    assert_eq!(replaced(&plan(&view1, &local, clock.now())), (false, true));

    // The replacement starts: the old one keeps serving, nothing else starts.
    let mut new = task("new", &service, 0, 20);
    new.state = TaskState::Starting;
    let tasks = vec![(id(1), old.clone()), (id(1), new.clone())];
    let view2 = view(vec![service.clone()], tasks, vec![]);
    local.tasks = vec![running(&old), running(&new)];
    let actions = plan(&view2, &local, clock.now());
    assert_eq!(replaced(&actions), (false, false), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Drain { .. } | Action::Stop { .. })),
        "the new task is no duplicate to stop: {actions:?}"
    );

    // It serves: the old one drains.
    let serving = Task {
        state: TaskState::Running,
        ..new.clone()
    };
    let tasks = vec![(id(1), old.clone()), (id(1), serving.clone())];
    let view3 = view(vec![service.clone()], tasks, vec![]);
    let mut local = settled(
        &clock,
        vec![running(&old), running(&serving)],
        &stopping,
        &backoff,
    );
    local.drain_window = WINDOW;
    assert_eq!(replaced(&plan(&view3, &local, clock.now())), (true, false));
}
