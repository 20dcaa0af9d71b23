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
//! Layout: `links` (pinned bpf_links: adopt, attach, unpin), `overlay` ([`OverlayMaps`]),
//! `bpffs` (mounting the pin directory's filesystem). `BPF_PROG_TEST_RUN` (for the privileged
//! tests and the packet generator) is the `dataplane-ebpf-test-run` crate.

mod bpffs;
mod links;
mod overlay;

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, MapInfo, MapType, PerCpuArray},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use dataplane_ebpf::{
    counters::{Counter, Verdict, COUNTER_SLOTS},
    names,
    overlay::{
        EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, SubnetValue, UnderlayValue,
        VtepKey, VtepValue,
    },
};
use tracing::{debug, info, warn};

pub use links::{if_index, AttachedMode, XdpMode};
pub use overlay::OverlayMaps;

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
    for name in [names::TC_ENDPOINT_INGRESS, names::TC_UNDERLAY_INGRESS] {
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
        tc.load()
            .map_err(|source| DataplaneError::Verify { name, source })?;
    }
    Ok(ebpf)
}

/// The layout every pinned map must have: (name, type, key size, value size, entries).
pub fn expected_map_layouts() -> Vec<(&'static str, MapType, u32, u32, u32)> {
    fn size<T>() -> u32 {
        size_of::<T>() as u32
    }
    let mut layouts: Vec<_> = names::COUNTER_MAPS
        .iter()
        .map(|(_, map)| {
            (
                *map,
                MapType::PerCpuArray,
                size::<u32>(),
                size::<Counter>(),
                COUNTER_SLOTS,
            )
        })
        .collect();
    layouts.extend([
        (
            names::OVERLAY_ENDPOINTS,
            MapType::Hash,
            size::<EndpointKey>(),
            size::<EndpointValue>(),
            names::MAX_ENDPOINTS,
        ),
        (
            names::OVERLAY_PORTS,
            MapType::Hash,
            size::<u32>(),
            size::<PortValue>(),
            names::MAX_PORTS,
        ),
        (
            names::OVERLAY_NETWORKS,
            MapType::Hash,
            size::<u32>(),
            size::<NetworkValue>(),
            names::MAX_NETWORKS,
        ),
        (
            names::OVERLAY_VTEPS,
            MapType::LpmTrie,
            size::<VtepKey>(),
            size::<VtepValue>(),
            names::MAX_VTEP_ROUTES,
        ),
        (
            names::OVERLAY_SUBNETS,
            MapType::LpmTrie,
            size::<SubnetKey>(),
            size::<SubnetValue>(),
            names::MAX_SUBNETS,
        ),
        (
            names::OVERLAY_UNDERLAY,
            MapType::Array,
            size::<u32>(),
            size::<UnderlayValue>(),
            1,
        ),
    ]);
    layouts
}

/// Refuses to adopt pinned maps whose layout differs from this build's ABI: the new
/// programs would read them with the wrong types.
fn check_pinned_maps(maps_dir: &Path) -> Result<(), DataplaneError> {
    for (name, map_type, key, value, entries) in expected_map_layouts() {
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
        if found_type != Some(map_type) || found != (key, value, entries) {
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
        let mut ebpf = load(&pins)?;
        let links_dir = pins.links();

        let mut endpoints = want.endpoint_ifaces.clone();
        for iface in links::pinned_ifaces(&links_dir, names::TC_ENDPOINT_INGRESS) {
            if !endpoints.contains(&iface) && links::if_index(&iface).is_ok() {
                endpoints.push(iface);
            }
        }
        let wanted: Vec<String> = [
            links::xdp_pin_name(&want.underlay_iface),
            links::tc_pin_name(names::TC_UNDERLAY_INGRESS, &want.underlay_iface),
        ]
        .into_iter()
        .chain(
            endpoints
                .iter()
                .map(|i| links::tc_pin_name(names::TC_ENDPOINT_INGRESS, i)),
        )
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
        let xdp_attached_mode =
            links::attach_xdp(xdp, &links_dir, &want.underlay_iface, want.xdp_mode)?;
        info!(
            iface = %want.underlay_iface,
            mode = %xdp_attached_mode,
            program = names::XDP_UNDERLAY,
            "underlay program attached"
        );
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, names::TC_UNDERLAY_INGRESS)?;
        let adopted = links::attach_tc_ingress(
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
        let mut dataplane = Dataplane {
            ebpf,
            pins,
            xdp_attached_mode,
        };
        for iface in &endpoints {
            dataplane.attach_endpoint(iface)?;
        }
        Ok(dataplane)
    }

    /// Attaches the endpoint program to the host-side veth `iface` (tcx ingress, pinned
    /// as `tc_endpoint_ingress@<iface>`); if it is attached already, the running program
    /// is swapped in again, which changes nothing. Idempotent.
    pub fn attach_endpoint(&mut self, iface: &str) -> Result<(), DataplaneError> {
        links::if_index(iface)?;
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, names::TC_ENDPOINT_INGRESS)?;
        let adopted =
            links::attach_tc_ingress(tc, names::TC_ENDPOINT_INGRESS, &self.pins.links(), iface)?;
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
            &links::tc_pin_name(names::TC_ENDPOINT_INGRESS, iface),
        )
    }

    /// The interfaces with a pinned endpoint link, sorted.
    pub fn attached_endpoints(&self) -> Vec<String> {
        links::pinned_ifaces(&self.pins.links(), names::TC_ENDPOINT_INGRESS)
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

    /// Typed handles on the overlay's maps, for the reconciler.
    pub fn overlay_maps(&self) -> Result<OverlayMaps, DataplaneError> {
        OverlayMaps::open(&self.pins)
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
        for &(program, map) in names::COUNTER_MAPS {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_one_expected_layout() {
        let layouts = expected_map_layouts();
        for name in names::PINNED_MAPS {
            assert_eq!(layouts.iter().filter(|l| l.0 == *name).count(), 1, "{name}");
        }
        assert_eq!(layouts.len(), names::PINNED_MAPS.len());
        let ports = layouts
            .iter()
            .find(|l| l.0 == names::OVERLAY_PORTS)
            .unwrap();
        assert_eq!((ports.1, ports.2, ports.3), (MapType::Hash, 4, 8));
    }
}
