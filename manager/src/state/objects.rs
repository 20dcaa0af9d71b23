//! Typed payloads of node-scoped entries, and the node list view.
//!
//! Payloads are postcard. Decoding ignores bytes after the fields it knows, so a later
//! version can append fields to a payload and older nodes still read the part they
//! understand; fields may only ever be appended, never removed or reordered.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tracing::debug;

use super::{
    record::{Kind, Record, RecordKey, Scope},
    store::Store,
};
use crate::NodeId;

/// Why a record's value is not the payload its kind promises.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The record is a delete.
    #[error("record is a tombstone")]
    Tombstone,
    /// The bytes are not a payload of this type.
    #[error("malformed {what} payload")]
    Malformed {
        /// The payload type.
        what: &'static str,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
}

pub(crate) fn encode_payload<T: Serialize>(payload: &T) -> Vec<u8> {
    // Plain data into a growable Vec: postcard cannot fail here.
    postcard::to_allocvec(payload).expect("payloads always serialize")
}

pub(crate) fn decode_payload<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, PayloadError> {
    // `take_from_bytes`, not `from_bytes`: trailing bytes are fields from a newer version.
    postcard::take_from_bytes::<T>(bytes)
        .map(|(payload, _newer_fields)| payload)
        .map_err(|source| PayloadError::Malformed { what, source })
}

/// A node's description of itself: node-scoped, kind [`Kind::NodeInfo`], name `"self"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The host's name, as `node ls` shows it.
    pub hostname: String,
    /// Where its gossip listens.
    pub addr: SocketAddr,
    /// Its underlay address: the outer source and destination of VXLAN traffic.
    pub underlay_ip: Ipv4Addr,
    /// The underlay interface's MTU; overlay MTUs derive from the smallest.
    pub underlay_mtu: u32,
    /// Changes on every agent start, so peers can tell a restart from a long pause.
    pub boot_epoch: u64,
    /// When this agent started, in ms since the Unix epoch.
    pub started_at_ms: u64,
    /// The agent's version.
    pub version: String,
    /// Set while the node drains before a graceful leave.
    pub leaving: bool,
    /// Set by a graceful stop (ms since the Unix epoch): until then peers keep this down
    /// node's tasks placed on it, because it is expected back; 0 while it runs.
    pub restart_grace_until_ms: u64,
    /// The public half of the node's static X25519 key ([`crate::secure::NodeSecret`]):
    /// a key rotation sends it the new cluster key sealed under their pairwise key.
    /// All zeros: unknown (the node cannot be given a new key).
    pub key_share: [u8; 32],
}

impl NodeInfo {
    /// The record name of every node's `NodeInfo`.
    pub const NAME: &'static str = "self";

    /// The key of `node`'s `NodeInfo`.
    pub fn key(node: NodeId) -> RecordKey {
        RecordKey::node(node, Kind::NodeInfo, NodeInfo::NAME)
    }

    /// The payload bytes. Must fit [`MAX_VALUE_BYTES`](super::MAX_VALUE_BYTES), which any
    /// sane hostname and version string do; the store rejects a record that does not.
    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    /// Parses payload bytes.
    pub fn decode(bytes: &[u8]) -> Result<NodeInfo, PayloadError> {
        decode_payload("node info", bytes)
    }

    /// Parses a record's value.
    pub fn from_record(record: &Record) -> Result<NodeInfo, PayloadError> {
        NodeInfo::decode(record.value.as_deref().ok_or(PayloadError::Tombstone)?)
    }
}

/// Every node that has described itself, in node ID order, dead or alive (combine with
/// membership for status); removed nodes are absent, because their `NodeInfo` is purged by
/// the removal, unless they came back afterwards. A node whose payload does not parse is
/// skipped rather than failing the whole list.
pub fn nodes(store: &Store) -> Vec<(NodeId, NodeInfo)> {
    store
        .iter_kind(Kind::NodeInfo)
        .filter(|r| r.key.name == NodeInfo::NAME)
        .filter_map(|r| {
            let Scope::Node(node) = r.key.scope else {
                return None;
            };
            match r.value.as_deref().map(NodeInfo::decode)? {
                Ok(info) => Some((node, info)),
                Err(error) => {
                    debug!(%error, node = %node, "skipping unreadable node info");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MergeOutcome, Stamp};

    fn info(hostname: &str) -> NodeInfo {
        NodeInfo {
            hostname: hostname.into(),
            addr: "192.0.2.1:7946".parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 0, 2, 1),
            underlay_mtu: 1500,
            boot_epoch: 7,
            started_at_ms: 1_700_000_000_000,
            version: "0.1.0".into(),
            leaving: false,
            restart_grace_until_ms: 0,
            key_share: [0; 32],
        }
    }

    fn write(store: &mut Store, node: NodeId, hlc: u64, value: Option<Vec<u8>>) -> MergeOutcome {
        store.merge(Record {
            key: NodeInfo::key(node),
            stamp: Stamp { hlc, writer: node },
            value,
        })
    }

    #[test]
    fn node_info_round_trips_and_fits_a_record() {
        let mut long = info(&"h".repeat(253));
        long.addr = "[2001:db8::1]:7946".parse().unwrap();
        long.version = "v".repeat(64);
        let bytes = long.encode();
        assert!(
            bytes.len() <= crate::state::MAX_VALUE_BYTES,
            "{}",
            bytes.len()
        );
        assert_eq!(NodeInfo::decode(&bytes).unwrap(), long);
    }

    #[test]
    fn decoding_tolerates_appended_fields_but_not_truncation() {
        let mut bytes = info("a").encode();
        let full = bytes.len();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(NodeInfo::decode(&bytes).unwrap(), info("a"));
        for cut in 0..full {
            assert!(NodeInfo::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn nodes_lists_described_nodes_except_removed_ones() {
        let (a, b, c) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let mut s = Store::new();
        assert_eq!(
            write(&mut s, b, 5, Some(info("b").encode())),
            MergeOutcome::Applied
        );
        assert_eq!(
            write(&mut s, a, 5, Some(info("a").encode())),
            MergeOutcome::Applied
        );
        assert_eq!(
            write(&mut s, c, 5, Some(b"\xff".to_vec())),
            MergeOutcome::Applied
        );
        let listed =
            |s: &Store| -> Vec<String> { nodes(s).into_iter().map(|(_, i)| i.hostname).collect() };
        assert_eq!(listed(&s), ["a", "b"], "sorted by ID, garbage skipped");

        let rm = Record {
            key: RecordKey::node_removal(b),
            stamp: Stamp { hlc: 10, writer: a },
            value: Some(Vec::new()),
        };
        assert_eq!(s.merge(rm), MergeOutcome::Applied);
        assert_eq!(listed(&s), ["a"]);
        // b rejoins later with a fresh boot.
        assert_eq!(
            write(&mut s, b, 11, Some(info("b2").encode())),
            MergeOutcome::Applied
        );
        assert_eq!(listed(&s), ["a", "b2"]);
        // A node that deleted its own info is not listed.
        assert_eq!(write(&mut s, a, 12, None), MergeOutcome::Applied);
        assert_eq!(listed(&s), ["b2"]);
    }
}
