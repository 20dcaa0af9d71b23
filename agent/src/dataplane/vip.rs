//! Typed access to the service VIPs' pinned maps (`dataplane_ebpf::maps::VIP_*`, rules in
//! `dataplane_ebpf::vip`): the ones the reconciler converges, the conntrack the programs
//! own (counted for `skein debug maps`) and the per-CPU event counters.
//!
//! `VIP_SERVICES` holds the round-robin cursor the programs advance with an atomic
//! fetch-add: [`VipServicesHandle`] compares `backends` only and keeps the kernel's
//! cursor on every rewrite, so a backend change never resets the rotation.

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::maps::{HashMap, MapData, PerCpuArray};
use dataplane_ebpf::{
    maps,
    vip::{
        VipBackend, VipBackendKey, VipFlow, VipFlowKey, VipPort, VipPortKey, VipReply, VipReplyKey,
        VipService, VipServiceKey, VIP_EVENT_NAMES,
    },
};

use super::{
    maps::{listed, open_pin, removed, typed, written, HashHandle, MapHandle},
    mesh::{page, protocol_name, Page},
    DataplaneError, PinDirs,
};

/// The VIP maps.
pub struct VipMaps {
    pub(crate) ports: HashHandle<VipPortKey, VipPort>,
    pub(crate) services: VipServicesHandle,
    pub(crate) backends: HashHandle<VipBackendKey, VipBackend>,
    flows: HashMap<MapData, VipFlowKey, VipFlow>,
    replies: HashMap<MapData, VipReplyKey, VipReply>,
    events: PerCpuArray<MapData, u64>,
    /// Where the conntrack sweep goes on (`reconcile::vip::sweep_vip`).
    pub(crate) sweep_after: Option<VipFlowKey>,
}

impl VipMaps {
    /// Opens the pinned maps (a loaded [`super::Dataplane`] pins them).
    pub fn open(pins: &PinDirs) -> Result<VipMaps, DataplaneError> {
        let (services, capacity) = open_pin(pins, &maps::VIP_SERVICES)?;
        Ok(VipMaps {
            ports: HashHandle::open(pins, &maps::VIP_PORTS)?,
            services: VipServicesHandle {
                capacity,
                map: typed(&maps::VIP_SERVICES, services)?,
            },
            backends: HashHandle::open(pins, &maps::VIP_BACKENDS)?,
            flows: typed(&maps::VIP_FLOWS, open_pin(pins, &maps::VIP_FLOWS)?.0)?,
            replies: typed(&maps::VIP_REPLIES, open_pin(pins, &maps::VIP_REPLIES)?.0)?,
            events: typed(&maps::VIP_EVENTS, open_pin(pins, &maps::VIP_EVENTS)?.0)?,
            sweep_after: None,
        })
    }

    /// Up to `limit` conntrack entries after `after` (`None`: from the start), and where
    /// the next page starts (`None`: the walk is over).
    pub(crate) fn flows_page(
        &self,
        after: Option<VipFlowKey>,
        limit: usize,
    ) -> Result<Page<VipFlowKey, VipFlow>, DataplaneError> {
        page(&self.flows, maps::VIP_FLOWS.name, after, limit)
    }

    pub(crate) fn flow(&self, key: &VipFlowKey) -> Option<VipFlow> {
        self.flows.get(key, 0).ok()
    }

    pub(crate) fn remove_flow(&mut self, key: &VipFlowKey) -> Result<bool, DataplaneError> {
        removed(maps::VIP_FLOWS.name, self.flows.remove(key))
    }

    pub(crate) fn reply(&self, key: &VipReplyKey) -> Option<VipReply> {
        self.replies.get(key, 0).ok()
    }

    pub(crate) fn remove_reply(&mut self, key: &VipReplyKey) -> Result<bool, DataplaneError> {
        removed(maps::VIP_REPLIES.name, self.replies.remove(key))
    }

    /// Each event's count (summed over CPUs), with its label.
    pub fn events(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        VIP_EVENT_NAMES
            .iter()
            .map(|(slot, name)| {
                let per_cpu = self
                    .events
                    .get(slot, 0)
                    .map_err(|source| DataplaneError::Map {
                        map: maps::VIP_EVENTS.name,
                        what: "reading",
                        source,
                    })?;
                Ok((*name, per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b))))
            })
            .collect()
    }

    /// The VIP maps for `skein debug maps` (the conntrack only counted).
    pub fn dump(&self, out: &mut String) {
        super::overlay::section(out, "vip ports", self.ports.entries(), |(k, p)| {
            format!(
                "vni {} {}:{}/{} -> vip {} target port {}",
                k.vni,
                Ipv4Addr::from(k.ip),
                u16::from_be_bytes(k.port_be),
                protocol_name(k.protocol),
                Ipv4Addr::from(p.vip),
                u16::from_be_bytes(p.target_port_be)
            )
        });
        super::overlay::section(out, "vip services", self.services.read_all(), |(k, s)| {
            format!(
                "vni {} vip {} -> {} backends cursor {}",
                k.vni,
                Ipv4Addr::from(k.vip),
                s.backends,
                s.cursor
            )
        });
        super::overlay::section(out, "vip backends", self.backends.entries(), |(k, b)| {
            format!(
                "vni {} vip {} index {} -> {}",
                k.vni,
                Ipv4Addr::from(k.vip),
                k.index,
                Ipv4Addr::from(b.ip)
            )
        });
        let flows = self.flows.keys().take(1 << 20).count();
        let _ = writeln!(out, "vip conntrack: {flows} flows");
        match self.events() {
            Ok(events) => {
                let text: Vec<String> = events.iter().map(|(n, c)| format!("{n} {c}")).collect();
                let _ = writeln!(out, "vip events: {}", text.join(", "));
            }
            Err(e) => {
                let _ = writeln!(out, "vip events: unreadable: {e}");
            }
        }
    }
}

/// `VIP_SERVICES` as the sync sees it: the cursor read as 0 (it is the programs'),
/// rewrites keeping the kernel's cursor.
pub(crate) struct VipServicesHandle {
    capacity: u32,
    map: HashMap<MapData, VipServiceKey, VipService>,
}

impl VipServicesHandle {
    /// Every service with its real cursor.
    fn read_all(&self) -> Result<Vec<(VipServiceKey, VipService)>, DataplaneError> {
        listed(maps::VIP_SERVICES.name, self.map.iter())
    }
}

impl MapHandle for VipServicesHandle {
    type Key = VipServiceKey;
    type Value = VipService;

    fn name(&self) -> &'static str {
        maps::VIP_SERVICES.name
    }
    fn entries(&self) -> Result<Vec<(VipServiceKey, VipService)>, DataplaneError> {
        Ok(self
            .read_all()?
            .into_iter()
            .map(|(key, value)| (key, VipService { cursor: 0, ..value }))
            .collect())
    }
    fn put(&mut self, key: VipServiceKey, value: VipService) -> Result<(), DataplaneError> {
        // Keep the rotation where the programs left it (a lost increment between the
        // read and the write only repeats one pick).
        let cursor = self.map.get(&key, 0).map(|v| v.cursor).unwrap_or(0);
        written(
            maps::VIP_SERVICES.name,
            self.capacity,
            self.map.insert(key, VipService { cursor, ..value }, 0),
        )
    }
    fn remove(&mut self, key: VipServiceKey) -> Result<bool, DataplaneError> {
        removed(maps::VIP_SERVICES.name, self.map.remove(&key))
    }
}
