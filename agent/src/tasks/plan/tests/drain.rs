//! Drain before stop: a task to stop leaves the load balancers first, and is stopped once
//! its drain window passes or its process ends.

use super::{fixtures::*, *};

const WINDOW: Duration = Duration::from_secs(10);

fn draining<'a>(task: &'a Task, since: Instant) -> LocalTask<'a> {
    LocalTask {
        draining_since: Some(since),
        ..running(task)
    }
}

#[test]
fn a_task_to_stop_drains_first_unless_it_has_nothing_to_drain() {
    let clock = Clock::new();
    let service = web(Some(1));
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let serving = task("serving", &service, 2, 10);
    let exited = task("exited", &service, 1, 10);
    let mut gone = web(None);
    gone.name = "gone".into();
    let mut attached = task("attached", &gone, 0, 10);
    attached.attached = true;
    let tasks = vec![
        running(&serving),
        LocalTask {
            // Its process ended: waiting for a restart.
            restart_at: Some(clock.at(101)),
            ..running(&exited)
        },
        // No process of ours, but flows of its own: drained like a task.
        running(&attached),
    ];
    let mut local = settled(&clock, tasks, &stopping, &backoff);
    local.drain_window = WINDOW;
    let actions = plan(&view, &local, clock.now());
    for expected in [
        Action::Drain {
            task: "serving".into(),
            reason: StopReason::ScaledDown,
        },
        Action::Stop {
            task: "exited".into(),
            reason: StopReason::ScaledDown,
        },
        Action::Drain {
            task: "attached".into(),
            reason: StopReason::ServiceRemoved,
        },
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    // A zero window: stopped at once, as before draining existed.
    local.drain_window = Duration::ZERO;
    let actions = plan(&view, &local, clock.now());
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Drain { .. })),
        "{actions:?}"
    );
}

#[test]
fn a_draining_task_stops_when_its_window_passes_or_its_process_ends() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    // Its slot is this node's again, its service in force: draining goes on regardless.
    let view = view(vec![service.clone()], vec![], vec![]);
    let mine = task("mine", &service, 0, 10);
    let at = |tasks: Vec<LocalTask<'_>>| {
        let mut local = settled(&clock, tasks, &stopping, &backoff);
        local.drain_window = WINDOW;
        plan(&view, &local, clock.now())
            .into_iter()
            .filter(|a| !matches!(a, Action::Start { .. }))
            .collect::<Vec<_>>()
    };
    // 5 s into a 10 s window: nothing (no Stay, no second Drain).
    assert_eq!(at(vec![draining(&mine, clock.at(95))]), []);
    assert_eq!(
        at(vec![draining(&mine, clock.at(90))]),
        [Action::Stop {
            task: "mine".into(),
            reason: StopReason::Drained
        }]
    );
    // Its process ended while it drained: stopped at once, never restarted.
    let ended = LocalTask {
        restart_at: Some(clock.at(1)),
        ..draining(&mine, clock.at(99))
    };
    assert_eq!(
        at(vec![ended]),
        [Action::Stop {
            task: "mine".into(),
            reason: StopReason::EndedWhileDraining
        }]
    );
    // Even during the warm-up (after an agent restart adopted it as draining).
    let mut local = settled(
        &clock,
        vec![draining(&mine, clock.at(80))],
        &stopping,
        &backoff,
    );
    local.drain_window = WINDOW;
    local.started = clock.at(99);
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Stop {
            task: "mine".into(),
            reason: StopReason::Drained
        }]
    );
}

#[test]
fn a_draining_task_is_not_its_slots_task() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let mut view = view(vec![service.clone()], vec![], vec![]);
    let old = task("old", &service, 0, 10);
    let new = task("new", &service, 0, 20);
    let mut local = settled(
        &clock,
        vec![draining(&old, clock.at(99))],
        &stopping,
        &backoff,
    );
    local.drain_window = WINDOW;
    // Its slot gets a new task meanwhile.
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Start {
            service: service.clone(),
            slot: 0
        }]
    );
    // Which, though newer, is not the duplicate to stop.
    local.tasks.push(running(&new));
    assert_eq!(plan(&view, &local, clock.now()), []);
    // Its address taken, or its slot moved: a draining task is neither replaced nor
    // moved away (it goes anyway).
    local.tasks.pop();
    view.endpoints
        .collided
        .push((id(1), endpoint("old", 1000), "winner".into()));
    view.nodes[0] = node(1, true, true);
    assert_eq!(plan(&view, &local, clock.now()), []);
}
