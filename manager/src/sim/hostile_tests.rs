//! A member that turned hostile: it holds the cluster key, so everything it sends opens
//! and authenticates. Fed its sealed records, the cluster must stay up, keep its memory
//! bounded, and keep serving valid state (issue 15).

use std::time::Duration;

use super::{NetworkModel, Sim};
use crate::{
    gossip::{wire, Engine, Tuning},
    secure::max_plaintext,
    state::{
        encode_record, Kind, Mode, NodeInfo, Record, RecordKey, Scope, Service, Stamp,
        MAX_UNKNOWN_PER_WRITER,
    },
    testing,
    view::ClusterView,
};

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
const NODES: usize = 5;
/// The hostile member: node 4, sealing with a sealer of its own in boot epoch 2.
const HOSTILE: usize = 4;

fn converged() -> Sim {
    let mut sim = Sim::new(NODES, NetworkModel::default(), Tuning::default(), 15);
    assert!(
        sim.run_until_true(30 * SECOND, POLL, Sim::membership_converged)
            .is_some(),
        "membership"
    );
    for i in 0..NODES {
        let mut info = testing::node(1, true, [10, 0, 0, i as u8 + 1])
            .info
            .expect("fixture has info");
        info.hostname = format!("h{i}");
        let id = sim.id(i);
        sim.write(
            i,
            Scope::Node(id),
            Kind::NodeInfo,
            NodeInfo::NAME,
            Some(info.encode()),
        );
    }
    let web = testing::service("web", Mode::Replicated { replicas: 3 }, stamp(&sim, 1, 0));
    sim.write(0, Scope::Cluster, Kind::Service, "web", Some(web.encode()));
    sim.run_for(5 * SECOND);
    sim
}

/// A stamp `ahead_ms` past node `i`'s clock, written by node `writer`.
fn stamp(sim: &Sim, writer: usize, ahead_ms: u64) -> Stamp {
    Stamp {
        hlc: crate::hlc::compose(sim.wall_ms_of(writer) + ahead_ms, 0),
        writer: sim.id(writer),
    }
}

fn view(sim: &Sim, i: usize) -> ClusterView {
    ClusterView::build(sim.engine(i).expect("running"))
}

fn honest(sim: &Sim) -> impl Iterator<Item = &Engine> {
    (0..NODES)
        .filter(|&i| i != HOSTILE)
        .filter_map(|i| sim.engine(i))
}

/// Sends `records` sealed by the hostile member to every other node, packed as
/// anti-entropy batches.
fn send_records(sim: &mut Sim, records: &[Record]) {
    let encoded: Vec<Vec<u8>> = records.iter().map(encode_record).collect();
    let payloads = wire::records(encoded.iter().map(Vec::as_slice), max_plaintext(1500));
    let hostile_id = sim.id(HOSTILE);
    for payload in payloads {
        let datagram = sim.seal_as(hostile_id, 2, &payload);
        for to in (0..NODES).filter(|&i| i != HOSTILE) {
            sim.inject_from(to, HOSTILE, &datagram);
        }
    }
}

/// What the honest nodes hold: (records, bytes of encoded records), the largest of them.
fn footprint(sim: &Sim) -> (usize, usize) {
    honest(sim)
        .map(|e| {
            e.with_store(|s| {
                (
                    s.len(),
                    s.iter().map(|r| encode_record(r).len()).sum::<usize>(),
                )
            })
        })
        .max()
        .expect("honest nodes")
}

#[test]
fn invalid_records_are_refused_counted_and_valid_state_stays() {
    let mut sim = converged();
    let before = footprint(&sim);
    let evil = testing::service(
        "evil",
        Mode::Replicated { replicas: u32::MAX },
        stamp(&sim, HOSTILE, 0),
    );
    let mut mtu0 = view(&sim, HOSTILE)
        .node(&sim.id(HOSTILE))
        .and_then(|n| n.info.clone())
        .expect("hostile node described itself");
    mtu0.underlay_mtu = 0;
    // "web" overwritten by a service of replicas u32::MAX under its own name.
    let mut web_evil = evil.clone();
    web_evil.name = "web".into();
    let records = vec![
        Record {
            key: Service::key("evil"),
            stamp: stamp(&sim, HOSTILE, 0),
            value: Some(evil.encode()),
        },
        Record {
            key: Service::key("web"),
            stamp: stamp(&sim, HOSTILE, 10),
            value: Some(web_evil.encode()),
        },
        Record {
            key: NodeInfo::key(sim.id(HOSTILE)),
            stamp: stamp(&sim, HOSTILE, 10),
            value: Some(mtu0.encode()),
        },
        // Oversized fields: a name and a value past the limits, and a payload whose length
        // prefixes claim more than it holds.
        Record {
            key: RecordKey::cluster(Kind::Service, "x".repeat(255)),
            stamp: stamp(&sim, HOSTILE, 0),
            value: Some(vec![0xff; 1000]),
        },
    ];
    send_records(&mut sim, &records);
    // A value over the limit does not even decode; send it raw.
    let mut huge = encode_record(&Record {
        key: Service::key("huge"),
        stamp: stamp(&sim, HOSTILE, 0),
        value: Some(vec![1; 1024]),
    });
    huge.extend_from_slice(&[0; 16]);
    let mut payload = vec![4u8];
    payload.extend_from_slice(&(huge.len() as u16).to_le_bytes());
    payload.extend_from_slice(&huge);
    let hostile_id = sim.id(HOSTILE);
    let datagram = sim.seal_as(hostile_id, 2, &payload);
    // And a datagram larger than any member sends: dropped before decryption.
    let oversized = vec![1u8; 60_000];
    for to in 0..HOSTILE {
        sim.inject_from(to, HOSTILE, &datagram);
        sim.inject_from(to, HOSTILE, &oversized);
    }
    sim.run_for(5 * SECOND);

    for i in 0..HOSTILE {
        let v = view(&sim, i);
        assert!(
            v.services.get("evil").is_none(),
            "node {i} took the evil service"
        );
        let web = v.services.get("web").expect("web still served");
        assert_eq!(web.mode, Mode::Replicated { replicas: 3 }, "node {i}");
        assert_eq!(v.overlay_mtu, Some(1450), "node {i}: overlay MTU kept");
        let c = sim.engine(i).unwrap().counters();
        assert!(
            c.records_invalid >= 3,
            "node {i} counted {}",
            c.records_invalid
        );
        assert!(c.oversized >= 1, "node {i}: oversized datagram counted");
    }
    let after = footprint(&sim);
    assert_eq!(
        after.0, before.0,
        "no record added: {before:?} -> {after:?}"
    );
    // Still live and writable: a new valid service reaches every node.
    let db = testing::service("db", Mode::Replicated { replicas: 1 }, stamp(&sim, 2, 0));
    sim.write(2, Scope::Cluster, Kind::Service, "db", Some(db.encode()));
    assert!(
        sim.run_until_true(10 * SECOND, POLL, |s| (0..NODES)
            .all(|i| view(s, i).services.get("db").is_some()))
            .is_some(),
        "a valid write after the attack spreads"
    );
    assert!(sim.membership_converged(), "nobody was declared down");
}

#[test]
fn unknown_kinds_in_bulk_are_bounded_per_writer() {
    let mut sim = converged();
    let before = footprint(&sim);
    let bulk: Vec<Record> = (0..20 * MAX_UNKNOWN_PER_WRITER)
        .map(|n| Record {
            key: RecordKey::cluster(Kind::Other(200), format!("junk-{n}")),
            stamp: stamp(&sim, HOSTILE, 0),
            value: Some(vec![7; 900]),
        })
        .collect();
    send_records(&mut sim, &bulk);
    sim.run_for(10 * SECOND);
    let after = footprint(&sim);
    println!(
        "unknown kinds: {} sent; honest store {} records / {} B before, {} / {} B after",
        bulk.len(),
        before.0,
        before.1,
        after.0,
        after.1
    );
    let hostile_id = sim.id(HOSTILE);
    for e in honest(&sim) {
        assert_eq!(
            e.with_store(|s| s.unknown_of(&hostile_id)),
            MAX_UNKNOWN_PER_WRITER
        );
        assert!(e.counters().unknown_over_limit > 0, "refusals counted");
    }
    assert!(
        after.0 <= before.0 + MAX_UNKNOWN_PER_WRITER,
        "store bounded: {before:?} -> {after:?}"
    );
    assert!(after.1 <= before.1 + MAX_UNKNOWN_PER_WRITER * 1000);
    // Kept (newer versions depend on them): every honest node holds the same ones.
    let sets: Vec<Vec<String>> = honest(&sim)
        .map(|e| {
            e.with_store(|s| {
                s.cluster_records(Kind::Other(200))
                    .map(|r| r.key.name.clone())
                    .collect()
            })
        })
        .collect();
    assert!(
        sets.windows(2).all(|w| w[0] == w[1]),
        "the same unknown records everywhere"
    );
    assert!(sim.membership_converged());
}

#[test]
fn a_forged_epoch_cannot_silence_a_node() {
    let mut sim = converged();
    let victim = 1;
    let victim_id = sim.id(victim);
    // A sealed SWIM-less payload (a digest) claiming the victim's ID in epoch u64::MAX,
    // and one just inside the drift bound.
    let digest = wire::digest(&[0; crate::state::BUCKETS]);
    let max = sim.seal_as(victim_id, u64::MAX, &digest);
    let near = sim.seal_as(victim_id, sim.wall_ms_of(0) + 3_000_000, &digest);
    for to in (0..NODES).filter(|&i| i != victim) {
        sim.inject_from(to, HOSTILE, &max);
        sim.inject_from(to, HOSTILE, &near);
    }
    sim.run_for(10 * SECOND);
    for i in (0..NODES).filter(|&i| i != victim) {
        let e = sim.engine(i).unwrap();
        assert!(e.is_up(&victim_id), "node {i} declared the victim down");
        assert!(
            e.reject_counters().epoch_ahead >= 1,
            "node {i} counted the forged epoch"
        );
    }
    // The victim's writes still reach everyone, and after a restart it is heard at once.
    let key = RecordKey::cluster(Kind::Other(100), "from-victim");
    sim.write(
        victim,
        Scope::Cluster,
        Kind::Other(100),
        "from-victim",
        Some(vec![1]),
    );
    assert!(
        sim.run_until_true(10 * SECOND, POLL, |s| (0..NODES)
            .all(|i| s.engine(i).unwrap().with_store(|st| st.get(&key).is_some())))
            .is_some(),
        "the victim is heard"
    );
    sim.kill(victim);
    sim.run_for(5 * SECOND);
    sim.restart(victim, 0);
    assert!(
        sim.run_until_true(10 * SECOND, POLL, Sim::membership_converged)
            .is_some(),
        "the restarted victim is heard at once"
    );
}

#[test]
fn a_removal_of_a_live_node_is_undone_by_the_node_and_then_collected() {
    let mut sim = converged();
    let victim = 2;
    let victim_id = sim.id(victim);
    let removal = Record {
        key: RecordKey::node_removal(victim_id),
        stamp: stamp(&sim, HOSTILE, 0),
        value: Some(Vec::new()),
    };
    send_records(&mut sim, &[removal]);
    let listed_everywhere = |s: &Sim| {
        (0..NODES).all(|i| {
            view(s, i)
                .node(&victim_id)
                .is_some_and(|n| n.up && n.info.is_some())
        })
    };
    assert!(
        sim.run_until_true(10 * SECOND, POLL, listed_everywhere)
            .is_some(),
        "the removed live node is back in every view"
    );
    assert!(sim.engine(victim).unwrap().counters().reannounced >= 1);
    // Every live member has seen the removal: it is collected everywhere.
    let collected = |s: &Sim| {
        (0..NODES).all(|i| {
            s.engine(i)
                .unwrap()
                .with_store(|st| st.removal(&victim_id).is_none())
        })
    };
    assert!(
        sim.run_until_true(600 * SECOND, SECOND, collected)
            .is_some(),
        "the removal was collected on every node"
    );
    sim.run_for(60 * SECOND);
    assert!(collected(&sim), "and stays collected");
    assert!(listed_everywhere(&sim), "the node is still listed");
}

#[test]
fn records_of_a_removed_node_stay_out_until_it_returns() {
    // The ordinary `node rm` of a dead node still works.
    let mut sim = converged();
    let dead = 3;
    let dead_id = sim.id(dead);
    sim.kill(dead);
    assert!(sim
        .run_until_true(20 * SECOND, POLL, |s| !s.engine(0).unwrap().is_up(&dead_id))
        .is_some());
    let key = RecordKey::node_removal(dead_id);
    sim.write(0, Scope::Cluster, key.kind, &key.name, Some(Vec::new()));
    sim.run_for(5 * SECOND);
    for i in (0..NODES).filter(|&i| i != dead) {
        assert!(
            view(&sim, i).node(&dead_id).is_none(),
            "node {i} still lists it"
        );
    }
}

#[test]
fn junk_changes_no_marker_so_no_view_is_rebuilt() {
    let mut sim = converged();
    let marker = sim.engine(0).unwrap().change_marker();
    let mut junk = vec![1u8; 200];
    for i in 0..1000u32 {
        junk[1..5].copy_from_slice(&i.to_le_bytes());
        sim.inject_from(0, HOSTILE, &junk);
    }
    sim.inject_from(0, HOSTILE, &vec![1u8; 60_000]);
    assert_eq!(
        sim.engine(0).unwrap().change_marker(),
        marker,
        "junk moved the store or membership version"
    );
    let e = sim.engine(0).unwrap();
    assert_eq!(e.reject_counters().forged, 1000);
    assert_eq!(e.counters().oversized, 1);
}
