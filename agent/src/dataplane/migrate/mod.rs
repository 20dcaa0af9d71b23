//! Migrating pinned maps in place when this binary's layout of a map differs from the
//! one pinned (an upgrade), so conntrack and the traffic it carries survive it.
//!
//! The order, and why:
//! 1. [`plan`], before the object is loaded: each pinned map whose type, key/value size or
//!    capacity differs from the ABI table is recognised among its earlier layouts
//!    ([`dataplane_ebpf::migrations::older_layouts`]) or refused with one sentence
//!    ([`DataplaneError::IncompatiblePin`]). The loader then creates the new map pinned
//!    under a staging name (`<map>@migrating`: bpffs refuses dots in names) instead of adopting the old pin.
//! 2. [`Migration::copy`], right after the object is loaded and before any program is
//!    attached: every entry is converted and copied; the old programs, still attached,
//!    keep writing the old map meanwhile.
//! 3. The caller swaps the new programs in (`BPF_LINK_UPDATE`, atomic); from then on the
//!    old programs write nothing.
//! 4. [`Migration::finish`]: the entries the old programs created or changed between 2 and
//!    3 are copied again — unless the new programs already changed them since, theirs
//!    being newer — and the staging pin is renamed over the old one (atomic on bpffs),
//!    which drops the old map.
//!
//! A pin that crashed mid-way is redone: a leftover staging pin is removed at [`plan`]
//! and the migration starts again from the old pin.

mod bytes;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo, MapType};
use dataplane_ebpf::{
    maps::{Holds, MapKind, MapSpec, PINNED},
    migrations::{older_layouts, Convert, Migration as Known, OldLayout},
};
use tracing::{info, warn};

use super::{maps::aya_type, DataplaneError};
use bytes::RawMap;

/// A pinned map as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) kind: Option<MapKind>,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) capacity: u32,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{kind:?}")?,
            None => write!(f, "an unknown type")?,
        }
        write!(
            f,
            ", key {} B, value {} B, {} entries",
            self.key_size, self.value_size, self.capacity
        )
    }
}

/// How the entries of one map get from the old map to the new.
#[derive(Clone, Copy, Debug)]
pub(crate) enum How {
    Convert(Convert),
    /// The same layout, another capacity: bytes copied as they are.
    Copy,
    /// The new map starts empty (the agent refills it, or it counts from zero).
    Recreate,
}

/// What to do with a pinned map.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Decision {
    Adopt,
    Migrate {
        /// What it was, for the log: `layout 0`, `capacity 1024`.
        from: MigrateFrom,
        how: How,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MigrateFrom {
    Layout(u32),
    Capacity(u32),
}

impl std::fmt::Display for MigrateFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateFrom::Layout(version) => write!(f, "layout {version}"),
            MigrateFrom::Capacity(capacity) => write!(f, "capacity {capacity}"),
        }
    }
}

/// The pure decision for one pinned map: adopt it, migrate it from a known layout, or
/// `None` — a layout this binary does not know (a newer binary's, or no Skein map).
pub(crate) fn decide(
    spec: &MapSpec,
    capacity: u32,
    found: &Found,
    older: &[OldLayout],
) -> Option<Decision> {
    let same_layout = found.kind == Some(spec.kind)
        && (found.key_size, found.value_size) == (spec.key_size, spec.value_size);
    if same_layout {
        if found.capacity == capacity {
            return Some(Decision::Adopt);
        }
        let per_cpu = matches!(spec.kind, MapKind::PerCpuArray | MapKind::PerCpuHash);
        let how = if per_cpu || spec.holds == Holds::Counters {
            How::Recreate
        } else {
            How::Copy
        };
        return Some(Decision::Migrate {
            from: MigrateFrom::Capacity(found.capacity),
            how,
        });
    }
    let layout = older.iter().find(|layout| {
        found.kind == Some(layout.kind)
            && (found.key_size, found.value_size) == (layout.key_size, layout.value_size)
    })?;
    let how = match layout.migration {
        Known::Convert(convert) => How::Convert(convert),
        Known::Recreate => How::Recreate,
    };
    Some(Decision::Migrate {
        from: MigrateFrom::Layout(layout.version),
        how,
    })
}

fn map_kind(found: MapType) -> Option<MapKind> {
    [
        MapKind::Hash,
        MapKind::LpmTrie,
        MapKind::Array,
        MapKind::PerCpuArray,
        MapKind::LruHash,
        MapKind::PerCpuHash,
    ]
    .into_iter()
    .find(|kind| aya_type(*kind) == found)
}

/// The staging pin of a map being migrated, next to its pin (one bpffs: the final rename
/// stays within it).
pub(crate) fn staging_pin(maps_dir: &Path, name: &str) -> PathBuf {
    maps_dir.join(format!("{name}@migrating"))
}

fn pin_error(
    what: &'static str,
    path: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> DataplaneError {
    DataplaneError::Pin {
        what,
        path: path.to_owned(),
        source: Box::new(e),
    }
}

/// One map being migrated.
struct Pending {
    spec: &'static MapSpec,
    pin: PathBuf,
    staging: PathBuf,
    from: MigrateFrom,
    how: How,
    /// The old map, opened before the load: it stays readable after its pin is replaced.
    old: MapData,
    old_key_size: u32,
    old_value_size: u32,
    old_capacity: u32,
    /// At the first copy: each key's old bytes and what they were converted to, so the
    /// second copy sees what the old programs changed since, and what the new did.
    copied: BTreeMap<Vec<u8>, (Vec<u8>, Vec<u8>)>,
    /// Entries the converter refused, or that did not fit.
    dropped: usize,
    recopied: usize,
}

/// The maps of one start that need migrating (empty in the usual case: nothing changed).
#[derive(Default)]
pub struct Migration {
    pending: Vec<Pending>,
}

/// What one finished migration did, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    pub map: &'static str,
    pub from: String,
    pub to_layout: u32,
    /// Entries in the new map as copied (both passes).
    pub entries: usize,
    /// Of those, copied again after the swap (changed by the old programs meanwhile).
    pub recopied: usize,
    pub dropped: usize,
}

/// Step 1: decides for every pinned map of the table; refuses the first it cannot adopt
/// or migrate. Removes staging pins a crashed start left.
pub(crate) fn plan(
    maps_dir: &Path,
    capacities: &BTreeMap<&'static str, u32>,
) -> Result<Migration, DataplaneError> {
    let mut migration = Migration::default();
    for spec in PINNED {
        let pin = maps_dir.join(spec.name);
        let staging = staging_pin(maps_dir, spec.name);
        if staging.exists() {
            warn!(
                map = spec.name,
                "removing the staging pin of an unfinished migration"
            );
            fs::remove_file(&staging)
                .map_err(|e| pin_error("unpinning a staging map", &staging, e))?;
        }
        if !pin.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&pin).map_err(|e| pin_error("reading a pinned map", &pin, e))?;
        let found = Found {
            kind: info.map_type().ok().and_then(map_kind),
            key_size: info.key_size(),
            value_size: info.value_size(),
            capacity: info.max_entries(),
        };
        let decision = decide(
            spec,
            capacities[spec.name],
            &found,
            older_layouts(spec.name),
        );
        let Some(decision) = decision else {
            return Err(DataplaneError::IncompatiblePin {
                path: pin,
                found: found.to_string(),
            });
        };
        let Decision::Migrate { from, how } = decision else {
            continue;
        };
        let old =
            MapData::from_pin(&pin).map_err(|e| pin_error("opening a pinned map", &pin, e))?;
        info!(map = spec.name, %from, to_layout = spec.layout, "pinned map will be migrated");
        migration.pending.push(Pending {
            spec,
            pin,
            staging,
            from,
            how,
            old,
            old_key_size: found.key_size,
            old_value_size: found.value_size,
            old_capacity: found.capacity,
            copied: BTreeMap::new(),
            dropped: 0,
            recopied: 0,
        });
    }
    Ok(migration)
}

/// CLOCK_MONOTONIC, the clock the programs' timestamps use.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec the call writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl Migration {
    /// The staging pin path of each map being migrated, for the loader.
    pub(crate) fn staging_pins(&self) -> impl Iterator<Item = (&'static str, PathBuf)> + '_ {
        self.pending
            .iter()
            .map(|p| (p.spec.name, p.staging.clone()))
    }

    /// Step 2: copies every entry of the old maps into the new (created by the load under
    /// their staging pins).
    pub(crate) fn copy(&mut self) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        for pending in &mut self.pending {
            pending.first_copy(now)?;
        }
        Ok(())
    }

    /// Step 4, after every program has been swapped: copies again what the old programs
    /// changed meanwhile and replaces the pins.
    pub fn finish(self) -> Result<Vec<Migrated>, DataplaneError> {
        let now = monotonic_ns();
        let mut done = Vec::new();
        for mut pending in self.pending {
            pending.second_copy(now)?;
            fs::rename(&pending.staging, &pending.pin)
                .map_err(|e| pin_error("replacing a migrated map's pin", &pending.pin, e))?;
            let migrated = Migrated {
                map: pending.spec.name,
                from: pending.from.to_string(),
                to_layout: pending.spec.layout,
                entries: pending.copied.len(),
                recopied: pending.recopied,
                dropped: pending.dropped,
            };
            info!(
                map = migrated.map,
                from = %migrated.from,
                to_layout = migrated.to_layout,
                entries = migrated.entries,
                recopied = migrated.recopied,
                dropped = migrated.dropped,
                "pinned map migrated"
            );
            done.push(migrated);
        }
        Ok(done)
    }
}

/// One map entry's bytes: (key, value).
type Entry = (Vec<u8>, Vec<u8>);

impl Pending {
    fn io_error(&self, what: &'static str, e: io::Error) -> DataplaneError {
        pin_error(what, &self.pin, e)
    }

    fn new_map(&self) -> Result<MapData, DataplaneError> {
        MapData::from_pin(&self.staging)
            .map_err(|e| pin_error("opening a migrated map", &self.staging, e))
    }

    /// Every entry of the old map now, as (key, value); an entry gone between listing
    /// and reading is skipped.
    fn old_entries(&self) -> Result<Vec<Entry>, DataplaneError> {
        let old = RawMap::new(
            self.old.fd().as_fd(),
            self.old_key_size,
            self.old_value_size,
        );
        let keys = old
            .keys(self.old_capacity)
            .map_err(|e| self.io_error("listing a pinned map", e))?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = old
                .get(&key)
                .map_err(|e| self.io_error("reading a pinned map", e))?
            {
                entries.push((key, value));
            }
        }
        Ok(entries)
    }

    /// `None`: the converter refused the entry.
    fn convert(&self, key: &[u8], old: &[u8], now: u64) -> Option<Vec<u8>> {
        match self.how {
            How::Copy => Some(old.to_vec()),
            How::Convert(convert) => {
                let mut new = vec![0u8; self.spec.value_size as usize];
                convert(key, old, &mut new, now).then_some(new)
            }
            How::Recreate => None,
        }
    }

    fn first_copy(&mut self, now: u64) -> Result<(), DataplaneError> {
        if matches!(self.how, How::Recreate) {
            return Ok(());
        }
        let entries = self.old_entries()?;
        let new_map = self.new_map()?;
        let new = RawMap::new(
            new_map.fd().as_fd(),
            self.spec.key_size,
            self.spec.value_size,
        );
        for (key, value) in entries {
            let Some(converted) = self.convert(&key, &value, now) else {
                self.dropped += 1;
                continue;
            };
            match new.put(&key, &converted, bytes::ANY) {
                Ok(true) => {
                    self.copied.insert(key, (value, converted));
                }
                // Full (a smaller capacity), or refused by the kernel: counted.
                Ok(false) | Err(_) => self.dropped += 1,
            }
        }
        Ok(())
    }

    /// For each entry of the old map now: unchanged since the first copy → nothing; new
    /// → inserted unless the new programs made one; changed → replaced unless the new
    /// programs changed it too (theirs is newer: the old programs stopped at the swap).
    /// An entry the new programs deleted stays deleted.
    fn second_copy(&mut self, now: u64) -> Result<(), DataplaneError> {
        if matches!(self.how, How::Recreate) {
            return Ok(());
        }
        let entries = self.old_entries()?;
        let new_map = self.new_map()?;
        let new = RawMap::new(
            new_map.fd().as_fd(),
            self.spec.key_size,
            self.spec.value_size,
        );
        for (key, value) in entries {
            let first = self.copied.get(&key).cloned();
            if first.as_ref().is_some_and(|(was, _)| *was == value) {
                continue;
            }
            let Some(converted) = self.convert(&key, &value, now) else {
                self.dropped += 1;
                continue;
            };
            let written = match &first {
                None => new.put(&key, &converted, bytes::NO_EXIST),
                Some((_, as_copied)) => {
                    let current = new
                        .get(&key)
                        .map_err(|e| self.io_error("reading a migrated map", e))?;
                    if current.as_ref() == Some(as_copied) {
                        new.put(&key, &converted, bytes::EXIST)
                    } else {
                        Ok(false)
                    }
                }
            };
            if let Ok(true) = written {
                self.recopied += 1;
                self.copied.insert(key, (value, converted));
            }
        }
        Ok(())
    }
}

/// Test support for the migration test (`xtask/tests/map_migration.rs`): rewrites the
/// pinned map `spec` as its older `layout`, each entry through `downgrade` (today's bytes
/// → the old layout's), and replaces its pin — what a previous binary would have left.
/// The attached programs keep the map they have; only the pin changes. Returns how many
/// entries were written.
pub fn rewrite_pin_as_older_layout(
    maps_dir: &Path,
    spec: &MapSpec,
    layout: &OldLayout,
    downgrade: Convert,
) -> Result<usize, DataplaneError> {
    let pin = maps_dir.join(spec.name);
    let current =
        MapData::from_pin(&pin).map_err(|e| pin_error("opening a pinned map", &pin, e))?;
    let capacity = current
        .info()
        .map(|i| i.max_entries())
        .unwrap_or(spec.capacity);
    let fd = bytes::create(
        layout.kind,
        spec.name,
        layout.key_size,
        layout.value_size,
        capacity,
    )
    .map_err(|e| pin_error("creating a map of an older layout", &pin, e))?;
    let older = MapData::from_fd(fd)
        .map_err(|e| pin_error("creating a map of an older layout", &pin, e))?;
    let from = RawMap::new(current.fd().as_fd(), spec.key_size, spec.value_size);
    let to = RawMap::new(older.fd().as_fd(), layout.key_size, layout.value_size);
    let mut written = 0;
    let keys = from
        .keys(capacity)
        .map_err(|e| pin_error("listing a pinned map", &pin, e))?;
    for key in keys {
        let Some(value) = from
            .get(&key)
            .map_err(|e| pin_error("reading a pinned map", &pin, e))?
        else {
            continue;
        };
        let mut old = vec![0u8; layout.value_size as usize];
        if downgrade(&key, &value, &mut old, 0)
            && to
                .put(&key, &old, bytes::ANY)
                .map_err(|e| pin_error("writing a map", &pin, e))?
        {
            written += 1;
        }
    }
    let staging = staging_pin(maps_dir, spec.name);
    older
        .pin(&staging)
        .map_err(|e| pin_error("pinning a map", &staging, e))?;
    fs::rename(&staging, &pin).map_err(|e| pin_error("replacing a pin", &pin, e))?;
    Ok(written)
}
