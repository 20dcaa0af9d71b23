//! Host-local access to published services (`dataplane_ebpf::sock`): the cgroup socket
//! hooks at the cgroup v2 root, and the host path (a veth pair whose tcx egress runs
//! `tc_host_egress`) the host's own connections to tasks on other nodes leave through.
//!
//! Sharing one kernel: the cgroup root is the machine's, so every agent on it attaches
//! there. Each attaches its own program instances as bpf_links (which stack, like
//! `BPF_F_ALLOW_MULTI` attachments),
//! pinned under its own `<bpf-dir>/links` as `sock_connect4@cgroup` …, and writes its own
//! host namespace's cookie into its own `SOCK_CONFIG`: its programs act only on sockets of
//! that namespace. A restarted agent swaps its new programs into the pinned links
//! (`BPF_LINK_UPDATE`), as for the other links; `skein agent cleanup` unpins them with
//! the rest, which detaches them; nothing here ever looks at another agent's links. The
//! kernel allows 64 programs per cgroup and attach type: `cargo xtask sweep` detaches the
//! ones whose namespace is gone (a dead run whose pins survived).

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData},
    programs::{
        links::FdLink, tc::TcAttachOptions, CgroupAttachMode, CgroupSockAddr, LinkOrder,
        SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use dataplane_ebpf::{
    maps as spec, names,
    sock::{SockConfig, HOST_PATH_IFACE},
};
use tracing::{debug, info, warn};

use crate::netlink;

use super::{
    links::{self, Attachment, LinkKind},
    maps::{open_pin, typed},
    program_mut, DataplaneError, PinDirs,
};

/// The cgroup hooks, by program name.
pub(crate) const SOCK_PROGRAMS: [&str; 4] = [
    names::SOCK_CONNECT4,
    names::SOCK_SENDMSG4,
    names::SOCK_RECVMSG4,
    names::SOCK_GETPEERNAME4,
];

/// What the links of the cgroup hooks are pinned "on" (`<program>@cgroup`).
const CGROUP_PIN_TARGET: &str = "cgroup";

/// The pins this module owns under `<bpf-dir>/links`.
pub(crate) fn wanted_pins() -> Vec<String> {
    SOCK_PROGRAMS
        .iter()
        .map(|p| links::pin_name(p, CGROUP_PIN_TARGET))
        .chain(std::iter::once(links::pin_name(
            names::TC_HOST_EGRESS,
            HOST_PATH_IFACE,
        )))
        .collect()
}

/// Loads (verifies) the hooks and the host path's program.
pub(crate) fn load(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|source| DataplaneError::Verify { name, source })?;
    }
    let tc: &mut SchedClassifier = program_mut(ebpf, names::TC_HOST_EGRESS)?;
    tc.load().map_err(|source| DataplaneError::Verify {
        name: names::TC_HOST_EGRESS,
        source,
    })
}

/// Writes this namespace's cookie into `SOCK_CONFIG`, creates the host path, and adopts or
/// attaches the hooks and the host path's program.
pub(crate) fn start(
    ebpf: &mut Ebpf,
    pins: &PinDirs,
    underlay_iface: &str,
) -> Result<(), DataplaneError> {
    let cookie = own_netns_cookie().map_err(|source| DataplaneError::Bpffs {
        path: PathBuf::from("SO_NETNS_COOKIE"),
        source,
    })?;
    let (map, _) = open_pin(pins, &spec::SOCK_CONFIG)?;
    let mut config: Array<MapData, SockConfig> = typed(&spec::SOCK_CONFIG, map)?;
    config
        .set(
            0,
            SockConfig {
                netns_cookie: cookie,
            },
            0,
        )
        .map_err(|source| DataplaneError::Map {
            map: spec::SOCK_CONFIG.name,
            what: "writing",
            source,
        })?;
    let root = cgroup2_root().map_err(|source| DataplaneError::Bpffs {
        path: PathBuf::from("cgroup2"),
        source,
    })?;
    let cgroup = fs::File::open(&root).map_err(|source| DataplaneError::Bpffs {
        path: root.clone(),
        source,
    })?;
    let links_dir = pins.links();
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        let adopted = adopt_or_attach_cgroup(program, name, &links_dir, &cgroup)?;
        debug!(program = name, cgroup = %root.display(), adopted, "socket hook attached");
    }
    info!(netns_cookie = cookie, cgroup = %root.display(), "socket hooks attached");

    ensure_host_path(underlay_iface).map_err(|source| DataplaneError::Attach {
        program: names::TC_HOST_EGRESS,
        iface: HOST_PATH_IFACE.to_owned(),
        source: source.into(),
    })?;
    let tc: &mut SchedClassifier = program_mut(ebpf, names::TC_HOST_EGRESS)?;
    let on = TcxEgressOn {
        iface: HOST_PATH_IFACE,
    };
    let adopted = matches!(
        links::adopt_or_attach(&on, tc, names::TC_HOST_EGRESS, &links_dir, HOST_PATH_IFACE)?,
        Attachment::Adopted
    );
    info!(
        iface = HOST_PATH_IFACE,
        adopted,
        program = names::TC_HOST_EGRESS,
        "host path attached"
    );
    Ok(())
}

/// This thread's network namespace cookie (`SO_NETNS_COOKIE`).
pub(crate) fn own_netns_cookie() -> io::Result<u64> {
    // SAFETY: a plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a u64 the kernel writes `len` bytes of.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted in this mount namespace; mounted on
/// `/run/skein/cgroup2` when it is not (under `ip netns exec`, `/sys` is remounted and
/// the machine's mount of it is out of sight).
fn cgroup2_root() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // "... mount-point options - fstype source super-options"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(point) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(point.replace("\\040", " ")));
            }
        }
    }
    let point = Path::new("/run/skein/cgroup2");
    fs::create_dir_all(point)?;
    let target = CString::new(point.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    info!(path = %point.display(), "mounted the cgroup v2 hierarchy");
    Ok(point.to_owned())
}

/// The cgroup hooks' adopt-or-attach (aya 0.14 cannot swap a program into a cgroup link,
/// so the swap is the raw `BPF_LINK_UPDATE`): whether the pinned link was adopted.
fn adopt_or_attach_cgroup(
    program: &mut CgroupSockAddr,
    name: &'static str,
    links_dir: &Path,
    cgroup: &fs::File,
) -> Result<bool, DataplaneError> {
    let pin = links_dir.join(links::pin_name(name, CGROUP_PIN_TARGET));
    let attach_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Attach {
        program: name,
        iface: CGROUP_PIN_TARGET.to_owned(),
        source,
    };
    let prog_fd = program
        .fd()
        .map_err(|e| attach_error(Box::new(e)))?
        .as_fd()
        .as_raw_fd();
    if pin.exists() {
        match obj_get(&pin).and_then(|link| link_update(&link, prog_fd)) {
            Ok(()) => return Ok(true),
            Err(error) => {
                warn!(pin = %pin.display(), %error, "replacing a socket hook that cannot be adopted");
                fs::remove_file(&pin).map_err(|e| DataplaneError::Pin {
                    what: "removing a stale link pin",
                    path: pin.clone(),
                    source: Box::new(e),
                })?;
            }
        }
    }
    // A bpf_link (aya uses `BPF_LINK_CREATE` on this kernel) takes no flags: links at a
    // cgroup always stack, as `BPF_F_ALLOW_MULTI` attachments do ("Single" passes 0).
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| attach_error(Box::new(e)))?;
    let link = program
        .take_link(id)
        .map_err(|e| attach_error(Box::new(e)))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| attach_error(Box::new(e)))?;
    fd_link.pin(&pin).map_err(|e| DataplaneError::Pin {
        what: "pinning a link",
        path: pin.clone(),
        source: Box::new(e),
    })?;
    Ok(false)
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `bpf(BPF_OBJ_GET)`: the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // `union bpf_attr` for BPF_OBJ_GET: pathname, bpf_fd, file_flags (zero padded).
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    // SAFETY: the attr buffer outlives the call and is larger than the kernel reads.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf(BPF_LINK_UPDATE)`: `prog_fd` replaces the link's program, atomically.
fn link_update(link: &OwnedFd, prog_fd: i32) -> io::Result<()> {
    // `link_update`: link_fd, new_prog_fd, flags, old_prog_fd (u32 each).
    let mut attr = [0u32; 32];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog_fd as u32;
    // SAFETY: the attr buffer outlives the call and is larger than the kernel reads.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, attr.as_mut_ptr(), 128u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A tc program at tcx egress of an interface (the host path).
struct TcxEgressOn<'a> {
    iface: &'a str,
}

impl LinkKind for TcxEgressOn<'_> {
    type Program = SchedClassifier;
    type Link = aya::programs::tc::SchedClassifierLink;
    type Attached = ();

    fn swap(
        program: &mut SchedClassifier,
        link: Self::Link,
    ) -> Result<Self::Link, Box<dyn std::error::Error + Send + Sync>> {
        let id = program.attach_to_link(link)?;
        Ok(program.take_link(id)?)
    }

    fn attach(
        &self,
        program: &mut SchedClassifier,
    ) -> Result<(Self::Link, ()), Box<dyn std::error::Error + Send + Sync>> {
        let id = program.attach_with_options(
            self.iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        Ok((program.take_link(id)?, ()))
    }
}

/// The host path: a veth pair `skein-mesh` / `skein-mesh-p`, the first up without ARP
/// and with the underlay's MTU less the 50 bytes of VXLAN (so the host's segments fit once
/// encapsulated), the peer down (nothing ever crosses: the program redirects or drops
/// everything first). The overlay's subnets are routed through it by the reconciler
/// (`crate::reconcile` `host_path`, with [`netlink::sync_routes_through`]).
fn ensure_host_path(underlay_iface: &str) -> anyhow::Result<()> {
    let underlay_mtu: u32 = fs::read_to_string(format!("/sys/class/net/{underlay_iface}/mtu"))?
        .trim()
        .parse()?;
    let mtu = underlay_mtu.saturating_sub(50);
    let peer = format!("{HOST_PATH_IFACE}-p");
    // Dataplane start is synchronous: one netlink exchange on a thread of its own, in
    // this thread's namespace.
    netlink::run_in_netns(Path::new(OWN_NETNS), || {
        netlink::ensure_host_path_link(HOST_PATH_IFACE, &peer, mtu)
    })??;
    Ok(())
}

/// The calling thread's network namespace, for [`netlink::run_in_netns`].
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Removes the host path (`skein agent cleanup`); missing is fine.
pub(crate) fn remove_host_path() {
    let removed = netlink::run_in_netns(Path::new(OWN_NETNS), || {
        netlink::remove_link(HOST_PATH_IFACE)
    });
    if let Err(error) = removed.and_then(|r| r) {
        warn!(%error, "could not remove the host path");
    }
}
