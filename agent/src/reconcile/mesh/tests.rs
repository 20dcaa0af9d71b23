//! The mesh maps' desired content from hand-built views, and slot assignment.

use manager::{
    state::{EndpointSet, Mode, Network, NetworkSet, PublishedPort, ServiceSet, Task, TaskState},
    testing,
};

use super::*;

fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

fn stamp(hlc: u64) -> Stamp {
    Stamp { hlc, writer: id(9) }
}

const VNI: u32 = 4200;

/// `web` publishing 8080→80/tcp and 5300→53/udp, ingress mode, on `net`.
fn web() -> Service {
    Service {
        ports: vec![
            PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp,
            },
            PublishedPort {
                published: 5300,
                target: 53,
                protocol: Protocol::Udp,
            },
        ],
        ..testing::service("web", Mode::Replicated { replicas: 3 }, stamp(100))
    }
}

/// Nodes 1 (this), 2 up and 3 down, at 10.200.0.<i>; network `net`; `services`; each
/// task's endpoint on its node (same ID, the task's address).
fn view(services: Vec<Service>, tasks: Vec<(NodeId, Task)>) -> ClusterView {
    let endpoints = tasks
        .iter()
        .map(|(node, t)| {
            (
                *node,
                testing::endpoint(&t.endpoint, "net", VNI, t.ip.octets()),
            )
        })
        .collect();
    ClusterView {
        self_id: id(1),
        store_version: 1,
        nodes: testing::three_nodes_third_down(),
        networks: NetworkSet {
            valid: vec![Network {
                name: "net".into(),
                subnet: "10.10.0.0/24".parse().unwrap(),
                vni: VNI,
                created: stamp(1),
            }],
            conflicted: vec![],
        },
        endpoints: EndpointSet {
            valid: endpoints,
            collided: vec![],
        },
        vteps: vec![],
        services: ServiceSet {
            valid: services,
            conflicted: vec![],
        },
        tasks,
        overlay_mtu: Some(1450),
    }
}

fn desired(view: &ClusterView) -> (DesiredMesh, MeshSlots) {
    let mut slots = MeshSlots::default();
    let wanted: Vec<ServiceRef> = mesh_services(view)
        .iter()
        .map(|s| (s.name.clone(), s.created))
        .collect();
    slots.assign(&wanted);
    let mtu = view.overlay_mtu.unwrap();
    (
        desired_mesh(view, &slots, &MeshTimeouts::default(), mtu),
        slots,
    )
}

fn backend(ip: [u8; 4], host: u8) -> MeshBackend {
    MeshBackend {
        ip,
        host_ip: [10, 200, 0, host],
    }
}

#[test]
fn serving_tasks_cluster_wide_are_the_backends_in_slot_then_id_order() {
    let web = web();
    let mut unhealthy = testing::task("e-unhealthy", &web, 3, [10, 10, 0, 15]);
    unhealthy.state = TaskState::Unhealthy;
    let tasks = vec![
        // Listed out of order: slot 2 on this node, slot 0 on node 2, and two of slot 1.
        (id(1), testing::task("c-local", &web, 2, [10, 10, 0, 12])),
        (id(2), testing::task("b-remote", &web, 0, [10, 10, 0, 11])),
        (id(2), testing::task("d-second", &web, 1, [10, 10, 0, 14])),
        (id(1), testing::task("a-first", &web, 1, [10, 10, 0, 13])),
        // A down node's task and an unhealthy one serve nothing.
        (id(3), testing::task("f-down", &web, 4, [10, 10, 0, 16])),
        (id(1), unhealthy),
    ];
    let view = view(vec![web.clone()], tasks);
    let (desired, slots) = desired(&view);
    let slot = slots.slot("web", web.created).unwrap();
    assert_eq!(slot, 0);
    let backends: Vec<(u32, MeshBackend)> = desired
        .backends
        .iter()
        .map(|(k, b)| {
            assert_eq!(k.slot, slot);
            (k.index, *b)
        })
        .collect();
    assert_eq!(
        backends,
        vec![
            (0, backend([10, 10, 0, 11], 2)),
            (1, backend([10, 10, 0, 13], 1)),
            (2, backend([10, 10, 0, 14], 2)),
            (3, backend([10, 10, 0, 12], 1)),
        ]
    );
    assert_eq!(
        desired.services,
        BTreeMap::from([(
            slot,
            MeshService {
                backends: 4,
                cursor: 0,
                vni: VNI
            }
        )])
    );
    assert_eq!(
        desired.ports,
        BTreeMap::from([
            (
                MeshPortKey::new(IPPROTO_TCP, 8080),
                MeshPort {
                    slot,
                    target_port_be: 80u16.to_be_bytes(),
                    _pad: [0; 2]
                }
            ),
            (
                MeshPortKey::new(IPPROTO_UDP, 5300),
                MeshPort {
                    slot,
                    target_port_be: 53u16.to_be_bytes(),
                    _pad: [0; 2]
                }
            ),
        ])
    );
    // Every node, the down one too.
    assert_eq!(
        desired.nodes.keys().copied().collect::<Vec<_>>(),
        vec![[10, 200, 0, 1], [10, 200, 0, 2], [10, 200, 0, 3]]
    );
    // This node's tasks, the unhealthy one too, × both target ports.
    let targets: Vec<([u8; 4], u16, u8)> = desired
        .targets
        .iter()
        .map(|(k, t)| {
            assert_eq!(t.vni, VNI);
            (k.ip, u16::from_be_bytes(k.port_be), k.protocol)
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ([10, 10, 0, 12], 53, IPPROTO_UDP),
            ([10, 10, 0, 12], 80, IPPROTO_TCP),
            ([10, 10, 0, 13], 53, IPPROTO_UDP),
            ([10, 10, 0, 13], 80, IPPROTO_TCP),
            ([10, 10, 0, 15], 53, IPPROTO_UDP),
            ([10, 10, 0, 15], 80, IPPROTO_TCP),
        ]
    );
    // Stats rows: the service's own, and every live task's (unhealthy included, not the
    // down node's).
    let stats: Vec<[u8; 4]> = desired.stats.keys().map(|k| k.backend_ip).collect();
    assert_eq!(
        stats,
        vec![
            [0, 0, 0, 0],
            [10, 10, 0, 11],
            [10, 10, 0, 12],
            [10, 10, 0, 13],
            [10, 10, 0, 14],
            [10, 10, 0, 15],
        ]
    );
    assert_eq!(desired.config.ingress_vni, INGRESS_VNI);
    assert_eq!(desired.config.mss, 1410, "overlay MTU 1450 − 40");
    assert_eq!(desired.config.established_timeout_ns, 8_000_000_000_000);
}

#[test]
fn a_task_without_a_live_endpoint_is_no_backend_and_a_host_mode_service_without_a_task_here_gets_nothing(
) {
    let web = web();
    let host_mode = Service {
        publish_mode: PublishMode::Host,
        ..Service {
            name: "hosted".into(),
            ..web.clone()
        }
    };
    let no_ports = Service {
        ports: vec![],
        ..Service {
            name: "quiet".into(),
            ..web.clone()
        }
    };
    let mut view = view(
        vec![host_mode, no_ports, web.clone()],
        vec![
            (id(2), testing::task("a", &web, 0, [10, 10, 0, 11])),
            (id(2), testing::task("b", &web, 1, [10, 10, 0, 12])),
        ],
    );
    // b's endpoint is gone from the view.
    view.endpoints.valid.retain(|(_, e)| e.id != "b");
    let (desired, slots) = desired(&view);
    assert_eq!(
        slots
            .by_slot()
            .values()
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["hosted", "web"],
        "a service without published ports has no slot"
    );
    let web_slot = slots.slot("web", web.created).unwrap();
    assert_eq!(desired.backends.len(), 1);
    assert_eq!(
        desired.services.keys().copied().collect::<Vec<_>>(),
        [web_slot],
        "hosted has no task here: its slot stays empty"
    );
    assert_eq!(desired.services[&web_slot].backends, 1);
    assert!(
        desired.ports.values().all(|p| p.slot == web_slot),
        "hosted's ports are not open here"
    );
    assert!(desired.targets.is_empty(), "no task of web on this node");
}

/// `edge` publishing 9090→80/tcp in host mode.
fn edge() -> Service {
    Service {
        publish_mode: PublishMode::Host,
        ports: vec![PublishedPort {
            published: 9090,
            target: 80,
            protocol: Protocol::Tcp,
        }],
        ..testing::service("edge", Mode::Replicated { replicas: 5 }, stamp(200))
    }
}

fn in_state(mut task: Task, state: TaskState) -> Task {
    task.state = state;
    task
}

/// Backends as (index, address, host), stats rows' addresses, the port's slot if open.
type Seen = (Vec<(u32, [u8; 4], [u8; 4])>, Vec<[u8; 4]>, Option<u32>);

fn seen(desired: &DesiredMesh) -> Seen {
    (
        desired
            .backends
            .iter()
            .map(|(k, b)| (k.index, b.ip, b.host_ip))
            .collect(),
        desired.stats.keys().map(|k| k.backend_ip).collect(),
        desired
            .ports
            .get(&MeshPortKey::new(IPPROTO_TCP, 9090))
            .map(|p| p.slot),
    )
}

#[test]
fn host_mode_opens_only_where_a_task_runs_and_balances_over_that_nodes_tasks() {
    let edge = edge();
    let tasks = vec![
        (id(1), testing::task("a", &edge, 0, [10, 10, 0, 21])),
        (id(2), testing::task("b", &edge, 1, [10, 10, 0, 22])),
        (id(1), testing::task("c", &edge, 2, [10, 10, 0, 23])),
        (
            id(1),
            in_state(
                testing::task("d", &edge, 3, [10, 10, 0, 24]),
                TaskState::Unhealthy,
            ),
        ),
        (
            id(1),
            in_state(
                testing::task("e", &edge, 4, [10, 10, 0, 25]),
                TaskState::Draining,
            ),
        ),
    ];
    let mut view = view(vec![edge.clone()], tasks);
    let (desired, slots) = desired(&view);
    let slot = slots.slot("edge", edge.created).unwrap();
    let own = [10, 200, 0, 1];
    // Node 1: its two serving tasks only (not node 2's, not the unhealthy or draining
    // one), all local; every live local task keeps a stats row.
    assert_eq!(
        seen(&desired),
        (
            vec![(0, [10, 10, 0, 21], own), (1, [10, 10, 0, 23], own)],
            vec![
                [0; 4],
                [10, 10, 0, 21],
                [10, 10, 0, 23],
                [10, 10, 0, 24],
                [10, 10, 0, 25]
            ],
            Some(slot)
        )
    );
    assert_eq!(desired.services[&slot].backends, 2);
    assert_eq!(desired.services[&slot].vni, VNI);
    assert_eq!(
        desired.ports[&MeshPortKey::new(IPPROTO_TCP, 9090)].target_port_be,
        80u16.to_be_bytes()
    );
    assert!(
        desired.targets.is_empty(),
        "no other node forwards to a host-mode task: none may"
    );
    // Node 2 sees the same cluster: its own task alone.
    view.self_id = id(2);
    let (desired, _) = self::desired(&view);
    assert_eq!(
        seen(&desired),
        (
            vec![(0, [10, 10, 0, 22], [10, 200, 0, 2])],
            vec![[0; 4], [10, 10, 0, 22]],
            Some(slot)
        )
    );
    // A node without a task of it: nothing at all — the port is not the mesh's there.
    view.tasks.retain(|(node, _)| *node == id(1));
    let (desired, slots) = self::desired(&view);
    assert_eq!(seen(&desired), (vec![], vec![], None));
    assert!(desired.services.is_empty());
    assert_eq!(
        slots.slot("edge", edge.created),
        Some(slot),
        "it keeps a slot, so the slot stays put as tasks come and go"
    );
}

#[test]
fn a_host_mode_port_stays_open_until_the_last_local_tasks_endpoint_goes() {
    let edge = edge();
    for state in [
        TaskState::Starting,
        TaskState::Unhealthy,
        TaskState::Exited,
        TaskState::Draining,
    ] {
        let task = in_state(testing::task("a", &edge, 0, [10, 10, 0, 21]), state);
        let serving = testing::task("b", &edge, 1, [10, 10, 0, 22]);
        let mut view = view(vec![edge.clone()], vec![(id(1), task), (id(2), serving)]);
        let (desired, slots) = desired(&view);
        let slot = slots.slot("edge", edge.created).unwrap();
        // Open with no backend: new flows are refused in XDP (RST / ICMP), a draining
        // task's established flows go on.
        assert_eq!(
            seen(&desired),
            (vec![], vec![[0; 4], [10, 10, 0, 21]], Some(slot)),
            "{state:?}"
        );
        assert_eq!(desired.services[&slot].backends, 0, "{state:?}");
        // Its endpoint gone (the task stopped): the port closes.
        view.endpoints.valid.retain(|(_, e)| e.id != "a");
        let (desired, _) = self::desired(&view);
        assert_eq!(seen(&desired), (vec![], vec![], None), "{state:?}, stopped");
    }
}

#[test]
fn host_and_ingress_services_side_by_side_keep_their_own_backends() {
    let web = web();
    let edge = edge();
    let tasks = vec![
        (id(1), testing::task("w1", &web, 0, [10, 10, 0, 11])),
        (id(2), testing::task("w2", &web, 1, [10, 10, 0, 12])),
        (id(1), testing::task("e1", &edge, 0, [10, 10, 0, 21])),
        (id(2), testing::task("e2", &edge, 1, [10, 10, 0, 22])),
    ];
    let view = view(vec![edge.clone(), web.clone()], tasks);
    let (desired, slots) = desired(&view);
    let (web_slot, edge_slot) = (
        slots.slot("web", web.created).unwrap(),
        slots.slot("edge", edge.created).unwrap(),
    );
    let of = |slot: u32| -> Vec<[u8; 4]> {
        desired
            .backends
            .iter()
            .filter(|(k, _)| k.slot == slot)
            .map(|(_, b)| b.ip)
            .collect()
    };
    assert_eq!(of(web_slot), [[10, 10, 0, 11], [10, 10, 0, 12]]);
    assert_eq!(of(edge_slot), [[10, 10, 0, 21]]);
    let targets: Vec<[u8; 4]> = desired.targets.keys().map(|k| k.ip).collect();
    assert_eq!(
        targets,
        [[10, 10, 0, 11], [10, 10, 0, 11]],
        "web's local task × its two ports; edge's none"
    );
}

#[test]
fn a_service_without_a_serving_task_keeps_its_ports_with_no_backends() {
    let web = web();
    let mut starting = testing::task("a", &web, 0, [10, 10, 0, 11]);
    starting.state = TaskState::Starting;
    let view = view(vec![web], vec![(id(1), starting)]);
    let (desired, _) = desired(&view);
    assert_eq!(desired.ports.len(), 2, "published: refused, not ignored");
    assert_eq!(desired.services[&0].backends, 0);
    assert!(desired.backends.is_empty());
    assert_eq!(
        desired.targets.len(),
        2,
        "its own task may still be reached"
    );
}

#[test]
fn slots_are_stable_lowest_free_and_freed_when_the_service_goes() {
    let a = ("a".to_owned(), stamp(1));
    let b = ("b".to_owned(), stamp(2));
    let c = ("c".to_owned(), stamp(3));
    let mut slots = MeshSlots::default();
    slots.assign(&[b.clone(), c.clone()]);
    assert_eq!(
        (slots.slot("b", b.1), slots.slot("c", c.1)),
        (Some(0), Some(1))
    );
    // a arrives before b in name order: b and c keep theirs, a takes the next free one.
    slots.assign(&[a.clone(), b.clone(), c.clone()]);
    assert_eq!(slots.slot("a", a.1), Some(2));
    assert_eq!(slots.slot("b", b.1), Some(0));
    // b goes: its slot is free again, the lowest, and taken by the next newcomer.
    slots.assign(&[a.clone(), c.clone()]);
    assert_eq!(slots.slot("b", b.1), None);
    let b_again = ("b".to_owned(), stamp(4));
    slots.assign(&[a.clone(), b_again.clone(), c.clone()]);
    assert_eq!(slots.slot("b", b_again.1), Some(0));
    assert_eq!(
        slots.slot("b", b.1),
        None,
        "another incarnation is another service"
    );
    assert_eq!(slots.slot("a", a.1), Some(2));
    assert_eq!(slots.slot("c", c.1), Some(1));
}

#[test]
fn slots_stop_at_the_maps_capacity() {
    let wanted: Vec<ServiceRef> = (0..=MESH_MAX_SERVICES)
        .map(|i| (format!("s{i}"), stamp(u64::from(i))))
        .collect();
    let mut slots = MeshSlots::default();
    slots.assign(&wanted);
    assert_eq!(slots.by_slot().len(), MESH_MAX_SERVICES as usize);
    assert_eq!(slots.by_slot().keys().max(), Some(&(MESH_MAX_SERVICES - 1)));
}

#[test]
fn a_restarted_agent_takes_over_the_slots_the_maps_show() {
    let web = web();
    let api = Service {
        name: "api".into(),
        ports: vec![PublishedPort {
            published: 9000,
            target: 90,
            protocol: Protocol::Tcp,
        }],
        ..web.clone()
    };
    let view = view(vec![api.clone(), web.clone()], vec![]);
    let port = |slot| MeshPort {
        slot,
        target_port_be: [0; 2],
        _pad: [0; 2],
    };
    // A previous agent gave web slot 3 (both its ports) and api slot 0.
    let left = vec![
        (MeshPortKey::new(IPPROTO_TCP, 8080), port(3)),
        (MeshPortKey::new(IPPROTO_UDP, 5300), port(3)),
        (MeshPortKey::new(IPPROTO_TCP, 9000), port(0)),
    ];
    let mut slots = MeshSlots::default();
    slots.adopt(&view, &left);
    let wanted: Vec<ServiceRef> = mesh_services(&view)
        .iter()
        .map(|s| (s.name.clone(), s.created))
        .collect();
    slots.assign(&wanted);
    assert_eq!(slots.slot("web", web.created), Some(3));
    assert_eq!(slots.slot("api", api.created), Some(0));
    // Ports split over two slots prove nothing: a fresh slot instead.
    let split = vec![
        (MeshPortKey::new(IPPROTO_TCP, 8080), port(3)),
        (MeshPortKey::new(IPPROTO_UDP, 5300), port(4)),
    ];
    let mut slots = MeshSlots::default();
    slots.adopt(&view, &split);
    slots.assign(&wanted);
    assert_eq!(slots.slot("api", api.created), Some(0));
    assert_eq!(slots.slot("web", web.created), Some(1));
}
