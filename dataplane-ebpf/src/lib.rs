//! The ABI shared by Skein's eBPF programs and the agent: program and map names,
//! capacities, map key/value types and pure helpers. It is `no_std`, builds for both
//! `bpfel-unknown-none` and the host, and is unit-tested on the host.
//!
//! Layout:
//! - [`names`]: program names, used by both sides.
//! - [`maps`]: the one table of pinned maps (name, type, key/value size, capacity).
//! - [`counters`]: the per-verdict packet/byte counters every program keeps.
//! - [`overlay`]: the overlay's maps and shared helpers (VXLAN, MACs, checksums).
//! - [`guard`]: what keeps the overlay closed: the guarded hosts and ports, and the rule.
//! - [`mesh`]: the routing mesh's maps, conntrack states and checksum/MSS helpers.
//! - [`respond`]: the answers the mesh sends in place of a packet (TCP reset, ICMP).
//! - [`vip`]: service VIPs balanced on the sending host (east-west).
//!
//! Rules for every map key/value type (hash maps compare raw bytes, and the two sides
//! must agree on layout without a compiler to check them): `#[repr(C)]`, `Copy`, no
//! implicit padding (explicit `_pad` fields and a size assert), no `bool`/`enum`/`Option`.
#![no_std]

pub mod counters;
pub mod guard;
pub mod maps;
pub mod mesh;
pub mod migrations;
#[cfg(feature = "model")]
pub mod model;
pub mod names;
pub mod overlay;
pub mod respond;
pub mod sock;
pub mod vip;
