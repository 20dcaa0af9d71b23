//! Socket hooks left by dead runs: every agent attaches Skein's cgroup socket hooks
//! (`sock_connect4` …) at the machine's cgroup v2 root, each instance acting for one
//! network namespace (the cookie in its own `SOCK_CONFIG` map). The kernel allows 64
//! programs per cgroup and attach type, so hooks that outlive their run (pins on a bpffs
//! that survived) would break CI after a few runs.
//!
//! A hook is orphaned when the namespace it acts for no longer exists: it can never act
//! again (cookies are never reused). Every live namespace is held by a process
//! (`/proc/*/ns/net`) or a bind mount (`/run/netns/*`); a live agent's namespace, killed
//! or not, is among them, so its hooks are never touched. Found through `bpftool`.

use std::{
    collections::BTreeSet,
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The programs' names (the kernel keeps 15 characters; bpftool shows the full name
/// when the object carries BTF).
const HOOK_NAMES: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

/// Whether `name` (as bpftool shows it) is one of [`HOOK_NAMES`], possibly truncated.
fn is_hook(name: &str) -> bool {
    name.len() >= "sock_connect4".len() && HOOK_NAMES.iter().any(|h| h.starts_with(name))
}

/// One of Skein's socket hooks at a cgroup, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketHook {
    /// The bpf_link's ID.
    pub link_id: u64,
    /// The namespace it acts for (its `SOCK_CONFIG`).
    pub cookie: u64,
}

/// Every Skein socket hook attached to a cgroup (detached links still pinned somewhere
/// are left out).
pub fn socket_hooks() -> Result<Vec<SocketHook>> {
    let links = bpftool(&["link", "show"])?;
    let mut hooks = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        // A detached link (its pin still held somewhere) has no cgroup any more.
        if link["type"] != "cgroup" || link["cgroup_id"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let (Some(link_id), Some(prog_id)) = (link["id"].as_u64(), link["prog_id"].as_u64()) else {
            continue;
        };
        if let Some(cookie) = hook_cookie(prog_id)? {
            hooks.push(SocketHook { link_id, cookie });
        }
    }
    Ok(hooks)
}

/// Detaches every Skein socket hook whose namespace is gone; how many.
pub(crate) fn detach_orphaned_socket_hooks() -> Result<usize> {
    let hooks = socket_hooks()?;
    if hooks.is_empty() {
        return Ok(0);
    }
    let live = live_netns_cookies();
    let orphans: Vec<u64> = hooks
        .iter()
        .filter(|h| h.cookie != 0 && !live.contains(&h.cookie))
        .map(|h| h.link_id)
        .collect();
    let mut detached = 0;
    for id in &orphans {
        let out = Command::new("bpftool")
            .args(["link", "detach", "id", &id.to_string()])
            .output()
            .context("running bpftool")?;
        if out.status.success() {
            detached += 1;
            continue;
        }
        let said = String::from_utf8_lossy(&out.stderr);
        // Gone since we listed it (its agent or another sweep removed it): nothing to do.
        if !said.contains("No such file or directory") {
            bail!("bpftool link detach id {id}: {}", said.trim());
        }
    }
    Ok(detached)
}

/// The namespace cookie a Skein socket hook acts for, or `None` if the program is not one.
fn hook_cookie(prog_id: u64) -> Result<Option<u64>> {
    // Programs, maps and links of other agents come and go while we read (agents start
    // and stop beside us): one gone between two reads is simply not a hook any more.
    let Some(prog) = bpftool_object(&["prog", "show", "id", &prog_id.to_string()])? else {
        return Ok(None);
    };
    let name = prog["name"].as_str().unwrap_or_default();
    if !is_hook(name) {
        return Ok(None);
    }
    for map_id in prog["map_ids"].as_array().into_iter().flatten() {
        let Some(map_id) = map_id.as_u64() else {
            continue;
        };
        let Some(map) = bpftool_object(&["map", "show", "id", &map_id.to_string()])? else {
            return Ok(None);
        };
        if map["name"] != "SOCK_CONFIG" {
            continue;
        }
        let Some(entry) = bpftool_object(&[
            "map",
            "lookup",
            "id",
            &map_id.to_string(),
            "key",
            "0",
            "0",
            "0",
            "0",
        ])?
        else {
            return Ok(None);
        };
        return Ok(Some(value_u64(&entry["value"]).unwrap_or(0)));
    }
    Ok(None)
}

/// A little-endian u64 from bpftool's byte list (`["0x2a", "0x00", …]`).
fn value_u64(value: &Value) -> Option<u64> {
    let bytes: Vec<u8> = value
        .as_array()?
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn bpftool(args: &[&str]) -> Result<Value> {
    bpftool_object(args)?.with_context(|| format!("bpftool {}: no such object", args.join(" ")))
}

/// `bpftool -j ARGS`, or `None` if the object asked for does not exist (any more).
fn bpftool_object(args: &[&str]) -> Result<Option<Value>> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        // With -j, bpftool reports errors as {"error": "..."} on stdout.
        let said = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if said.contains("No such file or directory") {
            return Ok(None);
        }
        bail!("bpftool {}: {said}", args.join(" "));
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .with_context(|| format!("bpftool {} output", args.join(" ")))
}

/// The cookies of every network namespace a process or a bind mount holds.
fn live_netns_cookies() -> BTreeSet<u64> {
    let mut paths: Vec<PathBuf> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"))
        .collect();
    paths.extend(
        fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let mut seen = BTreeSet::new();
    let mut cookies = BTreeSet::new();
    for path in paths {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if let Ok(cookie) = netns_cookie(&path) {
            cookies.insert(cookie);
        }
    }
    cookies
}

/// `SO_NETNS_COOKIE` of the namespace at `path`, read on a thread that enters it.
pub fn netns_cookie(path: &Path) -> Result<u64> {
    let ns = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<u64> {
                // SAFETY: plain syscalls on descriptors we own; this thread alone moves.
                unsafe {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if fd < 0 {
                        bail!("socket: {}", std::io::Error::last_os_error());
                    }
                    let mut cookie: u64 = 0;
                    let mut len = size_of::<u64>() as libc::socklen_t;
                    let rc = libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_NETNS_COOKIE,
                        std::ptr::addr_of_mut!(cookie).cast(),
                        &mut len,
                    );
                    libc::close(fd);
                    if rc != 0 {
                        bail!("SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
                    }
                    Ok(cookie)
                }
            })
            .join()
            .unwrap_or_else(|_| bail!("the namespace thread panicked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpftool_bytes_read_as_a_little_endian_u64() {
        let v: Value =
            serde_json::json!(["0x2a", "0x01", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]);
        assert_eq!(value_u64(&v), Some(0x012a));
        assert_eq!(value_u64(&serde_json::json!(["0x01"])), None);
    }

    #[test]
    fn hook_names_match_whole_or_as_the_kernel_truncates_them() {
        assert!(is_hook("sock_getpeername4"));
        assert!(is_hook("sock_getpeernam"));
        assert!(is_hook("sock_connect4"));
        assert!(!is_hook("sock_"));
        assert!(!is_hook("tc_host_egress"));
    }
}
