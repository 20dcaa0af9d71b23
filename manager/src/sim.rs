//! A whole cluster in one process: every node runs the real [`Engine`] (foca, the secure
//! envelope, anti-entropy), datagrams go through an in-memory network with loss, delay and
//! partitions, and time is virtual, so an hour of cluster life takes seconds and every
//! run with the same seed is the same run.
//!
//! Used by the manager's tests (100+ nodes) and by `cargo xtask bench gossip` (1000).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::{
    gossip::{Engine, EngineConfig, Output, Timer, Tuning},
    secure::{ClusterKey, JoinToken, Sealer},
    state::{Kind, Scope, Stamp},
    NodeId,
};

/// The simulated wall clock starts here (2026-01-01), so HLC timestamps look real.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// How the simulated network behaves.
#[derive(Clone, Debug)]
pub struct NetworkModel {
    /// Probability that any datagram is lost.
    pub loss: f64,
    /// One-way delay, uniform in this range.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Underlay MTU every node reports.
    pub mtu: u32,
}

impl Default for NetworkModel {
    fn default() -> Self {
        NetworkModel {
            loss: 0.0,
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
            mtu: 1500,
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        from: SocketAddr,
        datagram: Vec<u8>,
    },
    Timer {
        node: usize,
        life: u64,
        timer: Timer,
    },
}

struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    id: NodeId,
    addr: SocketAddr,
    engine: Option<Engine>,
    /// Bumped on every kill/restart, so timers of a previous life are ignored.
    life: u64,
    boot_epoch: u64,
    bytes_out: u64,
    /// This node's clock error, in ms (positive: ahead).
    clock_offset_ms: i64,
}

/// A simulated cluster.
pub struct Sim {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
    /// Partition groups: nodes in different groups cannot talk. Empty = no partition.
    group_of: Vec<usize>,
    model: NetworkModel,
    tuning: Tuning,
    token: JoinToken,
    rng: StdRng,
    /// Datagrams dropped by loss or partition.
    pub dropped: u64,
    pub delivered: u64,
    /// When set, a copy of every datagram sent (see [`Sim::capture`]).
    tap: Option<Vec<Vec<u8>>>,
    /// Sealers of a hostile member (see [`Sim::seal_as`]), by claimed node and epoch, so
    /// their counters keep rising like a real sender's.
    forgers: HashMap<(NodeId, u64), Sealer>,
}

impl Sim {
    /// `nodes` nodes; node 0 starts alone, every other node joins through node 0 at t=0.
    pub fn new(nodes: usize, model: NetworkModel, tuning: Tuning, seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let token = JoinToken {
            cluster_id: rng.random(),
            key: ClusterKey::from_bytes(rng.random()),
        };
        let mut sim = Sim {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            group_of: vec![0; nodes],
            model,
            tuning,
            token,
            rng,
            dropped: 0,
            delivered: 0,
            tap: None,
            forgers: HashMap::new(),
        };
        for i in 0..nodes {
            let addr = SocketAddr::from((Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1), 7946));
            let id = NodeId(sim.rng.random());
            sim.by_addr.insert(addr, i);
            sim.nodes.push(SimNode {
                id,
                addr,
                engine: None,
                life: 0,
                boot_epoch: 1,
                bytes_out: 0,
                clock_offset_ms: 0,
            });
            sim.start(i);
        }
        let seed_addr = sim.nodes[0].addr;
        for i in 1..nodes {
            let wall = sim.wall_ms_of(i);
            let outputs = sim.nodes[i]
                .engine
                .as_mut()
                .expect("just started")
                .join(&[seed_addr], wall);
            sim.apply(i, outputs);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.life += 1;
        let config = EngineConfig {
            node: node.id,
            addr: node.addr,
            boot_epoch: node.boot_epoch,
            token: self.token.clone(),
            underlay_mtu: self.model.mtu,
            tuning: self.tuning.clone(),
            rng_seed: self.rng.random(),
            initial_records: Vec::new(),
        };
        let wall = self.wall_ms_of(i);
        let (engine, outputs) = Engine::new(config, wall);
        self.nodes[i].engine = Some(engine);
        self.apply(i, outputs);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now.as_millis() as u64
    }

    /// Node `i`'s wall clock, including its error.
    fn wall_ms_of(&self, i: usize) -> u64 {
        self.wall_ms()
            .saturating_add_signed(self.nodes[i].clock_offset_ms)
    }

    /// Makes node `i`'s clock run `offset_ms` ahead (or behind, if negative).
    pub fn set_clock_offset(&mut self, i: usize, offset_ms: i64) {
        self.nodes[i].clock_offset_ms = offset_ms;
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    /// The engine of a running node.
    pub fn engine(&self, i: usize) -> Option<&Engine> {
        self.nodes[i].engine.as_ref()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    /// Bytes node `i` has sent, over all its lives.
    pub fn bytes_out(&self, i: usize) -> u64 {
        self.nodes[i].bytes_out
    }

    /// Stops node `i` abruptly (kill -9): no goodbye, its in-flight timers die with it.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].engine = None;
        self.nodes[i].life += 1;
    }

    /// Restarts a killed node with the same ID and a new boot epoch, rejoining via `via`.
    pub fn restart(&mut self, i: usize, via: usize) {
        self.nodes[i].boot_epoch += 1;
        self.start(i);
        let seed = self.nodes[via].addr;
        let wall = self.wall_ms_of(i);
        let outputs = self.nodes[i]
            .engine
            .as_mut()
            .expect("just started")
            .join(&[seed], wall);
        self.apply(i, outputs);
    }

    /// Node `i` leaves gracefully, then stops.
    pub fn leave(&mut self, i: usize) {
        let wall = self.wall_ms_of(i);
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            let outputs = engine.leave(wall);
            self.apply(i, outputs);
        }
        self.kill(i);
    }

    /// Splits the cluster: `groups[i]` is node i's side; datagrams between sides are lost.
    pub fn partition(&mut self, groups: Vec<usize>) {
        assert_eq!(groups.len(), self.nodes.len(), "one group per node");
        self.group_of = groups;
    }

    pub fn heal(&mut self) {
        self.group_of = vec![0; self.nodes.len()];
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.model.loss = loss;
    }

    /// A write on node `i`, as the manager API does it.
    pub fn write(
        &mut self,
        i: usize,
        scope: Scope,
        kind: Kind,
        name: &str,
        value: Option<Vec<u8>>,
    ) -> Stamp {
        let wall = self.wall_ms_of(i);
        let engine = self.nodes[i]
            .engine
            .as_mut()
            .expect("writing on a running node");
        let (stamp, outputs) = engine.write(scope, kind, name.to_owned(), |_| value, wall);
        self.apply(i, outputs);
        stamp
    }

    fn apply(&mut self, i: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, datagram } => {
                    self.nodes[i].bytes_out += datagram.len() as u64;
                    if let Some(tap) = self.tap.as_mut() {
                        tap.push(datagram.clone());
                    }
                    let Some(&j) = self.by_addr.get(&to) else {
                        self.dropped += 1;
                        continue;
                    };
                    if self.group_of[i] != self.group_of[j]
                        || self.rng.random_bool(self.model.loss.clamp(0.0, 1.0))
                    {
                        self.dropped += 1;
                        continue;
                    }
                    let (lo, hi) = (
                        self.model.min_delay.as_micros() as u64,
                        self.model.max_delay.as_micros() as u64,
                    );
                    let delay = Duration::from_micros(self.rng.random_range(lo..=hi.max(lo)));
                    let from = self.nodes[i].addr;
                    self.push(
                        self.now + delay,
                        Event::Deliver {
                            to: j,
                            from,
                            datagram,
                        },
                    );
                }
                Output::Schedule { after, timer } => {
                    let life = self.nodes[i].life;
                    self.push(
                        self.now + after,
                        Event::Timer {
                            node: i,
                            life,
                            timer,
                        },
                    );
                }
            }
        }
    }

    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Processes events up to `until` (virtual).
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(Queued { at, event, .. }) = self.queue.pop().expect("peeked");
            self.now = at;
            self.step(event);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` more.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until `cond` holds (checked every `every` of virtual time) or `timeout` passes;
    /// returns how long it took.
    pub fn run_until_true(
        &mut self,
        timeout: Duration,
        every: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if cond(self) {
                return Some(self.now - start);
            }
            if self.now - start >= timeout {
                return None;
            }
            self.run_for(every);
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, datagram } => {
                let wall = self.wall_ms_of(to);
                let Some(engine) = self.nodes[to].engine.as_mut() else {
                    self.dropped += 1;
                    return;
                };
                self.delivered += 1;
                let outputs = engine.handle_datagram(from, &datagram, wall);
                self.apply(to, outputs);
            }
            Event::Timer { node, life, timer } => {
                if self.nodes[node].life != life {
                    return;
                }
                let wall = self.wall_ms_of(node);
                let Some(engine) = self.nodes[node].engine.as_mut() else {
                    return;
                };
                let outputs = engine.handle_timer(timer, wall);
                self.apply(node, outputs);
            }
        }
    }

    /// Runs for `duration` and returns a copy of every datagram sent meanwhile.
    pub fn capture(&mut self, duration: Duration) -> Vec<Vec<u8>> {
        self.tap = Some(Vec::new());
        self.run_for(duration);
        self.tap.take().unwrap_or_default()
    }

    /// Delivers `datagram` to node `to` now, as if from an address outside the cluster.
    pub fn inject(&mut self, to: usize, datagram: &[u8]) {
        let from = SocketAddr::from(([192, 0, 2, 1], 7946));
        let wall = self.wall_ms_of(to);
        if let Some(engine) = self.nodes[to].engine.as_mut() {
            let outputs = engine.handle_datagram(from, datagram, wall);
            self.apply(to, outputs);
        }
    }

    /// Seals `payload` with the cluster key as `node` in boot `epoch` would: what a member
    /// that turned hostile (it holds the key) can send, claiming any node ID and epoch.
    pub fn seal_as(&mut self, node: NodeId, epoch: u64, payload: &[u8]) -> Vec<u8> {
        let token = &self.token;
        self.forgers
            .entry((node, epoch))
            .or_insert_with(|| Sealer::new(&token.key, token.cluster_id, node, epoch))
            .seal(payload)
    }

    /// Delivers `datagram` to node `to` now, from node `from`'s address.
    pub fn inject_from(&mut self, to: usize, from: usize, datagram: &[u8]) {
        let from = self.nodes[from].addr;
        let wall = self.wall_ms_of(to);
        if let Some(engine) = self.nodes[to].engine.as_mut() {
            let outputs = engine.handle_datagram(from, datagram, wall);
            self.apply(to, outputs);
        }
    }

    /// The boot epoch node `i` runs with.
    pub fn boot_epoch(&self, i: usize) -> u64 {
        self.nodes[i].boot_epoch
    }

    /// Whether every running node sees exactly the running nodes as up.
    pub fn membership_converged(&self) -> bool {
        let running: HashSet<NodeId> = (0..self.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.id(i))
            .collect();
        (0..self.len())
            .filter_map(|i| self.engine(i))
            .all(|engine| {
                let up: HashSet<NodeId> = engine
                    .up_members()
                    .map(|m| m.id)
                    .chain([engine.node()])
                    .collect();
                up == running
            })
    }
}

#[cfg(test)]
mod hostile_tests;
