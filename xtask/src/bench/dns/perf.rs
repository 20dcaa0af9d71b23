//! Running `dnsperf` against one server inside a host and reading what it prints: the
//! completed queries per second of a saturating run, and every query's latency of a
//! rate-limited one (`-v` prints one line per query; dnsperf has no percentiles).

use std::{process::Stdio, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use xtask::testbed::Host;

/// The CPU dnsperf is pinned to; the servers get the other one (see `dns.rs`).
pub(super) const CLIENT_CPU: &str = "0";

/// What one dnsperf run gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Run {
    pub(super) sent: u64,
    pub(super) completed: u64,
    pub(super) qps: f64,
    /// Per-query latencies (only with `verbose`), seconds.
    pub(super) latencies: Vec<f64>,
    /// Response codes that were not NOERROR, as dnsperf counts them ("NXDOMAIN 3").
    pub(super) other_rcodes: Vec<String>,
    /// Average response size, bytes: the servers must answer alike for a fair rate.
    pub(super) response_bytes: u64,
    /// How busy [`CLIENT_CPU`] was over the run, 0–1: near 1, the rate is dnsperf's limit
    /// rather than the server's.
    pub(super) client_cpu_busy: Option<f64>,
}

/// One dnsperf run of `seconds` in `host` against `addr:port` with `queries` (a data
/// file), `clients` sockets, at most `outstanding` in flight, at `rate` queries/s if given;
/// `verbose` collects every query's latency.
#[allow(clippy::too_many_arguments)]
pub(super) fn dnsperf(
    host: &Host,
    port: u16,
    queries: &std::path::Path,
    seconds: u32,
    clients: u32,
    outstanding: u32,
    rate: Option<u64>,
    verbose: bool,
) -> Result<Run> {
    let mut cmd = host.command("taskset");
    cmd.args(["-c", CLIENT_CPU, "timeout", &format!("{}", seconds + 15)])
        .args(["dnsperf", "-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-c", &clients.to_string()])
        .args(["-q", &outstanding.to_string(), "-T", "1", "-t", "2"]);
    if let Some(rate) = rate {
        cmd.args(["-Q", &rate.to_string()]);
    }
    if verbose {
        cmd.arg("-v");
    }
    let client_cpu = format!("cpu{CLIENT_CPU}");
    let before = crate::bench::cpu_ticks(&client_cpu).ok();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let after = crate::bench::cpu_ticks(&client_cpu).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf against port {port} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    let mut run = parse(&text)?;
    if let (Some(before), Some(after)) = (before, after) {
        let (busy0, total0) = crate::bench::busy_and_total(&before);
        let (busy1, total1) = crate::bench::busy_and_total(&after);
        run.client_cpu_busy =
            (total1 > total0).then(|| (busy1 - busy0) as f64 / (total1 - total0) as f64);
    }
    Ok(run)
}

/// Reads dnsperf's statistics (and, for `-v`, its `> RCODE name type latency` lines).
pub(super) fn parse(text: &str) -> Result<Run> {
    let mut run = Run::default();
    let mut seen_qps = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("> ") {
            if let Some(latency) = rest.rsplit(' ').next().and_then(|l| l.parse().ok()) {
                run.latencies.push(latency);
            }
        } else if let Some(v) = line.strip_prefix("Queries sent:") {
            run.sent = first_number(v)?;
        } else if let Some(v) = line.strip_prefix("Queries completed:") {
            run.completed = first_number(v)?;
        } else if let Some(v) = line.strip_prefix("Queries per second:") {
            run.qps = v.trim().parse().context("queries per second")?;
            seen_qps = true;
        } else if let Some(v) = line.strip_prefix("Average packet size:") {
            if let Some(r) = v.split("response").nth(1) {
                run.response_bytes = first_number(r)?;
            }
        } else if let Some(v) = line.strip_prefix("Response codes:") {
            run.other_rcodes = v
                .split(',')
                .map(|c| c.trim().split(" (").next().unwrap_or_default().to_owned())
                .filter(|c| !c.starts_with("NOERROR") && !c.is_empty())
                .collect();
        }
    }
    if !seen_qps {
        bail!("dnsperf printed no statistics:\n{text}");
    }
    Ok(run)
}

fn first_number(v: &str) -> Result<u64> {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no number in {v:?}"))
}

/// The `q` quantile of `samples` (nearest rank), sorting them.
pub(super) fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

/// CPU time (user + system, all threads) `pid` has used so far.
pub(super) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks.
    let after = stat
        .rsplit_once(')')
        .context("stat without a command name")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "DNS Performance Testing Tool\nVersion 2.10.0\n\n\
        > NOERROR web A 0.000150\n> NOERROR db A 0.000068\n> NXDOMAIN x A 0.002000\n\
        [Status] Testing complete (time limit)\n\nStatistics:\n\n\
        \x20 Queries sent:         96600\n\
        \x20 Queries completed:    96590 (99.99%)\n\
        \x20 Queries lost:         10 (0.01%)\n\n\
        \x20 Response codes:       NOERROR 96589 (100.00%), NXDOMAIN 1 (0.00%)\n\
        \x20 Average packet size:  request 20, response 36\n\
        \x20 Run time (s):         2.000280\n\
        \x20 Queries per second:   48293.238947\n\n\
        \x20 Average Latency (s):  0.001649 (min 0.000014, max 0.010574)\n";

    #[test]
    fn reads_statistics_and_latencies() {
        let mut run = parse(OUTPUT).unwrap();
        assert_eq!((run.sent, run.completed), (96600, 96590));
        assert!((run.qps - 48293.238947).abs() < 1e-6);
        assert_eq!(run.other_rcodes, vec!["NXDOMAIN 1".to_owned()]);
        assert_eq!(run.response_bytes, 36);
        assert_eq!(run.latencies.len(), 3);
        assert_eq!(quantile(&mut run.latencies, 0.99), Some(0.002));
        assert_eq!(quantile(&mut run.latencies, 0.5), Some(0.000150));
        assert!(parse("dnsperf: error\n").is_err());
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        let before = cpu_time(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        assert!(cpu_time(std::process::id()).unwrap() > before);
    }
}
