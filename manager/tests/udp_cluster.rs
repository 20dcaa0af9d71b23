//! Managers on real UDP sockets on 127.0.0.1 (no root): joining, the operations behind
//! the CLI, conflicts, wrong keys and random datagrams.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use manager::{
    gossip::{EngineConfig, Tuning},
    ops::OpError,
    secure::JoinToken,
    state::NodeInfo,
    Manager, NodeId,
};
use tokio::net::UdpSocket;

async fn start(token: &JoinToken, seeds: Vec<SocketAddr>, hostname: &str) -> Manager {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().unwrap();
    let config = EngineConfig {
        node: NodeId::random(),
        addr,
        boot_epoch: manager::driver::wall_ms(),
        token: token.clone(),
        underlay_mtu: 1500,
        tuning: Tuning::default(),
        rng_seed: rand::random(),
        initial_records: Vec::new(),
    };
    let manager = Manager::start(config, socket, seeds);
    manager
        .publish_self(&NodeInfo {
            hostname: hostname.to_owned(),
            addr,
            underlay_ip: "127.0.0.1".parse().unwrap(),
            underlay_mtu: 1500,
            boot_epoch: 1,
            started_at_ms: manager::driver::wall_ms(),
            version: "test".to_owned(),
            leaving: false,
            restart_grace_until_ms: 0,
            key_share: [0; 32],
        })
        .await
        .expect("publish self");
    manager
}

fn addr_of(manager: &Manager) -> SocketAddr {
    manager.view().node(&manager.node()).unwrap().addr.unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two managers of one cluster, both seeing both ready.
async fn two_nodes() -> (Manager, Manager) {
    let token = JoinToken::generate();
    let a = start(&token, vec![], "a").await;
    let b = start(&token, vec![addr_of(&a)], "b").await;
    eventually("2 ready", || {
        a.view().ready_count() == 2 && b.view().ready_count() == 2
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_agree_on_nodes_and_networks() {
    let token = JoinToken::generate();
    let a = start(&token, vec![], "a").await;
    let b = start(&token, vec![addr_of(&a)], "b").await;
    let c = start(&token, vec![addr_of(&a)], "c").await;
    let all = [a.clone(), b.clone(), c.clone()];
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if all.iter().all(|m| {
                let v = m.view();
                v.ready_count() == 3 && v.nodes.iter().all(|n| n.info.is_some())
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ok.is_err() {
        for m in &all {
            let v = m.view();
            eprintln!("view of {}: {:#?}", m.node().short(), v.nodes);
        }
        panic!("timed out waiting for 3 ready nodes with names everywhere");
    }

    let web = b
        .create_network("web", None, None)
        .await
        .expect("create web");
    assert_eq!(web.subnet.prefix_len(), 24);
    eventually("web everywhere", || {
        all.iter().all(|m| m.view().network("web").is_some())
    })
    .await;

    // Duplicate name and colliding subnet/VNI are refused up front.
    assert!(matches!(
        c.create_network("web", None, None).await,
        Err(OpError::NetworkExists { .. })
    ));
    let collision = c
        .create_network("db", Some(web.subnet), None)
        .await
        .unwrap_err();
    assert!(
        matches!(collision, OpError::Collision { .. }),
        "{collision}"
    );
    assert!(
        collision.to_string().contains("web"),
        "names the other network: {collision}"
    );
    assert!(c.create_network("db", None, Some(web.vni)).await.is_err());
    assert!(c.create_network("Bad Name", None, None).await.is_err());

    a.remove_network("web").await.expect("remove");
    eventually("web gone everywhere", || {
        all.iter().all(|m| m.view().network("web").is_none())
    })
    .await;
    assert!(matches!(
        a.remove_network("web").await,
        Err(OpError::NoSuchNetwork { .. })
    ));

    // A ready node cannot be removed; neither can oneself.
    let b_id = b.node().to_string();
    assert!(matches!(
        a.remove_node(&b_id).await,
        Err(OpError::NodeIsReady { .. })
    ));
    assert!(matches!(
        a.remove_node(&a.node().to_string()).await,
        Err(OpError::NodeIsSelf { .. })
    ));
    assert!(matches!(
        a.remove_node("ffffffffffff").await,
        Err(OpError::NoSuchNode { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_creates_have_exactly_one_winner() {
    let (a, b) = two_nodes().await;

    // Same name at once.
    let subnet = "10.77.0.0/24".parse().unwrap();
    let (ra, rb) = tokio::join!(
        a.create_network("same", Some(subnet), Some(7001)),
        b.create_network("same", Some("10.78.0.0/24".parse().unwrap()), Some(7002)),
    );
    assert_eq!(
        ra.is_ok() as u8 + rb.is_ok() as u8,
        1,
        "one winner: {ra:?} / {rb:?}"
    );
    let loser = ra.as_ref().err().or(rb.as_ref().err()).unwrap();
    assert!(matches!(loser, OpError::LostConflict { .. }), "{loser}");

    // Different names, one subnet, at once.
    let (ra, rb) = tokio::join!(
        a.create_network("left", Some("10.80.0.0/24".parse().unwrap()), Some(8001)),
        b.create_network("right", Some("10.80.0.0/24".parse().unwrap()), Some(8002)),
    );
    assert_eq!(
        ra.is_ok() as u8 + rb.is_ok() as u8,
        1,
        "one winner: {ra:?} / {rb:?}"
    );
    eventually("both nodes agree on the networks", || {
        let (va, vb) = (a.view(), b.view());
        va.networks == vb.networks && va.networks.conflicted.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_random_datagrams_change_nothing() {
    let token = JoinToken::generate();
    let a = start(&token, vec![], "a").await;
    a.create_network("keep", None, None).await.unwrap();
    let before = a.view();

    // Another cluster's node trying to join through `a` hears nothing back.
    let intruder = start(&JoinToken::generate(), vec![addr_of(&a)], "intruder").await;
    // Random datagrams straight at the gossip port.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..2000u32 {
        let len = 1 + (i as usize * 37) % 1400;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        socket.send_to(&junk, addr_of(&a)).await.unwrap();
        // Paced, so the kernel's socket buffer does not drop them before we count them.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !intruder.heard_from_cluster().await.unwrap(),
        "the intruder got no authenticated answer"
    );
    let after = a.view();
    assert_eq!(after.nodes.len(), before.nodes.len(), "no node added");
    assert_eq!(after.networks, before.networks, "networks unchanged");
    // Those the socket filter can tell apart (wrong version byte, too short) the kernel
    // drops and counts; the rest fail authentication in the engine.
    let (gossip, rejects) = a.counters().await.unwrap();
    assert!(
        rejects.total() + gossip.kernel_dropped >= 2000 && rejects.total() > 0,
        "rejected datagrams are counted: {} by the engine, {} by the kernel",
        rejects.total(),
        gossip.kernel_dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_endpoint_allocations_never_share_an_address() {
    use manager::ops::EndpointRequest;
    let (a, b) = two_nodes().await;
    // A /29 leaves 4 endpoint addresses (.2-.5): gateway .1, one VIP, no broadcast.
    a.create_network("tiny", Some("10.66.0.0/29".parse().unwrap()), None)
        .await
        .unwrap();
    eventually("tiny on b", || b.view().network("tiny").is_some()).await;

    let request = |m: &Manager, n: u32| EndpointRequest {
        id: format!("{}{n}", m.node().short()),
        name: format!("ep{n}"),
        network: "tiny".to_owned(),
        netns: format!("ns{n}"),
        host_ifname: format!("if{n}"),
        owns_netns: true,
        settle: true,
    };
    let (a1, b1, a2, b2) = tokio::join!(
        a.create_endpoint(request(&a, 1)),
        b.create_endpoint(request(&b, 1)),
        a.create_endpoint(request(&a, 2)),
        b.create_endpoint(request(&b, 2)),
    );
    let mut ips: Vec<_> = [a1, b1, a2, b2]
        .into_iter()
        .map(|r| r.expect("allocated").ip)
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "four distinct addresses: {ips:?}");
    eventually("both views agree, no collisions left", || {
        let (va, vb) = (a.view(), b.view());
        va.endpoints == vb.endpoints
            && va.endpoints.valid.len() == 4
            && va.endpoints.collided.is_empty()
    })
    .await;
    // The network is full now, and cannot be removed while endpoints remain.
    let full = a.create_endpoint(request(&a, 3)).await.unwrap_err();
    assert!(matches!(full, OpError::NetworkFull { .. }), "{full}");
    let in_use = a.remove_network("tiny").await;
    assert!(
        matches!(in_use, Err(OpError::NetworkInUse { .. })),
        "{in_use:?}"
    );
    a.remove_endpoint("ep1").await.expect("remove");
    assert!(matches!(
        a.remove_endpoint("ep1").await,
        Err(OpError::NoSuchEndpoint { .. })
    ));
}
