//! Named network namespaces, made the way `ip netns add` makes them, so `ip netns list` and
//! `ip netns exec NAME` see them: an empty file `/run/netns/NAME` with the namespace's nsfs
//! file bind-mounted onto it, under a `/run/netns` that is a shared mount point.
//!
//! # Which mount namespace
//! A bind mount lives in the mount namespace it was made in. The agent may itself run under
//! `ip netns exec HOST`, which gives it a private mount namespace (a slave of the one it was
//! started from): a namespace mounted there would be invisible to `ip netns list` outside
//! and would vanish when the agent exits, taking the endpoint with it. So every operation
//! on `/run/netns` runs in a dedicated thread that first moves into the mount namespace of
//! PID 1 when that differs from ours (`unshare(CLONE_FS)` so the thread may `setns`, then
//! `setns(/proc/1/ns/mnt)`). `/run/netns` is a shared mount there, and ours is its slave,
//! so mounts and unmounts made there propagate into the agent's own view too.
//!
//! Where PID 1's mount namespace cannot be opened (a sandbox whose PID 1 sits outside our
//! user namespace), the outermost ancestor's that can is used instead: whoever ran
//! `ip netns exec` is an ancestor and lives outside the private namespace. If none can
//! be opened, the agent's own is used.

use std::{
    ffi::CString,
    fs::{self, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
        },
    },
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
};

use tracing::info;

use super::{NetlinkError, Result};

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `statfs.f_type` of nsfs, the filesystem of namespace files (`linux/magic.h`).
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Serializes creations in this process, so two racing `create_netns` of one name cannot
/// both mount a namespace onto the same file.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// `/run/netns/<name>`; the name is not checked.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates the named network namespace `/run/netns/<name>` like `ip netns add`, and returns
/// its path. Idempotent: a namespace already mounted there is kept (`Ok`, nothing changed);
/// an empty file left by an interrupted creation gets a new namespace mounted onto it.
///
/// Made in the mount namespace of PID 1 (or of the outermost ancestor the agent may
/// enter) when the agent runs in a private one, e.g. under `ip netns exec`, so it outlives
/// the agent and `ip netns` sees it everywhere; see the [module docs](super).
pub async fn create_netns(name: &str) -> Result<PathBuf> {
    validate_netns_name(name)?;
    let path = netns_path(name);
    let what = format!("creating network namespace {name}");
    let created = {
        let path = path.clone();
        on_dedicated_thread(what, move || {
            enter_netns_mount_namespace()?;
            create_here(&path)
        })
        .await?
    };
    if created {
        info!(netns = name, "created network namespace");
    }
    Ok(path)
}

/// Deletes the named network namespace like `ip netns delete`: detaches the mount and
/// removes the file (the namespace itself lives on while processes or interfaces hold
/// it). A missing namespace is `Ok`.
pub async fn delete_netns(name: &str) -> Result<()> {
    validate_netns_name(name)?;
    let path = netns_path(name);
    let what = format!("deleting network namespace {name}");
    let deleted = on_dedicated_thread(what, move || {
        enter_netns_mount_namespace()?;
        delete_here(&path)
    })
    .await?;
    if deleted {
        info!(netns = name, "deleted network namespace");
    }
    Ok(())
}

/// Whether `/run/netns/<name>` is a live namespace (a mounted nsfs file, as seen from the
/// mount namespace `ip netns` uses). An empty file left by an interrupted creation is not.
pub async fn netns_exists(name: &str) -> Result<bool> {
    validate_netns_name(name)?;
    let path = netns_path(name);
    on_dedicated_thread(format!("looking up network namespace {name}"), move || {
        enter_netns_mount_namespace()?;
        is_nsfs(&path)
    })
    .await
}

/// The name of the named network namespace (`ip netns add NAME`) this process runs in;
/// `None` in the root namespace or in one without a name. Looked up in this process's
/// own view of [`NETNS_RUN_DIR`], as `ip netns identify` does.
pub(crate) fn current_netns_name() -> Option<String> {
    let own = path_ns_id(Path::new("/proc/self/ns/net"))?;
    // Someone may have named the root namespace too (`ip netns attach NAME 1`); it
    // still gets the root defaults. PID 1's namespace is unreadable without privileges;
    // then the names decide.
    if path_ns_id(Path::new("/proc/1/ns/net")) == Some(own) {
        return None;
    }
    netns_name_in(Path::new(NETNS_RUN_DIR), own)
}

/// (device, inode) of the namespace a `/proc/*/ns/*` link or a bind mount of one refers
/// to, by `stat`: unlike opening it, that needs no read permission on the mode-0 files
/// under [`NETNS_RUN_DIR`], so an unprivileged client finds its namespace's name too.
fn path_ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The first name (sorted, so the answer is stable) under `dir` whose file is the
/// namespace `own` (by device and inode). Leftover files whose mount is gone have tmpfs's
/// device and match nothing.
fn netns_name_in(dir: &Path, own: (u64, u64)) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| path_ns_id(&entry.path()) == Some(own))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Opens a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...) for
/// `setns` or `IFLA_NET_NS_FD`. Fails with [`NetlinkError::NotANetns`] if it is not one.
///
/// If the file is not a namespace in the agent's own mount namespace, it is tried again in
/// PID 1's, where [`create_netns`] mounts them (propagation into a private mount namespace
/// is not guaranteed, e.g. when `/run/netns` was first made a mount point after the agent
/// started). The descriptor works in any mount namespace.
pub(super) async fn open_netns(path: &Path) -> Result<OwnedFd> {
    if let Some(fd) = open_net_nsfs(path)? {
        return Ok(fd);
    }
    let owned = path.to_owned();
    on_dedicated_thread(format!("opening {}", path.display()), move || {
        enter_netns_mount_namespace()?;
        open_net_nsfs(&owned)?.ok_or(NetlinkError::NotANetns { path: owned })
    })
    .await
}

/// The blocking twin of [`open_netns`], for code that runs outside the runtime or must
/// not await (task spawning).
pub(crate) fn open_netns_blocking(path: &Path) -> Result<OwnedFd> {
    if let Some(fd) = open_net_nsfs(path)? {
        return Ok(fd);
    }
    let owned = path.to_owned();
    on_dedicated_thread_blocking(format!("opening {}", path.display()), move || {
        enter_netns_mount_namespace()?;
        open_net_nsfs(&owned)?.ok_or(NetlinkError::NotANetns { path: owned })
    })
}

/// Whether `ns` is the calling thread's own network namespace.
pub(super) fn is_current_netns(ns: &OwnedFd) -> Result<bool> {
    let ours = fs::File::open("/proc/thread-self/ns/net")
        .map_err(NetlinkError::io("opening this thread's network namespace"))?;
    let theirs = fs::File::from(
        ns.try_clone()
            .map_err(NetlinkError::io("duplicating a namespace descriptor"))?,
    );
    let id = |f: &fs::File| ns_id(f).map_err(NetlinkError::io("inspecting a network namespace"));
    Ok(id(&ours)? == id(&theirs)?)
}

/// A namespace name `ip netns` accepts: one path component.
fn validate_netns_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\0'])
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::InvalidNetnsName {
            name: name.to_owned(),
        })
    }
}

/// Runs `f` on a new thread and waits for it without blocking the runtime. For work that
/// changes the thread's namespaces: the thread ends afterwards, so nothing else ever runs
/// in them.
pub(super) async fn on_dedicated_thread<T, F>(what: String, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    thread::Builder::new()
        .name("skein-netns".to_owned())
        .spawn(move || {
            // The receiver is gone only if the caller stopped waiting; nothing to tell.
            let _ = tx.send(f());
        })
        .map_err(NetlinkError::io(format!("starting a thread for {what}")))?;
    rx.await
        .unwrap_or(Err(NetlinkError::ThreadPanicked { what }))
}

/// [`on_dedicated_thread`], blocking the caller.
pub(super) fn on_dedicated_thread_blocking<T, F>(what: String, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    thread::scope(|scope| {
        thread::Builder::new()
            .name("skein-netns".to_owned())
            .spawn_scoped(scope, f)
            .map_err(NetlinkError::io(format!("starting a thread for {what}")))?
            .join()
            .unwrap_or(Err(NetlinkError::ThreadPanicked { what }))
    })
}

/// Moves the calling thread into the mount namespace `ip netns` uses (see
/// [`netns_mount_namespace`]) if it is not already there. Only for dedicated threads
/// (see [`on_dedicated_thread`]): it changes this thread's filesystem context for good.
fn enter_netns_mount_namespace() -> Result<()> {
    let ours = ns_id(
        &fs::File::open("/proc/thread-self/ns/mnt")
            .map_err(NetlinkError::io("opening this thread's mount namespace"))?,
    )
    .map_err(NetlinkError::io("inspecting this thread's mount namespace"))?;
    let (pid, target) = netns_mount_namespace();
    let Some(target) = target else {
        return Ok(());
    };
    let theirs = ns_id(&target).map_err(NetlinkError::io(format!(
        "inspecting the mount namespace of PID {pid}"
    )))?;
    if ours == theirs {
        return Ok(());
    }
    // setns into a mount namespace needs a filesystem context (root, cwd) of our own;
    // threads share theirs with the whole process until they unshare it.
    // SAFETY: plain syscalls on this thread with valid arguments.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(NetlinkError::last_os(
            "unsharing the filesystem context of a namespace thread",
        ));
    }
    // SAFETY: `target` is an open mount-namespace file.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(NetlinkError::last_os(format!(
            "entering the mount namespace of PID {pid}"
        )));
    }
    Ok(())
}

/// The mount namespace of PID 1 or, where that cannot be opened (a sandbox whose PID 1
/// is outside our user namespace, for instance), of our outermost ancestor that can:
/// whoever ran `ip netns exec` is an ancestor, and lives outside its private mount
/// namespace. Returns the PID (for messages) and the open namespace file; `None` if no
/// ancestor's can be opened, in which case our own is used.
fn netns_mount_namespace() -> (u32, Option<fs::File>) {
    let mut ancestors = Vec::new();
    let mut pid = std::process::id();
    // Bounded in case /proc says something absurd.
    while pid > 1 && ancestors.len() < 256 {
        ancestors.push(pid);
        pid = match parent_pid(pid) {
            Some(parent) => parent,
            None => break,
        };
    }
    ancestors.push(1);
    // Outermost first; our own process is last, so this settles on something.
    for &pid in ancestors.iter().rev() {
        if let Ok(file) = fs::File::open(format!("/proc/{pid}/ns/mnt")) {
            return (pid, Some(file));
        }
    }
    (std::process::id(), None)
}

/// `PPid` from `/proc/PID/status`.
fn parent_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// (device, inode) of an open namespace file: equal for the same namespace.
fn ns_id(file: &fs::File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Creates the namespace on this (dedicated) thread, in the current mount namespace.
/// Returns whether a namespace was created (false: one was already there).
fn create_here(path: &Path) -> Result<bool> {
    let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ensure_run_dir()?;
    if is_nsfs(path)? {
        return Ok(false);
    }
    let made_file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
    {
        Ok(_) => true,
        // An empty file left by an interrupted creation: mount onto it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(NetlinkError::Io {
                what: format!("creating {}", path.display()),
                source: e,
            })
        }
    };
    let result = (|| {
        // SAFETY: changes only this dedicated thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::last_os("creating a network namespace"));
        }
        // thread-self, not self: /proc/self/ns/net is the main thread's namespace.
        mount(
            Path::new("/proc/thread-self/ns/net"),
            path,
            None,
            libc::MS_BIND,
        )
        .map_err(NetlinkError::io(format!(
            "bind-mounting the new network namespace onto {}",
            path.display()
        )))
    })();
    if result.is_err() && made_file {
        let _ = fs::remove_file(path);
    }
    result.map(|()| true)
}

/// Makes `/run/netns` exist and be a shared mount point, exactly as iproute2 does, so
/// namespace mounts and unmounts propagate between mount namespaces (an unmount in one
/// frees the namespace everywhere).
fn ensure_run_dir() -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(NetlinkError::io(format!("creating {NETNS_RUN_DIR}"))(e)),
    }
    let mut made_mount_point = false;
    loop {
        match mount(
            Path::new(""),
            dir,
            Some("none"),
            libc::MS_SHARED | libc::MS_REC,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself once, then retry.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !made_mount_point => {
                mount(dir, dir, Some("none"), libc::MS_BIND | libc::MS_REC).map_err(
                    NetlinkError::io(format!("making {NETNS_RUN_DIR} a mount point")),
                )?;
                made_mount_point = true;
            }
            Err(e) => {
                return Err(NetlinkError::io(format!(
                    "making {NETNS_RUN_DIR} a shared mount"
                ))(e))
            }
        }
    }
}

/// Unmounts and removes the namespace file on this thread. Returns whether anything was
/// there.
fn delete_here(path: &Path) -> Result<bool> {
    let c_path = c_path(path)?;
    let mut found = false;
    // Normally one mount; more only if something stacked them. Bounded all the same.
    for _ in 0..8 {
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
            found = true;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not (or no longer) a mount point, or no such file.
            Some(libc::EINVAL) | Some(libc::ENOENT) => break,
            _ => {
                return Err(NetlinkError::io(format!("unmounting {}", path.display()))(
                    e,
                ))
            }
        }
    }
    match fs::remove_file(path) {
        Ok(()) => found = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NetlinkError::io(format!("removing {}", path.display()))(e)),
    }
    Ok(found)
}

/// Whether `path` is a namespace file (of any type); a missing file is not.
fn is_nsfs(path: &Path) -> Result<bool> {
    let c_path = c_path(path)?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(NetlinkError::io(format!("inspecting {}", path.display()))(
            e,
        ));
    }
    Ok(st.f_type as libc::c_long == NSFS_MAGIC)
}

/// Opens `path` if it is a network namespace file; `None` if it is missing or something
/// else (another namespace type, an unmounted placeholder, a regular file).
fn open_net_nsfs(path: &Path) -> Result<Option<OwnedFd>> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NetlinkError::io(format!("opening {}", path.display()))(e)),
    };
    // SAFETY: NS_GET_NSTYPE takes no argument; on a non-nsfs file it fails (ENOTTY).
    let ns_type = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ns_type != libc::CLONE_NEWNET {
        return Ok(None);
    }
    Ok(Some(OwnedFd::from(file)))
}

/// `mount(2)` without data.
fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = CString::new(source.as_os_str().as_bytes())?;
    let target = CString::new(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(CString::new).transpose()?;
    // SAFETY: valid NUL-terminated strings (or null for fstype); no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetlinkError::Io {
        what: format!("using path {}", path.display()),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"),
    })
}

/// Sets the calling thread's network namespace to `ns`. Only for dedicated threads.
pub(super) fn enter_netns(ns: &OwnedFd, what: &str) -> Result<()> {
    // SAFETY: `ns` is an open network-namespace file.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetlinkError::last_os(format!(
            "entering the network namespace {what}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_are_single_path_components() {
        for good in ["a", "sk-1-0-ep1", "x.y", &"n".repeat(255)] {
            assert!(validate_netns_name(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "nul\0", &"n".repeat(256)] {
            assert!(validate_netns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tests_run_in_the_root_netns() {
        assert_eq!(current_netns_name(), None);
    }

    #[test]
    fn netns_names_match_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("skein-netns-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Plain files stand in for the bind mounts: what matters is (dev, inode).
        for name in ["blue", "red"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let red = path_ns_id(&dir.join("red")).unwrap();
        let found = netns_name_in(&dir, red);
        let missing = netns_name_in(&dir, (u64::MAX, u64::MAX));
        let absent_dir = netns_name_in(&dir.join("absent"), red);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.as_deref(), Some("red"));
        assert_eq!(missing, None);
        assert_eq!(absent_dir, None);
    }

    #[test]
    fn own_netns_file_opens_and_a_regular_file_does_not() {
        assert!(open_net_nsfs(Path::new("/proc/thread-self/ns/net"))
            .unwrap()
            .is_some());
        assert!(open_net_nsfs(Path::new("/proc/thread-self/ns/mnt"))
            .unwrap()
            .is_none());
        assert!(open_net_nsfs(Path::new("/proc/self/status"))
            .unwrap()
            .is_none());
        assert!(open_net_nsfs(Path::new("/nonexistent/netns"))
            .unwrap()
            .is_none());
    }
}
