//! The only code that touches aya: loads Skein's eBPF object, attaches its programs,
//! pins maps and links so the dataplane outlives the agent, and reads the counters.
//!
//! Lifecycle (why it never drops traffic on an agent restart):
//! - maps are pinned under `<bpf-dir>/maps`; a new agent's load reuses them, so state and
//!   counters continue;
//! - every attachment is a bpf_link pinned under `<bpf-dir>/links`, so it stays attached
//!   when the agent exits or dies; a new agent atomically swaps its freshly loaded program
//!   into the existing link (`BPF_LINK_UPDATE`) — there is never a moment without a
//!   program on the interface;
//! - pins this agent no longer wants (another underlay interface, a removed endpoint)
//!   are unpinned, which detaches them;
//! - [`cleanup`] unpins everything under the agent's own `bpf-dir` and nothing else, so
//!   several agents on one kernel (one per host namespace) never touch each other.
//!
//! Endpoint attachments are dynamic: [`Dataplane::attach_endpoint`] and
//! [`Dataplane::detach_endpoint`] converge them, [`Dataplane::attached_endpoints`] lists
//! them. A new agent adopts every endpoint link a previous one pinned (whose interface
//! still exists), so a restart never detaches an endpoint the reconciler still wants;
//! the reconciler detaches the ones it does not. [`OverlayMaps`] is typed access to the
//! overlay's maps.
//!
//! Layout: `links` (pinned bpf_links: the one adopt-or-attach for every kind of link,
//! unpin), `maps` (the adoption check against the ABI's table of pinned maps, typed map
//! handles: `MapHandle`), `overlay` ([`OverlayMaps`], `skein debug maps`), `mesh`
//! ([`MeshMaps`]: the routing mesh's maps, its conntrack walk and statistics), `vip`
//! ([`VipMaps`]: the service VIPs' maps), `cgroup` (host-local access: the socket hooks at
//! the cgroup root, the host path), `bpffs`
//! (mounting the pin directory's filesystem). `BPF_PROG_TEST_RUN` (for the privileged
//! tests and the packet generator) is the `dataplane-ebpf-test-run` crate.

mod bpffs;
mod cgroup;
mod links;
mod logs;
mod maps;
mod mesh;
pub mod migrate;
mod overlay;
mod vip;

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use dataplane_ebpf::{
    counters::{Counter, Verdict},
    names,
    overlay::UnderlayValue,
};
use tracing::{debug, info, warn};

pub(crate) use cgroup::remove_host_path;
use links::Attachment;
pub use links::{if_index, AttachedMode, UnknownXdpMode, XdpMode};
pub(crate) use logs::EbpfLogs;
pub(crate) use maps::MapHandle;
pub use maps::CAPACITY_OVERRIDE_ENV;
#[cfg(test)]
pub(crate) use mesh::ServicesHandle;
pub use mesh::{protocol_name, MeshMaps};
pub use overlay::OverlayMaps;
pub use vip::VipMaps;

/// The eBPF object, built by `build.rs` through the same function as
/// `cargo xtask build-ebpf`, embedded so the agent is one self-contained binary.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skein-dataplane.o"));

/// Errors a user can cause or the kernel can report while setting up the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("interface {name:?} does not exist in this network namespace")]
    NoSuchInterface { name: String },
    #[error("could not prepare the bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinned map {path} has a layout this binary cannot migrate ({found}); run `skein agent cleanup` (drops every pinned map, connection tracking included: connections through this node break) or run the previous binary")]
    IncompatiblePin { path: PathBuf, found: String },
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is not in the eBPF object or has the wrong type")]
    MissingProgram { name: &'static str },
    #[error("the verifier rejected program {name}")]
    Verify {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {iface} failed")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map} is full ({capacity} entries)")]
    MapFull { map: &'static str, capacity: u32 },
    #[error("{item:?} in SKEIN_TEST_MAP_CAPACITY is not MAP=CAPACITY for a hash or LPM map of the table")]
    CapacityOverride { item: String },
    #[error("{what} the pinned map {map} failed")]
    Map {
        map: &'static str,
        what: &'static str,
        #[source]
        source: MapError,
    },
    #[error("could not read {path}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} at {path}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the agent keeps its pins.
#[derive(Clone, Debug)]
pub struct PinDirs {
    pub root: PathBuf,
}

impl PinDirs {
    pub fn new(root: impl Into<PathBuf>) -> PinDirs {
        PinDirs { root: root.into() }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
}

/// What the agent wants attached at start.
#[derive(Clone, Debug)]
pub struct Attachments {
    pub underlay_iface: String,
    /// This host's address on the underlay (the agent's advertise address): the outer
    /// source of the VXLAN it sends, and the destination of the VXLAN it accepts.
    pub underlay_ip: Ipv4Addr,
    pub xdp_mode: XdpMode,
    /// Host-side veths of endpoints, attached at start (more come and go through
    /// [`Dataplane::attach_endpoint`]).
    pub endpoint_ifaces: Vec<String>,
}

/// The loaded object, with its programs attached through pinned links.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinDirs,
    /// How the underlay XDP program is attached (native or generic), as found or made.
    pub xdp_attached_mode: links::AttachedMode,
    /// The pinned maps this start migrated from an older layout (usually none).
    pub migrated: Vec<migrate::Migrated>,
}

/// The kernel's log level for aya-log records, from the agent's tracing filter, so
/// hot-path debug records cost nothing unless someone asked for them.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Loads the object with its maps pinned under `pins` (reusing maps already pinned
/// there, migrating those of an older layout at once), without attaching anything. The
/// programs are loaded and verified. For callers that attach nothing: programs already
/// attached keep the old maps of a migration (see [`migrate`]).
pub fn load(pins: &PinDirs) -> Result<Ebpf, DataplaneError> {
    let (ebpf, migration) = load_migrating(pins)?;
    migration.finish()?;
    Ok(ebpf)
}

/// [`load`], leaving a migration of pinned maps to be finished once the programs are
/// swapped in ([`migrate::Migration::finish`]; public for the migration test).
pub fn load_migrating(pins: &PinDirs) -> Result<(Ebpf, migrate::Migration), DataplaneError> {
    bpffs::prepare(&pins.root).map_err(|source| DataplaneError::Bpffs {
        path: pins.root.clone(),
        source,
    })?;
    let maps_dir = pins.maps();
    for dir in [maps_dir.clone(), pins.links()] {
        fs::create_dir_all(&dir).map_err(|source| DataplaneError::Bpffs { path: dir, source })?;
    }
    let capacities = maps::capacities()?;
    let mut migration = migrate::plan(&maps_dir, &capacities)?;
    let level = kernel_log_level();
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&maps_dir)
        .override_global(aya_log::LEVEL, &level, false);
    for (name, staging) in migration.staging_pins() {
        loader.map_pin_path(name, staging);
    }
    for spec in dataplane_ebpf::maps::PINNED {
        let capacity = capacities[spec.name];
        if capacity != spec.capacity {
            warn!(
                map = spec.name,
                capacity, "map capacity overridden (test only)"
            );
            loader.map_max_entries(spec.name, capacity);
        }
    }
    let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
    migration.copy()?;
    let xdp: &mut Xdp = program_mut(&mut ebpf, names::XDP_UNDERLAY)?;
    xdp.load().map_err(|source| DataplaneError::Verify {
        name: names::XDP_UNDERLAY,
        source,
    })?;
    for name in [names::TC_ENDPOINT_INGRESS, names::TC_UNDERLAY_INGRESS] {
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
        tc.load()
            .map_err(|source| DataplaneError::Verify { name, source })?;
    }
    cgroup::load(&mut ebpf)?;
    Ok((ebpf, migration))
}

/// Adopts or attaches `program` at tcx ingress of `iface`; whether it was adopted.
fn tcx_ingress(
    program: &mut SchedClassifier,
    name: &'static str,
    links_dir: &Path,
    iface: &str,
) -> Result<bool, DataplaneError> {
    let on = links::TcxIngressOn { iface };
    Ok(matches!(
        links::adopt_or_attach(&on, program, name, links_dir, iface)?,
        Attachment::Adopted
    ))
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::MissingProgram { name })
}

impl Dataplane {
    /// Loads the programs, fills in the underlay, then adopts or creates every wanted
    /// attachment and drops the unwanted ones. Validates interface names before anything
    /// is attached, so a bad name leaves the kernel untouched.
    ///
    /// Endpoint links pinned by a previous agent are adopted (the new program swapped
    /// in) when their interface still exists, and dropped otherwise; links on another
    /// underlay interface are dropped.
    pub fn start(pins: PinDirs, want: &Attachments) -> Result<Dataplane, DataplaneError> {
        for iface in std::iter::once(&want.underlay_iface).chain(&want.endpoint_ifaces) {
            links::if_index(iface)?;
        }
        let underlay_ifindex = links::if_index(&want.underlay_iface)?;
        let underlay_mac =
            crate::netif::mac(&want.underlay_iface).map_err(|source| DataplaneError::Sysfs {
                path: PathBuf::from(format!("/sys/class/net/{}/address", want.underlay_iface)),
                source,
            })?;
        let (mut ebpf, migration) = load_migrating(&pins)?;
        let links_dir = pins.links();

        let mut endpoints = want.endpoint_ifaces.clone();
        for iface in links::pinned_ifaces(&links_dir, names::TC_ENDPOINT_INGRESS) {
            if !endpoints.contains(&iface) && links::if_index(&iface).is_ok() {
                endpoints.push(iface);
            }
        }
        let wanted: Vec<String> = [
            links::pin_name(names::XDP_UNDERLAY, &want.underlay_iface),
            links::pin_name(names::TC_UNDERLAY_INGRESS, &want.underlay_iface),
        ]
        .into_iter()
        .chain(
            endpoints
                .iter()
                .map(|i| links::pin_name(names::TC_ENDPOINT_INGRESS, i)),
        )
        .chain(cgroup::wanted_pins())
        .collect();
        links::unpin_unwanted(&links_dir, &wanted)?;

        // Before the decapsulating program runs: it accepts VXLAN only for this address.
        OverlayMaps::open(&pins)?.set_underlay(UnderlayValue {
            ifindex: underlay_ifindex,
            ip: want.underlay_ip.octets(),
            mac: underlay_mac,
            _pad: [0; 2],
        })?;

        let xdp: &mut Xdp = program_mut(&mut ebpf, names::XDP_UNDERLAY)?;
        let on = links::XdpOn {
            iface: &want.underlay_iface,
            mode: want.xdp_mode,
        };
        let xdp_attached_mode =
            match links::adopt_or_attach(&on, xdp, names::XDP_UNDERLAY, &links_dir, on.iface)? {
                Attachment::Adopted => AttachedMode::Adopted,
                Attachment::Attached(mode) => mode,
            };
        info!(
            iface = %want.underlay_iface,
            mode = %xdp_attached_mode,
            program = names::XDP_UNDERLAY,
            "underlay program attached"
        );
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, names::TC_UNDERLAY_INGRESS)?;
        let adopted = tcx_ingress(
            tc,
            names::TC_UNDERLAY_INGRESS,
            &links_dir,
            &want.underlay_iface,
        )?;
        info!(
            iface = %want.underlay_iface,
            ip = %want.underlay_ip,
            adopted,
            program = names::TC_UNDERLAY_INGRESS,
            "underlay program attached"
        );
        // After the underlay: the host path's program reads it.
        cgroup::start(&mut ebpf, &pins, &want.underlay_iface)?;
        let mut dataplane = Dataplane {
            ebpf,
            pins,
            xdp_attached_mode,
            migrated: Vec::new(),
        };
        for iface in &endpoints {
            dataplane.attach_endpoint(iface)?;
        }
        // Every attachment now runs the new programs: the old ones write nothing more.
        dataplane.migrated = migration.finish()?;
        Ok(dataplane)
    }

    /// Attaches the endpoint program to the host-side veth `iface` (tcx ingress, pinned
    /// as `tc_endpoint_ingress@<iface>`); if it is attached already, the running program
    /// is swapped in again, which changes nothing. Idempotent.
    pub fn attach_endpoint(&mut self, iface: &str) -> Result<(), DataplaneError> {
        links::if_index(iface)?;
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, names::TC_ENDPOINT_INGRESS)?;
        let adopted = tcx_ingress(tc, names::TC_ENDPOINT_INGRESS, &self.pins.links(), iface)?;
        // A reconciler calls this on every pass: only a new attachment is news.
        if adopted {
            debug!(%iface, program = names::TC_ENDPOINT_INGRESS, "endpoint program adopted");
        } else {
            info!(%iface, program = names::TC_ENDPOINT_INGRESS, "endpoint program attached");
        }
        Ok(())
    }

    /// Detaches the endpoint program from `iface` by unpinning its link. Returns whether
    /// there was one; idempotent. (A veth that is deleted takes its attachment with it;
    /// the pin then lingers until this is called or the next agent starts.)
    pub fn detach_endpoint(&mut self, iface: &str) -> Result<bool, DataplaneError> {
        links::unpin(
            &self.pins.links(),
            &links::pin_name(names::TC_ENDPOINT_INGRESS, iface),
        )
    }

    /// The interfaces with a pinned endpoint link, sorted.
    pub fn attached_endpoints(&self) -> Vec<String> {
        links::pinned_ifaces(&self.pins.links(), names::TC_ENDPOINT_INGRESS)
    }

    /// The programs' aya-log records, for the caller to [`EbpfLogs::forward`] into
    /// `tracing` (inside the async runtime). `None`, with a warning, when unavailable.
    pub(crate) fn take_logs(&mut self) -> Option<EbpfLogs> {
        let logs = aya_log::EbpfLogger::init(&mut self.ebpf)
            .map_err(|error| error.to_string())
            .and_then(|logger| EbpfLogs::new(logger).map_err(|error| error.to_string()));
        match logs {
            Ok(logs) => Some(logs),
            Err(error) => {
                warn!(%error, "eBPF logs unavailable");
                None
            }
        }
    }

    /// Read-only handles on the counters maps, for `/metrics`.
    pub fn counters(&mut self) -> Result<Counters, DataplaneError> {
        Counters::open(&self.pins)
    }

    /// Where this dataplane keeps its pins.
    pub fn pins(&self) -> &PinDirs {
        &self.pins
    }
}

/// The per-program, per-verdict counters, opened from their pins so the reader does not
/// borrow the [`Dataplane`].
pub struct Counters {
    programs: Vec<(&'static str, PerCpuArray<MapData, Counter>)>,
}

impl Counters {
    pub fn open(pins: &PinDirs) -> Result<Counters, DataplaneError> {
        let mut programs = Vec::new();
        for (program, spec) in dataplane_ebpf::maps::COUNTERS {
            let (map, _) = maps::open_pin(pins, spec)?;
            programs.push((*program, maps::typed(spec, map)?));
        }
        Ok(Counters { programs })
    }

    /// (program, verdict, summed counter) for every verdict of every program.
    pub fn read(&self) -> Vec<(&'static str, Verdict, Counter)> {
        let mut out = Vec::new();
        for (program, array) in &self.programs {
            for verdict in Verdict::ALL {
                let sum = array
                    .get(&verdict.slot(), 0)
                    .map(|per_cpu| Counter::sum(per_cpu.iter()))
                    .unwrap_or_default();
                out.push((*program, verdict, sum));
            }
        }
        out
    }
}

/// `skein agent cleanup`: detaches and unpins everything under this agent's `bpf-dir`
/// (links first, so no program runs against a map being removed). Touches nothing
/// outside it. Returns how many pins were removed.
pub fn cleanup(pins: &PinDirs) -> Result<usize, DataplaneError> {
    let mut removed = links::unpin_unwanted(&pins.links(), &[])?;
    let maps_dir = pins.maps();
    if let Ok(entries) = fs::read_dir(&maps_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| DataplaneError::Pin {
                what: "unpinning a map",
                path: path.clone(),
                source: Box::new(e),
            })?;
            removed += 1;
        }
    }
    for dir in [pins.links(), maps_dir] {
        let _ = fs::remove_dir(dir);
    }
    Ok(removed)
}
