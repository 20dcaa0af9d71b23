//! The VIP maps' desired content from hand-built views.

use std::net::Ipv4Addr;

use manager::{
    state::{
        EndpointSet, Mode, Network, NetworkSet, PublishedPort, Service, ServiceSet, Stamp, Task,
        TaskState,
    },
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
const VIP: [u8; 4] = [10, 10, 0, 250];

/// `web` publishing 8080→80/tcp, ingress mode, VIP 10.10.0.250 on `net`.
fn web() -> Service {
    Service {
        ports: vec![PublishedPort {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
        }],
        vip: Some(Ipv4Addr::from(VIP)),
        endpoint_mode: EndpointMode::Vip,
        ..testing::service("web", Mode::Replicated { replicas: 3 }, stamp(100))
    }
}

/// Nodes 1, 2 up and 3 down, at 10.200.0.<i>; network `net`; each task's endpoint on its
/// node.
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

fn port_key(ip: [u8; 4], port: u16) -> VipPortKey {
    VipPortKey {
        vni: VNI,
        ip,
        port_be: port.to_be_bytes(),
        protocol: IPPROTO_TCP,
        _pad: 0,
    }
}

#[test]
fn serving_tasks_on_up_nodes_are_the_backends_in_slot_order() {
    let web = web();
    let mut draining = testing::task("d-draining", &web, 3, [10, 10, 0, 14]);
    draining.state = TaskState::Draining;
    let tasks = vec![
        (id(2), testing::task("b", &web, 1, [10, 10, 0, 12])),
        (id(1), testing::task("a", &web, 0, [10, 10, 0, 11])),
        (id(3), testing::task("c-down", &web, 2, [10, 10, 0, 13])),
        (id(1), draining),
    ];
    let desired = desired_vip(&view(vec![web], tasks));
    let service = VipServiceKey { vni: VNI, vip: VIP };
    assert_eq!(desired.services[&service].backends, 2);
    let ips: Vec<[u8; 4]> = desired.backends.values().map(|b| b.ip).collect();
    assert_eq!(ips, vec![[10, 10, 0, 11], [10, 10, 0, 12]]);
}

#[test]
fn the_vip_takes_every_port_and_every_node_its_published_ports() {
    let desired = desired_vip(&view(vec![web()], vec![]));
    let keep_the_port = VipPort {
        vip: VIP,
        target_port_be: ANY_PORT.to_be_bytes(),
        _pad: [0; 2],
    };
    assert_eq!(desired.ports[&port_key(VIP, ANY_PORT)], keep_the_port);
    let udp = VipPortKey {
        protocol: IPPROTO_UDP,
        ..port_key(VIP, ANY_PORT)
    };
    assert_eq!(desired.ports[&udp], keep_the_port);
    let to_web = VipPort {
        vip: VIP,
        target_port_be: 80u16.to_be_bytes(),
        _pad: [0; 2],
    };
    for node in 1..=3 {
        assert_eq!(desired.ports[&port_key([10, 200, 0, node], 8080)], to_web);
    }
    assert!(!desired.ports.contains_key(&port_key(VIP, 8080)));
    assert_eq!(desired.ports.len(), 5);
    // No serving task: the service is there with no backends (new flows refused).
    assert_eq!(
        desired.services[&VipServiceKey { vni: VNI, vip: VIP }].backends,
        0
    );
}

#[test]
fn dnsrr_services_and_host_mode_node_ports_have_no_entries() {
    let dnsrr = Service {
        endpoint_mode: EndpointMode::Dnsrr,
        vip: None,
        ..web()
    };
    assert_eq!(
        desired_vip(&view(vec![dnsrr], vec![])),
        DesiredVip::default()
    );
    let host = Service {
        publish_mode: PublishMode::Host,
        ..web()
    };
    let desired = desired_vip(&view(vec![host], vec![]));
    assert!(
        desired.ports.keys().all(|k| k.ip == VIP),
        "{:?}",
        desired.ports
    );
}
