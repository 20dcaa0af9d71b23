//! Makes sure the agent's pin directory is on a bpffs, mounting one if needed.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt, path::Path};

/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpffs.
pub(super) fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Ensures `dir` exists on a bpffs. Under `/sys/fs/bpf` the standard mount point is
/// used (sysfs does not allow creating directories, so the bpffs must be mounted on
/// `/sys/fs/bpf` itself); anywhere else a bpffs is mounted on `dir`.
///
/// A mount made here lives in the agent's mount namespace: under `ip netns exec`, that
/// namespace (and so the pins) dies with the agent. Deployments that run agents that
/// way mount the bpffs beforehand, outside, as the testbed does.
pub(super) fn prepare(dir: &Path) -> io::Result<()> {
    let sys_bpf = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys_bpf) {
        if !is_bpffs(sys_bpf)? {
            mount_bpffs(sys_bpf)?;
        }
        fs::create_dir_all(dir)?;
    } else {
        fs::create_dir_all(dir)?;
        if !is_bpffs(dir)? {
            mount_bpffs(dir)?;
        }
    }
    if is_bpffs(dir)? {
        Ok(())
    } else {
        Err(io::Error::other("still not a bpffs after mounting one"))
    }
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = %target.display(), "mounted a bpffs");
    Ok(())
}
