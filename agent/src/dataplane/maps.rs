//! Pinned maps as the agent sees them: the test-only capacity override, and typed handles
//! over the ABI key/value types ([`MapHandle`], implemented by [`HashHandle`] and
//! [`LpmHandle`]) that the reconciler's one map sync works through.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, MapError, MapType},
    sys::SyscallError,
    Pod,
};
use dataplane_ebpf::{
    maps::{MapKind, MapSpec, PINNED},
    overlay::{SubnetKey, VtepKey},
};

use super::{DataplaneError, PinDirs};

/// Test-only: `MAP=CAPACITY[,MAP=CAPACITY…]` makes the agent create those maps with a
/// smaller capacity (and expect it when adopting their pins), so a privileged test can
/// fill a map (`xtask/tests/map_sync.rs`). Never set in production: a map pinned with an
/// overridden capacity is migrated to the table's capacity by an agent started without
/// the same override (see `migrate`).
pub const CAPACITY_OVERRIDE_ENV: &str = "SKEIN_TEST_MAP_CAPACITY";

/// The capacity of each map this process creates and expects: the table's, or the
/// test-only override from [`CAPACITY_OVERRIDE_ENV`].
pub(crate) fn capacities() -> Result<BTreeMap<&'static str, u32>, DataplaneError> {
    let mut capacities: BTreeMap<&'static str, u32> = PINNED
        .iter()
        .map(|spec| (spec.name, spec.capacity))
        .collect();
    let Ok(text) = std::env::var(CAPACITY_OVERRIDE_ENV) else {
        return Ok(capacities);
    };
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let bad = || DataplaneError::CapacityOverride {
            item: item.to_owned(),
        };
        let (name, capacity) = item.split_once('=').ok_or_else(bad)?;
        let spec = dataplane_ebpf::maps::by_name(name).ok_or_else(bad)?;
        let capacity: u32 = capacity.parse().map_err(|_| bad())?;
        if capacity == 0
            || !matches!(
                spec.kind,
                MapKind::Hash | MapKind::LpmTrie | MapKind::LruHash
            )
        {
            return Err(bad());
        }
        capacities.insert(spec.name, capacity);
    }
    Ok(capacities)
}

pub(super) fn aya_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Hash => MapType::Hash,
        MapKind::LpmTrie => MapType::LpmTrie,
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::LruHash => MapType::LruHash,
        MapKind::PerCpuHash => MapType::PerCpuHash,
    }
}

/// Opens the pin of `spec` as aya's untyped map, with its capacity as the kernel has it.
pub(crate) fn open_pin(pins: &PinDirs, spec: &MapSpec) -> Result<(Map, u32), DataplaneError> {
    let path: PathBuf = pins.maps().join(spec.name);
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Pin {
        what: "opening a pinned map",
        path: path.clone(),
        source: Box::new(e),
    })?;
    let capacity = data
        .info()
        .map(|info| info.max_entries())
        .unwrap_or(spec.capacity);
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map {
        map: spec.name,
        what: "opening",
        source,
    })?;
    Ok((map, capacity))
}

/// Converts `Map` into the typed wrapper, or names the map whose type or sizes differ.
pub(crate) fn typed<T: TryFrom<Map, Error = MapError>>(
    spec: &MapSpec,
    map: Map,
) -> Result<T, DataplaneError> {
    T::try_from(map).map_err(|source| DataplaneError::Map {
        map: spec.name,
        what: "opening",
        source,
    })
}

/// A map's entries, as [`MapHandle::entries`] lists them.
pub(crate) type Entries<M> = Vec<(<M as MapHandle>::Key, <M as MapHandle>::Value)>;

/// One map whose entries the reconciler converges, over the ABI's key and value types.
/// Implemented for the pinned maps here and by an in-memory fake in the sync's tests.
pub(crate) trait MapHandle {
    type Key: Copy + Ord + fmt::Debug;
    type Value: Copy + PartialEq + fmt::Debug;

    /// The map's name in the ABI table (and the label of its errors).
    fn name(&self) -> &'static str;
    fn entries(&self) -> Result<Entries<Self>, DataplaneError>;
    /// Inserts or replaces; [`DataplaneError::MapFull`] when a new key does not fit.
    fn put(&mut self, key: Self::Key, value: Self::Value) -> Result<(), DataplaneError>;
    /// `Ok(false)` if there was no such entry: removals are idempotent.
    fn remove(&mut self, key: Self::Key) -> Result<bool, DataplaneError>;
}

/// A write's error: [`DataplaneError::MapFull`] when the kernel says the map is at its
/// capacity (`E2BIG` from a hash map, `ENOSPC` from an LPM trie).
pub(super) fn written(
    map: &'static str,
    capacity: u32,
    result: Result<(), MapError>,
) -> Result<(), DataplaneError> {
    result.map_err(|source| match &source {
        MapError::SyscallError(SyscallError { io_error, .. })
            if matches!(io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
        {
            DataplaneError::MapFull { map, capacity }
        }
        _ => DataplaneError::Map {
            map,
            what: "writing",
            source,
        },
    })
}

/// `Ok(false)` for "there was no such entry", so removals are idempotent.
pub(super) fn removed(
    map: &'static str,
    result: Result<(), MapError>,
) -> Result<bool, DataplaneError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) => Err(DataplaneError::Map {
            map,
            what: "removing from",
            source,
        }),
    }
}

pub(super) fn listed<K, V>(
    map: &'static str,
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
) -> Result<Vec<(K, V)>, DataplaneError> {
    entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| DataplaneError::Map {
            map,
            what: "reading",
            source,
        })
}

/// A pinned hash map from `K` to `V`.
pub(crate) struct HashHandle<K: Pod, V: Pod> {
    spec: &'static MapSpec,
    capacity: u32,
    map: HashMap<MapData, K, V>,
}

impl<K: Pod, V: Pod> HashHandle<K, V> {
    pub(crate) fn open(pins: &PinDirs, spec: &'static MapSpec) -> Result<Self, DataplaneError> {
        let (map, capacity) = open_pin(pins, spec)?;
        Ok(HashHandle {
            spec,
            capacity,
            map: typed(spec, map)?,
        })
    }
}

impl<K, V> MapHandle for HashHandle<K, V>
where
    K: Pod + Ord + fmt::Debug,
    V: Pod + PartialEq + fmt::Debug,
{
    type Key = K;
    type Value = V;

    fn name(&self) -> &'static str {
        self.spec.name
    }
    fn entries(&self) -> Result<Vec<(K, V)>, DataplaneError> {
        listed(self.spec.name, self.map.iter())
    }
    fn put(&mut self, key: K, value: V) -> Result<(), DataplaneError> {
        written(
            self.spec.name,
            self.capacity,
            self.map.insert(key, value, 0),
        )
    }
    fn remove(&mut self, key: K) -> Result<bool, DataplaneError> {
        removed(self.spec.name, self.map.remove(&key))
    }
}

/// An ABI key of an LPM trie: its prefix length and the data aya's [`Key`] carries.
pub(crate) trait LpmKey: Copy + Ord + fmt::Debug {
    type Data: Pod;
    fn to_lpm(&self) -> Key<Self::Data>;
    fn from_lpm(key: &Key<Self::Data>) -> Self;
}

impl LpmKey for VtepKey {
    type Data = [u8; 8];
    fn to_lpm(&self) -> Key<[u8; 8]> {
        Key::new(self.prefix_len, self.data())
    }
    fn from_lpm(key: &Key<[u8; 8]>) -> VtepKey {
        let data = key.data();
        VtepKey {
            prefix_len: key.prefix_len(),
            vni_be: [data[0], data[1], data[2], data[3]],
            ip: [data[4], data[5], data[6], data[7]],
        }
    }
}

impl LpmKey for SubnetKey {
    type Data = [u8; 4];
    fn to_lpm(&self) -> Key<[u8; 4]> {
        Key::new(self.prefix_len, self.ip)
    }
    fn from_lpm(key: &Key<[u8; 4]>) -> SubnetKey {
        SubnetKey {
            prefix_len: key.prefix_len(),
            ip: key.data(),
        }
    }
}

/// A pinned LPM trie from the ABI key `K` to `V`.
pub(crate) struct LpmHandle<K: LpmKey, V: Pod> {
    spec: &'static MapSpec,
    capacity: u32,
    map: LpmTrie<MapData, K::Data, V>,
}

impl<K: LpmKey, V: Pod> LpmHandle<K, V> {
    pub(crate) fn open(pins: &PinDirs, spec: &'static MapSpec) -> Result<Self, DataplaneError> {
        let (map, capacity) = open_pin(pins, spec)?;
        Ok(LpmHandle {
            spec,
            capacity,
            map: typed(spec, map)?,
        })
    }
}

impl<K: LpmKey, V: Pod + PartialEq + fmt::Debug> MapHandle for LpmHandle<K, V> {
    type Key = K;
    type Value = V;

    fn name(&self) -> &'static str {
        self.spec.name
    }
    fn entries(&self) -> Result<Vec<(K, V)>, DataplaneError> {
        Ok(listed(self.spec.name, self.map.iter())?
            .into_iter()
            .map(|(key, value)| (K::from_lpm(&key), value))
            .collect())
    }
    fn put(&mut self, key: K, value: V) -> Result<(), DataplaneError> {
        written(
            self.spec.name,
            self.capacity,
            self.map.insert(&key.to_lpm(), value, 0),
        )
    }
    fn remove(&mut self, key: K) -> Result<bool, DataplaneError> {
        removed(self.spec.name, self.map.remove(&key.to_lpm()))
    }
}
