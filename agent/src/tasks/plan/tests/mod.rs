//! One test per rule of the plan (see the module docs): views built by hand, no root.

mod drain;
mod fixtures;
mod rollout;

use fixtures::*;
use manager::state::Stamp;

use super::*;

#[test]
fn own_records_are_adopted_or_cleaned_up_when_their_service_or_endpoint_is_gone() {
    let clock = Clock::new();
    let service = web(None);
    let mut old = service.clone();
    old.created = stamp(1);
    let tracked = task("tracked", &service, 0, 1);
    let records = vec![
        (id(1), task("adopt", &service, 0, 1)),
        (id(1), task("noendpoint", &service, 0, 1)),
        (id(1), task("oldservice", &old, 0, 1)),
        (id(1), tracked.clone()),
        (id(1), task("stopping", &service, 0, 1)),
        (id(2), task("elsewhere", &service, 0, 1)),
    ];
    let endpoints = ["adopt", "oldservice", "tracked", "stopping", "elsewhere"]
        .map(|e| (id(1), endpoint(e, 1000)))
        .to_vec();
    let view = view(vec![service.clone()], records, endpoints);
    let stopping = BTreeSet::from(["stopping".to_owned()]);
    let backoff = no_backoff();
    let local = settled(&clock, vec![running(&tracked)], &stopping, &backoff);
    assert_eq!(
        adoptions(&view, &local),
        [
            Action::Adopt {
                task: task("adopt", &service, 0, 1),
                endpoint: endpoint("adopt", 1000),
                service: service.clone(),
            },
            Action::CleanUp {
                task: task("noendpoint", &service, 0, 1),
                endpoint: None,
            },
            Action::CleanUp {
                task: task("oldservice", &old, 0, 1),
                endpoint: Some(endpoint("oldservice", 1000)),
            },
        ]
    );
}

#[test]
fn during_warm_up_nothing_is_started_stopped_or_removed_but_restarts_happen() {
    let clock = Clock::new();
    let service = web(None);
    let mut gone = web(None);
    gone.name = "gone".into();
    let mut of_gone = task("ofgone", &gone, 0, 1);
    of_gone.endpoint = "ofgone".into();
    let view = view(
        vec![service.clone()],
        vec![(id(1), of_gone.clone())],
        vec![(id(1), endpoint("orphan", 60_000))],
    );
    let (stopping, backoff) = (no_ids(), no_backoff());
    let mut local = settled(
        &clock,
        vec![LocalTask {
            restart_at: Some(clock.at(50)),
            ..running(&of_gone)
        }],
        &stopping,
        &backoff,
    );
    local.started = clock.at(98);
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Restart {
            task: "ofgone".into()
        }]
    );
    // Once warmed up, the task of a removed service stops, the orphan goes and this
    // node's slot of `web` starts.
    local.started = clock.at(97);
    let actions = plan(&view, &local, clock.now());
    assert_eq!(
        actions,
        [
            Action::RemoveOrphanEndpoint {
                endpoint: endpoint("orphan", 60_000)
            },
            Action::Stop {
                task: "ofgone".into(),
                reason: StopReason::ServiceRemoved
            },
            Action::Start {
                service: service.clone(),
                slot: 0
            },
        ]
    );
}

#[test]
fn a_slot_of_this_node_without_a_task_is_started() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let local = settled(&clock, vec![], &stopping, &backoff);
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Start {
            service: service.clone(),
            slot: 0
        }]
    );
    // With its task here, nothing to do.
    let mine = task("mine", &service, 0, 1);
    let local = settled(&clock, vec![running(&mine)], &stopping, &backoff);
    assert_eq!(plan(&view, &local, clock.now()), []);
    // A task of an earlier `web` does not count (and is stopped).
    let mut old = service.clone();
    old.created = stamp(1);
    let stale = task("stale", &old, 0, 1);
    let local = settled(&clock, vec![running(&stale)], &stopping, &backoff);
    assert_eq!(
        plan(&view, &local, clock.now()),
        [
            Action::Stop {
                task: "stale".into(),
                reason: StopReason::ServiceRecreated
            },
            Action::Start { service, slot: 0 },
        ]
    );
}

#[test]
fn slots_are_taken_only_with_enough_of_the_cluster_up_and_membership_stable() {
    let clock = Clock::new();
    let service = web(Some(3));
    let (stopping, backoff) = (no_ids(), no_backoff());
    let mut view = view(vec![service.clone()], vec![], vec![]);
    let mut local = settled(&clock, vec![], &stopping, &backoff);
    let starts = |view: &ClusterView, local: &Local| {
        plan(view, local, clock.now())
            .into_iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count()
    };
    let mine = super::super::status::layout(&view, &service, WALL_MS)
        .slots_of(id(1))
        .len();
    assert_eq!(starts(&view, &local), mine);
    assert!(mine >= 1);

    // Membership changed 0.5 s ago.
    local.membership_since = clock.at(100) - Duration::from_millis(500);
    assert_eq!(starts(&view, &local), 0);
    local.membership_since = clock.at(99);
    assert_eq!(starts(&view, &local), mine);

    // Cut off: only this node of three is up, so it takes all slots in its layout but may
    // not take over.
    view.nodes[1].up = false;
    view.nodes[2].up = false;
    assert_eq!(starts(&view, &local), 0);
}

#[test]
fn a_slot_whose_create_failed_waits_for_its_backoff() {
    let clock = Clock::new();
    let service = web(None);
    let stopping = no_ids();
    let view = view(vec![service.clone()], vec![], vec![]);
    let waiting = BTreeMap::from([(("web".to_owned(), 0), clock.at(101))]);
    let local = settled(&clock, vec![], &stopping, &waiting);
    assert_eq!(plan(&view, &local, clock.now()), []);
    let over = BTreeMap::from([(("web".to_owned(), 0), clock.at(100))]);
    let local = settled(&clock, vec![], &stopping, &over);
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Start { service, slot: 0 }]
    );
}

#[test]
fn the_newer_of_two_local_tasks_of_one_slot_is_stopped() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let (newer, older) = (
        task("newer", &service, 0, 20),
        task("older", &service, 0, 10),
    );
    let local = settled(
        &clock,
        vec![running(&newer), running(&older)],
        &stopping,
        &backoff,
    );
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Stop {
            task: "newer".into(),
            reason: StopReason::DuplicateOfSlot
        }]
    );
}

#[test]
fn a_slot_scaled_away_is_stopped_but_an_attached_task_is_not() {
    let clock = Clock::new();
    let service = web(Some(1));
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let extra = task("extra", &service, 2, 10);
    let mut attached = task("attached", &service, 0, 10);
    attached.attached = true;
    let local = settled(
        &clock,
        vec![running(&extra), running(&attached)],
        &stopping,
        &backoff,
    );
    let actions = plan(&view, &local, clock.now());
    assert!(
        actions.contains(&Action::Stop {
            task: "extra".into(),
            reason: StopReason::ScaledDown
        }),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a,
            Action::Stop { task, .. } | Action::MoveAway { task } if task == "attached")),
        "{actions:?}"
    );
}

#[test]
fn a_moved_slot_hands_over_once_the_new_holder_runs_or_after_the_handover_time() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    // This node is leaving: the global service's slot on it is no longer its.
    let mut view = view(vec![service.clone()], vec![], vec![]);
    view.nodes[0] = node(1, true, true);
    let mine = task("mine", &service, 0, 10);
    let at = |moving_since: Option<Instant>| {
        let tasks = vec![LocalTask {
            moving_since,
            ..running(&mine)
        }];
        settled(&clock, tasks, &stopping, &backoff)
    };
    // First seen moving: start the handover clock, keep running.
    assert_eq!(
        plan(&view, &at(None), clock.now()),
        [Action::MoveAway {
            task: "mine".into()
        }]
    );
    // Moving for 5 s and the new holder does not run it yet: keep running.
    assert_eq!(plan(&view, &at(Some(clock.at(95))), clock.now()), []);
    let stop = [Action::Stop {
        task: "mine".into(),
        reason: StopReason::SlotMoved,
    }];
    // After the handover time: stop.
    assert_eq!(plan(&view, &at(Some(clock.at(90))), clock.now()), stop);

    // A task of the slot running on a node that holds it: stop at once; merely starting
    // there, or running on a down node, is not enough.
    let elsewhere = task("elsewhere", &service, 0, 20);
    view.tasks = vec![(id(2), elsewhere.clone())];
    assert_eq!(plan(&view, &at(Some(clock.at(95))), clock.now()), stop);
    view.tasks[0].1.state = TaskState::Starting;
    assert_eq!(plan(&view, &at(Some(clock.at(95))), clock.now()), []);
    view.tasks[0].1.state = TaskState::Running;
    view.nodes[1].up = false;
    assert_eq!(plan(&view, &at(Some(clock.at(95))), clock.now()), []);
    // A namespace attached there (recorded as slot 0) does not run the placed slot.
    view.nodes[1].up = true;
    view.tasks[0].1.attached = true;
    assert_eq!(plan(&view, &at(Some(clock.at(95))), clock.now()), []);
}

#[test]
fn a_slot_that_comes_back_stops_the_handover_clock() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let mine = task("mine", &service, 0, 10);
    let local = settled(
        &clock,
        vec![LocalTask {
            moving_since: Some(clock.at(95)),
            ..running(&mine)
        }],
        &stopping,
        &backoff,
    );
    assert_eq!(
        plan(&view, &local, clock.now()),
        [Action::Stay {
            task: "mine".into()
        }]
    );
}

#[test]
fn a_process_is_restarted_when_its_restart_time_is_due() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let view = view(vec![service.clone()], vec![], vec![]);
    let mine = task("mine", &service, 0, 10);
    let with_restart = |at: u64| {
        let tasks = vec![LocalTask {
            restart_at: Some(clock.at(at)),
            ..running(&mine)
        }];
        settled(&clock, tasks, &stopping, &backoff)
    };
    assert_eq!(plan(&view, &with_restart(101), clock.now()), []);
    assert_eq!(
        plan(&view, &with_restart(100), clock.now()),
        [Action::Restart {
            task: "mine".into()
        }]
    );
    // The delays: the service's after an exit; at least MIN_RETRY after a failed spawn.
    let now = clock.at(0);
    assert_eq!(restart_after_exit(&service, now), clock.at(2));
    assert_eq!(retry_after_failed_spawn(&service, now), clock.at(2));
    let mut eager = service.clone();
    eager.restart_delay_ms = 0;
    assert_eq!(restart_after_exit(&eager, now), now);
    assert_eq!(retry_after_failed_spawn(&eager, now), now + MIN_RETRY);
}

#[test]
fn a_task_whose_address_was_claimed_earlier_is_replaced_not_restarted() {
    let clock = Clock::new();
    let service = web(None);
    let (stopping, backoff) = (no_ids(), no_backoff());
    let mut view = view(vec![service.clone()], vec![], vec![]);
    view.endpoints
        .collided
        .push((id(1), endpoint("mine", 1000), "winner".into()));
    let mine = task("mine", &service, 0, 10);
    let local = settled(
        &clock,
        vec![LocalTask {
            restart_at: Some(clock.at(1)),
            ..running(&mine)
        }],
        &stopping,
        &backoff,
    );
    let replace = [Action::Replace {
        task: "mine".into(),
    }];
    assert_eq!(plan(&view, &local, clock.now()), replace);
    // Not delayed by the warm-up either.
    let mut warming = local.clone();
    warming.started = clock.at(99);
    assert_eq!(plan(&view, &warming, clock.now()), replace);
}

#[test]
fn old_task_endpoints_nothing_refers_to_are_removed() {
    let clock = Clock::new();
    let service = web(None);
    let backoff = no_backoff();
    let mine = task("mine", &service, 0, 10);
    let record = task("record", &service, 0, 10);
    let endpoints = ["orphan", "young", "mine", "record", "stopping"]
        .map(|e| {
            let age = if e == "young" { 1000 } else { 60_000 };
            (id(1), endpoint(e, age))
        })
        .to_vec();
    let mut other_nodes = endpoint("theirs", 60_000);
    other_nodes.name = "web.1.theirs".into();
    let mut endpoints = endpoints;
    endpoints.push((id(2), other_nodes));
    // `record` is known from the view (tracked or not), `mine` only locally.
    let view = view(vec![service.clone()], vec![(id(1), record)], endpoints);
    let stopping = BTreeSet::from(["stopping".to_owned()]);
    let local = settled(&clock, vec![running(&mine)], &stopping, &backoff);
    let removed: Vec<String> = plan(&view, &local, clock.now())
        .into_iter()
        .filter_map(|a| match a {
            Action::RemoveOrphanEndpoint { endpoint } => Some(endpoint.id),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["orphan"]);
}

#[test]
fn only_old_task_endpoints_are_orphans() {
    let now = 1_000_000;
    let old = now - 60_000;
    let id = "0123456789ab";
    let named = |name: &str, owns_netns: bool, created_ms: u64| Endpoint {
        name: name.into(),
        owns_netns,
        created: Stamp {
            hlc: hlc::compose(created_ms, 0),
            writer: NodeId([1; 16]),
        },
        ..endpoint(id, 0)
    };
    assert!(is_orphan_task_endpoint(
        &named(&format!("web.1.{id}"), true, old),
        now
    ));
    assert!(is_orphan_task_endpoint(
        &named(&format!("g.h1.{id}"), true, old),
        now
    ));
    // Just created: its task record may not be in the view yet.
    assert!(!is_orphan_task_endpoint(
        &named(&format!("web.1.{id}"), true, now - 1000),
        now
    ));
    // A user's endpoint (`endpoint create --name`), or an attached namespace.
    assert!(!is_orphan_task_endpoint(&named("app", true, old), now));
    assert!(!is_orphan_task_endpoint(&named(id, true, old), now));
    assert!(!is_orphan_task_endpoint(
        &named(&format!("web.1.{id}"), false, old),
        now
    ));
}

#[test]
fn membership_is_stable_since_the_set_of_up_nodes_last_changed() {
    let clock = Clock::new();
    let mut view = view(vec![], vec![], vec![]);
    let mut membership = Membership::new(clock.at(0));
    assert_eq!(membership.observe(&view, clock.at(1)), clock.at(1));
    assert_eq!(membership.observe(&view, clock.at(5)), clock.at(1));
    view.nodes[2].up = false;
    assert_eq!(membership.observe(&view, clock.at(6)), clock.at(6));
    assert_eq!(membership.observe(&view, clock.at(9)), clock.at(6));
}

#[test]
fn health_checks_set_the_state() {
    use TaskState::*;
    // Success: running, whatever it was.
    for state in [Starting, Running, Unhealthy] {
        assert_eq!(health_state(true, 0, state), Running);
    }
    // A starting task stays starting until its first success.
    assert_eq!(health_state(false, 5, Starting), Starting);
    // A running one tolerates UNHEALTHY_AFTER - 1 failures in a row.
    assert_eq!(health_state(false, UNHEALTHY_AFTER - 1, Running), Running);
    assert_eq!(health_state(false, UNHEALTHY_AFTER, Running), Unhealthy);
    assert_eq!(health_state(false, 1, Unhealthy), Unhealthy);
}
