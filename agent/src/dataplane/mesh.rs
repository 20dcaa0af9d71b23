//! Typed access to the routing mesh's pinned maps (`dataplane_ebpf::maps::MESH_*`): the
//! ones the reconciler converges ([`MapHandle`]s, like the overlay's), the conntrack the
//! programs own (read for `skein debug conntrack`, the peer RPC's flow counts and
//! `/metrics`; swept of expired entries in bounded steps), and the per-CPU statistics.
//!
//! Two map kinds need more than a hash handle:
//! - `MESH_SERVICES` is an array whose `cursor` the programs advance with an atomic
//!   fetch-add: [`ServicesHandle`] hides the cursor from the sync (it compares `backends`
//!   and `vni` only) and keeps the kernel's cursor on every rewrite, so a backend change
//!   never resets the rotation;
//! - `MESH_STATS` is a per-CPU hash the programs only add to: [`StatsHandle`] creates
//!   zeroed entries and removes stale ones, and never rewrites a present one (which would
//!   zero its counters).

use std::{
    fmt::Write as _,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Pod,
};
use dataplane_ebpf::{
    maps,
    mesh::{
        Flow, FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshPort, MeshPortKey, MeshService,
        MeshStatKey, MeshStats, MeshTarget, MeshTargetKey, Reply, ReplyKey, CT_DELETED,
        CT_INSERTED,
    },
};

use super::{
    maps::{listed, open_pin, removed, typed, written, HashHandle, MapHandle},
    DataplaneError, PinDirs,
};

/// A page of a map walk: the entries, and the key to continue after (`None`: the end).
pub(crate) type Page<K, V> = (Vec<(K, V)>, Option<K>);

/// The mesh's maps.
pub struct MeshMaps {
    config: Array<MapData, MeshConfig>,
    pub(crate) ports: HashHandle<MeshPortKey, MeshPort>,
    pub(crate) services: ServicesHandle,
    pub(crate) backends: HashHandle<MeshBackendKey, MeshBackend>,
    pub(crate) nodes: HashHandle<[u8; 4], u32>,
    pub(crate) targets: HashHandle<MeshTargetKey, MeshTarget>,
    pub(crate) stats: StatsHandle,
    flows: HashMap<MapData, FlowKey, Flow>,
    replies: HashMap<MapData, ReplyKey, Reply>,
    ct_events: PerCpuArray<MapData, u64>,
}

fn map_error(
    map: &'static str,
    what: &'static str,
) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, what, source }
}

impl MeshMaps {
    /// Opens the pinned maps (a loaded [`super::Dataplane`] pins them).
    pub fn open(pins: &PinDirs) -> Result<MeshMaps, DataplaneError> {
        let plain = |spec: &'static dataplane_ebpf::maps::MapSpec| open_pin(pins, spec);
        Ok(MeshMaps {
            config: typed(&maps::MESH_CONFIG, plain(&maps::MESH_CONFIG)?.0)?,
            ports: HashHandle::open(pins, &maps::MESH_PORTS)?,
            services: ServicesHandle {
                map: typed(&maps::MESH_SERVICES, plain(&maps::MESH_SERVICES)?.0)?,
            },
            backends: HashHandle::open(pins, &maps::MESH_BACKENDS)?,
            nodes: HashHandle::open(pins, &maps::MESH_NODES)?,
            targets: HashHandle::open(pins, &maps::MESH_TARGETS)?,
            stats: {
                let (map, capacity) = plain(&maps::MESH_STATS)?;
                StatsHandle {
                    capacity,
                    map: typed(&maps::MESH_STATS, map)?,
                }
            },
            flows: typed(&maps::MESH_FLOWS, plain(&maps::MESH_FLOWS)?.0)?,
            replies: typed(&maps::MESH_REPLIES, plain(&maps::MESH_REPLIES)?.0)?,
            ct_events: typed(&maps::MESH_CT_EVENTS, plain(&maps::MESH_CT_EVENTS)?.0)?,
        })
    }

    pub fn config(&self) -> Result<MeshConfig, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(map_error(maps::MESH_CONFIG.name, "reading"))
    }

    /// Writes the settings (only when they differ: the programs read them per packet).
    pub fn set_config(&mut self, config: MeshConfig) -> Result<bool, DataplaneError> {
        if self.config()? == config {
            return Ok(false);
        }
        self.config
            .set(0, config, 0)
            .map_err(map_error(maps::MESH_CONFIG.name, "writing"))?;
        Ok(true)
    }

    /// Up to `limit` conntrack entries after `after` (`None`: from the start), and the key
    /// to continue from (`None`: the walk reached the end). Entries the programs delete
    /// meanwhile are skipped; if `after` itself went, the kernel starts over (the walk
    /// stays bounded, it may see some entries twice).
    pub fn flows_page(
        &self,
        after: Option<FlowKey>,
        limit: usize,
    ) -> Result<Page<FlowKey, Flow>, DataplaneError> {
        page(&self.flows, maps::MESH_FLOWS.name, after, limit)
    }

    /// Every conntrack entry (at most the map's capacity), for listing.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        listed(maps::MESH_FLOWS.name, self.flows.iter())
    }

    /// One conntrack entry, if present.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(key, 0).ok()
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        removed(maps::MESH_FLOWS.name, self.flows.remove(key))
    }

    /// How many conntrack entries there are: a walk of keys only (no values copied).
    pub fn count_flows(&self) -> Result<u64, DataplaneError> {
        let fd = self.flows.map().fd().as_fd();
        let mut key: Option<FlowKey> = None;
        let mut count = 0u64;
        // Bounded by the capacity (plus slack for entries replaced during the walk).
        for _ in 0..=2 * u64::from(maps::MESH_FLOWS.capacity) {
            match next_key(fd, key.as_ref()) {
                Ok(Some(next)) => {
                    key = Some(next);
                    count += 1;
                }
                Ok(None) => return Ok(count),
                Err(error) => return Err(syscall(maps::MESH_FLOWS.name, error)),
            }
        }
        Ok(count)
    }

    /// Like [`MeshMaps::flows_page`], for the reply map.
    pub fn replies_page(
        &self,
        after: Option<ReplyKey>,
        limit: usize,
    ) -> Result<Page<ReplyKey, Reply>, DataplaneError> {
        page(&self.replies, maps::MESH_REPLIES.name, after, limit)
    }

    pub fn reply(&self, key: &ReplyKey) -> Option<Reply> {
        self.replies.get(key, 0).ok()
    }

    pub fn remove_reply(&mut self, key: &ReplyKey) -> Result<bool, DataplaneError> {
        removed(maps::MESH_REPLIES.name, self.replies.remove(key))
    }

    /// Conntrack entries the programs created and deleted (summed over CPUs).
    pub fn ct_events(&self) -> Result<(u64, u64), DataplaneError> {
        let slot = |index: u32| -> Result<u64, DataplaneError> {
            let per_cpu = self
                .ct_events
                .get(&index, 0)
                .map_err(map_error(maps::MESH_CT_EVENTS.name, "reading"))?;
            Ok(per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok((slot(CT_INSERTED)?, slot(CT_DELETED)?))
    }

    /// Every statistics row, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(MeshStatKey, MeshStats)>, DataplaneError> {
        self.stats.read()
    }

    /// The mesh's maps for `skein debug maps` (the conntrack only counted: `skein debug
    /// conntrack` lists it).
    pub fn dump(&self, out: &mut String) {
        match self.config() {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "mesh config: ingress vni {} mss {} timeouts syn {}s established {}s closing {}s udp {}s",
                    c.ingress_vni,
                    c.mss,
                    c.syn_timeout_ns / 1_000_000_000,
                    c.established_timeout_ns / 1_000_000_000,
                    c.closing_timeout_ns / 1_000_000_000,
                    c.udp_timeout_ns / 1_000_000_000
                );
            }
            Err(e) => {
                let _ = writeln!(out, "mesh config: unreadable: {e}");
            }
        }
        super::overlay::section(out, "mesh ports", self.ports.entries(), |(k, p)| {
            format!(
                "{}/{} -> slot {} target port {}",
                u16::from_be_bytes(k.port_be),
                protocol_name(k.protocol),
                p.slot,
                u16::from_be_bytes(p.target_port_be)
            )
        });
        super::overlay::section(
            out,
            "mesh services",
            self.services.read_all(),
            |(slot, s)| {
                format!(
                    "slot {slot} -> {} backends cursor {} vni {}",
                    s.backends, s.cursor, s.vni
                )
            },
        );
        super::overlay::section(out, "mesh backends", self.backends.entries(), |(k, b)| {
            format!(
                "slot {} index {} -> {} on {}",
                k.slot,
                k.index,
                Ipv4Addr::from(b.ip),
                Ipv4Addr::from(b.host_ip)
            )
        });
        super::overlay::section(out, "mesh nodes", self.nodes.entries(), |(ip, _)| {
            Ipv4Addr::from(*ip).to_string()
        });
        super::overlay::section(out, "mesh targets", self.targets.entries(), |(k, t)| {
            format!(
                "{}:{}/{} -> vni {}",
                Ipv4Addr::from(k.ip),
                u16::from_be_bytes(k.port_be),
                protocol_name(k.protocol),
                t.vni
            )
        });
        super::overlay::section(out, "mesh stats", self.stats(), |(k, s)| {
            format!(
                "slot {} backend {} -> {} new flows, {} packets, {} bytes",
                k.slot,
                Ipv4Addr::from(k.backend_ip),
                s.new_flows,
                s.packets,
                s.bytes
            )
        });
        match self.count_flows() {
            Ok(n) => {
                let _ = writeln!(out, "mesh conntrack: {n} flows (skein debug conntrack)");
            }
            Err(e) => {
                let _ = writeln!(out, "mesh conntrack: unreadable: {e}");
            }
        }
    }
}

/// `tcp`, `udp` or the number.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        dataplane_ebpf::guard::IPPROTO_TCP => "tcp".into(),
        dataplane_ebpf::guard::IPPROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

pub(super) fn page<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    after: Option<K>,
    limit: usize,
) -> Result<Page<K, V>, DataplaneError> {
    let fd = map.map().fd().as_fd();
    let mut out = Vec::new();
    let mut key = after;
    while out.len() < limit {
        match next_key(fd, key.as_ref()).map_err(|e| syscall(name, e))? {
            Some(next) => {
                key = Some(next);
                // Deleted between the two calls: skip it.
                if let Ok(value) = map.get(&next, 0) {
                    out.push((next, value));
                }
            }
            None => return Ok((out, None)),
        }
    }
    Ok((out, key))
}

fn syscall(map: &'static str, io_error: io::Error) -> DataplaneError {
    DataplaneError::Map {
        map,
        what: "walking",
        source: aya::sys::SyscallError {
            call: "bpf_map_get_next_key",
            io_error,
        }
        .into(),
    }
}

/// `BPF_MAP_GET_NEXT_KEY` from `key` (`None`: the first key), which aya does not expose
/// as a resumable walk: `Ok(None)` at the end.
fn next_key<K: Pod>(fd: BorrowedFd<'_>, key: Option<&K>) -> io::Result<Option<K>> {
    /// The `bpf_attr` layout of the map element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut next = std::mem::MaybeUninit::<K>::uninit();
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k as *const K as u64),
        next_key: next.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for this command of its size; `key`
    // and `next` point to `size_of::<K>()` bytes, the map's key size (checked at open).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret == 0 {
        // SAFETY: the kernel wrote a whole key.
        return Ok(Some(unsafe { next.assume_init() }));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// An array of service slots: the pinned `MESH_SERVICES`, or a `Vec` in the tests.
pub(crate) trait SlotArray {
    fn slots(&self) -> u32;
    fn get(&self, slot: u32) -> Result<MeshService, DataplaneError>;
    fn set(&mut self, slot: u32, value: MeshService) -> Result<(), DataplaneError>;
}

impl SlotArray for Array<MapData, MeshService> {
    fn slots(&self) -> u32 {
        self.len()
    }
    fn get(&self, slot: u32) -> Result<MeshService, DataplaneError> {
        Array::get(self, &slot, 0).map_err(map_error(maps::MESH_SERVICES.name, "reading"))
    }
    fn set(&mut self, slot: u32, value: MeshService) -> Result<(), DataplaneError> {
        Array::set(self, slot, value, 0).map_err(map_error(maps::MESH_SERVICES.name, "writing"))
    }
}

impl SlotArray for Vec<MeshService> {
    fn slots(&self) -> u32 {
        self.len() as u32
    }
    fn get(&self, slot: u32) -> Result<MeshService, DataplaneError> {
        Ok(self[slot as usize])
    }
    fn set(&mut self, slot: u32, value: MeshService) -> Result<(), DataplaneError> {
        self[slot as usize] = value;
        Ok(())
    }
}

/// `MESH_SERVICES` as the sync sees it: slots with a service (`backends` or `vni` set),
/// the cursor read as 0 (it is the programs'), rewrites keeping the kernel's cursor.
pub(crate) struct ServicesHandle<A: SlotArray = Array<MapData, MeshService>> {
    pub(crate) map: A,
}

impl<A: SlotArray> ServicesHandle<A> {
    /// Every slot in use, with its real cursor.
    pub(crate) fn read_all(&self) -> Result<Vec<(u32, MeshService)>, DataplaneError> {
        let mut out = Vec::new();
        for slot in 0..self.map.slots() {
            let value = self.map.get(slot)?;
            if value.backends != 0 || value.vni != 0 {
                out.push((slot, value));
            }
        }
        Ok(out)
    }
}

impl<A: SlotArray> MapHandle for ServicesHandle<A> {
    type Key = u32;
    type Value = MeshService;

    fn name(&self) -> &'static str {
        maps::MESH_SERVICES.name
    }
    fn entries(&self) -> Result<Vec<(u32, MeshService)>, DataplaneError> {
        Ok(self
            .read_all()?
            .into_iter()
            .map(|(slot, value)| (slot, MeshService { cursor: 0, ..value }))
            .collect())
    }
    /// Keeps the cursor the programs have advanced: read just before the write (a pick
    /// between the two is repeated once, which only matters at the moment the backends
    /// change, when the rotation's modulus changes anyway).
    fn put(&mut self, slot: u32, value: MeshService) -> Result<(), DataplaneError> {
        let cursor = self.map.get(slot)?.cursor;
        self.map.set(slot, MeshService { cursor, ..value })
    }
    /// An array has no removal: the slot is zeroed (no backends: new flows refused).
    fn remove(&mut self, slot: u32) -> Result<bool, DataplaneError> {
        if self.map.get(slot)? == MeshService::default() {
            return Ok(false);
        }
        self.map.set(slot, MeshService::default())?;
        Ok(true)
    }
}

/// `MESH_STATS` as the sync sees it: which rows exist (the value is `()`); a new row is
/// created zeroed on every CPU, an existing one never rewritten.
pub(crate) struct StatsHandle {
    capacity: u32,
    map: PerCpuHashMap<MapData, MeshStatKey, MeshStats>,
}

impl StatsHandle {
    fn read(&self) -> Result<Vec<(MeshStatKey, MeshStats)>, DataplaneError> {
        Ok(listed(maps::MESH_STATS.name, self.map.iter())?
            .into_iter()
            .map(|(key, per_cpu)| {
                let sum = per_cpu.iter().fold(MeshStats::default(), |a, b| MeshStats {
                    new_flows: a.new_flows.wrapping_add(b.new_flows),
                    packets: a.packets.wrapping_add(b.packets),
                    bytes: a.bytes.wrapping_add(b.bytes),
                });
                (key, sum)
            })
            .collect())
    }
}

impl MapHandle for StatsHandle {
    type Key = MeshStatKey;
    type Value = ();

    fn name(&self) -> &'static str {
        maps::MESH_STATS.name
    }
    fn entries(&self) -> Result<Vec<(MeshStatKey, ())>, DataplaneError> {
        let keys = self
            .map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(maps::MESH_STATS.name, "reading"))?;
        Ok(keys.into_iter().map(|k| (k, ())).collect())
    }
    fn put(&mut self, key: MeshStatKey, (): ()) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Pin {
            what: "counting the possible CPUs",
            path: "/sys/devices/system/cpu/possible".into(),
            source: Box::new(e),
        })?;
        let zeroed = PerCpuValues::try_from(vec![MeshStats::default(); cpus]).map_err(|e| {
            DataplaneError::Pin {
                what: "making per-CPU values",
                path: maps::MESH_STATS.name.into(),
                source: Box::new(e),
            }
        })?;
        // BPF_NOEXIST: a row the programs already count into is never zeroed.
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(key, zeroed, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            result => written(maps::MESH_STATS.name, self.capacity, result),
        }
    }
    fn remove(&mut self, key: MeshStatKey) -> Result<bool, DataplaneError> {
        removed(maps::MESH_STATS.name, self.map.remove(&key))
    }
}
