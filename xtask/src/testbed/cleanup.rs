//! Removing what a run made — its processes, namespaces, mounts and run directory — shared by
//! [`Testbed`](super::Testbed)'s `Drop` and by [`sweep_dead_runs`].
//!
//! Everything a run makes is named after its prefix `sk-<pid>-<n>`, so cleanup finds it by name
//! alone: nothing here needs the run's own bookkeeping, which dies with a killed test process.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fmt, fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::RUN_ROOT;

/// Where `ip netns` keeps its named namespaces (bind mounts of nsfs files).
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Name of the file in a run directory that says which process owns the run.
pub(crate) const OWNER_FILE: &str = "owner";

/// How long cleanup waits for SIGKILLed processes to be gone before deleting their namespaces.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// What [`sweep_dead_runs`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Dead runs found (each a `sk-<pid>-<n>` prefix).
    pub runs: usize,
    /// Network namespaces deleted.
    pub namespaces: usize,
    /// Mounts (bpffs) unmounted.
    pub mounts: usize,
    /// Processes killed inside the dead runs' namespaces.
    pub processes: usize,
    /// Socket hooks at the cgroup root detached because their namespace is gone.
    pub socket_hooks: usize,
    /// Task cgroups of the dead runs' agents removed.
    pub cgroups: usize,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dead testbed runs: removed {} namespaces and {} mounts, killed {} processes",
            self.runs, self.namespaces, self.mounts, self.processes
        )?;
        if self.socket_hooks > 0 {
            write!(f, "; detached {} orphaned socket hooks", self.socket_hooks)?;
        }
        if self.cgroups > 0 {
            write!(f, "; removed {} task cgroups", self.cgroups)?;
        }
        Ok(())
    }
}

impl std::ops::AddAssign for SweepReport {
    fn add_assign(&mut self, other: Self) {
        self.runs += other.runs;
        self.namespaces += other.namespaces;
        self.mounts += other.mounts;
        self.processes += other.processes;
        self.socket_hooks += other.socket_hooks;
        self.cgroups += other.cgroups;
    }
}

/// Where an agent in a named network namespace keeps its socket and its state by
/// default: `<root>/<namespace>` (the agent's `config::paths`).
const AGENT_DIRS: [&str; 2] = ["/run/skein", "/var/lib/skein"];

/// Removes what dead runs left behind: every namespace in `/run/netns` and every directory in
/// `/run/skein-test` named `sk-<pid>-<n>...` whose owner process is gone (or is a different
/// process that reused the PID) loses its processes, namespaces, mounts, run directory and
/// its agents' socket and state directories.
///
/// Safe while other runs are live, in this process or others: a run whose owner is alive and
/// matches the start time it recorded is never touched, nor is anything not named `sk-<pid>-`.
/// A run whose PID is alive but that has no owner record at all is left alone too, since it
/// cannot be told from a run still being set up.
pub fn sweep_dead_runs() -> Result<SweepReport> {
    // prefix -> owner pid
    let mut runs: BTreeMap<String, u32> = BTreeMap::new();
    for name in list_dir_names(Path::new(NETNS_DIR))? {
        if let Some((pid, prefix)) = parse_run_prefix(&name) {
            runs.insert(prefix.to_owned(), pid);
        }
    }
    // Agents' own per-namespace directories (socket, state) are named after the host's
    // namespace, so they carry the run's prefix too.
    for root in AGENT_DIRS {
        for name in list_dir_names(Path::new(root))? {
            if let Some((pid, prefix)) = parse_run_prefix(&name) {
                runs.insert(prefix.to_owned(), pid);
            }
        }
    }
    for name in list_dir_names(Path::new(RUN_ROOT))? {
        // Only the run directory itself, named exactly by its prefix.
        if let Some((pid, prefix)) = parse_run_prefix(&name) {
            if prefix == name {
                runs.insert(name, pid);
            }
        }
    }

    let owners: BTreeMap<&str, Option<u64>> = runs
        .keys()
        .map(|prefix| (prefix.as_str(), read_owner_start_time(&run_dir(prefix))))
        .collect();

    let mut report = SweepReport::default();
    let mut errors = Vec::new();
    for (prefix, &pid) in &runs {
        if run_is_live(prefix, pid, &owners) {
            continue;
        }
        let removal = remove_run(prefix);
        report += removal.report;
        report.runs += 1;
        errors.extend(removal.errors);
    }
    // After the runs' mounts are gone: hooks pinned there have detached with them.
    match super::sock_sweep::detach_orphaned_socket_hooks() {
        Ok(n) => report.socket_hooks = n,
        Err(error) => errors.push(format!("socket hooks: {error:#}")),
    }
    if !errors.is_empty() {
        bail!(
            "sweeping dead testbed runs ({report}) failed: {}",
            errors.join("; ")
        );
    }
    Ok(report)
}

/// Whether the run `prefix` (owned by `pid`) belongs to a live process.
fn run_is_live(prefix: &str, pid: u32, owners: &BTreeMap<&str, Option<u64>>) -> bool {
    let Some(stat) = read_proc_stat(pid) else {
        return false;
    };
    if stat.is_dead() {
        return false;
    }
    if let Some(Some(recorded)) = owners.get(prefix) {
        return *recorded == stat.start_time;
    }
    // No record for this run (its directory is being created, or is gone while a namespace
    // remains): the records of other runs with the same PID decide; with none, it cannot be
    // told from a run being set up, so it is left alone.
    let mut recorded = owners.iter().filter_map(|(other, start)| {
        let (other_pid, _) = parse_run_prefix(other)?;
        if other_pid == pid {
            *start
        } else {
            None
        }
    });
    match recorded.next() {
        None => true,
        Some(first) => first == stat.start_time || recorded.any(|s| s == stat.start_time),
    }
}

/// What [`remove_run`] did, and what it could not do.
#[derive(Debug, Default)]
pub(crate) struct Removal {
    pub report: SweepReport,
    pub errors: Vec<String>,
}

/// The run directory of prefix `prefix`.
pub(crate) fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

/// Removes everything named after run `prefix`: SIGKILLs the processes inside its namespaces,
/// deletes the namespaces, unmounts what is mounted under its run directory (deepest first)
/// and removes the directory. Never fails half-way: it does all it can and lists the rest.
/// Things already gone (another sweep got there first) are not errors.
pub(crate) fn remove_run(prefix: &str) -> Removal {
    let mut removal = Removal::default();
    let namespaces = match run_namespaces(prefix) {
        Ok(namespaces) => namespaces,
        Err(e) => {
            removal.errors.push(format!("{e:#}"));
            Vec::new()
        }
    };

    // Kill first: a namespace's processes keep it (and its interfaces, BPF links and mounts)
    // alive after its name is deleted.
    match kill_processes_in(&namespaces) {
        Ok(killed) => removal.report.processes += killed,
        Err(e) => removal.errors.push(format!("{e:#}")),
    }
    for ns in &namespaces {
        match delete_netns(ns) {
            Ok(true) => removal.report.namespaces += 1,
            Ok(false) => {}
            Err(e) => removal.errors.push(format!("{e:#}")),
        }
    }

    for root in AGENT_DIRS {
        let own = format!("{prefix}-");
        let names = list_dir_names(Path::new(root)).unwrap_or_default();
        for name in names.into_iter().filter(|n| n.starts_with(&own)) {
            let path = Path::new(root).join(name);
            // Its agent's task groups, found by the node ID the directory holds.
            if let Some(node_id) = super::cgroup_sweep::node_id_of(&path) {
                match super::cgroup_sweep::remove_node_groups(&node_id) {
                    Ok(n) => removal.report.cgroups += n,
                    Err(e) => removal.errors.push(e),
                }
            }
            if let Err(e) = fs::remove_dir_all(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    removal
                        .errors
                        .push(format!("removing {}: {e}", path.display()));
                }
            }
        }
    }

    let shared = Path::new(super::SHARED_ROOT).join(prefix);
    if let Err(e) = fs::remove_dir_all(&shared) {
        if e.kind() != io::ErrorKind::NotFound {
            removal
                .errors
                .push(format!("removing {}: {e}", shared.display()));
        }
    }

    let dir = run_dir(prefix);
    match mounts_under(&dir) {
        Ok(mounts) => {
            for mount in mounts {
                match unmount(&mount) {
                    Ok(true) => removal.report.mounts += 1,
                    Ok(false) => {}
                    Err(e) => removal.errors.push(format!("{e:#}")),
                }
            }
        }
        Err(e) => removal.errors.push(format!("{e:#}")),
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => removal
            .errors
            .push(format!("removing {}: {e}", dir.display())),
    }
    removal
}

/// Namespaces in `/run/netns` that belong to run `prefix`: its own (`<prefix>-h1`, ...) and
/// those an agent made (`<prefix>-h1-...`). Ordered so the agents' come first and the bridge
/// last, mirroring how they were built.
fn run_namespaces(prefix: &str) -> Result<Vec<String>> {
    let own = format!("{prefix}-");
    let mut names: Vec<String> = list_dir_names(Path::new(NETNS_DIR))?
        .into_iter()
        .filter(|name| name.starts_with(&own))
        .collect();
    let rank = |name: &str| {
        let rest = &name[own.len()..];
        if rest == "ul" {
            3
        } else if rest == "client" {
            1
        } else if rest
            .strip_prefix('h')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            2
        } else {
            0
        }
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    Ok(names)
}

/// SIGKILLs every process whose network namespace is one of `namespaces` and waits (briefly)
/// until they are gone or zombies. Returns how many it killed.
fn kill_processes_in(namespaces: &[String]) -> Result<usize> {
    let mut targets: HashSet<(u64, u64)> = HashSet::new();
    for ns in namespaces {
        match fs::metadata(Path::new(NETNS_DIR).join(ns)) {
            Ok(meta) => {
                targets.insert((meta.dev(), meta.ino()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("reading namespace {ns}: {e}"),
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in all_pids()? {
        // Never ourselves or init, whatever namespace they are in.
        if pid == me || pid == 1 {
            continue;
        }
        let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue; // gone, a zombie, or a kernel thread
        };
        if targets.contains(&(meta.dev(), meta.ino())) {
            // SAFETY: kill(2) with a PID just read from /proc; at worst the process is gone.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while killed
        .iter()
        .any(|&pid| read_proc_stat(pid).is_some_and(|s| !s.is_dead()))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
    Ok(killed.len())
}

/// Deletes the named namespace the way `ip netns del` does (detach its bind mount, remove the
/// file), without a fork. Returns whether it was there.
fn delete_netns(name: &str) -> Result<bool> {
    let path = Path::new(NETNS_DIR).join(name);
    let existed = path.exists();
    // EINVAL (not a mount point) and ENOENT (gone) are fine: the unlink below decides.
    let _ = umount_detach(&path);
    match fs::remove_file(&path) {
        Ok(()) => Ok(existed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => bail!("deleting namespace {name}: {e}"),
    }
}

/// Detaches the mount at `path`; returns whether something was mounted there.
fn unmount(path: &Path) -> Result<bool> {
    match umount_detach(path) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(false),
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
}

fn umount_detach(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mount points at or below `dir` in this process's mount namespace, deepest first (and, for
/// mounts stacked on one path, topmost first), so each unmount uncovers the next.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(dir))
        .collect();
    // mountinfo lists parents before children and older mounts before newer ones; reversing
    // puts children before parents and the top of a stack first. A stable sort by depth keeps
    // that order among equals.
    mounts.reverse();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    Ok(mounts)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8); // mountinfo escapes single bytes: at most \377
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file names in `dir`, or none if it does not exist.
fn list_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

fn all_pids() -> Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Splits a name of the form `sk-<pid>-<n>` or `sk-<pid>-<n>-<anything>` into the owner PID
/// and the run prefix `sk-<pid>-<n>`; anything else is not ours.
pub(crate) fn parse_run_prefix(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("sk-")?;
    let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after_pid = rest[pid_len..].strip_prefix('-')?;
    let n_len = after_pid.bytes().take_while(u8::is_ascii_digit).count();
    let tail = &after_pid[n_len..];
    if pid_len == 0 || n_len == 0 || !(tail.is_empty() || tail.starts_with('-')) {
        return None;
    }
    let pid = rest[..pid_len].parse().ok()?;
    Some((pid, &name[..name.len() - tail.len()]))
}

/// The parts of `/proc/<pid>/stat` that tell one process from another with the same PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `Z`, ...
    pub state: char,
    /// Field 22: start time in clock ticks after boot; with the PID, unique for the boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process has exited (a zombie waiting to be reaped counts as exited).
    pub(super) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub(crate) fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_proc_stat(line: &str) -> Option<ProcStat> {
    let after_comm = &line[line.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 lie between the state (field 3) and the start time (field 22).
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Writes the owner record of a run: this process's PID and start time, and the test's label
/// for people looking around. Written to a temporary file and renamed, so a concurrent sweep
/// never reads half a record.
pub(crate) fn write_owner_file(run_dir: &Path, label: &str) -> Result<()> {
    let pid = std::process::id();
    let stat = read_proc_stat(pid).context("reading this process's /proc/<pid>/stat")?;
    let tmp = run_dir.join(format!("{OWNER_FILE}.tmp"));
    fs::write(
        &tmp,
        format!("pid {pid}\nstart_time {}\nlabel {label}\n", stat.start_time),
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, run_dir.join(OWNER_FILE))
        .with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// The start time recorded in a run directory's owner file, if it has a readable one.
fn read_owner_start_time(run_dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(run_dir.join(OWNER_FILE)).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("start_time "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefixes_are_recognised_exactly() {
        assert_eq!(parse_run_prefix("sk-12-3"), Some((12, "sk-12-3")));
        assert_eq!(parse_run_prefix("sk-12-3-h1"), Some((12, "sk-12-3")));
        assert_eq!(parse_run_prefix("sk-12-30-h1-ep"), Some((12, "sk-12-30")));
        for other in [
            "sk-12",
            "sk-12-",
            "sk--3",
            "sk-12-3x",
            "sk-a-3",
            "skein-1-2",
            "xsk-1-2",
            "sk-12-3_h",
        ] {
            assert_eq!(parse_run_prefix(other), None, "{other}");
        }
    }

    #[test]
    fn proc_stat_is_parsed_after_the_last_parenthesis() {
        let line =
            "4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        let me = read_proc_stat(std::process::id()).expect("own stat");
        assert!(!me.is_dead());
        assert!(me.start_time > 0);
    }

    #[test]
    fn sweep_report_reads_as_a_sentence() {
        let report = SweepReport {
            runs: 2,
            namespaces: 5,
            mounts: 3,
            processes: 1,
            socket_hooks: 0,
            cgroups: 0,
        };
        assert_eq!(
            report.to_string(),
            "2 dead testbed runs: removed 5 namespaces and 3 mounts, killed 1 processes"
        );
        let report = SweepReport {
            cgroups: 4,
            ..report
        };
        assert!(report.to_string().ends_with("; removed 4 task cgroups"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b\\c"), r"/run/a b\\c");
        assert_eq!(unescape_mountinfo(r"/x\011y"), "/x\ty");
    }
}
