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

mod bpffs;
mod links;
pub mod test_run;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo, MapType, PerCpuArray},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use dataplane_ebpf::{
    counters::{Counter, Verdict, COUNTER_SLOTS},
    names,
};
use tracing::{info, warn};

pub use links::{if_index, XdpMode};

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
    #[error("pinned map {path} has a different layout than this agent's (type {found_type}, key {found_key} B, value {found_value} B, {found_entries} entries); run `skein agent cleanup` to start afresh")]
    IncompatiblePin {
        path: PathBuf,
        found_type: String,
        found_key: u32,
        found_value: u32,
        found_entries: u32,
    },
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is not in the eBPF object or has the wrong type")]
    MissingProgram { name: &'static str },
    #[error("map {name} is not in the eBPF object or has the wrong type")]
    MissingMap { name: &'static str },
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

/// What the agent wants attached.
#[derive(Clone, Debug)]
pub struct Attachments {
    pub underlay_iface: String,
    pub xdp_mode: XdpMode,
    /// Host-side veths of endpoints.
    pub endpoint_ifaces: Vec<String>,
}

/// The loaded object, with its programs attached through pinned links.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinDirs,
    /// How the underlay XDP program is attached (native or generic), as found or made.
    pub xdp_attached_mode: links::AttachedMode,
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
/// there), without attaching anything. The programs are loaded and verified.
pub fn load(pins: &PinDirs) -> Result<Ebpf, DataplaneError> {
    bpffs::prepare(&pins.root).map_err(|source| DataplaneError::Bpffs {
        path: pins.root.clone(),
        source,
    })?;
    let maps_dir = pins.maps();
    for dir in [maps_dir.clone(), pins.links()] {
        fs::create_dir_all(&dir).map_err(|source| DataplaneError::Bpffs { path: dir, source })?;
    }
    check_pinned_maps(&maps_dir)?;
    let level = kernel_log_level();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .override_global(aya_log::LEVEL, &level, false)
        .load(OBJECT)
        .map_err(DataplaneError::Load)?;
    let xdp: &mut Xdp = program_mut(&mut ebpf, names::XDP_UNDERLAY)?;
    xdp.load().map_err(|source| DataplaneError::Verify {
        name: names::XDP_UNDERLAY,
        source,
    })?;
    let tc: &mut SchedClassifier = program_mut(&mut ebpf, names::TC_ENDPOINT_INGRESS)?;
    tc.load().map_err(|source| DataplaneError::Verify {
        name: names::TC_ENDPOINT_INGRESS,
        source,
    })?;
    Ok(ebpf)
}

/// Refuses to adopt pinned maps whose layout differs from this build's ABI: the new
/// programs would read them with the wrong types.
fn check_pinned_maps(maps_dir: &Path) -> Result<(), DataplaneError> {
    let expected = (
        MapType::PerCpuArray,
        4u32,
        size_of::<Counter>() as u32,
        COUNTER_SLOTS,
    );
    for name in names::PINNED_MAPS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DataplaneError::Pin {
            what: "reading a pinned map",
            path: path.clone(),
            source: Box::new(e),
        })?;
        let found_type = info.map_type().ok();
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found_type != Some(expected.0) || found != (expected.1, expected.2, expected.3) {
            return Err(DataplaneError::IncompatiblePin {
                path,
                found_type: format!("{found_type:?}"),
                found_key: found.0,
                found_value: found.1,
                found_entries: found.2,
            });
        }
    }
    Ok(())
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
    /// Loads the programs, then adopts or creates every wanted attachment and drops the
    /// unwanted ones. Validates interface names before anything is attached, so a bad
    /// name leaves the kernel untouched.
    pub fn start(pins: PinDirs, want: &Attachments) -> Result<Dataplane, DataplaneError> {
        for iface in std::iter::once(&want.underlay_iface).chain(&want.endpoint_ifaces) {
            links::if_index(iface)?;
        }
        let mut ebpf = load(&pins)?;
        let links_dir = pins.links();
        let wanted: Vec<String> = std::iter::once(links::xdp_pin_name(&want.underlay_iface))
            .chain(want.endpoint_ifaces.iter().map(|i| links::tc_pin_name(i)))
            .collect();
        links::unpin_unwanted(&links_dir, &wanted)?;

        let xdp: &mut Xdp = program_mut(&mut ebpf, names::XDP_UNDERLAY)?;
        let xdp_attached_mode =
            links::attach_xdp(xdp, &links_dir, &want.underlay_iface, want.xdp_mode)?;
        info!(
            iface = %want.underlay_iface,
            mode = %xdp_attached_mode,
            program = names::XDP_UNDERLAY,
            "underlay program attached"
        );
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, names::TC_ENDPOINT_INGRESS)?;
        for iface in &want.endpoint_ifaces {
            links::attach_tc_ingress(tc, &links_dir, iface)?;
            info!(%iface, program = names::TC_ENDPOINT_INGRESS, "endpoint program attached");
        }
        Ok(Dataplane {
            ebpf,
            pins,
            xdp_attached_mode,
        })
    }

    /// Starts forwarding the programs' aya-log records into `tracing`. Returns the
    /// logger, to be polled by the caller (see [`crate::daemon`]).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
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
}

/// The per-program, per-verdict counters, opened from their pins so the reader does not
/// borrow the [`Dataplane`].
pub struct Counters {
    programs: Vec<(&'static str, PerCpuArray<MapData, Counter>)>,
}

impl Counters {
    pub fn open(pins: &PinDirs) -> Result<Counters, DataplaneError> {
        let mut programs = Vec::new();
        for (program, map) in [
            (names::XDP_UNDERLAY, names::XDP_UNDERLAY_COUNTERS),
            (names::TC_ENDPOINT_INGRESS, names::TC_ENDPOINT_COUNTERS),
        ] {
            let path = pins.maps().join(map);
            let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Pin {
                what: "opening a pinned counters map",
                path: path.clone(),
                source: Box::new(e),
            })?;
            let array = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .map_err(|_| DataplaneError::MissingMap { name: map })?;
            programs.push((program, array));
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
