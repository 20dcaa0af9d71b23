//! The naming rules on hand-built views (`Records`); the server end to end is in
//! `server`. No root needed (but for `server::cost_per_namespace`, ignored).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_server::proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{LowerName, Name, RData, Record, RecordType},
};
use manager::{
    state::{
        EndpointMode, EndpointSet, Mode, Network, NetworkSet, Protocol, PublishedPort, Service,
        ServiceSet, Stamp, Task, TaskState,
    },
    testing,
    view::ClusterView,
    NodeId,
};
use tokio::net::UdpSocket;

use super::{
    counters::{DnsCounters, DnsCounts},
    forward::Forwarder,
    handler::{Asker, DnsHandler},
    listen::Listener,
    records::{Records, Resolution, Scope},
    Core,
};

mod server;

fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

fn stamp(hlc: u64) -> Stamp {
    Stamp { hlc, writer: id(9) }
}

fn network(name: &str, subnet: &str, vni: u32) -> Network {
    Network {
        name: name.into(),
        subnet: subnet.parse().unwrap(),
        vni,
        created: stamp(1),
    }
}

/// `web` (VIP 10.10.0.250, 8080→80/tcp) with tasks on nodes 1 and 2 running, one
/// starting and one on the down node 3; `rr` (dnsrr) with two running tasks; `secret` on
/// network `other`. This node (1) has an endpoint namespace `client` on `net` and
/// `stranger` on `other`.
fn view() -> ClusterView {
    let web = Service {
        ports: vec![PublishedPort {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
        }],
        vip: Some(Ipv4Addr::new(10, 10, 0, 250)),
        endpoint_mode: EndpointMode::Vip,
        ..testing::service("web", Mode::Replicated { replicas: 4 }, stamp(100))
    };
    let rr = Service {
        endpoint_mode: EndpointMode::Dnsrr,
        vip: None,
        ..testing::service("rr", Mode::Replicated { replicas: 2 }, stamp(100))
    };
    let secret = Service {
        network: "other".into(),
        ..testing::service("secret", Mode::Replicated { replicas: 1 }, stamp(100))
    };
    let starting = Task {
        state: TaskState::Starting,
        ..testing::task("w3", &web, 2, [10, 10, 0, 13])
    };
    let tasks = vec![
        (id(1), testing::task("w1", &web, 0, [10, 10, 0, 11])),
        (id(2), testing::task("w2", &web, 1, [10, 10, 0, 12])),
        (id(2), starting),
        (id(3), testing::task("w4", &web, 3, [10, 10, 0, 14])),
        (id(1), testing::task("r1", &rr, 0, [10, 10, 0, 21])),
        (id(2), testing::task("r2", &rr, 1, [10, 10, 0, 22])),
        (id(2), testing::task("s1", &secret, 0, [10, 20, 0, 31])),
    ];
    ClusterView {
        self_id: id(1),
        store_version: 1,
        nodes: testing::three_nodes_third_down(),
        networks: NetworkSet {
            valid: vec![
                network("net", "10.10.0.0/24", 4200),
                network("other", "10.20.0.0/24", 4201),
            ],
            conflicted: vec![],
        },
        endpoints: EndpointSet {
            valid: vec![
                (
                    id(1),
                    testing::endpoint("client", "net", 4200, [10, 10, 0, 2]),
                ),
                (
                    id(1),
                    testing::endpoint("stranger", "other", 4201, [10, 20, 0, 2]),
                ),
            ],
            collided: vec![],
        },
        vteps: vec![],
        services: ServiceSet {
            valid: vec![web, rr, secret],
            conflicted: vec![],
        },
        tasks,
        overlay_mtu: Some(1450),
    }
}

fn name(text: &str) -> LowerName {
    LowerName::from(Name::from_ascii(text).unwrap())
}

/// The answers' data as text, sorted; `None` for NODATA/NXDOMAIN/Forward.
fn data(resolution: &Resolution<'_>) -> Option<BTreeSet<String>> {
    match resolution {
        Resolution::Answer { answers, .. } => {
            Some(answers.iter().map(|r| r.data.to_string()).collect())
        }
        _ => None,
    }
}

fn set(items: &[&str]) -> Option<BTreeSet<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

#[test]
fn names_resolve_to_the_serving_tasks_within_the_askers_networks() {
    let records = Records::build(&view(), 2);
    let client = records.scope_of("client").unwrap();
    assert_eq!(client, Scope::Networks(vec!["net".into()]));
    let a = |n: &str| records.resolve(&client, &name(n), RecordType::A);

    assert_eq!(data(&a("web.")), set(&["10.10.0.250"]), "vip mode: the VIP");
    // Running tasks of up nodes only: not the starting one, not the down node's.
    assert_eq!(data(&a("tasks.web.")), set(&["10.10.0.11", "10.10.0.12"]));
    assert_eq!(data(&a("rr.")), set(&["10.10.0.21", "10.10.0.22"]), "dnsrr");
    assert_eq!(data(&a("w2.")), set(&["10.10.0.12"]), "a task ID");
    assert_eq!(data(&a("web.2.w2.")), set(&["10.10.0.12"]), "NAME.SLOT.ID");
    assert_eq!(data(&a("WEB.")), set(&["10.10.0.250"]), "case-insensitive");
    assert_eq!(a("w3."), Resolution::NxDomain, "a starting task");
    assert_eq!(a("w4."), Resolution::NxDomain, "a down node's task");
    assert_eq!(a("nosuch."), Resolution::NxDomain);
    assert_eq!(a("tasks.nosuch."), Resolution::NxDomain);
    assert_eq!(a("example.com."), Resolution::Forward);
    assert_eq!(
        records.resolve(&client, &name("web."), RecordType::AAAA),
        Resolution::NoData
    );
    // Another network's names do not exist for this namespace; the operator sees them.
    assert_eq!(a("secret."), Resolution::NxDomain);
    assert_eq!(a("s1."), Resolution::NxDomain);
    let stranger = records.scope_of("stranger").unwrap();
    assert_eq!(
        data(&records.resolve(&stranger, &name("tasks.secret."), RecordType::A)),
        set(&["10.20.0.31"])
    );
    assert_eq!(
        records.resolve(&stranger, &name("web."), RecordType::A),
        Resolution::NxDomain
    );
    assert_eq!(
        data(&records.resolve(&Scope::All, &name("secret."), RecordType::A)),
        set(&["10.20.0.31"])
    );
}

#[test]
fn reverse_and_service_records() {
    let records = Records::build(&view(), 2);
    let client = records.scope_of("client").unwrap();
    let ptr = |n: &str| records.resolve(&client, &name(n), RecordType::PTR);
    assert_eq!(data(&ptr("12.0.10.10.in-addr.arpa.")), set(&["web.2.w2."]));
    assert_eq!(data(&ptr("250.0.10.10.in-addr.arpa.")), set(&["web."]));
    assert_eq!(
        ptr("99.0.10.10.in-addr.arpa."),
        Resolution::NxDomain,
        "ours"
    );
    assert_eq!(ptr("8.8.8.8.in-addr.arpa."), Resolution::Forward);

    let srv = |n: &str| records.resolve(&client, &name(n), RecordType::SRV);
    assert_eq!(
        data(&srv("_8080._tcp.web.")),
        set(&["0 10 8080 nodes.h1.", "0 10 8080 nodes.h2."]),
        "the published port: every up node"
    );
    let Resolution::Answer { additionals, .. } = srv("_80._tcp.web.") else {
        panic!("no SRV for the target port");
    };
    assert_eq!(
        data(&srv("_80._tcp.web.")),
        set(&["0 10 80 web.1.w1.", "0 10 80 web.2.w2."])
    );
    let glue: BTreeSet<String> = additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(
        glue,
        ["web.1.w1. 10.10.0.11", "web.2.w2. 10.10.0.12"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(
        data(&records.resolve(&client, &name("nodes.h2."), RecordType::A)),
        set(&["10.200.0.2"])
    );
    assert_eq!(
        records.resolve(&client, &name("nodes.h3."), RecordType::A),
        Resolution::NxDomain,
        "a down node"
    );
}

#[test]
fn tasks_answers_are_shuffled() {
    let records = Records::build(&view(), 2);
    let orders: BTreeSet<Vec<String>> = (0..64)
        .map(
            |_| match records.resolve(&Scope::All, &name("tasks.web."), RecordType::A) {
                Resolution::Answer { answers, .. } => {
                    answers.iter().map(|r| r.data.to_string()).collect()
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(
        orders.len(),
        2,
        "both orders seen in 64 answers: {orders:?}"
    );
}

/// Stacks `a` and `b` both have a `redis` (VIP) on their own networks; stack `a`'s `db`
/// (dnsrr) is on network `net`, not its own; a plain `redis` service runs on `other`.
#[test]
fn stack_short_names_answer_on_the_stacks_own_network_only() {
    use manager::state::service::StackMember;
    let member = |stack: &str, short: &str| {
        Some(StackMember {
            stack: stack.into(),
            short_name: short.into(),
        })
    };
    let stack_service = |stack: &str, short: &str, network: &str, vip: Option<[u8; 4]>| Service {
        network: network.into(),
        vip: vip.map(Ipv4Addr::from),
        endpoint_mode: if vip.is_some() {
            EndpointMode::Vip
        } else {
            EndpointMode::Dnsrr
        },
        stack: member(stack, short),
        ..testing::service(
            &format!("{stack}_{short}"),
            Mode::Replicated { replicas: 1 },
            stamp(100),
        )
    };
    let a_redis = stack_service("a", "redis", "a_net", Some([10, 30, 0, 250]));
    let b_redis = stack_service("b", "redis", "b_net", Some([10, 40, 0, 250]));
    let a_db = stack_service("a", "db", "net", None);
    let plain = Service {
        network: "other".into(),
        vip: Some(Ipv4Addr::new(10, 20, 0, 250)),
        ..testing::service("redis", Mode::Replicated { replicas: 1 }, stamp(100))
    };
    let mut view = view();
    view.networks.valid.extend([
        network("a_net", "10.30.0.0/24", 4300),
        network("b_net", "10.40.0.0/24", 4400),
    ]);
    view.endpoints.valid.extend([
        (
            id(1),
            testing::endpoint("in-a", "a_net", 4300, [10, 30, 0, 2]),
        ),
        (
            id(1),
            testing::endpoint("in-b", "b_net", 4400, [10, 40, 0, 2]),
        ),
    ]);
    view.tasks
        .push((id(1), testing::task("d1", &a_db, 0, [10, 10, 0, 41])));
    view.services.valid.extend([a_redis, b_redis, a_db, plain]);
    let records = Records::build(&view, 2);
    let a = |ns: &str, n: &str| {
        data(&records.resolve(&records.scope_of(ns).unwrap(), &name(n), RecordType::A))
    };
    assert_eq!(
        a("in-a", "redis."),
        set(&["10.30.0.250"]),
        "stack a's redis"
    );
    assert_eq!(
        a("in-b", "redis."),
        set(&["10.40.0.250"]),
        "stack b's redis"
    );
    assert_eq!(
        a("in-a", "a_redis."),
        set(&["10.30.0.250"]),
        "the full name"
    );
    assert_eq!(
        a("stranger", "redis."),
        set(&["10.20.0.250"]),
        "a plain service"
    );
    // `net` is not stack a's own network: its task answers by the full name only.
    assert_eq!(a("client", "a_db."), set(&["10.10.0.41"]));
    assert_eq!(a("client", "db."), None);
    assert_eq!(a("client", "redis."), None, "no stack network here");
}
