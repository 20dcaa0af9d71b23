//! The replicated store: every node holds a full copy and converges with the others by
//! gossiping [`Record`]s. This module is a pure data structure — no I/O and no clock of its
//! own — so simulated clusters and property tests drive it directly.
//!
//! Two kinds of state share one keyspace, told apart by [`Scope`]:
//! - node-scoped entries (a node's own record, its endpoints, tasks, VTEP) are written only
//!   by that node. The store keeps them regardless of liveness; readers pass the set of live
//!   nodes to the views ([`Store::live`]), so a dead node's entries vanish from every view at
//!   once and reappear, without any rewrite, if it comes back;
//! - cluster-scoped objects (networks, services, published-port claims) are writable from any
//!   node and outlive their writer.
//!
//! Both are last-writer-wins by [`Stamp`] (hybrid logical clock, node ID as tie-break);
//! deletes are tombstones, collected after a TTL by [`Store::gc`]. A [`Kind::NodeRemoval`]
//! (`node rm`) purges a node's entries up to its stamp and keeps them from coming back.
//!
//! Layout:
//! - [`record`]: keys, stamps, records and their wire encoding.
//! - `hash`: the fixed hash behind bucket assignment and digests.
//! - [`store`]: the [`Store`]: merge rules, views, digests, garbage collection.
//! - [`objects`]: typed payloads of node-scoped entries ([`NodeInfo`]) and the
//!   node list view.
//! - [`network`]: [`Network`] objects, their validation, deterministic
//!   conflict resolution and subnet/VNI allocation.
//! - [`endpoint`]: [`Endpoint`] entries (node-scoped), address allocation and the
//!   deterministic resolution of address collisions; [`Vtep`] objects (external VXLAN
//!   endpoints, cluster-scoped).
//! - [`service`]: [`Service`] objects (cluster-scoped; published-port and VIP claims
//!   resolved by the earliest creation) and [`Task`] entries (node-scoped).
//! - [`validate`]: one validation function per kind, run on every record before it is
//!   merged (the writer's and every reader's).

pub mod endpoint;
mod hash;
pub mod network;
pub mod objects;
pub mod record;
pub mod service;
pub mod store;
pub mod validate;

pub use endpoint::{endpoints, overlay_mtu, vteps, Endpoint, EndpointSet, Vtep, ENCAP_OVERHEAD};
pub use network::{
    valid_networks, validate_network_name, Network, NetworkSet, NetworkSpecError,
    DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_PREFIX, DEFAULT_VNI_RANGE, INGRESS_VNI,
};
pub use objects::{nodes, NodeInfo, PayloadError};
pub use record::{
    decode_record, encode_record, DecodeError, Kind, Record, RecordKey, Scope, Stamp,
    MAX_NAME_BYTES, MAX_RECORD_BYTES, MAX_VALUE_BYTES,
};
pub use service::{
    tasks, valid_services, EndpointMode, HealthCheck, Mode, Protocol, PublishMode, PublishedPort,
    Service, ServiceSet, ServiceSpecError, Task, TaskState,
};
pub use store::{MergeOutcome, RejectReason, Store, BUCKETS, MAX_UNKNOWN_PER_WRITER};
pub use validate::{validate_record, InvalidRecord};

pub(crate) use hash::placement_weight;

/// A saved store: every record encoded as on the wire, each prefixed by its u32 length.
pub fn encode_snapshot(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        let encoded = encode_record(record);
        out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded);
    }
    out
}

/// Reads a saved store. A damaged tail or record is skipped (the cluster supplies the
/// rest by anti-entropy), never a reason not to start.
pub fn decode_snapshot(bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(encoded) = rest.get(4..4 + len) else {
            break;
        };
        if let Ok(record) = decode_record(encoded) {
            records.push(record);
        }
        rest = &rest[4 + len..];
    }
    records
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::NodeId;

    #[test]
    fn snapshots_round_trip_and_survive_damage() {
        let records: Vec<Record> = (0..5u8)
            .map(|i| Record {
                key: RecordKey::cluster(Kind::Network, format!("n{i}")),
                stamp: Stamp {
                    hlc: u64::from(i) + 1,
                    writer: NodeId([i; 16]),
                },
                value: (i % 2 == 0).then(|| vec![i; 10]),
            })
            .collect();
        let bytes = encode_snapshot(&records);
        assert_eq!(decode_snapshot(&bytes), records);
        // A truncated file yields the records before the damage.
        assert_eq!(decode_snapshot(&bytes[..bytes.len() - 3]), records[..4]);
        assert!(decode_snapshot(&[0xff; 7]).is_empty());
    }
}
