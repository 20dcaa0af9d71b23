//! Attachments as pinned bpf_links: adopt an existing one by swapping the new program
//! into it atomically, or create and pin a new one.
//!
//! Pin names say what is attached where: `xdp_underlay@<iface>`,
//! `tc_underlay_ingress@<iface>` and `tc_endpoint_ingress@<iface>`. A link whose
//! interface disappeared is defunct: the swap fails, and the pin is replaced by a fresh
//! attachment.

use std::{ffi::CString, fmt, fs, path::Path, str::FromStr};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
    LinkOrder, SchedClassifier, TcAttachType, Xdp,
};
use dataplane_ebpf::names;
use tracing::{debug, info, warn};

use super::DataplaneError;

/// `--xdp-mode`: how to attach the underlay program. Written and parsed as its
/// [`name`](XdpMode::name); the command line's help for each mode is in `config`, so
/// this module does not depend on the CLI library.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only: fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

impl XdpMode {
    /// Every mode, in the order help and errors list them.
    pub const ALL: [XdpMode; 3] = [XdpMode::Auto, XdpMode::Native, XdpMode::Generic];

    /// The name `--xdp-mode` and the config file take.
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`XdpMode::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown XDP mode {:?}; use one of: {}",
    .0,
    XdpMode::ALL.map(XdpMode::name).join(", ")
)]
pub struct UnknownXdpMode(pub String);

impl FromStr for XdpMode {
    type Err = UnknownXdpMode;

    fn from_str(name: &str) -> Result<XdpMode, UnknownXdpMode> {
        XdpMode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| UnknownXdpMode(name.to_owned()))
    }
}

/// How the underlay program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    /// Adopted from a previous agent, in whatever mode it chose.
    Adopted,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Adopted => "adopted",
        })
    }
}

pub fn xdp_pin_name(iface: &str) -> String {
    format!("{}@{iface}", names::XDP_UNDERLAY)
}

/// The pin of tc program `program` on `iface`'s ingress.
pub fn tc_pin_name(program: &str, iface: &str) -> String {
    format!("{program}@{iface}")
}

/// The interfaces that have a pinned `program` link in `dir`, sorted.
pub fn pinned_ifaces(dir: &Path, program: &str) -> Vec<String> {
    let prefix = format!("{program}@");
    let mut ifaces: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix(&prefix))
                .map(str::to_owned)
        })
        .collect();
    ifaces.sort();
    ifaces
}

/// Unpins (and so detaches) the link pinned as `name` in `dir`; `Ok(false)` if there
/// was none.
pub fn unpin(dir: &Path, name: &str) -> Result<bool, DataplaneError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {
            info!(link = %name, "detached");
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DataplaneError::Pin {
            what: "unpinning a link",
            path,
            source: Box::new(e),
        }),
    }
}

/// The interface's index in this network namespace, or a clear error naming it.
pub fn if_index(name: &str) -> Result<u32, DataplaneError> {
    let missing = || DataplaneError::NoSuchInterface {
        name: name.to_owned(),
    };
    let c_name = CString::new(name).map_err(|_| missing())?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

/// Unpins (and so detaches) every link pin in `dir` whose name is not in `wanted`.
/// Returns how many were removed.
pub fn unpin_unwanted(dir: &Path, wanted: &[String]) -> Result<usize, DataplaneError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if wanted.contains(&name) {
            continue;
        }
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| DataplaneError::Pin {
            what: "unpinning a link",
            path: path.clone(),
            source: Box::new(e),
        })?;
        info!(link = %name, "detached: no longer wanted");
        removed += 1;
    }
    Ok(removed)
}

/// Opens a pinned link, if there is one.
fn open_pin(path: &Path) -> Result<Option<FdLink>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(path).map_err(|e| DataplaneError::Pin {
        what: "opening a pinned link",
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(Some(pinned.into()))
}

/// Removes a pin we could not adopt; the link it held detaches with it.
fn discard_pin(path: &Path, why: &dyn fmt::Display) -> Result<(), DataplaneError> {
    warn!(pin = %path.display(), reason = %why, "replacing an attachment that cannot be adopted");
    fs::remove_file(path).map_err(|e| DataplaneError::Pin {
        what: "removing a stale link pin",
        path: path.to_owned(),
        source: Box::new(e),
    })
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    link.pin(path).map_err(|e| DataplaneError::Pin {
        what: "pinning a link",
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(())
}

/// Adopts the pinned XDP link on `iface` (swapping in `program`) or attaches afresh.
pub fn attach_xdp(
    program: &mut Xdp,
    links_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> Result<AttachedMode, DataplaneError> {
    let pin = links_dir.join(xdp_pin_name(iface));
    let attach_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Attach {
        program: names::XDP_UNDERLAY,
        iface: iface.to_owned(),
        source,
    };
    if let Some(fd_link) = open_pin(&pin)? {
        match XdpLink::try_from(fd_link) {
            Ok(link) => match program.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; dropping our handle must not detach it.
                    let link = program
                        .take_link(id)
                        .map_err(|e| attach_error(Box::new(e)))?;
                    drop(FdLink::try_from(link).map_err(|e| attach_error(Box::new(e)))?);
                    debug!(%iface, "swapped the new program into the pinned XDP link");
                    return Ok(AttachedMode::Adopted);
                }
                Err(e) => discard_pin(&pin, &e)?,
            },
            Err(e) => discard_pin(&pin, &e)?,
        }
    }

    let tries: &[(aya::programs::XdpMode, AttachedMode)] = match mode {
        XdpMode::Native => &[(aya::programs::XdpMode::Driver, AttachedMode::Native)],
        XdpMode::Generic => &[(aya::programs::XdpMode::Skb, AttachedMode::Generic)],
        XdpMode::Auto => &[
            (aya::programs::XdpMode::Driver, AttachedMode::Native),
            (aya::programs::XdpMode::Skb, AttachedMode::Generic),
        ],
    };
    let mut last_error = None;
    for (flags, attached) in tries {
        match program.attach(iface, *flags) {
            Ok(id) => {
                let link = program
                    .take_link(id)
                    .map_err(|e| attach_error(Box::new(e)))?;
                let fd_link = FdLink::try_from(link).map_err(|e| attach_error(Box::new(e)))?;
                pin_link(fd_link, &pin)?;
                return Ok(*attached);
            }
            Err(e) => {
                debug!(%iface, mode = %attached, error = %e, "XDP attach attempt failed");
                last_error = Some(e);
            }
        }
    }
    Err(attach_error(Box::new(
        last_error.expect("at least one attach mode is tried"),
    )))
}

/// Adopts the pinned tcx link of `name` on `iface`'s ingress (swapping in `program`) or
/// attaches afresh. Returns whether an existing link was adopted.
pub fn attach_tc_ingress(
    program: &mut SchedClassifier,
    name: &'static str,
    links_dir: &Path,
    iface: &str,
) -> Result<bool, DataplaneError> {
    let pin = links_dir.join(tc_pin_name(name, iface));
    let attach_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Attach {
        program: name,
        iface: iface.to_owned(),
        source,
    };
    if let Some(fd_link) = open_pin(&pin)? {
        match SchedClassifierLink::try_from(fd_link) {
            Ok(link) => match program.attach_to_link(link) {
                Ok(id) => {
                    let link = program
                        .take_link(id)
                        .map_err(|e| attach_error(Box::new(e)))?;
                    drop(FdLink::try_from(link).map_err(|e| attach_error(Box::new(e)))?);
                    debug!(%iface, program = name, "swapped the new program into the pinned tcx link");
                    return Ok(true);
                }
                Err(e) => discard_pin(&pin, &e)?,
            },
            Err(e) => discard_pin(&pin, &e)?,
        }
    }
    let id = program
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| attach_error(Box::new(e)))?;
    let link = program
        .take_link(id)
        .map_err(|e| attach_error(Box::new(e)))?;
    let fd_link = FdLink::try_from(link).map_err(|e| attach_error(Box::new(e)))?;
    pin_link(fd_link, &pin)?;
    Ok(false)
}
