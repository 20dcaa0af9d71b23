//! The gossip engine: membership, failure detection and state dissemination, sans-IO.
//!
//! The engine owns no socket and no clock: it is fed datagrams, timer events and the
//! wall-clock time, and returns what to send and when to wake it. The tokio driver
//! ([`crate::driver`]) and the simulator ([`crate::sim`]) run the very same engine.
//!
//! Pieces:
//! - **foca** (SWIM with suspicion, indirect probes, periodic gossip) decides who is alive
//!   and disseminates state changes: every local write is a foca custom broadcast, which
//!   rides on SWIM messages and is re-broadcast by every node that found it new.
//! - **anti-entropy**: every `sync_interval`, push-pull with one random live member by
//!   per-bucket digests of the store, so joins get the whole state and partitions heal
//!   even for changes whose broadcasts were exhausted.
//! - **the secure envelope** ([`crate::secure`]): every datagram sealed with the cluster
//!   key; anything that does not open is dropped and counted before foca or the store see
//!   a byte of it.

pub mod member;
mod shared;
pub mod wire;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    num::{NonZeroU8, NonZeroUsize},
    sync::{Arc, Mutex},
    time::Duration,
};

use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, PostcardCodec};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use tracing::{debug, trace};

pub use member::Member;

use shared::Shared;

use crate::{
    hlc::Hlc,
    secure::{max_plaintext, JoinToken, Opener, RejectCounters, Sealer, SEAL_OVERHEAD},
    state::{encode_record, validate_record, Record, RecordKey, Scope, Stamp, Store, BUCKETS},
    NodeId,
};

/// A removal is collected no sooner than this after it was written, once every live
/// member has seen it: time for its broadcast to settle.
const REMOVAL_MIN_AGE: Duration = Duration::from_secs(60);

/// How long a collected removal is remembered, so the same record offered again by a member
/// that has not collected it yet is not taken back.
const REMOVAL_MEMORY: Duration = Duration::from_secs(3600);

/// The largest datagram accepted whatever the local MTU: a jumbo-frame underlay (9000).
/// A node with a smaller MTU may still hear members with larger ones (fragmented).
const JUMBO_MTU: u32 = 9000;

/// The largest datagram a member sends to a node whose underlay MTU is `underlay_mtu`:
/// anything longer is junk ([`Engine::handle_datagram`], [`crate::socket_filter`]).
pub fn max_datagram(underlay_mtu: u32) -> usize {
    max_plaintext(underlay_mtu.max(JUMBO_MTU)) + SEAL_OVERHEAD
}

/// Announces a joining node sends to the first members it discovers.
const JOIN_ANNOUNCES: usize = 6;

/// How long a joiner announces at the fast rate.
const JOIN_BOOST: Duration = Duration::from_secs(30);

/// Timing and fan-out of the protocol. The defaults target a LAN of up to ~1000 nodes:
/// a dead node declared dead everywhere within ~3 s, no false "down" under 5 % loss.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// How often each node probes one member.
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect probes start.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared down.
    pub suspect_to_down_after: Duration,
    /// Periodic gossip of membership updates and broadcasts.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// How many times each update or broadcast is piggybacked.
    pub max_transmissions: u8,
    /// Anti-entropy period (jittered ±50 %).
    pub sync_interval: Duration,
    /// Tombstones older than this are dropped.
    pub tombstone_ttl: Duration,
    /// How long foca remembers a down identity.
    pub remove_down_after: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            probe_period: Duration::from_millis(250),
            probe_rtt: Duration::from_millis(100),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(900),
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            max_transmissions: 15,
            sync_interval: Duration::from_millis(1500),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            remove_down_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Everything the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub node: NodeId,
    /// The address other members send to (the advertise address and gossip port).
    pub addr: SocketAddr,
    /// Increases on every start of the node (replay protection and identity renewal).
    pub boot_epoch: u64,
    pub token: JoinToken,
    /// The smallest underlay MTU datagrams must fit.
    pub underlay_mtu: u32,
    pub tuning: Tuning,
    /// Seeds the engine's randomness (member choice), so simulations reproduce.
    pub rng_seed: u64,
    /// The store as this node last saved it: after a restart, the node knows its own
    /// entries and the cluster's objects at once, and a cluster whose nodes all restarted
    /// keeps its state.
    pub initial_records: Vec<Record>,
}

/// A timer the driver must deliver back to [`Engine::handle_timer`].
#[derive(Clone, Debug)]
pub enum Timer {
    Swim(foca::Timer<Member>),
    Sync,
    Gc,
    /// Re-announce to the seeds while no member has answered.
    Rejoin,
    /// Time out suspicions this node learned by gossip (see [`Engine::check_suspicions`]).
    Suspicions,
}

/// How often suspicions learned by gossip are checked for expiry.
const SUSPICION_CHECK: Duration = Duration::from_millis(200);

/// How often a node that knows no live member re-announces to its seeds.
const REJOIN_INTERVAL: Duration = Duration::from_secs(1);

/// Something the driver must do.
#[derive(Clone, Debug)]
pub enum Output {
    Send { to: SocketAddr, datagram: Vec<u8> },
    Schedule { after: Duration, timer: Timer },
}

/// Counters exported as metrics.
#[derive(Clone, Debug, Default)]
pub struct GossipCounters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams that opened but whose payload was malformed.
    pub malformed: u64,
    /// foca refused the message (malformed SWIM, from ourselves, ...).
    pub swim_errors: u64,
    pub records_applied: u64,
    pub records_stale: u64,
    pub records_rejected: u64,
    /// Records refused by their kind's validation function (see [`crate::state::validate`]).
    pub records_invalid: u64,
    /// Records of unknown kinds refused because their writer holds too many already.
    pub unknown_over_limit: u64,
    /// Datagrams larger than any member sends, dropped before decryption (when the
    /// socket filter is attached, the kernel drops them first: `kernel_dropped`).
    pub oversized: u64,
    /// Datagrams the kernel dropped before they were read: refused by the socket filter
    /// ([`crate::socket_filter`]) or arrived with the receive buffer full. Filled by the
    /// driver from the socket.
    pub kernel_dropped: u64,
    /// Anti-entropy messages from a node this one does not know as up: not answered.
    pub sync_from_unknown: u64,
    /// Times this node found itself removed while alive and wrote its entries again.
    pub reannounced: u64,
    /// `NodeRemoval` records collected after every live member had them.
    pub removals_collected: u64,
    pub syncs_started: u64,
}

/// The key foca uses to replace a not-yet-fully-disseminated broadcast with a newer one.
#[derive(Clone, Debug)]
pub struct BroadcastKey {
    key: RecordKey,
    stamp: Stamp,
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.stamp >= other.stamp
    }
}

struct RecordHandler {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub struct NeverError;

impl BroadcastHandler<Member> for RecordHandler {
    type Key = BroadcastKey;
    type Error = NeverError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Member>,
    ) -> Result<Option<BroadcastKey>, NeverError> {
        // Bad records are counted, not errors: an error would make foca drop the rest of
        // the message, including valid records and membership updates.
        let mut shared = self.shared.lock().expect("gossip state lock");
        Ok(shared
            .merge_encoded(data, sender.map(|m| m.id))
            .map(|r| BroadcastKey {
                key: r.key,
                stamp: r.stamp,
            }))
    }
}

/// The sans-IO gossip engine of one node.
pub struct Engine {
    me: Member,
    foca: Foca<Member, PostcardCodec, StdRng, RecordHandler>,
    shared: Arc<Mutex<Shared>>,
    sealer: Sealer,
    opener: Opener,
    runtime: AccumulatingRuntime<Member>,
    /// Members foca considers up (alive or suspect), by node.
    up: HashMap<NodeId, Member>,
    /// Members foca declared down, by node (a later `up` replaces them).
    down: HashMap<NodeId, Member>,
    /// Announces still to send to newly discovered members after a join: each answer
    /// (a feed of members) reveals more of the cluster, so a joiner learns a large
    /// cluster in a few round trips instead of waiting for periodic announces.
    join_announces_left: usize,
    /// Where to announce while alone (a lost announce or answer must not strand a joiner).
    seeds: Vec<SocketAddr>,
    /// foca's steady-state configuration.
    foca_config: foca::Config,
    /// Until when (wall ms) a joiner announces every second to several members: each
    /// answer is a feed of members, so a node joining a large cluster learns all of it
    /// in seconds rather than waiting for the slow steady-state announces.
    join_boost_until: Option<u64>,
    /// Members suspected in this node's view, by (identity, incarnation), with when this
    /// node first saw the suspicion (wall ms).
    suspects: HashMap<(Member, foca::Incarnation), u64>,
    tuning: Tuning,
    rng: StdRng,
    max_payload: usize,
    /// Larger datagrams are dropped before they are copied or authenticated.
    max_datagram: usize,
    /// Bumped on every membership change: with the store's version, tells the driver
    /// whether a new view is worth building.
    membership_version: u64,
    heard_from_cluster: bool,
    out: Vec<Output>,
}

impl Engine {
    /// A new engine, alone in its cluster until it joins or is joined. Returns the
    /// initial timers to schedule.
    pub fn new(config: EngineConfig, wall_ms: u64) -> (Engine, Vec<Output>) {
        let me = Member {
            id: config.node,
            addr: config.addr,
            generation: config.boot_epoch,
        };
        let max_payload = max_plaintext(config.underlay_mtu);
        let tuning = config.tuning.clone();
        let foca_config = foca::Config {
            probe_period: tuning.probe_period,
            probe_rtt: tuning.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(tuning.indirect_probes.max(1)).expect("max(1)"),
            max_transmissions: NonZeroU8::new(tuning.max_transmissions.max(1)).expect("max(1)"),
            suspect_to_down_after: tuning.suspect_to_down_after,
            remove_down_after: Some(tuning.remove_down_after),
            // One byte of the sealed payload is our tag.
            max_packet_size: NonZeroUsize::new(max_payload - 1).expect("MTU leaves room"),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::new(1).expect("1"),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(5),
                num_members: NonZeroUsize::new(2).expect("2"),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: tuning.gossip_interval,
                num_members: NonZeroUsize::new(tuning.gossip_fanout.max(1)).expect("max(1)"),
            }),
        };
        let mut store = Store::new();
        let mut hlc = Hlc::new();
        let mut invalid_saved = 0;
        for record in config.initial_records {
            // A saved store holds what arrived before this version's checks, or was
            // edited: it meets the same validation as the wire.
            if validate_record(&record).is_err() {
                invalid_saved += 1;
                continue;
            }
            // Our clock must run ahead of everything we wrote before the restart.
            let _ = hlc.observe(record.stamp.hlc, wall_ms);
            store.merge(record);
        }
        let mut shared = Shared::new(config.node, store, hlc, wall_ms);
        shared.counters.records_invalid = invalid_saved;
        let shared = Arc::new(Mutex::new(shared));
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            foca_config.clone(),
            StdRng::seed_from_u64(config.rng_seed),
            PostcardCodec,
            RecordHandler {
                shared: shared.clone(),
            },
        );
        let mut engine = Engine {
            sealer: Sealer::new(
                &config.token.key,
                config.token.cluster_id,
                config.node,
                config.boot_epoch,
            ),
            opener: Opener::new(&config.token.key, config.token.cluster_id, config.node),
            me,
            foca,
            shared,
            runtime: AccumulatingRuntime::new(),
            up: HashMap::new(),
            down: HashMap::new(),
            tuning,
            rng: StdRng::seed_from_u64(config.rng_seed ^ 0x5eed),
            max_payload,
            max_datagram: max_datagram(config.underlay_mtu),
            membership_version: 0,
            heard_from_cluster: false,
            join_announces_left: 0,
            seeds: Vec::new(),
            foca_config,
            join_boost_until: None,
            suspects: HashMap::new(),
            out: Vec::new(),
        };
        engine.schedule_sync();
        engine.out.push(Output::Schedule {
            after: Duration::from_secs(60),
            timer: Timer::Gc,
        });
        engine.out.push(Output::Schedule {
            after: SUSPICION_CHECK,
            timer: Timer::Suspicions,
        });
        let initial = std::mem::take(&mut engine.out);
        (engine, initial)
    }

    pub fn node(&self) -> NodeId {
        self.me.id
    }

    /// Announces this node to the seeds. Their answers make it a member.
    pub fn join(&mut self, seeds: &[SocketAddr], wall_ms: u64) -> Vec<Output> {
        self.set_wall(wall_ms);
        self.join_announces_left = JOIN_ANNOUNCES;
        self.seeds = seeds.to_vec();
        let boosted = foca::Config {
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(1),
                num_members: NonZeroUsize::new(3).expect("3"),
            }),
            ..self.foca_config.clone()
        };
        if self.foca.set_config(boosted).is_ok() {
            self.join_boost_until = Some(wall_ms + JOIN_BOOST.as_millis() as u64);
        }
        self.announce_to_seeds();
        self.out.push(Output::Schedule {
            after: REJOIN_INTERVAL,
            timer: Timer::Rejoin,
        });
        self.drain()
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            if seed != self.me.addr {
                let _ = self
                    .foca
                    .announce(member::seed_placeholder(seed), &mut self.runtime);
            }
        }
    }

    /// Whether any authenticated datagram from another node has arrived: a join with
    /// the wrong token never gets one.
    pub fn heard_from_cluster(&self) -> bool {
        self.heard_from_cluster
    }

    /// Writes a record in this node's name (a node-scoped entry of its own, or a
    /// cluster object) and starts disseminating it. `value` builds the payload from the
    /// write's stamp (objects that record their creation stamp need it); `None` deletes.
    pub fn write(
        &mut self,
        scope: Scope,
        kind: crate::state::Kind,
        name: String,
        value: impl FnOnce(Stamp) -> Option<Vec<u8>>,
        wall_ms: u64,
    ) -> (Stamp, Vec<Output>) {
        self.set_wall(wall_ms);
        let stamp = {
            let mut shared = self.shared.lock().expect("gossip state lock");
            Stamp {
                hlc: shared.hlc.now(wall_ms),
                writer: self.me.id,
            }
        };
        let record = Record {
            key: RecordKey { scope, kind, name },
            stamp,
            value: value(stamp),
        };
        if record.key.scope == Scope::Node(self.me.id) {
            self.shared
                .lock()
                .expect("gossip state lock")
                .own_writes
                .insert(record.key.clone(), record.value.clone());
        }
        let encoded = encode_record(&record);
        if let Err(error) = self.foca.add_broadcast(&encoded) {
            // Too big for a datagram: the store limits values, so this is a bug; still
            // keep the write locally and let anti-entropy spread it.
            debug!(%error, "broadcast refused; the write spreads by anti-entropy only");
            self.shared
                .lock()
                .expect("gossip state lock")
                .merge_encoded(&encoded, None);
        }
        (stamp, self.drain())
    }

    /// Handles one datagram from `from`.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        wall_ms: u64,
    ) -> Vec<Output> {
        self.set_wall(wall_ms);
        {
            let mut shared = self.shared.lock().expect("gossip state lock");
            shared.counters.datagrams_in += 1;
            shared.counters.bytes_in += datagram.len() as u64;
            // Before any copy or authentication: nothing this large was sealed by a member.
            if datagram.len() > self.max_datagram {
                shared.counters.oversized += 1;
                return Vec::new();
            }
        }
        self.opener.set_wall_ms(wall_ms);
        let opened = match self.opener.open(datagram) {
            Ok(opened) => opened,
            Err(reject) => {
                trace!(%from, ?reject, "datagram rejected");
                return Vec::new();
            }
        };
        self.heard_from_cluster = true;
        match wire::parse(&opened.plaintext) {
            Ok(wire::Payload::Swim(message)) => {
                if let Err(error) = self.foca.handle_data(message, &mut self.runtime) {
                    trace!(%from, %error, "foca refused a message");
                    self.counters_mut(|c| c.swim_errors += 1);
                }
            }
            // Anti-entropy answers go to the member's known address, never to the
            // datagram's source: a sealed digest replayed or sent from elsewhere must not
            // turn a node into an amplifier aimed at a third party.
            Ok(wire::Payload::Digest(theirs)) => match self.known_addr(&opened.from) {
                Some(addr) => {
                    self.shared
                        .lock()
                        .expect("gossip state lock")
                        .note_digest(opened.from, &theirs);
                    self.answer_digest(addr, &theirs);
                }
                None => self.counters_mut(|c| c.sync_from_unknown += 1),
            },
            Ok(wire::Payload::Want(buckets)) => match self.known_addr(&opened.from) {
                Some(addr) => self.send_buckets(addr, &buckets),
                None => self.counters_mut(|c| c.sync_from_unknown += 1),
            },
            Ok(wire::Payload::Records(records)) => {
                let mut shared = self.shared.lock().expect("gossip state lock");
                for record in records {
                    shared.merge_encoded(record, Some(opened.from));
                }
            }
            Err(error) => {
                debug!(%from, %error, "malformed payload in an authenticated datagram");
                self.counters_mut(|c| c.malformed += 1);
            }
        }
        self.drain()
    }

    /// Handles a timer the driver scheduled for us.
    pub fn handle_timer(&mut self, timer: Timer, wall_ms: u64) -> Vec<Output> {
        self.set_wall(wall_ms);
        match timer {
            Timer::Swim(timer) => {
                if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                    debug!(%error, "foca timer failed");
                }
            }
            Timer::Sync => {
                self.start_sync();
                self.schedule_sync();
            }
            Timer::Rejoin => {
                if self.up.is_empty() {
                    self.announce_to_seeds();
                }
                if self.join_boost_until.is_some_and(|until| wall_ms >= until)
                    && self.foca.set_config(self.foca_config.clone()).is_ok()
                {
                    self.join_boost_until = None;
                }
                self.out.push(Output::Schedule {
                    after: REJOIN_INTERVAL,
                    timer: Timer::Rejoin,
                });
            }
            Timer::Suspicions => {
                self.check_suspicions(wall_ms);
                self.out.push(Output::Schedule {
                    after: SUSPICION_CHECK,
                    timer: Timer::Suspicions,
                });
            }
            Timer::Gc => {
                let ttl = self.tuning.tombstone_ttl.as_millis() as u64;
                let live: HashSet<NodeId> = self.up.keys().copied().collect();
                let mut shared = self.shared.lock().expect("gossip state lock");
                let now = shared.hlc.now(wall_ms);
                shared.store.gc(now, ttl);
                let collected = shared.collect_removals(
                    &live,
                    REMOVAL_MIN_AGE.as_millis() as u64,
                    REMOVAL_MEMORY.as_millis() as u64,
                );
                shared.counters.removals_collected += collected as u64;
                self.out.push(Output::Schedule {
                    after: Duration::from_secs(60),
                    timer: Timer::Gc,
                });
            }
        }
        self.drain()
    }

    /// Declares down every member this node has seen suspected, at the same incarnation,
    /// for longer than `suspect_to_down_after`.
    ///
    /// foca only times out suspicions its own probes raised and relies on the resulting
    /// "down" update reaching everyone else; a node that misses that update would keep a
    /// dead member suspected (shown ready) until its own round-robin probe reaches it,
    /// which in a large cluster takes minutes. Timing out learned suspicions locally, as
    /// the SWIM paper does, bounds that.
    fn check_suspicions(&mut self, wall_ms: u64) {
        let timeout = self.tuning.suspect_to_down_after.as_millis() as u64;
        let mut still = HashMap::new();
        let mut expired = Vec::new();
        for member in self.foca.iter_membership_state() {
            if member.state() != foca::State::Suspect {
                continue;
            }
            let key = (member.id().clone(), member.incarnation());
            let since = self.suspects.get(&key).copied().unwrap_or(wall_ms);
            if wall_ms.saturating_sub(since) >= timeout {
                expired.push(foca::Member::new(key.0, key.1, foca::State::Down));
            } else {
                still.insert(key, since);
            }
        }
        self.suspects = still;
        if !expired.is_empty() {
            debug!(
                count = expired.len(),
                "suspicions learned by gossip expired"
            );
            if let Err(error) = self
                .foca
                .apply_many(expired.into_iter(), true, &mut self.runtime)
            {
                debug!(%error, "declaring expired suspects down failed");
            }
        }
    }

    /// Announces departure: peers see this node down at once instead of after a timeout.
    pub fn leave(&mut self, wall_ms: u64) -> Vec<Output> {
        self.set_wall(wall_ms);
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            debug!(%error, "leave failed");
        }
        self.drain()
    }

    /// Whether `node` is up (alive or suspect) in this node's view; always true for self.
    pub fn is_up(&self, node: &NodeId) -> bool {
        *node == self.me.id || self.up.contains_key(node)
    }

    /// The members this node sees up, excluding itself.
    pub fn up_members(&self) -> impl Iterator<Item = &Member> {
        self.up.values()
    }

    /// Every record of the store, tombstones included (to save it).
    pub fn records(&self) -> Vec<Record> {
        self.with_store(|store| store.iter().cloned().collect())
    }

    /// Runs `f` with read access to the store.
    pub fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.shared.lock().expect("gossip state lock").store)
    }

    pub fn counters(&self) -> GossipCounters {
        self.shared
            .lock()
            .expect("gossip state lock")
            .counters
            .clone()
    }

    /// Changes whenever the store or the membership changed: a driver rebuilds its view
    /// only then, so junk datagrams and idle timers cost no rebuild.
    pub fn change_marker(&self) -> (u64, u64) {
        (self.with_store(|s| s.version()), self.membership_version)
    }

    /// Where to reach `node`: its address as membership knows it while it is up.
    fn known_addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.up.get(node).map(|m| m.addr)
    }

    pub fn reject_counters(&self) -> &RejectCounters {
        self.opener.counters()
    }

    fn counters_mut(&self, f: impl FnOnce(&mut GossipCounters)) {
        f(&mut self.shared.lock().expect("gossip state lock").counters)
    }

    fn set_wall(&self, wall_ms: u64) {
        self.shared.lock().expect("gossip state lock").wall_ms = wall_ms;
    }

    fn schedule_sync(&mut self) {
        let base = self.tuning.sync_interval.as_millis() as u64;
        let jittered = base / 2 + self.rng.random_range(0..=base.max(1));
        self.out.push(Output::Schedule {
            after: Duration::from_millis(jittered),
            timer: Timer::Sync,
        });
    }

    /// Anti-entropy, step 1: send our digest to one random live member.
    fn start_sync(&mut self) {
        let peers: Vec<SocketAddr> = self.up.values().map(|m| m.addr).collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.random_range(0..peers.len())];
        let digest = self.with_store(|s| s.digest());
        self.counters_mut(|c| c.syncs_started += 1);
        self.send_payload(peer, &wire::digest(&digest));
    }

    /// Step 2 (at the peer): send our records in the differing buckets and ask for theirs.
    fn answer_digest(&mut self, from: SocketAddr, theirs: &[u64; BUCKETS]) {
        let ours = self.with_store(|s| s.digest());
        let differing: Vec<usize> = (0..BUCKETS).filter(|&b| ours[b] != theirs[b]).collect();
        if differing.is_empty() {
            return;
        }
        self.send_buckets(from, &differing);
        self.send_payload(from, &wire::want(&differing));
    }

    /// Sends every record of `buckets` to `to`, packed into datagrams.
    fn send_buckets(&mut self, to: SocketAddr, buckets: &[usize]) {
        let encoded: Vec<Vec<u8>> =
            self.with_store(|s| s.records_in_buckets(buckets).map(encode_record).collect());
        for payload in wire::records(encoded.iter().map(Vec::as_slice), self.max_payload) {
            self.send_payload(to, &payload);
        }
    }

    fn send_payload(&mut self, to: SocketAddr, payload: &[u8]) {
        let datagram = self.sealer.seal(payload);
        self.counters_mut(|c| {
            c.datagrams_out += 1;
            c.bytes_out += datagram.len() as u64;
        });
        self.out.push(Output::Send { to, datagram });
    }

    /// Turns what foca asked for into outputs, and tracks membership changes.
    fn drain(&mut self) -> Vec<Output> {
        let rewrites = std::mem::take(&mut self.shared.lock().expect("gossip state lock").rewrites);
        for (key, value) in rewrites {
            debug!(%key, "rewriting an own entry a previous run left newer");
            let wall = self.shared.lock().expect("gossip state lock").wall_ms;
            let (_, outputs) = self.write(key.scope, key.kind, key.name, |_| value, wall);
            self.out.extend(outputs);
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.apply_notification(notification);
        }
        while let Some((to, message)) = self.runtime.to_send() {
            let payload = wire::swim(&message);
            self.send_payload(to.addr, &payload);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.out.push(Output::Schedule {
                after,
                timer: Timer::Swim(timer),
            });
        }
        std::mem::take(&mut self.out)
    }

    fn apply_notification(&mut self, notification: foca::OwnedNotification<Member>) {
        use foca::OwnedNotification as N;
        self.membership_version += 1;
        match notification {
            N::MemberUp(member) => {
                debug!(node = %member.id.short(), addr = %member.addr, "member up");
                self.down.remove(&member.id);
                let first_contact = self.up.is_empty();
                self.up.insert(member.id, member.clone());
                // A node that just found its cluster pulls the whole state at once rather
                // than waiting for the next anti-entropy round.
                if first_contact {
                    let digest = self.with_store(|s| s.digest());
                    self.send_payload(member.addr, &wire::digest(&digest));
                }
                if self.join_announces_left > 0 {
                    self.join_announces_left -= 1;
                    let _ = self.foca.announce(member, &mut self.runtime);
                }
            }
            N::MemberDown(member) => {
                // A previous identity of the node (older generation, or its old address)
                // going down must not take the node's current one with it.
                if self
                    .up
                    .get(&member.id)
                    .is_some_and(|current| *current != member)
                {
                    return;
                }
                debug!(node = %member.id.short(), "member down");
                self.up.remove(&member.id);
                self.down.insert(member.id, member);
            }
            N::Rename(old, new) => {
                if self.up.get(&old.id) == Some(&old) {
                    self.up.remove(&old.id);
                }
                self.down.remove(&new.id);
                self.up.insert(new.id, new);
            }
            N::Rejoin(identity) => {
                debug!(
                    generation = identity.generation,
                    "rejoined under a renewed identity"
                );
                self.me = identity;
            }
            N::Active | N::Idle | N::Defunct => {}
        }
    }
}
