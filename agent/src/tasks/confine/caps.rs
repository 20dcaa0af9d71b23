//! Capabilities, the user switch and `no_new_privs`, applied by a forked child before
//! `execve`: raw syscalls only, nothing allocated (see `process::child`).
//!
//! The order is runc's: the bounding set is cut first (that needs `CAP_SETPCAP`, which the
//! child still has), then the user is switched (with `CAP_SETUID`/`CAP_SETGID` still in
//! the permitted set, so `--cap-drop SETUID --user 1000` works), then the permitted and
//! effective sets are cut. For root, `execve` makes the new permitted set the bounding
//! set, so the bounding set is what a task really keeps; a non-root user keeps nothing
//! (file capabilities are bounded by the same set, and refused under `no_new_privs`).

use std::io;

use manager::state::service::Security;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `CAP_KILL`, the one capability a task's init keeps: it signals a task that runs as
/// another user.
pub(crate) const CAP_KILL: u32 = 5;
/// Where the kernel says which capability numbers it knows.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// What a task's processes keep: a capability mask (bit N = capability N) and whether
/// `no_new_privs` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Privileges {
    pub(crate) caps: u64,
    pub(crate) no_new_privs: bool,
    /// The highest capability number this kernel knows.
    pub(crate) last_cap: u32,
}

impl Privileges {
    /// A service's tasks' privileges on this kernel.
    pub(crate) fn of(security: &Security) -> Privileges {
        Privileges {
            caps: security.capabilities(),
            no_new_privs: !security.new_privileges,
            last_cap: last_cap(),
        }
    }

    /// Removes every capability outside the mask from the bounding set. Needs
    /// `CAP_SETPCAP`; async-signal-safe.
    pub(crate) fn limit_bounding_set(&self) -> io::Result<()> {
        for cap in 0..=self.last_cap.min(63) {
            if self.caps & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                let error = io::Error::last_os_error();
                // EINVAL: a capability this kernel does not know.
                if error.raw_os_error() != Some(libc::EINVAL) {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Cuts the permitted and effective sets to the mask (to nothing for a non-root
    /// user, whose sets the user switch already emptied), empties the inheritable and
    /// ambient sets. Async-signal-safe.
    pub(crate) fn set_capabilities(&self) -> io::Result<()> {
        // SAFETY: geteuid takes nothing.
        let keep = if unsafe { libc::geteuid() } == 0 {
            self.caps & known_mask(self.last_cap)
        } else {
            0
        };
        let header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let word = |shift: u32| {
            let bits = (keep >> shift) as u32;
            CapData {
                effective: bits,
                permitted: bits,
                inheritable: 0,
            }
        };
        let data = [word(0), word(32)];
        // SAFETY: a v3 header and two data words, as capset(2) reads them.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: prctl with integer arguments. EINVAL before Linux 4.3 (no ambient set).
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        Ok(())
    }

    /// Sets `no_new_privs` if asked: `execve` of a setuid program or one with file
    /// capabilities then grants nothing. Async-signal-safe.
    pub(crate) fn set_no_new_privs(&self) -> io::Result<()> {
        if !self.no_new_privs {
            return Ok(());
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Switches to `uid`/`gid` with no supplementary groups. Async-signal-safe.
pub(crate) fn switch_user(uid: u32, gid: u32) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls; no list of groups.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))
    }
}

fn known_mask(last_cap: u32) -> u64 {
    if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    }
}

/// The highest capability number this kernel knows; 40 (Linux 5.9's) if unreadable.
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string(CAP_LAST_CAP)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The effective capability mask of process `pid` (`CapEff` in its status).
#[cfg(test)]
fn effective_caps(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_mask_covers_the_kernels_capabilities() {
        assert_eq!(known_mask(40), (1 << 41) - 1);
        assert_eq!(known_mask(63), u64::MAX);
        assert!(last_cap() >= 37, "{}", last_cap());
        assert!(effective_caps(std::process::id()).is_some());
    }
}
