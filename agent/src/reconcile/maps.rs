//! The one way a map is synced: [`sync_map`] converges any [`MapHandle`] to its desired
//! entries, and [`sync_overlay`] runs it for every overlay map.
//!
//! Each map converges on its own: an error (a full map, a failed write or removal, an
//! unreadable map) is logged, recorded in [`MapSyncErrors`] (the metric
//! `skein_dataplane_sync_errors_total{map,reason}` and a line in `skein debug maps`),
//! and neither stops the rest of that map's entries nor any other map. Removals come
//! before additions, so a map near its capacity makes room first — except in the
//! add-only window after a restart, when nothing is removed.

use std::collections::BTreeMap;

use dataplane_ebpf::{
    guard::{GuardedHostKey, GuardedHostValue, GuardedPort, GuardedPortValue},
    mesh::{
        MeshBackend, MeshBackendKey, MeshPort, MeshPortKey, MeshService, MeshStatKey, MeshTarget,
        MeshTargetKey,
    },
    overlay::{EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, VtepKey, VtepValue},
};
use tracing::warn;

use crate::dataplane::{DataplaneError, MapHandle, MeshMaps, OverlayMaps};

use super::{desired::DesiredMaps, mesh::DesiredMesh, MapSyncErrors, SyncErrorReason};

/// Converges every overlay map to `desired` (removing nothing unless `removals`);
/// returns how many entries changed.
pub(super) fn sync_overlay(
    maps: &mut OverlayMaps,
    desired: &DesiredMaps,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    sync_tables(
        Tables {
            endpoints: &mut maps.endpoints,
            ports: &mut maps.ports,
            networks: &mut maps.networks,
            subnets: &mut maps.subnets,
            vteps: &mut maps.vteps,
            guarded_hosts: &mut maps.guarded_hosts,
            guarded_ports: &mut maps.guarded_ports,
        },
        desired,
        removals,
        errors,
    )
}

/// Writes `entries` (inserting or replacing, removing nothing) into the overlay maps,
/// stopping at the first error: for an endpoint's own entries, which must all be there
/// before it may send.
pub(super) fn put_entries(
    maps: &mut OverlayMaps,
    entries: &DesiredMaps,
) -> Result<(), DataplaneError> {
    fn put<M: MapHandle + ?Sized>(
        map: &mut M,
        entries: &BTreeMap<M::Key, M::Value>,
    ) -> Result<(), DataplaneError> {
        entries
            .iter()
            .try_for_each(|(key, value)| map.put(*key, *value))
    }
    put(&mut maps.networks, &entries.networks)?;
    put(&mut maps.subnets, &entries.subnets)?;
    put(&mut maps.endpoints, &entries.endpoints)?;
    put(&mut maps.ports, &entries.ports)?;
    put(&mut maps.vteps, &entries.vteps)?;
    put(&mut maps.guarded_hosts, &entries.guarded_hosts)?;
    put(&mut maps.guarded_ports, &entries.guarded_ports)
}

/// A synced map of these key and value types: a pinned map, or a fake in the tests.
type Table<'a, K, V> = &'a mut dyn MapHandle<Key = K, Value = V>;

/// The overlay's synced maps.
struct Tables<'a> {
    endpoints: Table<'a, EndpointKey, EndpointValue>,
    ports: Table<'a, u32, PortValue>,
    networks: Table<'a, u32, NetworkValue>,
    subnets: Table<'a, SubnetKey, u32>,
    vteps: Table<'a, VtepKey, VtepValue>,
    guarded_hosts: Table<'a, GuardedHostKey, GuardedHostValue>,
    guarded_ports: Table<'a, GuardedPort, GuardedPortValue>,
}

fn sync_tables(
    tables: Tables<'_>,
    desired: &DesiredMaps,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    sync_map(tables.endpoints, &desired.endpoints, removals, errors)
        + sync_map(tables.ports, &desired.ports, removals, errors)
        + sync_map(tables.networks, &desired.networks, removals, errors)
        + sync_map(tables.subnets, &desired.subnets, removals, errors)
        + sync_map(tables.vteps, &desired.vteps, removals, errors)
        + sync_map(
            tables.guarded_hosts,
            &desired.guarded_hosts,
            removals,
            errors,
        )
        + sync_map(
            tables.guarded_ports,
            &desired.guarded_ports,
            removals,
            errors,
        )
}

/// Converges the mesh's maps to `desired` (see [`sync_mesh_tables`] for the order);
/// returns how many entries changed. `MESH_CONFIG` is written first (a failure is
/// recorded like any map's).
pub(super) fn sync_mesh(
    maps: &mut MeshMaps,
    desired: &DesiredMesh,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    let name = dataplane_ebpf::maps::MESH_CONFIG.name;
    let config = match maps.set_config(desired.config) {
        Ok(changed) => {
            errors.converged(name);
            usize::from(changed)
        }
        Err(error) => {
            let mut failures = Failures::default();
            failures.note(SyncErrorReason::Write, &error);
            report(name, failures, errors);
            0
        }
    };
    config
        + sync_mesh_tables(
            MeshTables {
                ports: &mut maps.ports,
                services: &mut maps.services,
                backends: &mut maps.backends,
                nodes: &mut maps.nodes,
                targets: &mut maps.targets,
                stats: &mut maps.stats,
            },
            desired,
            removals,
            errors,
        )
}

/// The mesh's synced maps.
struct MeshTables<'a> {
    ports: Table<'a, MeshPortKey, MeshPort>,
    services: Table<'a, u32, MeshService>,
    backends: Table<'a, MeshBackendKey, MeshBackend>,
    nodes: Table<'a, [u8; 4], u32>,
    targets: Table<'a, MeshTargetKey, MeshTarget>,
    stats: Table<'a, MeshStatKey, ()>,
}

/// The order keeps every state in between usable by the programs: the nodes and targets
/// (what the backend host accepts) and the statistics rows (which the programs only add
/// to) first; then the backends added or changed *before* a slot's count grows, the
/// services (counts, VNIs; a removed service's slot zeroed), and only then the backends
/// beyond a shrunk count removed; published ports last, so a port never leads to a slot
/// not yet filled.
fn sync_mesh_tables(
    tables: MeshTables<'_>,
    desired: &DesiredMesh,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    sync_map(tables.nodes, &desired.nodes, removals, errors)
        + sync_map(tables.targets, &desired.targets, removals, errors)
        + sync_map(tables.stats, &desired.stats, removals, errors)
        + sync_map(&mut *tables.backends, &desired.backends, false, errors)
        + sync_map(tables.services, &desired.services, removals, errors)
        + sync_map(tables.backends, &desired.backends, removals, errors)
        + sync_map(tables.ports, &desired.ports, removals, errors)
}

/// The failures of one map's pass, per reason: how many entries, and the first error.
#[derive(Default)]
struct Failures(BTreeMap<SyncErrorReason, (usize, String)>);

impl Failures {
    fn note(&mut self, reason: SyncErrorReason, error: &DataplaneError) {
        let entry = self.0.entry(reason).or_insert_with(|| (0, chain(error)));
        entry.0 += 1;
    }
}

/// The error with its sources, `: `-separated.
fn chain(error: &DataplaneError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text += ": ";
        text += &s.to_string();
        source = s.source();
    }
    text
}

/// Converges `map` to `desired`: removes what `desired` lacks (only if `removals`), then
/// writes what differs. Never stops at an error: every failure is logged (a warning
/// with the map, the reason and how many entries failed) and recorded in `errors`
/// once per reason and pass; a pass without failures marks the map converged. Returns
/// how many entries changed.
pub(crate) fn sync_map<M: MapHandle + ?Sized>(
    map: &mut M,
    desired: &BTreeMap<M::Key, M::Value>,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    let name = map.name();
    let mut failures = Failures::default();
    let current: BTreeMap<M::Key, M::Value> = match map.entries() {
        Ok(entries) => entries.into_iter().collect(),
        Err(error) => {
            failures.note(SyncErrorReason::Read, &error);
            report(name, failures, errors);
            return 0;
        }
    };
    let mut changes = 0;
    if removals {
        for key in current.keys().filter(|key| !desired.contains_key(key)) {
            match map.remove(*key) {
                Ok(_) => changes += 1,
                Err(error) => failures.note(SyncErrorReason::Remove, &error),
            }
        }
    }
    for (key, value) in desired {
        if current.get(key) == Some(value) {
            continue;
        }
        match map.put(*key, *value) {
            Ok(()) => changes += 1,
            Err(error @ DataplaneError::MapFull { .. }) => {
                failures.note(SyncErrorReason::Full, &error)
            }
            Err(error) => failures.note(SyncErrorReason::Write, &error),
        }
    }
    report(name, failures, errors);
    changes
}

fn report(map: &'static str, failures: Failures, errors: &MapSyncErrors) {
    if failures.0.is_empty() {
        errors.converged(map);
        return;
    }
    for (reason, (entries, first)) in failures.0 {
        let reason_label = reason.label();
        warn!(map, reason = reason_label, entries, error = %first, "map did not converge");
        errors.record(
            map,
            reason,
            format!("{reason_label}: {entries} entries not synced: {first}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Op<K> {
        Put(K),
        Remove(K),
    }

    /// An in-memory map with a capacity, a log of writes, and writes that can be made
    /// to fail.
    struct Fake<K, V> {
        name: &'static str,
        capacity: usize,
        entries: BTreeMap<K, V>,
        log: Vec<Op<K>>,
        fail_writes: bool,
    }

    impl<K: Ord, V> Fake<K, V> {
        fn new(name: &'static str, capacity: usize) -> Self {
            Fake {
                name,
                capacity,
                entries: BTreeMap::new(),
                log: Vec::new(),
                fail_writes: false,
            }
        }
    }

    impl<K: Copy + Ord + Debug, V: Copy + PartialEq + Debug> MapHandle for Fake<K, V> {
        type Key = K;
        type Value = V;
        fn name(&self) -> &'static str {
            self.name
        }
        fn entries(&self) -> Result<Vec<(K, V)>, DataplaneError> {
            Ok(self.entries.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn put(&mut self, key: K, value: V) -> Result<(), DataplaneError> {
            self.log.push(Op::Put(key));
            if self.fail_writes {
                return Err(DataplaneError::Pin {
                    what: "writing to a fake map",
                    path: self.name.into(),
                    source: Box::new(std::io::Error::other("injected failure")),
                });
            }
            if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
                return Err(DataplaneError::MapFull {
                    map: self.name,
                    capacity: self.capacity as u32,
                });
            }
            self.entries.insert(key, value);
            Ok(())
        }
        fn remove(&mut self, key: K) -> Result<bool, DataplaneError> {
            self.log.push(Op::Remove(key));
            Ok(self.entries.remove(&key).is_some())
        }
    }

    fn ep(last: u8) -> EndpointKey {
        EndpointKey {
            vni: 4096,
            ip: [10, 0, 0, last],
        }
    }

    fn value(ifindex: u32) -> EndpointValue {
        EndpointValue {
            host_ip: [10, 200, 0, 1],
            ifindex,
        }
    }

    #[test]
    fn removals_come_first_so_a_full_map_makes_room() {
        let errors = MapSyncErrors::default();
        let mut map = Fake::new("OVERLAY_ENDPOINTS", 2);
        map.entries = BTreeMap::from([(ep(1), value(0)), (ep(2), value(0))]);
        let desired = BTreeMap::from([(ep(1), value(0)), (ep(3), value(0))]);
        assert_eq!(sync_map(&mut map, &desired, true, &errors), 2);
        assert_eq!(map.log, vec![Op::Remove(ep(2)), Op::Put(ep(3))]);
        assert_eq!(
            map.entries.keys().copied().collect::<Vec<_>>(),
            vec![ep(1), ep(3)]
        );
        assert!(errors.unconverged().is_empty());
        assert!(errors.totals().is_empty());
    }

    #[test]
    fn the_add_only_window_removes_nothing() {
        let errors = MapSyncErrors::default();
        let mut map = Fake::new("OVERLAY_ENDPOINTS", 8);
        map.entries = BTreeMap::from([(ep(2), value(0))]);
        let desired = BTreeMap::from([(ep(3), value(0))]);
        assert_eq!(sync_map(&mut map, &desired, false, &errors), 1);
        assert_eq!(map.log, vec![Op::Put(ep(3))]);
        assert!(map.entries.contains_key(&ep(2)));
    }

    #[test]
    fn a_full_map_is_recorded_and_still_takes_updates_and_removals() {
        let errors = MapSyncErrors::default();
        let mut map = Fake::new("OVERLAY_ENDPOINTS", 2);
        map.entries = BTreeMap::from([(ep(1), value(0)), (ep(2), value(0))]);
        // ep(1) changes, ep(2) goes, ep(3) and ep(4) are new: one of them fits.
        let desired = BTreeMap::from([(ep(1), value(7)), (ep(3), value(0)), (ep(4), value(0))]);
        assert_eq!(sync_map(&mut map, &desired, true, &errors), 3);
        assert_eq!(map.entries[&ep(1)], value(7));
        assert!(!map.entries.contains_key(&ep(2)));
        assert!(map.entries.contains_key(&ep(3)));
        assert_eq!(
            errors.totals(),
            vec![("OVERLAY_ENDPOINTS", SyncErrorReason::Full, 1)]
        );
        let unconverged = errors.unconverged();
        assert_eq!(unconverged.len(), 1);
        assert!(
            unconverged[0]
                .1
                .contains("full: 1 entries not synced: map OVERLAY_ENDPOINTS is full (2 entries)"),
            "{unconverged:?}"
        );
        // Once it fits, the map converges and its line goes.
        map.capacity = 3;
        assert_eq!(sync_map(&mut map, &desired, true, &errors), 1);
        assert!(errors.unconverged().is_empty());
        assert_eq!(errors.totals().len(), 1);
    }

    #[test]
    fn a_failing_write_does_not_stop_the_next_map() {
        let errors = MapSyncErrors::default();
        let mut endpoints = Fake::new("OVERLAY_ENDPOINTS", 8);
        endpoints.fail_writes = true;
        let mut ports = Fake::new("OVERLAY_PORTS", 8);
        let mut networks = Fake::new("OVERLAY_NETWORKS", 8);
        let mut subnets = Fake::new("OVERLAY_SUBNETS", 8);
        let mut vteps = Fake::new("OVERLAY_VTEPS", 8);
        let network = NetworkValue {
            subnet: [10, 0, 0, 0],
            prefix_len: 24,
            gateway: [10, 0, 0, 1],
        };
        let desired = DesiredMaps {
            endpoints: BTreeMap::from([(ep(2), value(7)), (ep(3), value(0))]),
            ports: BTreeMap::from([(
                7,
                PortValue {
                    vni: 4096,
                    ip: [10, 0, 0, 2],
                },
            )]),
            networks: BTreeMap::from([(4096, network)]),
            subnets: BTreeMap::from([(SubnetKey::new([10, 0, 0, 0], 24), 4096)]),
            vteps: BTreeMap::new(),
            guarded_hosts: BTreeMap::from([([10, 200, 0, 11], 0)]),
            guarded_ports: BTreeMap::from([(GuardedPort::new(17, 4789), 0)]),
        };
        let (mut guarded_hosts, mut guarded_ports) =
            (Fake::new("GUARDED_HOSTS", 8), Fake::new("GUARDED_PORTS", 8));
        let changes = sync_tables(
            Tables {
                endpoints: &mut endpoints,
                ports: &mut ports,
                networks: &mut networks,
                subnets: &mut subnets,
                vteps: &mut vteps,
                guarded_hosts: &mut guarded_hosts,
                guarded_ports: &mut guarded_ports,
            },
            &desired,
            true,
            &errors,
        );
        assert_eq!(changes, 5);
        // Both endpoint writes were tried, though the first failed.
        assert_eq!(endpoints.log.len(), 2);
        assert_eq!(networks.entries[&4096], network);
        assert_eq!(ports.entries.len(), 1);
        assert_eq!(subnets.entries.len(), 1);
        assert_eq!(guarded_hosts.entries.len(), 1);
        assert_eq!(guarded_ports.entries.len(), 1);
        assert_eq!(
            errors.totals(),
            vec![("OVERLAY_ENDPOINTS", SyncErrorReason::Write, 1)]
        );
        assert_eq!(
            errors
                .unconverged()
                .into_iter()
                .map(|(map, _)| map)
                .collect::<Vec<_>>(),
            vec!["OVERLAY_ENDPOINTS"]
        );
    }

    /// A map handle that also writes its operations into a journal shared by several
    /// maps, to check the order across them.
    struct Journaled<'j, K, V> {
        inner: Fake<K, V>,
        journal: &'j std::cell::RefCell<Vec<String>>,
    }

    impl<K: Copy + Ord + Debug, V: Copy + PartialEq + Debug> MapHandle for Journaled<'_, K, V> {
        type Key = K;
        type Value = V;
        fn name(&self) -> &'static str {
            self.inner.name
        }
        fn entries(&self) -> Result<Vec<(K, V)>, DataplaneError> {
            self.inner.entries()
        }
        fn put(&mut self, key: K, value: V) -> Result<(), DataplaneError> {
            self.journal
                .borrow_mut()
                .push(format!("put {} {key:?}", self.inner.name));
            self.inner.put(key, value)
        }
        fn remove(&mut self, key: K) -> Result<bool, DataplaneError> {
            self.journal
                .borrow_mut()
                .push(format!("remove {} {key:?}", self.inner.name));
            self.inner.remove(key)
        }
    }

    fn journaled<'j, K: Ord, V>(
        name: &'static str,
        journal: &'j std::cell::RefCell<Vec<String>>,
    ) -> Journaled<'j, K, V> {
        Journaled {
            inner: Fake::new(name, 64),
            journal,
        }
    }

    fn mesh_with(backends: u32) -> DesiredMesh {
        let mut desired = DesiredMesh::default();
        desired.services.insert(
            0,
            MeshService {
                backends,
                cursor: 0,
                vni: 4200,
            },
        );
        for index in 0..backends {
            desired.backends.insert(
                MeshBackendKey { slot: 0, index },
                MeshBackend {
                    ip: [10, 10, 0, 10 + index as u8],
                    host_ip: [10, 200, 0, 1],
                },
            );
        }
        desired
            .ports
            .insert(MeshPortKey::new(6, 8080), MeshPort::default());
        desired
    }

    /// The journal's lines about the backends and services maps only.
    fn rotation(journal: &std::cell::RefCell<Vec<String>>) -> Vec<String> {
        journal
            .borrow_mut()
            .drain(..)
            .filter(|line| line.contains("MESH_BACKENDS") || line.contains("MESH_SERVICES"))
            .map(|line| {
                line.replace("MeshBackendKey { slot: 0, index: ", "(")
                    .replace(" }", ")")
            })
            .collect()
    }

    #[test]
    fn mesh_backends_grow_before_the_count_and_shrink_after_it() {
        let errors = MapSyncErrors::default();
        let journal = std::cell::RefCell::new(Vec::new());
        let mut ports = journaled("MESH_PORTS", &journal);
        let mut services = journaled("MESH_SERVICES", &journal);
        let mut backends = journaled("MESH_BACKENDS", &journal);
        let mut nodes = journaled("MESH_NODES", &journal);
        let mut targets = journaled("MESH_TARGETS", &journal);
        let mut stats = journaled("MESH_STATS", &journal);
        let mut sync = |desired: &DesiredMesh| {
            sync_mesh_tables(
                MeshTables {
                    ports: &mut ports,
                    services: &mut services,
                    backends: &mut backends,
                    nodes: &mut nodes,
                    targets: &mut targets,
                    stats: &mut stats,
                },
                desired,
                true,
                &errors,
            )
        };
        sync(&mesh_with(2));
        let first = journal.borrow().clone();
        // The port comes last: it never leads to an empty slot.
        assert!(
            first.last().unwrap().starts_with("put MESH_PORTS"),
            "{first:?}"
        );
        journal.borrow_mut().clear();
        sync(&mesh_with(3));
        assert_eq!(
            rotation(&journal),
            vec!["put MESH_BACKENDS (2)", "put MESH_SERVICES 0"],
            "the new backend is there before the count takes it in"
        );
        sync(&mesh_with(1));
        assert_eq!(
            rotation(&journal),
            vec![
                "put MESH_SERVICES 0",
                "remove MESH_BACKENDS (1)",
                "remove MESH_BACKENDS (2)"
            ],
            "the count shrinks before backends go"
        );
        assert!(errors.unconverged().is_empty());
    }

    #[test]
    fn the_programs_cursor_survives_every_rewrite() {
        use crate::dataplane::ServicesHandle;
        let errors = MapSyncErrors::default();
        let mut handle = ServicesHandle {
            map: vec![MeshService::default(); 4],
        };
        let desired = mesh_with(2).services;
        assert_eq!(sync_map(&mut handle, &desired, true, &errors), 1);
        // The programs advance the cursor.
        handle.map[0].cursor = 7;
        assert_eq!(
            sync_map(&mut handle, &desired, true, &errors),
            0,
            "an advanced cursor is no difference to converge"
        );
        let grown = mesh_with(3).services;
        assert_eq!(sync_map(&mut handle, &grown, true, &errors), 1);
        assert_eq!(
            handle.map[0],
            MeshService {
                backends: 3,
                cursor: 7,
                vni: 4200
            }
        );
        // A service gone: its slot is zeroed.
        assert_eq!(sync_map(&mut handle, &BTreeMap::new(), true, &errors), 1);
        assert_eq!(handle.map[0], MeshService::default());
        assert!(errors.unconverged().is_empty());
    }
}
