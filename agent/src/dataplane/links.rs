//! Attachments as pinned bpf_links: adopt an existing one by swapping the new program
//! into it atomically, or create and pin a new one — one [`adopt_or_attach`] for every
//! [`LinkKind`] (XDP, tcx; cgroup hooks will be a third).
//!
//! Pin names say what is attached where: `xdp_underlay@<iface>`,
//! `tc_underlay_ingress@<iface>` and `tc_endpoint_ingress@<iface>`. A link whose
//! interface disappeared is defunct: the swap fails, and the pin is replaced by a fresh
//! attachment.

use std::{ffi::CString, fmt, fs, path::Path, str::FromStr};

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
    LinkOrder, SchedClassifier, TcAttachType, Xdp,
};
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

/// The pin of `program`'s link on `iface`: `<program>@<iface>` (every kind of link).
pub(crate) fn pin_name(program: &str, iface: &str) -> String {
    format!("{program}@{iface}")
}

/// The interfaces that have a pinned `program` link in `dir`, sorted.
pub(crate) fn pinned_ifaces(dir: &Path, program: &str) -> Vec<String> {
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
pub(crate) fn unpin(dir: &Path, name: &str) -> Result<bool, DataplaneError> {
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
pub(crate) fn unpin_unwanted(dir: &Path, wanted: &[String]) -> Result<usize, DataplaneError> {
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A kind of attachment the agent keeps as a pinned bpf_link: how to swap a program into
/// an existing link of its kind, and how to attach one afresh. XDP and tcx are the two
/// today; cgroup socket hooks will be a third.
pub(crate) trait LinkKind {
    /// The aya program type.
    type Program;
    /// The program's link type, convertible to and from the pinnable [`FdLink`].
    type Link: TryFrom<FdLink, Error = LinkError> + TryInto<FdLink, Error = LinkError>;
    /// What a fresh attachment reports (the XDP mode it got; nothing for tcx).
    type Attached;

    /// Atomically replaces the program of `link` with `program` (`BPF_LINK_UPDATE`);
    /// returns the link, now owned by `program`.
    fn swap(program: &mut Self::Program, link: Self::Link) -> Result<Self::Link, BoxError>;
    /// Attaches `program` afresh.
    fn attach(&self, program: &mut Self::Program)
        -> Result<(Self::Link, Self::Attached), BoxError>;
}

/// The outcome of [`adopt_or_attach`].
pub(crate) enum Attachment<A> {
    /// The pinned link of a previous agent now runs the new program.
    Adopted,
    /// There was no usable pin: attached afresh and pinned.
    Attached(A),
}

/// The one adopt-or-attach for every kind of link: swaps `program` into the link pinned
/// at `links_dir/pin_name` if there is one of the right kind on a live interface;
/// otherwise (no pin, or a defunct one, which is removed) attaches afresh and pins it.
/// There is never a moment without a program on the hook when a pin is adopted.
pub(crate) fn adopt_or_attach<K: LinkKind>(
    kind: &K,
    program: &mut K::Program,
    program_name: &'static str,
    links_dir: &Path,
    iface: &str,
) -> Result<Attachment<K::Attached>, DataplaneError> {
    let pin = links_dir.join(format!("{program_name}@{iface}"));
    let attach_error = |source: BoxError| DataplaneError::Attach {
        program: program_name,
        iface: iface.to_owned(),
        source,
    };
    if let Some(fd_link) = open_pin(&pin)? {
        match K::Link::try_from(fd_link) {
            Ok(link) => match K::swap(program, link) {
                Ok(link) => {
                    // The pin keeps the link; dropping our handle must not detach it.
                    drop(
                        link.try_into()
                            .map_err(|e: LinkError| attach_error(Box::new(e)))?,
                    );
                    debug!(%iface, program = program_name, "swapped the new program into the pinned link");
                    return Ok(Attachment::Adopted);
                }
                Err(e) => discard_pin(&pin, &e)?,
            },
            Err(e) => discard_pin(&pin, &e)?,
        }
    }
    let (link, attached) = kind.attach(program).map_err(attach_error)?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: LinkError| attach_error(Box::new(e)))?;
    pin_link(fd_link, &pin)?;
    Ok(Attachment::Attached(attached))
}

/// XDP on an interface, in the mode `--xdp-mode` asks for.
pub(crate) struct XdpOn<'a> {
    pub(crate) iface: &'a str,
    pub(crate) mode: XdpMode,
}

impl LinkKind for XdpOn<'_> {
    type Program = Xdp;
    type Link = XdpLink;
    type Attached = AttachedMode;

    fn swap(program: &mut Xdp, link: XdpLink) -> Result<XdpLink, BoxError> {
        let id = program.attach_to_link(link)?;
        Ok(program.take_link(id)?)
    }

    fn attach(&self, program: &mut Xdp) -> Result<(XdpLink, AttachedMode), BoxError> {
        let tries: &[(aya::programs::XdpMode, AttachedMode)] = match self.mode {
            XdpMode::Native => &[(aya::programs::XdpMode::Driver, AttachedMode::Native)],
            XdpMode::Generic => &[(aya::programs::XdpMode::Skb, AttachedMode::Generic)],
            XdpMode::Auto => &[
                (aya::programs::XdpMode::Driver, AttachedMode::Native),
                (aya::programs::XdpMode::Skb, AttachedMode::Generic),
            ],
        };
        let mut last_error = None;
        for (flags, attached) in tries {
            match program.attach(self.iface, *flags) {
                Ok(id) => return Ok((program.take_link(id)?, *attached)),
                Err(e) => {
                    debug!(iface = self.iface, mode = %attached, error = %e, "XDP attach attempt failed");
                    last_error = Some(e);
                }
            }
        }
        Err(Box::new(
            last_error.expect("at least one attach mode is tried"),
        ))
    }
}

/// A tc program at tcx ingress of an interface.
pub(crate) struct TcxIngressOn<'a> {
    pub(crate) iface: &'a str,
}

impl LinkKind for TcxIngressOn<'_> {
    type Program = SchedClassifier;
    type Link = SchedClassifierLink;
    type Attached = ();

    fn swap(
        program: &mut SchedClassifier,
        link: SchedClassifierLink,
    ) -> Result<SchedClassifierLink, BoxError> {
        let id = program.attach_to_link(link)?;
        Ok(program.take_link(id)?)
    }

    fn attach(&self, program: &mut SchedClassifier) -> Result<(SchedClassifierLink, ()), BoxError> {
        let id = program.attach_with_options(
            self.iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        Ok((program.take_link(id)?, ()))
    }
}
