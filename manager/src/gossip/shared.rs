//! The state the engine shares with the broadcast handler foca owns: the store, the clock,
//! the counters, and every rule a record meets on its way in.
//!
//! Every record — a local write (foca hands it back through the handler), a broadcast, an
//! anti-entropy batch — enters through [`Shared::merge_encoded`]: decoded with a bounded
//! allocation, its stamp checked against the clock's drift limit, its payload checked by
//! its kind's validation function ([`crate::state::validate_record`]), then merged.

use std::collections::{HashMap, HashSet};

use tracing::{debug, trace};

use super::GossipCounters;
use crate::{
    hlc::Hlc,
    state::{
        decode_record, validate_record, Kind, MergeOutcome, Record, RecordKey, RejectReason, Scope,
        Stamp, Store,
    },
    NodeId,
};

/// State shared between the engine and the broadcast handler foca owns.
pub(super) struct Shared {
    pub(super) node: NodeId,
    pub(super) store: Store,
    pub(super) hlc: Hlc,
    pub(super) wall_ms: u64,
    pub(super) counters: GossipCounters,
    /// The latest value this run wrote for each of its own node-scoped keys.
    pub(super) own_writes: HashMap<RecordKey, Option<Vec<u8>>>,
    /// Own entries to write again: overwritten by a previous run's newer copies, or purged
    /// by a `node rm` while this node is alive.
    pub(super) rewrites: Vec<(RecordKey, Option<Vec<u8>>)>,
    /// Per removed node, the members known to hold its `NodeRemoval` (they sent it, or a
    /// digest whose bucket matched ours): it is collected once every live member has.
    pub(super) removal_seen: HashMap<NodeId, HashSet<NodeId>>,
    /// Removals collected here, with their stamps and when (wall ms): the same removal
    /// arriving again from a member that has not collected it yet is not taken back.
    pub(super) collected_removals: HashMap<NodeId, (Stamp, u64)>,
}

impl Shared {
    pub(super) fn new(node: NodeId, store: Store, hlc: Hlc, wall_ms: u64) -> Shared {
        Shared {
            node,
            store,
            hlc,
            wall_ms,
            counters: GossipCounters::default(),
            own_writes: HashMap::new(),
            rewrites: Vec::new(),
            removal_seen: HashMap::new(),
            collected_removals: HashMap::new(),
        }
    }

    /// Merges a record from the wire (or a local write) and says whether it was new.
    /// `sender` is the member it came from, when known.
    pub(super) fn merge_encoded(&mut self, data: &[u8], sender: Option<NodeId>) -> Option<Record> {
        let record = match decode_record(data) {
            Ok(record) => record,
            Err(error) => {
                trace!(%error, "undecodable record");
                self.counters.records_rejected += 1;
                return None;
            }
        };
        // A stamp more than the clock's drift limit (an hour) ahead would win
        // last-writer-wins against every honest writer until real time caught up: refuse
        // it (anti-entropy offers it again, and it is accepted once it is plausible).
        if let Err(error) = self.hlc.observe(record.stamp.hlc, self.wall_ms) {
            debug!(%error, key = %record.key, writer = %record.stamp.writer.short(), "record from the future refused");
            self.counters.records_rejected += 1;
            return None;
        }
        if let Err(error) = validate_record(&record) {
            debug!(%error, key = %record.key, writer = %record.stamp.writer.short(), "invalid record refused");
            self.counters.records_invalid += 1;
            return None;
        }
        let removed = removed_node(&record);
        if let (Some(node), Some(sender)) = (removed, sender) {
            self.removal_seen.entry(node).or_default().insert(sender);
        }
        if let Some(node) = removed {
            if self
                .collected_removals
                .get(&node)
                .is_some_and(|(stamp, _)| record.stamp <= *stamp)
            {
                self.counters.records_stale += 1;
                return None;
            }
        }
        match self.store.merge(record.clone()) {
            MergeOutcome::Applied => {
                self.counters.records_applied += 1;
                // A newer copy of one of our own entries comes from a previous run of this
                // node (whose clock ran ahead of ours now): write ours again, now newer.
                // (Our own writes arrive here too, with the value we intend: no rewrite.)
                if record.stamp.writer == self.node && record.key.scope == Scope::Node(self.node) {
                    if let Some(value) = self.own_writes.get(&record.key) {
                        if *value != record.value {
                            self.rewrites.push((record.key.clone(), value.clone()));
                        }
                    }
                }
                if removed == Some(self.node) {
                    self.announce_again();
                }
                Some(record)
            }
            MergeOutcome::Stale => {
                self.counters.records_stale += 1;
                None
            }
            MergeOutcome::Rejected(reason) => {
                debug!(?reason, key = ?record.key, "record rejected");
                if matches!(reason, RejectReason::UnknownKindLimit { .. }) {
                    self.counters.unknown_over_limit += 1;
                } else {
                    self.counters.records_rejected += 1;
                }
                None
            }
        }
    }

    /// A `node rm` of this node reached it while it is alive (it was only partitioned, or a
    /// member wrote the removal on purpose): its entries are purged everywhere. Writing
    /// them again, stamped after the removal (the clock has observed it), brings the node
    /// back — in `node ls`, with its tasks and endpoints — without an agent restart.
    fn announce_again(&mut self) {
        debug!("this node was removed while alive: writing its entries again");
        self.counters.reannounced += 1;
        let mut own: Vec<_> = self
            .own_writes
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        own.sort_by(|a, b| a.0.cmp(&b.0));
        self.rewrites.extend(own);
    }

    /// Marks the removals whose bucket digest `member` shares with us as seen by it.
    pub(super) fn note_digest(&mut self, member: NodeId, theirs: &[u64; crate::state::BUCKETS]) {
        let ours = self.store.digest();
        let removed: Vec<NodeId> = self.store.removed_nodes().map(|(n, _)| *n).collect();
        for node in removed {
            let bucket = Store::bucket_of(&RecordKey::node_removal(node));
            if ours[bucket] == theirs[bucket] {
                self.removal_seen.entry(node).or_default().insert(member);
            }
        }
    }

    /// Collects every removal that all of `live` (this node's up members) have seen and that
    /// is at least `min_age_ms` old; forgets collected ones after `memory_ms`. Returns how many were collected.
    pub(super) fn collect_removals(
        &mut self,
        live: &HashSet<NodeId>,
        min_age_ms: u64,
        memory_ms: u64,
    ) -> usize {
        let now = self.wall_ms;
        self.collected_removals
            .retain(|_, (_, at)| now.saturating_sub(*at) < memory_ms);
        let candidates: Vec<(NodeId, Stamp)> = self
            .store
            .removed_nodes()
            .map(|(n, s)| (*n, *s))
            .filter(|(_, stamp)| {
                now.saturating_sub(crate::hlc::physical_ms(stamp.hlc)) >= min_age_ms
            })
            .collect();
        let mut collected = 0;
        for (node, stamp) in candidates {
            let seen = self.removal_seen.get(&node);
            let all_seen = live
                .iter()
                .all(|m| *m == self.node || seen.is_some_and(|s| s.contains(m)));
            if all_seen && self.store.collect_removal(node) {
                self.collected_removals.insert(node, (stamp, now));
                self.removal_seen.remove(&node);
                collected += 1;
            }
        }
        // Sightings of removals no longer held (collected, or never applied) are dropped.
        let held: HashSet<NodeId> = self.store.removed_nodes().map(|(n, _)| *n).collect();
        self.removal_seen.retain(|node, _| held.contains(node));
        collected
    }
}

/// The node a `NodeRemoval` record removes (`None` for other kinds and bad names).
fn removed_node(record: &Record) -> Option<NodeId> {
    (record.key.kind == Kind::NodeRemoval)
        .then(|| record.key.name.parse().ok())
        .flatten()
}
