//! Keys, stamps and records, and their wire encoding (postcard).

use std::{cmp::Ordering, fmt};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The longest record name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The largest record payload, in bytes. Small enough that any record, key and stamp
/// included, fits one gossip datagram (see [`MAX_RECORD_BYTES`]); bigger objects must be
/// split into several records.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Bytes postcard needs for the length prefix of a collection of `len` items.
const fn varint_len(mut n: u64) -> usize {
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes
}

/// The largest encoded record [`encode_record`] can produce for a record that
/// [`Store::merge`](super::Store::merge) accepts: 1328 bytes. With the AEAD nonce and tag and
/// the IPv4/UDP headers it stays under a 1500-byte underlay MTU.
pub const MAX_RECORD_BYTES: usize =
    // scope: variant tag + node ID
    1 + 16
    // kind
    + 1
    // name: length + bytes
    + varint_len(MAX_NAME_BYTES as u64) + MAX_NAME_BYTES
    // stamp: varint u64 + writer
    + varint_len(u64::MAX) + 16
    // value: Option tag + length + bytes
    + 1 + varint_len(MAX_VALUE_BYTES as u64) + MAX_VALUE_BYTES;

/// The version of a record: hybrid-logical-clock time of the write, ties broken by the
/// writer's ID, so two different writers can never produce equal stamps.
///
/// Field order matters: the derived `Ord` compares `hlc` first, then `writer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The writer's [`Hlc`](crate::hlc::Hlc) timestamp.
    pub hlc: u64,
    /// The node that wrote the record.
    pub writer: NodeId,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            crate::hlc::physical_ms(self.hlc),
            crate::hlc::logical(self.hlc),
            self.writer.short()
        )
    }
}

/// Who may write a record and how long it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Written only by this node; hidden from views while the node is dead; purged by a
    /// [`Kind::NodeRemoval`].
    Node(NodeId),
    /// Written by any node; outlives its writer.
    Cluster,
}

/// What a record describes. On the wire a kind is one byte, so a record of a kind added by a
/// newer version decodes as [`Kind::Other`] instead of failing: the store keeps and relays it
/// like any other record. Dropping it instead would leave old and new nodes with digests
/// that never agree, and anti-entropy would resend it forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum Kind {
    /// A node's own description ([`NodeInfo`](super::NodeInfo)), node-scoped, name `"self"`.
    NodeInfo,
    /// An endpoint (replica network attachment), node-scoped.
    Endpoint,
    /// A task (replica) and its status, node-scoped.
    Task,
    /// An overlay network ([`Network`](super::Network)), cluster-scoped.
    Network,
    /// A service definition, cluster-scoped.
    Service,
    /// A published-port claim, cluster-scoped.
    PortClaim,
    /// `node rm`: cluster-scoped, named by the removed node's ID in hex.
    NodeRemoval,
    /// A node's VXLAN tunnel endpoint, node-scoped.
    Vtep,
    /// `node update --availability` ([`crate::rollout::NodeAvailability`]), cluster-scoped,
    /// named by the node's ID in hex.
    NodeAvailability,
    /// The rollout writer's latest state transition of a service
    /// ([`crate::rollout::RolloutStep`]), cluster-scoped, named by the service.
    RolloutStep,
    /// A kind this version does not know (written by a newer one). Only codes that no named
    /// kind uses are valid here; the store rejects the others so a kind has one encoding.
    Other(u8),
}

impl Kind {
    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            Kind::NodeInfo => 0,
            Kind::Endpoint => 1,
            Kind::Task => 2,
            Kind::Network => 3,
            Kind::Service => 4,
            Kind::PortClaim => 5,
            Kind::NodeRemoval => 6,
            Kind::Vtep => 7,
            Kind::NodeAvailability => 8,
            Kind::RolloutStep => 9,
            Kind::Other(code) => code,
        }
    }

    /// The kind with this wire code.
    pub fn from_code(code: u8) -> Kind {
        match code {
            0 => Kind::NodeInfo,
            1 => Kind::Endpoint,
            2 => Kind::Task,
            3 => Kind::Network,
            4 => Kind::Service,
            5 => Kind::PortClaim,
            6 => Kind::NodeRemoval,
            7 => Kind::Vtep,
            8 => Kind::NodeAvailability,
            9 => Kind::RolloutStep,
            other => Kind::Other(other),
        }
    }

    /// True unless this is an `Other` wrapping a code that a named kind owns.
    pub fn is_canonical(self) -> bool {
        Kind::from_code(self.code()) == self
    }

    /// Whether records of this kind must be node-scoped (`Some(true)`), cluster-scoped
    /// (`Some(false)`), or either, for kinds this version does not know (`None`).
    pub fn node_scoped(self) -> Option<bool> {
        match self {
            Kind::NodeInfo | Kind::Endpoint | Kind::Task => Some(true),
            // External VTEPs are cluster configuration: they outlive whoever added them.
            Kind::Network
            | Kind::Service
            | Kind::PortClaim
            | Kind::NodeRemoval
            | Kind::Vtep
            | Kind::NodeAvailability
            | Kind::RolloutStep => Some(false),
            Kind::Other(_) => None,
        }
    }
}

impl From<u8> for Kind {
    fn from(code: u8) -> Kind {
        Kind::from_code(code)
    }
}

impl From<Kind> for u8 {
    fn from(kind: Kind) -> u8 {
        kind.code()
    }
}

// Ordered by wire code rather than variant order, so iteration order does not change when a
// later version gives a name to what is an `Other` code today.
impl Ord for Kind {
    fn cmp(&self, other: &Self) -> Ordering {
        self.code().cmp(&other.code())
    }
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Identifies a record. Ordered by scope, then kind, then name, so all of one node's entries
/// (and all cluster objects of one kind) are contiguous in the store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    /// Who may write it.
    pub scope: Scope,
    /// What it describes.
    pub kind: Kind,
    /// Its name within scope and kind; at most [`MAX_NAME_BYTES`].
    pub name: String,
}

impl RecordKey {
    /// A node-scoped key.
    pub fn node(node: NodeId, kind: Kind, name: impl Into<String>) -> RecordKey {
        RecordKey {
            scope: Scope::Node(node),
            kind,
            name: name.into(),
        }
    }

    /// A cluster-scoped key.
    pub fn cluster(kind: Kind, name: impl Into<String>) -> RecordKey {
        RecordKey {
            scope: Scope::Cluster,
            kind,
            name: name.into(),
        }
    }

    /// The key of the `node rm` record for `node`.
    pub fn node_removal(node: NodeId) -> RecordKey {
        RecordKey::cluster(Kind::NodeRemoval, node.to_string())
    }

    /// The node whose scope this key is in, if node-scoped.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.scope {
            Scope::Node(node) => Some(node),
            Scope::Cluster => None,
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Node(node) => write!(f, "node/{}/{:?}/{}", node.short(), self.kind, self.name),
            Scope::Cluster => write!(f, "cluster/{:?}/{}", self.kind, self.name),
        }
    }
}

/// One versioned entry: the unit of replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What it is.
    pub key: RecordKey,
    /// When and by whom it was written.
    pub stamp: Stamp,
    /// The serialized payload; `None` is a tombstone (a delete).
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// True for a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Longer than any valid record; refused before parsing.
    #[error("record of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// The input length.
        len: usize,
        /// [`MAX_RECORD_BYTES`].
        max: usize,
    },
    /// Not a postcard-encoded record.
    #[error("malformed record")]
    Malformed(#[source] postcard::Error),
    /// A record followed by bytes that belong to nothing.
    #[error("{count} trailing bytes after the record")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// The wire form of a record.
pub fn encode_record(record: &Record) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail: postcard only errors on unsupported
    // types (none here) or a full fixed buffer (a Vec grows).
    postcard::to_allocvec(record).expect("records always serialize")
}

/// Parses a record received from a peer. Never panics; allocates at most about the input's
/// length, because oversized input is refused up front and postcard checks every length
/// prefix against the bytes that remain. Decoding does not validate the record: that is
/// [`Store::merge`](super::Store::merge)'s job.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    let (record, rest) =
        postcard::take_from_bytes::<Record>(bytes).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    use super::*;

    fn max_record() -> Record {
        Record {
            key: RecordKey::node(NodeId([0xff; 16]), Kind::Other(0xff), "n".repeat(255)),
            stamp: Stamp {
                hlc: u64::MAX,
                writer: NodeId([0xff; 16]),
            },
            value: Some(vec![0xff; MAX_VALUE_BYTES]),
        }
    }

    #[test]
    fn kind_codes_round_trip_and_unknown_codes_survive() {
        for code in 0..=u8::MAX {
            let kind = Kind::from_code(code);
            assert_eq!(kind.code(), code);
            assert!(kind.is_canonical());
            assert_eq!(matches!(kind, Kind::Other(_)), code > 9, "code {code}");
        }
        assert!(!Kind::Other(3).is_canonical());
        // A kind from a newer peer decodes instead of failing the whole record.
        let mut record = max_record();
        record.key.kind = Kind::Other(200);
        let back = decode_record(&encode_record(&record)).unwrap();
        assert_eq!(back, record);
        // And a non-canonical Other becomes the named kind on the wire.
        record.key.kind = Kind::Other(3);
        assert_eq!(
            decode_record(&encode_record(&record)).unwrap().key.kind,
            Kind::Network
        );
    }

    #[test]
    fn kinds_order_by_code() {
        assert!(Kind::NodeInfo < Kind::Endpoint);
        assert!(Kind::NodeAvailability < Kind::RolloutStep);
        assert!(Kind::RolloutStep < Kind::Other(10));
        assert!(Kind::Other(10) < Kind::Other(11));
    }

    #[test]
    fn stamps_order_by_clock_then_writer() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        let s = |hlc, writer| Stamp { hlc, writer };
        assert!(s(1, b) < s(2, a));
        assert!(s(2, a) < s(2, b));
        assert_eq!(s(2, a).cmp(&s(2, a)), Ordering::Equal);
    }

    #[test]
    fn max_record_fits_the_limit_exactly() {
        let bytes = encode_record(&max_record());
        assert_eq!(bytes.len(), MAX_RECORD_BYTES);
        assert_eq!(MAX_RECORD_BYTES, 1328);
        assert_eq!(decode_record(&bytes).unwrap(), max_record());
    }

    #[test]
    fn rejects_oversized_and_trailing_input() {
        let mut bytes = encode_record(&max_record());
        bytes.push(0);
        assert!(matches!(
            decode_record(&bytes),
            Err(DecodeError::TooLong { len: 1329, .. })
        ));
        let small = Record {
            key: RecordKey::cluster(Kind::Service, "web"),
            stamp: Stamp {
                hlc: 5,
                writer: NodeId([3; 16]),
            },
            value: None,
        };
        let mut bytes = encode_record(&small);
        bytes.extend_from_slice(&[1, 2]);
        assert!(matches!(
            decode_record(&bytes),
            Err(DecodeError::TrailingBytes { count: 2 })
        ));
    }

    #[test]
    fn random_and_truncated_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        let valid = encode_record(&max_record());
        let mut decoded = 0;
        for i in 0..10_000 {
            let bytes: Vec<u8> = match i % 3 {
                // Pure noise of random length (some longer than the limit).
                0 => {
                    let len = rng.random_range(0..1500);
                    (0..len).map(|_| rng.random()).collect()
                }
                // A valid record cut short.
                1 => valid[..rng.random_range(0..valid.len())].to_vec(),
                // A valid record with a few bytes flipped, e.g. length prefixes.
                _ => {
                    let mut bytes = valid.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    bytes
                }
            };
            if decode_record(&bytes).is_ok() {
                decoded += 1;
            }
        }
        // Mutations of payload bytes still decode; truncations never do. The loop must have
        // exercised both outcomes to mean anything.
        assert!(decoded > 0 && decoded < 10_000, "decoded {decoded}");
        for cut in 0..valid.len() {
            assert!(decode_record(&valid[..cut]).is_err(), "cut at {cut}");
        }
    }
}
