//! `cargo xtask bench [<what>]`: figures measured side by side with their reference where
//! there is one, printed for the issue notes; never asserted (the machine is shared).
//!
//! Layout: one module per bench; each bench's `run` prints its own lines and returns its
//! figures ([`report::Figure`]). `all.rs` runs every bench (no subcommand) and `report.rs`
//! makes the one table, the markdown table and the JSON report of such a run.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;

mod all;
pub(crate) mod dns;
pub(crate) mod gossip;
mod gossip_junk;
pub(crate) mod mesh;
pub(crate) mod mesh_cost;
pub(crate) mod mesh_local;
pub(crate) mod mesh_vip;
pub(crate) mod overlay;
pub(crate) mod pktgen;
pub(crate) mod rawbpf;
pub(crate) mod report;
pub(crate) mod services;
pub(crate) mod wrk;

/// `cargo xtask bench`: every bench (no subcommand), one bench, or the table of a report.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchCommand {
    #[command(subcommand)]
    what: Option<Bench>,
    #[command(flatten)]
    all: all::Args,
}

#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// DNS server vs dnsmasq and Knot (dnsperf), and how fast answers follow the state.
    Dns(dns::Args),
    /// Control plane: change propagation, failure detection, false downs, RSS, bandwidth.
    Gossip(gossip::Args),
    /// Routing mesh vs a kernel VXLAN + nftables DNAT reference (Swarm without IPVS).
    Mesh(mesh::Args),
    /// `curl localhost:P` (socket hooks) vs the local task's own address, wrk side by side.
    MeshLocal(mesh_local::Args),
    /// Overlay dataplane vs the kernel VXLAN + bridge reference, same testbed, side by side.
    Overlay(overlay::Args),
    /// Services: create → converged, and a host's death → its tasks running elsewhere.
    Services(services::Args),
    /// Endpoint → service VIP vs endpoint → task IP vs nftables DNAT in the client (wrk).
    MeshVip(mesh_vip::Args),
    /// The routing mesh's XDP cost per packet (conntrack hit, new flow) vs a pass-through.
    MeshCost {
        /// Runs of each case.
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// Print the markdown table (for the README) of a report `cargo xtask bench` wrote.
    Table {
        /// The JSON report [default: target/bench/latest.json in the workspace].
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
    },
}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command.what {
        None => all::run(command.all),
        Some(Bench::Table { from }) => {
            let from = from.unwrap_or_else(all::default_json);
            let text = std::fs::read_to_string(&from)
                .with_context(|| format!("reading {}", from.display()))?;
            let report: report::Report = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bench report", from.display()))?;
            print!("{}", report.markdown());
            Ok(())
        }
        Some(bench) => figures(bench).map(|_| ()),
    }
}

/// Runs one bench (which prints its own lines) and returns its figures.
pub(crate) fn figures(bench: Bench) -> anyhow::Result<Vec<report::Figure>> {
    match bench {
        Bench::Dns(args) => dns::run(args),
        Bench::Gossip(args) => gossip::run(args),
        Bench::Mesh(args) => mesh::run(args),
        Bench::MeshLocal(args) => mesh_local::run(args),
        Bench::Overlay(args) => overlay::run(args),
        Bench::Services(args) => services::run(args),
        Bench::MeshVip(args) => mesh_vip::run(args),
        Bench::MeshCost { runs } => mesh_cost::run(runs).map(|c| c.figures()),
        Bench::Table { .. } => anyhow::bail!("`bench table` prints a report; it measures nothing"),
    }
}

/// Points `SKEIN_BIN` at `skein` built as users deploy it, in release mode, building it
/// first: the benches run it as the agents and as the servers of both sides (`skein
/// whoami`), and an unoptimised whoami or DNS server would spend so much per request that
/// it, not the path under test, would set the figures. `SKEIN_BIN`, when set, is used as
/// it is.
pub(crate) fn use_release_binary() -> anyhow::Result<()> {
    if std::env::var_os("SKEIN_BIN").is_some() {
        return Ok(());
    }
    let root = crate::build_ebpf::workspace_root();
    xtask::toolchain::say(
        "building the skein binary in release mode (the first time takes minutes)",
    );
    xtask::toolchain::run_checked(
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--release", "--package", "agent", "--bin", "skein"]),
    )?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    std::env::set_var("SKEIN_BIN", target.join("release/skein"));
    Ok(())
}

/// A directory a bench's tasks can see, for files it hands them (a download's blob, a
/// health check's flag file). The testbed's own run directory is under `/run`, which a
/// task's mount namespace covers with an empty tmpfs (as `/tmp`, `/var/tmp`, ...: see
/// `agent/src/tasks/confine/`), so a task would find nothing there. This one is under the
/// workspace's `target/bench/`, named after the testbed, and removed on drop.
pub(crate) struct TaskVisibleDir(PathBuf);

impl TaskVisibleDir {
    pub(crate) fn new(bed: &xtask::testbed::Testbed, name: &str) -> anyhow::Result<Self> {
        let dir = crate::build_ebpf::workspace_root()
            .join("target")
            .join("bench")
            .join(format!("{}-{name}", bed.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TaskVisibleDir(dir))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TaskVisibleDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `q` quantile (nearest rank) of durations, in milliseconds; None without samples.
/// The first eight time fields of `/proc/stat`'s line `name` (`cpu` for all CPUs, `cpu0`
/// for one), in clock ticks: user nice system idle iowait irq softirq steal (guest time is
/// already in user).
pub(crate) fn cpu_ticks(name: &str) -> anyhow::Result<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} line in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("a /proc/stat field"))
        .collect::<anyhow::Result<_>>()?;
    fields
        .get(..8)
        .and_then(|f| f.try_into().ok())
        .with_context(|| format!("short {name} line in /proc/stat"))
}

/// Busy (all but idle and iowait) and total ticks of [`cpu_ticks`]' fields.
pub(crate) fn busy_and_total(f: &[u64; 8]) -> (u64, u64) {
    let total: u64 = f.iter().sum();
    (total - f[3] - f[4], total)
}

pub(crate) fn quantile_ms(samples: &[Duration], q: f64) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|d| d.as_secs_f64() * 1e3)
}

/// p50 and p99 of `samples` as two figures named `<name>, p50` and `<name>, p99` (ms,
/// lower is better).
pub(crate) fn add_percentiles(figs: &mut report::Figures, name: &str, samples: &[Duration]) {
    for (label, q) in [("p50", 0.50), ("p99", 0.99)] {
        figs.add(
            &format!("{name}, {label}"),
            quantile_ms(samples, q),
            "ms",
            report::Better::Lower,
        );
    }
}

/// p50 and p99 of durations, as "p50 X ms, p99 Y ms, max Z ms (n)".
pub(crate) fn percentiles(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".to_owned();
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_none_without_samples() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(quantile_ms(&samples, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&samples, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&[ms(7)], 0.99), Some(7.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
        let mut figs = report::Figures::new("b");
        add_percentiles(&mut figs, "t", &[]);
        let figs = figs.into_vec();
        assert_eq!(figs.len(), 2);
        assert!(
            figs.iter().all(|f| f.value.is_none()),
            "no samples: not measured"
        );
    }

    #[test]
    fn cpu_lines_of_proc_stat_are_read_by_name() {
        let all = cpu_ticks("cpu").unwrap();
        let first = cpu_ticks("cpu0").unwrap();
        let (busy, total) = busy_and_total(&all);
        assert!(busy <= total && total > 0, "{all:?}");
        assert!(
            busy_and_total(&first).1 <= total,
            "one CPU within all: {first:?} {all:?}"
        );
        assert!(cpu_ticks("cpu99999").is_err());
    }
}
