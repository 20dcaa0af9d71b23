//! Whole clusters simulated in one process (real engines, in-memory network with loss,
//! delay and partitions, virtual time). Deadlines are generous: the figures belong to
//! `cargo xtask bench gossip`, not to assertions.

use std::{collections::HashSet, time::Duration};

use manager::{
    gossip::Tuning,
    sim::{NetworkModel, Sim},
    state::{Kind, RecordKey, Scope},
};

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

fn sim(nodes: usize, loss: f64, seed: u64) -> Sim {
    let model = NetworkModel {
        loss,
        ..NetworkModel::default()
    };
    Sim::new(nodes, model, Tuning::default(), seed)
}

fn wait(sim: &mut Sim, what: &str, timeout: Duration, cond: impl FnMut(&Sim) -> bool) -> Duration {
    sim.run_until_true(timeout, POLL, cond)
        .unwrap_or_else(|| panic!("{what} did not happen within {timeout:?} (virtual)"))
}

/// Whether every running node has a record under `key` (a tombstone counts only if
/// `tombstone`).
fn everyone_has(sim: &Sim, key: &RecordKey, tombstone: bool) -> bool {
    (0..sim.len())
        .filter_map(|i| sim.engine(i))
        .all(|e| e.with_store(|s| s.get(key).is_some_and(|r| r.is_tombstone() == tombstone)))
}

fn sees_down(sim: &Sim, observer: usize, node: usize) -> bool {
    let id = sim.id(node);
    sim.engine(observer).is_some_and(|e| !e.is_up(&id))
}

#[test]
fn hundred_nodes_converge_spread_writes_and_detect_a_kill() {
    let mut sim = sim(100, 0.0, 1);
    wait(
        &mut sim,
        "membership of 100 nodes",
        60 * SECOND,
        Sim::membership_converged,
    );

    // A node-scoped write on one node reaches every node.
    let writer = 7;
    let key = RecordKey::node(sim.id(writer), Kind::Other(101), "ep-1");
    sim.write(
        writer,
        Scope::Node(sim.id(writer)),
        Kind::Other(101),
        "ep-1",
        Some(b"10.10.0.5".to_vec()),
    );
    wait(&mut sim, "a write reaching 100 nodes", 10 * SECOND, |s| {
        everyone_has(s, &key, false)
    });

    // A killed node is declared down by every other node.
    sim.kill(3);
    wait(
        &mut sim,
        "99 nodes declaring node 3 down",
        20 * SECOND,
        |s| (0..s.len()).filter(|&i| i != 3).all(|i| sees_down(s, i, 3)),
    );
    // Its node-scoped entries stop counting for readers (the store keeps them).
    let id3 = sim.id(3);
    let live_endpoints_of_3 = sim.engine(0).unwrap().with_store(|s| {
        s.live(Kind::NodeInfo, |n| *n != id3)
            .filter(|r| r.key.node_id() == Some(id3))
            .count()
    });
    assert_eq!(live_endpoints_of_3, 0);

    // Restarted with its previous ID, it is up again everywhere.
    sim.restart(3, 0);
    wait(
        &mut sim,
        "node 3 back up everywhere",
        20 * SECOND,
        Sim::membership_converged,
    );
}

#[test]
fn cluster_objects_outlive_their_writer_and_deletes_win() {
    let mut sim = sim(20, 0.0, 2);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    let net = RecordKey::cluster(Kind::Other(100), "web");
    sim.write(
        5,
        Scope::Cluster,
        Kind::Other(100),
        "web",
        Some(b"payload".to_vec()),
    );
    wait(&mut sim, "the network everywhere", 10 * SECOND, |s| {
        everyone_has(s, &net, false)
    });

    sim.kill(5);
    sim.run_for(30 * SECOND);
    assert!(
        everyone_has(&sim, &net, false),
        "the network outlives its creator"
    );

    // Any node may delete it; the tombstone wins everywhere.
    sim.write(9, Scope::Cluster, Kind::Other(100), "web", None);
    wait(&mut sim, "the tombstone everywhere", 10 * SECOND, |s| {
        everyone_has(s, &net, true)
    });
}

#[test]
fn concurrent_writes_resolve_the_same_way_everywhere() {
    let mut sim = sim(20, 0.0, 3);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    let key = RecordKey::cluster(Kind::Other(100), "db");
    // Two nodes write the same key at the same virtual instant.
    sim.write(
        1,
        Scope::Cluster,
        Kind::Other(100),
        "db",
        Some(b"from-1".to_vec()),
    );
    sim.write(
        2,
        Scope::Cluster,
        Kind::Other(100),
        "db",
        Some(b"from-2".to_vec()),
    );
    sim.run_for(10 * SECOND);
    let values: HashSet<Vec<u8>> = (0..sim.len())
        .map(|i| {
            sim.engine(i)
                .unwrap()
                .with_store(|s| s.get(&key).unwrap().value.clone().unwrap())
        })
        .collect();
    assert_eq!(
        values.len(),
        1,
        "every node holds the same winner: {values:?}"
    );
}

#[test]
fn a_partition_heals_into_one_state() {
    let n = 20;
    let mut sim = sim(n, 0.0, 4);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    let groups: Vec<usize> = (0..n).map(|i| usize::from(i >= n / 2)).collect();
    sim.partition(groups);
    wait(
        &mut sim,
        "each side declaring the other down",
        30 * SECOND,
        |s| sees_down(s, 0, n - 1) && sees_down(s, n - 1, 0),
    );
    // Writes on both sides while split.
    sim.write(
        1,
        Scope::Cluster,
        Kind::Other(100),
        "left",
        Some(b"l".to_vec()),
    );
    sim.write(
        n - 2,
        Scope::Cluster,
        Kind::Other(100),
        "right",
        Some(b"r".to_vec()),
    );
    sim.run_for(5 * SECOND);

    sim.heal();
    wait(
        &mut sim,
        "membership after healing",
        60 * SECOND,
        Sim::membership_converged,
    );
    wait(
        &mut sim,
        "identical stores after healing",
        60 * SECOND,
        |s| {
            let digests: HashSet<_> = (0..s.len())
                .map(|i| s.engine(i).unwrap().with_store(|st| st.digest()))
                .collect();
            digests.len() == 1
        },
    );
    for name in ["left", "right"] {
        assert!(
            everyone_has(&sim, &RecordKey::cluster(Kind::Other(100), name), false),
            "{name}"
        );
    }
}

#[test]
fn no_live_node_is_declared_down_under_five_percent_loss() {
    // 10 nodes for 30 virtual minutes: 5 node-hours (the benchmark runs 10+).
    let mut sim = sim(10, 0.0, 5);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    sim.set_loss(0.05);
    for _ in 0..(30 * 60) {
        sim.run_for(SECOND);
        assert!(
            sim.membership_converged(),
            "a live node was declared down at {:?} under 5% loss",
            sim.now()
        );
    }
}

#[test]
fn a_node_with_another_key_learns_nothing_and_changes_nothing() {
    // Two separate clusters on one simulated network: each node of cluster B sends to
    // cluster A's addresses (same addresses: node i of B is node i of A's peer).
    let mut a = sim(5, 0.0, 6);
    wait(&mut a, "membership", 30 * SECOND, Sim::membership_converged);
    let digest_before = a.engine(0).unwrap().with_store(|s| s.digest());
    let rejected_before = a.engine(0).unwrap().reject_counters().total();
    // Feed engine 0 of cluster A datagrams produced by cluster B's engines.
    let mut b = sim(5, 0.0, 7);
    b.run_for(5 * SECOND);
    let outputs = b.capture(10 * SECOND);
    assert!(!outputs.is_empty(), "cluster B produced traffic");
    for datagram in &outputs {
        a.inject(0, datagram);
    }
    let engine = a.engine(0).unwrap();
    assert_eq!(
        engine.with_store(|s| s.digest()),
        digest_before,
        "state unchanged"
    );
    assert_eq!(
        engine.reject_counters().total() - rejected_before,
        outputs.len() as u64,
        "every foreign datagram rejected and counted"
    );
}

#[test]
fn a_restarted_node_with_a_slower_clock_still_wins_for_its_own_entries() {
    let mut sim = sim(10, 0.0, 8);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    let node = 4;
    let id = sim.id(node);
    let key = RecordKey::node(id, Kind::Other(101), "ep");
    // Written while its clock ran 20 s ahead...
    sim.set_clock_offset(node, 20_000);
    sim.write(
        node,
        Scope::Node(id),
        Kind::Other(101),
        "ep",
        Some(b"old".to_vec()),
    );
    wait(&mut sim, "the old value everywhere", 10 * SECOND, |s| {
        everyone_has(s, &key, false)
    });
    // ...then restarted with a correct clock, it writes a new value with an older stamp.
    sim.kill(node);
    sim.set_clock_offset(node, 0);
    sim.restart(node, 0);
    sim.write(
        node,
        Scope::Node(id),
        Kind::Other(101),
        "ep",
        Some(b"new".to_vec()),
    );
    wait(&mut sim, "the new value everywhere", 20 * SECOND, |s| {
        (0..s.len()).filter_map(|i| s.engine(i)).all(|e| {
            e.with_store(|st| st.get(&key).and_then(|r| r.value.clone()) == Some(b"new".to_vec()))
        })
    });
}

#[test]
fn records_from_a_clock_hours_ahead_are_refused() {
    let mut sim = sim(5, 0.0, 9);
    wait(
        &mut sim,
        "membership",
        30 * SECOND,
        Sim::membership_converged,
    );
    sim.set_clock_offset(2, 2 * 3600 * 1000);
    let key = RecordKey::cluster(Kind::Other(100), "future");
    sim.write(
        2,
        Scope::Cluster,
        Kind::Other(100),
        "future",
        Some(b"x".to_vec()),
    );
    sim.run_for(10 * SECOND);
    let holders = (0..sim.len())
        .filter(|&i| i != 2)
        .filter(|&i| sim.engine(i).unwrap().with_store(|s| s.get(&key).is_some()))
        .count();
    assert_eq!(
        holders, 0,
        "no node accepted a record stamped two hours ahead"
    );
    let rejected: u64 = (0..sim.len())
        .filter(|&i| i != 2)
        .map(|i| sim.engine(i).unwrap().counters().records_rejected)
        .sum();
    assert!(rejected > 0, "the refusals are counted");
}
