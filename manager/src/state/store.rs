//! The [`Store`]: merge rules, views, digests and tombstone collection.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use tracing::warn;

use super::{
    hash,
    record::{Kind, Record, RecordKey, Scope, Stamp, MAX_NAME_BYTES, MAX_VALUE_BYTES},
};
use crate::{hlc, NodeId};

/// Number of anti-entropy buckets. Peers compare `BUCKETS` sums instead of every record and
/// then exchange only the buckets that differ.
pub const BUCKETS: usize = 64;

/// How many records of kinds this version does not know ([`Kind::Other`]) one writer may
/// have in the store. Newer versions rely on older ones keeping and relaying their records,
/// so they are kept — up to this bound, beyond which a writer's new ones are refused and
/// counted: a member could otherwise fill every node's memory with records nobody reads.
pub const MAX_UNKNOWN_PER_WRITER: usize = 256;

/// What [`Store::merge`] did with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The record is new or newer than what we had; the store changed.
    Applied,
    /// We already have this record or a newer one; nothing changed.
    Stale,
    /// The record breaks a rule and was dropped; nothing changed.
    Rejected(RejectReason),
}

/// Why [`Store::merge`] refused a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// Only a node may write its own entries.
    #[error("record in node {scope_node:?}'s scope written by {writer:?}")]
    WrongWriter {
        /// The node whose scope the key is in.
        scope_node: NodeId,
        /// The writer named in the stamp.
        writer: NodeId,
    },
    /// A known kind in the wrong scope (e.g. a cluster-scoped endpoint).
    #[error("{kind:?} records must be {expected}")]
    WrongScope {
        /// The record's kind.
        kind: Kind,
        /// `"node-scoped"` or `"cluster-scoped"`.
        expected: &'static str,
    },
    /// `Kind::Other` wrapping the code of a named kind: a second spelling of one kind.
    #[error("kind code {code} has a name and must not be sent as Other")]
    NonCanonicalKind {
        /// The code.
        code: u8,
    },
    /// The name exceeds [`MAX_NAME_BYTES`].
    #[error("name of {len} bytes exceeds the {MAX_NAME_BYTES}-byte limit")]
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// The value exceeds [`MAX_VALUE_BYTES`].
    #[error("value of {len} bytes exceeds the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
    /// A `NodeRemoval` whose name is not a node ID in lowercase hex.
    #[error("node removal named {name:?}, which is not a node ID in lowercase hex")]
    BadRemovalName {
        /// The name.
        name: String,
    },
    /// The writer already has [`MAX_UNKNOWN_PER_WRITER`] records of unknown kinds.
    #[error("writer {writer:?} already has {MAX_UNKNOWN_PER_WRITER} records of unknown kinds")]
    UnknownKindLimit {
        /// The writer.
        writer: NodeId,
    },
    /// An entry of a node that was removed at or after the entry's stamp.
    #[error("node {node:?} was removed at {removed_at}, after this record was written")]
    RemovedNode {
        /// The removed node.
        node: NodeId,
        /// The removal's stamp.
        removed_at: Stamp,
    },
}

/// A record plus what the store derives from it once, at insertion.
#[derive(Debug)]
struct Entry {
    record: Record,
    bucket: u8,
    hash: u64,
}

impl Entry {
    fn new(record: Record) -> Entry {
        Entry {
            // The modulo keeps the value below 64, so it fits a u8.
            bucket: (hash::key_hash(&record.key) % BUCKETS as u64) as u8,
            hash: hash::record_hash(&record),
            record,
        }
    }
}

// Entries live in a `BTreeSet` ordered by key and looked up through `Borrow<RecordKey>`,
// rather than a `BTreeMap<RecordKey, Entry>`, so each key (with its `String`) is stored once.
// These impls must agree with `RecordKey`'s own ordering, which `Borrow` requires.
impl Borrow<RecordKey> for Entry {
    fn borrow(&self) -> &RecordKey {
        &self.record.key
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.record.key == other.record.key
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.record.key.cmp(&other.record.key)
    }
}

/// The replicated state held by one node. See the [module docs](super) for the model.
///
/// Merging is commutative, associative and idempotent (a join semilattice), so any two stores
/// that have merged the same set of records, in any order and with any repetition, hold the
/// same records and the same digest. The one exception is [`Store::gc`], which forgets
/// tombstones on each node's own schedule.
#[derive(Debug)]
pub struct Store {
    entries: BTreeSet<Entry>,
    /// Highest `NodeRemoval` stamp per removed node: that node's entries stamped at or below
    /// it are purged and refused. Mirrors the `NodeRemoval` records, which `gc` never drops.
    removals: BTreeMap<NodeId, Stamp>,
    /// Per bucket, the wrapping sum of its entries' hashes; kept up to date on every change.
    digest: [u64; BUCKETS],
    tombstones: usize,
    /// Records of unknown kinds held, per writer (see [`MAX_UNKNOWN_PER_WRITER`]).
    unknown_by_writer: HashMap<NodeId, usize>,
    version: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store {
            entries: BTreeSet::new(),
            removals: BTreeMap::new(),
            digest: [0; BUCKETS],
            tombstones: 0,
            unknown_by_writer: HashMap::new(),
            version: 0,
        }
    }

    /// Merges a record written locally or received from a peer.
    ///
    /// Last-writer-wins by stamp: a strictly greater stamp replaces, a smaller one is stale.
    /// An equal stamp with an equal value is the same write seen twice (stale). An equal
    /// stamp with a different value can only come from a writer that reused a stamp, e.g.
    /// after losing its clock across a restart; the greater value wins (a tombstone is
    /// smallest) so every node still picks the same one.
    pub fn merge(&mut self, record: Record) -> MergeOutcome {
        if let Err(reason) = self.validate(&record) {
            return MergeOutcome::Rejected(reason);
        }
        let held_writer = self.entries.get(&record.key).map(|e| e.record.stamp.writer);
        if let Kind::Other(_) = record.key.kind {
            let writer = record.stamp.writer;
            let held = self.unknown_by_writer.get(&writer).copied().unwrap_or(0);
            // Replacing one of the writer's own records does not add to its count.
            if held_writer != Some(writer) && held >= MAX_UNKNOWN_PER_WRITER {
                return MergeOutcome::Rejected(RejectReason::UnknownKindLimit { writer });
            }
        }
        if let Some(held) = self.entries.get(&record.key) {
            match record.stamp.cmp(&held.record.stamp) {
                Ordering::Less => return MergeOutcome::Stale,
                Ordering::Equal if record.value <= held.record.value => return MergeOutcome::Stale,
                Ordering::Equal => warn!(
                    key = %record.key,
                    stamp = %record.stamp,
                    "two different records carry the same stamp; the writer reused a stamp"
                ),
                Ordering::Greater => {}
            }
        }

        let removal = match record.key.kind {
            // `validate` checked that the name parses.
            Kind::NodeRemoval => record
                .key
                .name
                .parse::<NodeId>()
                .ok()
                .map(|node| (node, record.stamp)),
            _ => None,
        };
        self.insert(Entry::new(record));
        if let Some((node, stamp)) = removal {
            // Only a newer removal record gets this far, so the barrier only ever rises:
            // what was purged stays purged.
            self.removals.insert(node, stamp);
            self.purge_node(node, stamp);
        }
        self.version += 1;
        MergeOutcome::Applied
    }

    fn validate(&self, record: &Record) -> Result<(), RejectReason> {
        let key = &record.key;
        if key.name.len() > MAX_NAME_BYTES {
            return Err(RejectReason::NameTooLong {
                len: key.name.len(),
            });
        }
        if let Some(value) = &record.value {
            if value.len() > MAX_VALUE_BYTES {
                return Err(RejectReason::ValueTooLarge { len: value.len() });
            }
        }
        if !key.kind.is_canonical() {
            return Err(RejectReason::NonCanonicalKind {
                code: key.kind.code(),
            });
        }
        match (key.kind.node_scoped(), key.scope) {
            (Some(true), Scope::Cluster) => {
                return Err(RejectReason::WrongScope {
                    kind: key.kind,
                    expected: "node-scoped",
                })
            }
            (Some(false), Scope::Node(_)) => {
                return Err(RejectReason::WrongScope {
                    kind: key.kind,
                    expected: "cluster-scoped",
                })
            }
            _ => {}
        }
        if key.kind == Kind::NodeRemoval {
            // Exactly one spelling per node, so one node cannot have two removal records.
            let canonical = key.name.parse::<NodeId>().ok().map(|n| n.to_string());
            if canonical.as_deref() != Some(key.name.as_str()) {
                return Err(RejectReason::BadRemovalName {
                    name: key.name.clone(),
                });
            }
        }
        if let Scope::Node(node) = key.scope {
            if record.stamp.writer != node {
                return Err(RejectReason::WrongWriter {
                    scope_node: node,
                    writer: record.stamp.writer,
                });
            }
            if let Some(&removed_at) = self.removals.get(&node) {
                if record.stamp <= removed_at {
                    return Err(RejectReason::RemovedNode { node, removed_at });
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, entry: Entry) {
        self.digest[usize::from(entry.bucket)] =
            self.digest[usize::from(entry.bucket)].wrapping_add(entry.hash);
        if entry.record.is_tombstone() {
            self.tombstones += 1;
        }
        if let Kind::Other(_) = entry.record.key.kind {
            *self
                .unknown_by_writer
                .entry(entry.record.stamp.writer)
                .or_default() += 1;
        }
        if let Some(old) = self.entries.replace(entry) {
            self.forget(&old);
        }
    }

    /// Undoes an entry's contribution to the digest and counters.
    fn forget(&mut self, entry: &Entry) {
        self.digest[usize::from(entry.bucket)] =
            self.digest[usize::from(entry.bucket)].wrapping_sub(entry.hash);
        if entry.record.is_tombstone() {
            self.tombstones -= 1;
        }
        if let Kind::Other(_) = entry.record.key.kind {
            let writer = entry.record.stamp.writer;
            if let Some(count) = self.unknown_by_writer.get_mut(&writer) {
                *count -= 1;
                if *count == 0 {
                    self.unknown_by_writer.remove(&writer);
                }
            }
        }
    }

    /// Drops `node`'s entries stamped at or below `barrier`.
    fn purge_node(&mut self, node: NodeId, barrier: Stamp) {
        let doomed: Vec<RecordKey> = self
            .node_records(node)
            .filter(|r| r.stamp <= barrier)
            .map(|r| r.key.clone())
            .collect();
        for key in doomed {
            if let Some(old) = self.entries.take(&key) {
                self.forget(&old);
            }
        }
    }

    /// The record under `key`, tombstone or not.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.entries.get(key).map(|e| &e.record)
    }

    /// Every record, tombstones included, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.entries.iter().map(|e| &e.record)
    }

    /// Number of records, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the store holds nothing, not even tombstones.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Every record of one kind, tombstones included, regardless of liveness.
    pub fn iter_kind(&self, kind: Kind) -> impl Iterator<Item = &Record> {
        self.iter().filter(move |r| r.key.kind == kind)
    }

    /// Every record in `node`'s scope, tombstones included, regardless of liveness.
    pub fn node_records(&self, node: NodeId) -> impl Iterator<Item = &Record> {
        // Keys sort by scope first and the smallest key of a scope has the smallest kind
        // code and the empty name, so the scope is the range starting there.
        let first = RecordKey::node(node, Kind::from_code(0), String::new());
        self.entries
            .range::<RecordKey, _>(first..)
            .take_while(move |e| e.record.key.scope == Scope::Node(node))
            .map(|e| &e.record)
    }

    /// Every cluster-scoped record of one kind, tombstones included.
    pub fn cluster_records(&self, kind: Kind) -> impl Iterator<Item = &Record> {
        let first = RecordKey::cluster(kind, String::new());
        self.entries
            .range::<RecordKey, _>(first..)
            .take_while(move |e| e.record.key.scope == Scope::Cluster && e.record.key.kind == kind)
            .map(|e| &e.record)
    }

    /// What readers should see of one kind: no tombstones, and node-scoped entries only of
    /// nodes for which `is_live` says yes. Liveness comes from membership, outside the
    /// store, so a node declared dead disappears from every view at once and reappears when
    /// it returns, without a single record being rewritten.
    pub fn live<'a, F>(&'a self, kind: Kind, is_live: F) -> impl Iterator<Item = &'a Record> + 'a
    where
        F: Fn(&NodeId) -> bool + 'a,
    {
        self.iter_kind(kind).filter(move |r| {
            !r.is_tombstone()
                && match r.key.scope {
                    Scope::Node(node) => is_live(&node),
                    Scope::Cluster => true,
                }
        })
    }

    /// The stamp at which `node` was removed, if it was.
    pub fn removal(&self, node: &NodeId) -> Option<Stamp> {
        self.removals.get(node).copied()
    }

    /// True if `node` was removed and has not come back since: a removal exists and none
    /// of its entries survive (any that do are newer than the removal, written after a
    /// fresh start).
    pub fn is_removed(&self, node: &NodeId) -> bool {
        self.removals.contains_key(node) && self.node_records(*node).next().is_none()
    }

    /// The bucket a key belongs to, for anti-entropy.
    pub fn bucket_of(key: &RecordKey) -> usize {
        (hash::key_hash(key) % BUCKETS as u64) as usize
    }

    /// Per bucket, an order-independent sum over its records (key, stamp and value). Two
    /// stores holding the same records have the same digest; a bucket whose sums differ
    /// holds at least one differing record. O(1): maintained on every change.
    pub fn digest(&self) -> [u64; BUCKETS] {
        self.digest
    }

    /// Every record in the given buckets (out-of-range and repeated indexes are ignored),
    /// in key order: what to send a peer whose digest differs in those buckets.
    ///
    /// A linear scan over precomputed bucket numbers: cheap at 10^5 records and only needed
    /// when digests disagree, so not worth a second per-bucket index.
    pub fn records_in_buckets(&self, buckets: &[usize]) -> impl Iterator<Item = &Record> {
        let mask = buckets
            .iter()
            .filter(|&&b| b < BUCKETS)
            .fold(0u64, |mask, &b| mask | 1 << b);
        self.entries
            .iter()
            .filter(move |e| mask & (1 << e.bucket) != 0)
            .map(|e| &e.record)
    }

    /// Drops tombstones older than `tombstone_ttl_ms` (by the wall-clock part of their stamps
    /// against `now_hlc`) and returns how many went.
    ///
    /// The trade-off: a tombstone is what stops a peer that missed the delete from gossiping
    /// the old object back. A node partitioned for longer than the TTL, or one restored from
    /// an old state, can therefore resurrect a deleted object after the tombstone is gone.
    /// Pick the TTL well above the longest partition you expect to heal on its own (e.g. a
    /// day) and `node rm` nodes that were gone longer. `NodeRemoval` records are never
    /// collected here: they are what keeps a removed node's stale entries out, until every
    /// live member has seen them ([`Store::collect_removal`]).
    pub fn gc(&mut self, now_hlc: u64, tombstone_ttl_ms: u64) -> usize {
        let now_ms = hlc::physical_ms(now_hlc);
        let expired = |r: &Record| {
            r.is_tombstone()
                && r.key.kind != Kind::NodeRemoval
                && now_ms.saturating_sub(hlc::physical_ms(r.stamp.hlc)) > tombstone_ttl_ms
        };
        let doomed: Vec<RecordKey> = self
            .entries
            .iter()
            .filter(|e| expired(&e.record))
            .map(|e| e.record.key.clone())
            .collect();
        for key in &doomed {
            if let Some(old) = self.entries.take(key) {
                self.forget(&old);
            }
        }
        if !doomed.is_empty() {
            self.version += 1;
        }
        doomed.len()
    }

    /// Drops the `NodeRemoval` of `node` and the barrier it holds, once the caller knows
    /// every live member has seen it (see the gossip engine's removal tracking). Refused
    /// (false) while any entry of `node` is still held: the removal is then still doing
    /// its job. After this, entries of `node` written before the removal would be accepted
    /// again if a member that was away for the whole time still held them — the same
    /// trade-off as a collected tombstone.
    pub fn collect_removal(&mut self, node: NodeId) -> bool {
        let Some(&barrier) = self.removals.get(&node) else {
            return false;
        };
        if self.node_records(node).any(|r| r.stamp <= barrier) {
            return false;
        }
        let Some(old) = self.entries.take(&RecordKey::node_removal(node)) else {
            return false;
        };
        self.forget(&old);
        self.removals.remove(&node);
        self.version += 1;
        true
    }

    /// The nodes with a removal record.
    pub fn removed_nodes(&self) -> impl Iterator<Item = (&NodeId, &Stamp)> {
        self.removals.iter()
    }

    /// Records of unknown kinds held from `writer`.
    pub fn unknown_of(&self, writer: &NodeId) -> usize {
        self.unknown_by_writer.get(writer).copied().unwrap_or(0)
    }

    /// A counter that grows with every change to the store (each applied merge, and each
    /// `gc` that dropped something). A snapshot builder compares it with the version it
    /// last built from to know whether to rebuild.
    pub fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

    use super::*;
    use crate::hlc::compose;

    fn node(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn stamp(hlc: u64, writer: NodeId) -> Stamp {
        Stamp { hlc, writer }
    }

    fn cluster(kind: Kind, name: &str, hlc: u64, writer: NodeId, value: Option<&[u8]>) -> Record {
        Record {
            key: RecordKey::cluster(kind, name),
            stamp: stamp(hlc, writer),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn own(owner: NodeId, kind: Kind, name: &str, hlc: u64, value: Option<&[u8]>) -> Record {
        Record {
            key: RecordKey::node(owner, kind, name),
            stamp: stamp(hlc, owner),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn removal(of: NodeId, hlc: u64, by: NodeId) -> Record {
        Record {
            key: RecordKey::node_removal(of),
            stamp: stamp(hlc, by),
            value: Some(Vec::new()),
        }
    }

    /// The digest recomputed from scratch, to check the incremental one.
    fn scratch_digest(store: &Store) -> [u64; BUCKETS] {
        let mut digest = [0u64; BUCKETS];
        for r in store.iter() {
            let b = Store::bucket_of(&r.key);
            digest[b] = digest[b].wrapping_add(hash::record_hash(r));
        }
        digest
    }

    #[test]
    fn last_writer_wins_with_writer_as_tie_break() {
        let mut s = Store::new();
        let key = RecordKey::cluster(Kind::Service, "web");
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 10, node(2), Some(b"a"))),
            MergeOutcome::Applied
        );
        // Older clock loses even from a bigger writer ID.
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 9, node(9), Some(b"b"))),
            MergeOutcome::Stale
        );
        // Same clock: the bigger writer ID wins, the smaller loses.
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 10, node(1), Some(b"c"))),
            MergeOutcome::Stale
        );
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 10, node(3), Some(b"d"))),
            MergeOutcome::Applied
        );
        assert_eq!(s.get(&key).unwrap().value.as_deref(), Some(&b"d"[..]));
        // A later delete wins and is kept as a tombstone.
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 11, node(1), None)),
            MergeOutcome::Applied
        );
        assert!(s.get(&key).unwrap().is_tombstone());
        assert_eq!((s.len(), s.tombstones()), (1, 1));
        // A re-create after the delete wins again.
        assert_eq!(
            s.merge(cluster(Kind::Service, "web", 12, node(1), Some(b"e"))),
            MergeOutcome::Applied
        );
        assert_eq!((s.len(), s.tombstones()), (1, 0));
    }

    #[test]
    fn equal_stamps_are_stale() {
        let mut s = Store::new();
        let r = cluster(Kind::Network, "n", 5, node(1), Some(b"x"));
        assert_eq!(s.merge(r.clone()), MergeOutcome::Applied);
        let v = s.version();
        assert_eq!(s.merge(r.clone()), MergeOutcome::Stale);
        assert_eq!(s.version(), v, "a stale merge is not a change");
    }

    #[test]
    fn reused_stamp_resolves_the_same_way_in_either_order() {
        let lo = cluster(Kind::Network, "n", 5, node(1), Some(b"a"));
        let hi = cluster(Kind::Network, "n", 5, node(1), Some(b"b"));
        let tomb = cluster(Kind::Network, "n", 5, node(1), None);
        for order in [[&lo, &hi, &tomb], [&hi, &tomb, &lo], [&tomb, &lo, &hi]] {
            let mut s = Store::new();
            for r in order {
                let _ = s.merge(r.clone());
            }
            assert_eq!(s.get(&lo.key), Some(&hi));
        }
    }

    #[test]
    fn node_scoped_records_only_from_their_node() {
        let mut s = Store::new();
        let mut forged = own(node(1), Kind::Endpoint, "e", 5, Some(b"x"));
        forged.stamp.writer = node(2);
        assert_eq!(
            s.merge(forged),
            MergeOutcome::Rejected(RejectReason::WrongWriter {
                scope_node: node(1),
                writer: node(2)
            })
        );
        assert!(s.is_empty());
        assert_eq!(s.version(), 0);
        assert_eq!(
            s.merge(own(node(1), Kind::Endpoint, "e", 5, Some(b"x"))),
            MergeOutcome::Applied
        );
    }

    #[test]
    fn rejects_malformed_records_without_changing_state() {
        let mut s = Store::new();
        let cases = [
            (
                cluster(Kind::Service, &"x".repeat(256), 1, node(1), Some(b"")),
                RejectReason::NameTooLong { len: 256 },
            ),
            (
                cluster(Kind::Service, "s", 1, node(1), Some(&[0; 1025])),
                RejectReason::ValueTooLarge { len: 1025 },
            ),
            (
                own(node(1), Kind::Network, "n", 1, Some(b"")),
                RejectReason::WrongScope {
                    kind: Kind::Network,
                    expected: "cluster-scoped",
                },
            ),
            (
                cluster(Kind::Endpoint, "e", 1, node(1), Some(b"")),
                RejectReason::WrongScope {
                    kind: Kind::Endpoint,
                    expected: "node-scoped",
                },
            ),
            (
                cluster(Kind::Other(4), "s", 1, node(1), Some(b"")),
                RejectReason::NonCanonicalKind { code: 4 },
            ),
            (
                cluster(Kind::NodeRemoval, "nope", 1, node(1), Some(b"")),
                RejectReason::BadRemovalName {
                    name: "nope".into(),
                },
            ),
            (
                cluster(
                    Kind::NodeRemoval,
                    &node(0xab).to_string().to_uppercase(),
                    1,
                    node(1),
                    Some(b""),
                ),
                RejectReason::BadRemovalName {
                    name: node(0xab).to_string().to_uppercase(),
                },
            ),
        ];
        for (record, reason) in cases {
            assert_eq!(s.merge(record), MergeOutcome::Rejected(reason));
        }
        assert!(s.is_empty());
        assert_eq!(s.digest(), [0; BUCKETS]);
        // The limits themselves are fine; unknown kinds are accepted in either scope.
        for r in [
            cluster(
                Kind::Service,
                &"x".repeat(255),
                1,
                node(1),
                Some(&[0; 1024]),
            ),
            cluster(Kind::Other(99), "future", 1, node(1), Some(b"")),
            own(node(1), Kind::Other(99), "future", 1, Some(b"")),
        ] {
            assert_eq!(s.merge(r), MergeOutcome::Applied);
        }
    }

    #[test]
    fn node_removal_purges_refuses_older_and_accepts_newer() {
        let (gone, other, admin) = (node(1), node(2), node(3));
        let mut s = Store::new();
        for r in [
            own(gone, Kind::NodeInfo, "self", 10, Some(b"info")),
            own(gone, Kind::Endpoint, "e1", 11, Some(b"ep")),
            own(gone, Kind::Task, "t1", 30, Some(b"late")),
            own(other, Kind::Endpoint, "e1", 12, Some(b"keep")),
            // Cluster objects outlive their writer.
            cluster(Kind::Network, "web", 13, gone, Some(b"net")),
        ] {
            assert_eq!(s.merge(r), MergeOutcome::Applied);
        }
        assert_eq!(s.merge(removal(gone, 20, admin)), MergeOutcome::Applied);
        assert_eq!(s.removal(&gone), Some(stamp(20, admin)));
        let left: Vec<_> = s.node_records(gone).map(|r| r.key.name.clone()).collect();
        assert_eq!(left, ["t1"], "only the entry newer than the removal stays");
        assert!(!s.is_removed(&gone), "t1 was written after the removal");
        assert!(!s.is_removed(&other));
        assert_eq!(s.node_records(other).count(), 1);
        assert!(s.get(&RecordKey::cluster(Kind::Network, "web")).is_some());
        assert_eq!(s.digest(), scratch_digest(&s));

        // An old entry arriving late, e.g. from a peer that missed the removal.
        assert_eq!(
            s.merge(own(gone, Kind::Endpoint, "e2", 19, Some(b"old"))),
            MergeOutcome::Rejected(RejectReason::RemovedNode {
                node: gone,
                removed_at: stamp(20, admin)
            })
        );
        // Same clock as the removal but a smaller writer ID is still at-or-before it.
        assert!(matches!(
            s.merge(own(gone, Kind::Endpoint, "e2", 20, Some(b"old"))),
            MergeOutcome::Rejected(RejectReason::RemovedNode { .. })
        ));
        // The node comes back with a fresh boot after the removal.
        assert_eq!(
            s.merge(own(gone, Kind::NodeInfo, "self", 21, Some(b"back"))),
            MergeOutcome::Applied
        );
        // A second, later `node rm` purges the returned entries as well.
        assert_eq!(s.merge(removal(gone, 40, admin)), MergeOutcome::Applied);
        assert_eq!(s.node_records(gone).count(), 0);
        assert!(s.is_removed(&gone));
        // An older removal arriving late changes nothing.
        assert_eq!(s.merge(removal(gone, 30, admin)), MergeOutcome::Stale);
        assert_eq!(s.removal(&gone), Some(stamp(40, admin)));
        assert_eq!(s.digest(), scratch_digest(&s));
    }

    #[test]
    fn live_view_hides_dead_nodes_and_tombstones() {
        let (a, b) = (node(1), node(2));
        let mut s = Store::new();
        for r in [
            own(a, Kind::Endpoint, "e1", 1, Some(b"a1")),
            own(a, Kind::Endpoint, "e2", 2, None),
            own(b, Kind::Endpoint, "e1", 3, Some(b"b1")),
            own(b, Kind::Task, "t1", 3, Some(b"bt")),
        ] {
            assert_eq!(s.merge(r), MergeOutcome::Applied);
        }
        let names = |live: &[NodeId]| -> Vec<(NodeId, String)> {
            s.live(Kind::Endpoint, |n| live.contains(n))
                .map(|r| (r.key.node_id().unwrap(), r.key.name.clone()))
                .collect()
        };
        assert_eq!(names(&[a, b]), [(a, "e1".into()), (b, "e1".into())]);
        assert_eq!(names(&[a]), [(a, "e1".into())], "b is dead");
        assert_eq!(names(&[a, b]).len(), 2, "b is back without any rewrite");
        assert_eq!(s.iter_kind(Kind::Endpoint).count(), 3);
        assert_eq!(s.node_records(b).count(), 2);
    }

    #[test]
    fn cluster_records_range_stops_at_the_kind() {
        let mut s = Store::new();
        for r in [
            cluster(Kind::Network, "a", 1, node(1), Some(b"")),
            cluster(Kind::Network, "b", 1, node(1), None),
            cluster(Kind::Service, "a", 1, node(1), Some(b"")),
            cluster(Kind::PortClaim, "80", 1, node(1), Some(b"")),
            own(node(1), Kind::NodeInfo, "self", 1, Some(b"")),
        ] {
            assert_eq!(s.merge(r), MergeOutcome::Applied);
        }
        assert_eq!(s.cluster_records(Kind::Network).count(), 2);
        assert_eq!(s.cluster_records(Kind::Service).count(), 1);
        assert_eq!(s.cluster_records(Kind::Task).count(), 0);
    }

    #[test]
    fn gc_drops_only_expired_tombstones() {
        let t = |ms| compose(ms, 0);
        let mut s = Store::new();
        for r in [
            cluster(Kind::Service, "old-del", t(1_000), node(1), None),
            cluster(Kind::Service, "new-del", t(9_500), node(1), None),
            cluster(Kind::Service, "old-live", t(1_000), node(1), Some(b"x")),
            own(node(2), Kind::Endpoint, "old-del", t(1_000), None),
            Record {
                value: None,
                ..removal(node(5), t(1_000), node(1))
            },
        ] {
            assert_eq!(s.merge(r), MergeOutcome::Applied);
        }
        let v = s.version();
        assert_eq!(s.gc(t(10_000), 9_000), 0, "nothing is older than 9 s");
        assert_eq!(s.version(), v);
        assert_eq!(s.gc(t(10_000), 1_000), 2);
        assert!(s.version() > v);
        let names: Vec<_> = s.iter().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names.len(), 3);
        assert!(!names.contains(&"old-del"));
        assert!(names.contains(&"new-del") && names.contains(&"old-live"));
        assert!(
            s.removal(&node(5)).is_some(),
            "removals are never collected"
        );
        assert_eq!(s.tombstones(), 2);
        assert_eq!(s.digest(), scratch_digest(&s));
        // The documented trade-off: once the tombstone is gone, the old object returns.
        assert_eq!(
            s.merge(cluster(
                Kind::Service,
                "old-del",
                t(500),
                node(1),
                Some(b"zombie")
            )),
            MergeOutcome::Applied
        );
    }

    #[test]
    fn digest_differences_localize_to_the_differing_buckets() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut a = Store::new();
        for i in 0..2_000 {
            let r = cluster(Kind::Service, &format!("svc-{i}"), 1, node(1), Some(b"v"));
            assert_eq!(a.merge(r), MergeOutcome::Applied);
        }
        let mut b = Store::new();
        for r in a.iter() {
            assert_eq!(b.merge(r.clone()), MergeOutcome::Applied);
        }
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), [0; BUCKETS]);

        // Change a few records in b: a newer write, a delete, a brand-new key.
        let picks: Vec<usize> = (0..3).map(|_| rng.random_range(0..2_000)).collect();
        let changed = [
            cluster(
                Kind::Service,
                &format!("svc-{}", picks[0]),
                2,
                node(1),
                Some(b"w"),
            ),
            cluster(
                Kind::Service,
                &format!("svc-{}", picks[1]),
                2,
                node(2),
                None,
            ),
            cluster(Kind::Service, "brand-new", 1, node(3), Some(b"n")),
        ];
        let mut expected: Vec<usize> = changed.iter().map(|r| Store::bucket_of(&r.key)).collect();
        expected.sort_unstable();
        expected.dedup();
        for r in &changed {
            assert_eq!(b.merge(r.clone()), MergeOutcome::Applied);
        }
        let (da, db) = (a.digest(), b.digest());
        let differing: Vec<usize> = (0..BUCKETS).filter(|&i| da[i] != db[i]).collect();
        assert_eq!(differing, expected);

        // Exchanging just those buckets reconciles the two stores.
        let from_b: Vec<Record> = b.records_in_buckets(&differing).cloned().collect();
        assert!(from_b.len() < b.len() / 4, "only a few buckets travel");
        for r in from_b {
            let _ = a.merge(r);
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
    }

    #[test]
    fn records_in_buckets_returns_exactly_those_buckets() {
        let mut s = Store::new();
        for i in 0..500 {
            let _ = s.merge(cluster(Kind::Service, &format!("s{i}"), 1, node(1), None));
        }
        let wanted = [3usize, 17, 17, 63, 64, 1000];
        let got: Vec<&Record> = s.records_in_buckets(&wanted).collect();
        let expected: Vec<&Record> = s
            .iter()
            .filter(|r| [3, 17, 63].contains(&Store::bucket_of(&r.key)))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
        assert_eq!(s.records_in_buckets(&[]).count(), 0);
    }

    /// A random record from a small universe, so that keys, stamps and even whole records
    /// collide often.
    fn random_record(rng: &mut StdRng) -> Record {
        let nodes = [node(1), node(2), node(3)];
        let owner = nodes[rng.random_range(0..3)];
        let hlc = rng.random_range(1..12);
        let value = match rng.random_range(0..4) {
            0 => None,
            v => Some(vec![v; 2]),
        };
        match rng.random_range(0..10) {
            0..=3 => Record {
                key: RecordKey::node(
                    owner,
                    Kind::Endpoint,
                    format!("e{}", rng.random_range(0..3)),
                ),
                stamp: stamp(hlc, owner),
                value,
            },
            4 => own(owner, Kind::NodeInfo, "self", hlc, value.as_deref()),
            5..=7 => Record {
                key: RecordKey::cluster(Kind::Network, format!("n{}", rng.random_range(0..3))),
                stamp: stamp(hlc, nodes[rng.random_range(0..3)]),
                value,
            },
            // Removal of node 1 or 2, by anyone.
            8 => removal(
                nodes[rng.random_range(0..2)],
                hlc,
                nodes[rng.random_range(0..3)],
            ),
            // An invalid record that must always be rejected.
            _ => Record {
                key: RecordKey::node(owner, Kind::Task, "forged"),
                stamp: stamp(hlc, node(9)),
                value,
            },
        }
    }

    /// What the store must hold after merging `records` in any order: per key the greatest
    /// (stamp, value), minus each removed node's entries at or below its latest removal.
    fn model(records: &[Record]) -> Vec<Record> {
        let mut best: BTreeMap<RecordKey, Record> = BTreeMap::new();
        let mut removals: BTreeMap<NodeId, Stamp> = BTreeMap::new();
        for r in records {
            if let Scope::Node(n) = r.key.scope {
                if r.stamp.writer != n {
                    continue;
                }
            }
            if r.key.kind == Kind::NodeRemoval {
                let n: NodeId = r.key.name.parse().unwrap();
                let s = removals.entry(n).or_insert(r.stamp);
                *s = (*s).max(r.stamp);
            }
            let slot = best.entry(r.key.clone()).or_insert_with(|| r.clone());
            if (r.stamp, &r.value) > (slot.stamp, &slot.value) {
                *slot = r.clone();
            }
        }
        best.into_values()
            .filter(|r| match r.key.scope {
                Scope::Node(n) => removals.get(&n).is_none_or(|&s| r.stamp > s),
                Scope::Cluster => true,
            })
            .collect()
    }

    #[test]
    fn merge_order_and_duplicates_do_not_matter() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for round in 0..300 {
            let mut records: Vec<Record> = (0..rng.random_range(1..60))
                .map(|_| random_record(&mut rng))
                .collect();
            // Duplicates: gossip delivers the same record more than once.
            for _ in 0..rng.random_range(0..20) {
                let dup = records[rng.random_range(0..records.len())].clone();
                records.push(dup);
            }
            let expected = model(&records);
            let mut first: Option<Store> = None;
            for _ in 0..4 {
                records.shuffle(&mut rng);
                let mut s = Store::new();
                for r in &records {
                    let _ = s.merge(r.clone());
                }
                let held: Vec<Record> = s.iter().cloned().collect();
                assert_eq!(held, expected, "round {round}");
                assert_eq!(s.digest(), scratch_digest(&s), "round {round}");
                assert_eq!(
                    s.tombstones(),
                    held.iter().filter(|r| r.is_tombstone()).count()
                );
                if let Some(f) = &first {
                    assert_eq!(s.digest(), f.digest(), "round {round}");
                }
                // Merging everything again changes nothing (idempotence).
                let v = s.version();
                for r in &records {
                    assert_ne!(s.merge(r.clone()), MergeOutcome::Applied, "round {round}");
                }
                assert_eq!(s.version(), v);
                first.get_or_insert(s);
            }
        }
    }
}
