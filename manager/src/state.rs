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

pub mod endpoint;
mod hash;
pub mod network;
pub mod objects;
pub mod record;
pub mod store;

pub use endpoint::{endpoints, overlay_mtu, vteps, Endpoint, EndpointSet, Vtep, ENCAP_OVERHEAD};
pub use network::{
    valid_networks, validate_network_name, Network, NetworkSet, NetworkSpecError,
    DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_PREFIX, DEFAULT_VNI_RANGE,
};
pub use objects::{nodes, NodeInfo, PayloadError};
pub use record::{
    decode_record, encode_record, DecodeError, Kind, Record, RecordKey, Scope, Stamp,
    MAX_NAME_BYTES, MAX_RECORD_BYTES, MAX_VALUE_BYTES,
};
pub use store::{MergeOutcome, RejectReason, Store, BUCKETS};
