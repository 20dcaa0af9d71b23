//! Earlier layouts of the pinned maps and how their entries become today's.
//!
//! A pinned map outlives the binary that created it, so a new binary whose map changed
//! finds the previous layout pinned. Each entry of [`crate::maps::PINNED`] has a layout
//! version ([`crate::maps::MapSpec::layout`]) and says who fills it
//! ([`crate::maps::Holds`]); [`older_layouts`] lists the layouts it had before, each
//! recognised by its kernel type and key/value sizes, with what to do with its entries:
//! convert each one ([`Migration::Convert`]) or start the map empty
//! ([`Migration::Recreate`], only for maps the agent refills from the cluster view or
//! counters). The agent (`agent/src/dataplane/migrate.rs`) does the copying; this module
//! is the pure part: layouts and converters over bytes, host-tested.
//!
//! Recognition by sizes is enough while every layout of a map differs from the others in
//! type or sizes (a unit test checks it). A future change that keeps the sizes but moves
//! a field needs a pinned layout record instead.

use core::mem::{offset_of, size_of};

use crate::{
    guard::{IPPROTO_TCP, IPPROTO_UDP},
    maps::{MapKind, MESH_FLOWS, VIP_FLOWS},
    mesh::{Flow, TCP_ESTABLISHED, UDP_OPEN},
    vip::{VipFlow, VipFlowKey},
};

/// Writes the entry `old` (under `key`, the same in both layouts) as the new layout into
/// `new` (zeroed, the new value size); `now_ns` is CLOCK_MONOTONIC for fields the old
/// layout did not have. `false`: the entry cannot be carried (it is dropped, counted).
pub type Convert = fn(key: &[u8], old: &[u8], new: &mut [u8], now_ns: u64) -> bool;

/// What becomes of the entries of a map pinned in an older layout.
#[derive(Clone, Copy, Debug)]
pub enum Migration {
    /// Each entry is converted and copied into the new map.
    Convert(Convert),
    /// The new map starts empty: its content is rebuilt by the agent or is counters.
    Recreate,
}

/// A layout a pinned map had before this binary.
#[derive(Clone, Copy, Debug)]
pub struct OldLayout {
    pub version: u32,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub migration: Migration,
}

/// The layouts the map `name` had before, oldest first (empty for maps that never
/// changed).
pub fn older_layouts(name: &str) -> &'static [OldLayout] {
    HISTORY
        .iter()
        .find(|(map, _)| *map == name)
        .map_or(&[], |(_, layouts)| layouts)
}

const HISTORY: &[(&str, &[OldLayout])] = &[
    (
        MESH_FLOWS.name,
        &[OldLayout {
            version: 0,
            kind: MapKind::LruHash,
            key_size: MESH_FLOWS.key_size,
            value_size: size_of::<FlowV0>() as u32,
            migration: Migration::Convert(mesh_flow_from_v0),
        }],
    ),
    (
        VIP_FLOWS.name,
        &[OldLayout {
            version: 0,
            kind: MapKind::LruHash,
            key_size: VIP_FLOWS.key_size,
            value_size: size_of::<VipFlowV0>() as u32,
            migration: Migration::Convert(vip_flow_from_v0),
        }],
    ),
];

/// [`Flow`] before the cached next hop (layout 0 of `MESH_FLOWS`, until commit a9fcaa2):
/// the bytes `hop_ifindex` now uses were padding, and the hop cache did not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowV0 {
    pub backend_ip: [u8; 4],
    pub backend_host: [u8; 4],
    pub vni: u32,
    pub slot: u32,
    pub target_port_be: [u8; 2],
    pub state: u8,
    pub flags: u8,
    pub _pad: [u8; 4],
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// [`VipFlow`] before it tracked TCP state (layout 0 of `VIP_FLOWS`, until commit
/// db9fe73): where the flow goes, nothing about its connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFlowV0 {
    pub backend_ip: [u8; 4],
    pub source_ip: [u8; 4],
    pub target_port_be: [u8; 2],
    pub _pad: [u8; 2],
}

const _: () = {
    assert!(size_of::<FlowV0>() == 40);
    assert!(size_of::<VipFlowV0>() == 12);
};

/// Copies `len` bytes of one field from `old` at `from` to `new` at `to`; `false` if
/// either slice is too short (a map of other sizes than its layout says).
fn carry(old: &[u8], from: usize, new: &mut [u8], to: usize, len: usize) -> bool {
    match (old.get(from..from + len), new.get_mut(to..to + len)) {
        (Some(source), Some(target)) => {
            target.copy_from_slice(source);
            true
        }
        _ => false,
    }
}

/// Copies the fields named in both structs from an `$old` value to a `$new` one.
macro_rules! carry_fields {
    ($old:expr, $old_ty:ty => $new:expr, $new_ty:ty; $($field:ident: $len:expr),+ $(,)?) => {
        true $(&& carry(
            $old,
            offset_of!($old_ty, $field),
            $new,
            offset_of!($new_ty, $field),
            $len,
        ))+
    };
}

/// `MESH_FLOWS` layout 0 → today: every field kept; no next hop cached (`hop_ifindex`
/// 0), so the first packet after the upgrade asks the FIB, as after any refresh.
pub fn mesh_flow_from_v0(_key: &[u8], old: &[u8], new: &mut [u8], _now_ns: u64) -> bool {
    if old.len() != size_of::<FlowV0>() || new.len() != size_of::<Flow>() {
        return false;
    }
    new.fill(0);
    carry_fields!(old, FlowV0 => new, Flow;
        backend_ip: 4, backend_host: 4, vni: 4, slot: 4, target_port_be: 2,
        state: 1, flags: 1, created_ns: 8, last_seen_ns: 8)
}

/// Today's `MESH_FLOWS` entry written as layout 0 (the hop cache dropped): what the
/// migration test pins to stand for the previous binary's map.
pub fn mesh_flow_to_v0(_key: &[u8], new: &[u8], old: &mut [u8], _now_ns: u64) -> bool {
    if old.len() != size_of::<FlowV0>() || new.len() != size_of::<Flow>() {
        return false;
    }
    old.fill(0);
    carry_fields!(new, Flow => old, FlowV0;
        backend_ip: 4, backend_host: 4, vni: 4, slot: 4, target_port_be: 2,
        state: 1, flags: 1, created_ns: 8, last_seen_ns: 8)
}

/// `VIP_FLOWS` layout 0 → today: the old layout kept no connection state, so a carried
/// flow is taken as established (TCP) or open (UDP) and seen now — it carried traffic
/// under the previous binary; the idle timeouts then apply from the upgrade on. Other
/// protocols were never tracked: such an entry is dropped.
pub fn vip_flow_from_v0(key: &[u8], old: &[u8], new: &mut [u8], now_ns: u64) -> bool {
    if old.len() != size_of::<VipFlowV0>() || new.len() != size_of::<VipFlow>() {
        return false;
    }
    let state = match key.get(offset_of!(VipFlowKey, protocol)) {
        Some(&IPPROTO_TCP) => TCP_ESTABLISHED,
        Some(&IPPROTO_UDP) => UDP_OPEN,
        _ => return false,
    };
    new.fill(0);
    new[offset_of!(VipFlow, state)] = state;
    let seen = offset_of!(VipFlow, last_seen_ns);
    new[seen..seen + 8].copy_from_slice(&now_ns.to_ne_bytes());
    carry_fields!(old, VipFlowV0 => new, VipFlow;
        backend_ip: 4, source_ip: 4, target_port_be: 2)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;
    use crate::maps::{Holds, PINNED};

    /// The bytes of a `#[repr(C)]` ABI value (no implicit padding: the ABI asserts sizes).
    fn bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is one of this crate's repr(C) map types without implicit padding,
        // so every byte is initialised; the slice lives only for the copy.
        unsafe { core::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) }
            .to_vec()
    }

    fn flow() -> Flow {
        Flow {
            backend_ip: [10, 0, 1, 5],
            backend_host: [192, 168, 0, 2],
            vni: 4097,
            slot: 3,
            target_port_be: 8080u16.to_be_bytes(),
            state: TCP_ESTABLISHED,
            flags: 1,
            hop_ifindex: 7,
            created_ns: 1_000,
            last_seen_ns: 2_000,
            hop_dmac: [2; 6],
            hop_smac: [3; 6],
            hop_mtu: 1500,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_mesh_flow_of_layout_0_keeps_every_field_and_caches_no_hop() {
        let old = FlowV0 {
            backend_ip: [10, 0, 1, 5],
            backend_host: [192, 168, 0, 2],
            vni: 4097,
            slot: 3,
            target_port_be: 8080u16.to_be_bytes(),
            state: TCP_ESTABLISHED,
            flags: 1,
            _pad: [0; 4],
            created_ns: 1_000,
            last_seen_ns: 2_000,
        };
        let mut new = [0xaa; size_of::<Flow>()];
        assert!(mesh_flow_from_v0(&[0; 16], &bytes(&old), &mut new, 99));
        let want = Flow {
            hop_ifindex: 0,
            hop_dmac: [0; 6],
            hop_smac: [0; 6],
            hop_mtu: 0,
            ..flow()
        };
        assert_eq!(new.to_vec(), bytes(&want));
        // And back: the test's downgrade is the inverse on the fields both have.
        let mut again = [0; size_of::<FlowV0>()];
        assert!(mesh_flow_to_v0(&[0; 16], &bytes(&flow()), &mut again, 0));
        assert_eq!(again.to_vec(), bytes(&old));
    }

    #[test]
    fn a_vip_flow_of_layout_0_is_established_or_open_and_seen_now() {
        let old = VipFlowV0 {
            backend_ip: [10, 0, 1, 5],
            source_ip: [10, 0, 1, 9],
            target_port_be: 80u16.to_be_bytes(),
            _pad: [0; 2],
        };
        for (protocol, state) in [(IPPROTO_TCP, TCP_ESTABLISHED), (IPPROTO_UDP, UDP_OPEN)] {
            let key = VipFlowKey {
                protocol,
                ..VipFlowKey::default()
            };
            let mut new = [0xaa; size_of::<VipFlow>()];
            assert!(vip_flow_from_v0(&bytes(&key), &bytes(&old), &mut new, 77));
            let want = VipFlow {
                backend_ip: old.backend_ip,
                source_ip: old.source_ip,
                target_port_be: old.target_port_be,
                state,
                flags: 0,
                _pad: [0; 4],
                last_seen_ns: 77,
            };
            assert_eq!(new.to_vec(), bytes(&want), "protocol {protocol}");
        }
        let icmp = VipFlowKey {
            protocol: 1,
            ..VipFlowKey::default()
        };
        let mut new = [0; size_of::<VipFlow>()];
        assert!(!vip_flow_from_v0(&bytes(&icmp), &bytes(&old), &mut new, 0));
    }

    #[test]
    fn converters_refuse_bytes_of_other_sizes() {
        let mut new = [0; size_of::<Flow>()];
        assert!(!mesh_flow_from_v0(&[], &[0; 39], &mut new, 0));
        assert!(!mesh_flow_from_v0(&[], &[0; 40], &mut new[..55], 0));
        let mut vip = [0; size_of::<VipFlow>()];
        assert!(!vip_flow_from_v0(&[0; 20], &[0; 13], &mut vip, 0));
    }

    /// Recognition by type and sizes must be unambiguous, versions must precede the
    /// current one, and state only the kernel holds must be converted, never dropped.
    #[test]
    fn every_older_layout_is_recognisable_and_kernel_state_is_converted() {
        for (name, layouts) in HISTORY {
            let spec = crate::maps::by_name(name).expect("history names a pinned map");
            let mut seen = Vec::from([(spec.kind as u8, spec.key_size, spec.value_size)]);
            for layout in *layouts {
                let sizes = (layout.kind as u8, layout.key_size, layout.value_size);
                assert!(
                    !seen.contains(&sizes),
                    "{name} layout {} has the sizes of another of its layouts: \
                     recognising it needs a pinned layout record",
                    layout.version
                );
                seen.push(sizes);
                assert!(layout.version < spec.layout, "{name}");
                if spec.holds == Holds::Kernel {
                    assert!(
                        matches!(layout.migration, Migration::Convert(_)),
                        "{name} holds state only the kernel has: its layout {} needs a converter",
                        layout.version
                    );
                }
            }
            assert_eq!(
                layouts.len() as u32,
                spec.layout,
                "{name}: every earlier version listed"
            );
        }
        for spec in PINNED {
            if spec.layout > 0 {
                assert_eq!(
                    older_layouts(spec.name).len() as u32,
                    spec.layout,
                    "{}",
                    spec.name
                );
            }
        }
    }
}
