//! One `wrk` runner for every HTTP bench: requests/s, p99 latency, errors, and the whole
//! machine's busy CPU time per request (`/proc/stat`, so client and servers are in it).

use std::process::Command;

use anyhow::{bail, Context, Result};
use xtask::testbed::run_command;

/// Busy CPU-seconds of the whole machine so far (all but idle and iowait).
fn busy_seconds() -> Result<f64> {
    let (busy, _) = super::busy_and_total(&super::cpu_ticks("cpu")?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}

#[derive(Clone)]
pub(crate) struct Wrk {
    pub(crate) requests_per_s: f64,
    requests: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) errors: u64,
    cpu_s: f64,
}

impl Wrk {
    pub(crate) fn cpu_us_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cpu_s * 1e6 / self.requests as f64)
    }
    pub(crate) fn describe(&self) -> String {
        format!(
            "{:.0} req/s ({} requests), p50 {} ms, p99 {} ms, {} errors, {:.1} µs CPU/request",
            self.requests_per_s,
            self.requests,
            self.p50_ms.map_or("n/a".into(), |v| format!("{v:.2}")),
            self.p99_ms.map_or("n/a".into(), |v| format!("{v:.2}")),
            self.errors,
            self.cpu_us_per_request().unwrap_or(f64::NAN)
        )
    }
}

/// `wrk -t1 -cN -dS --latency [-H 'Connection: close'] url` in namespace `netns`, with the
/// whole machine's busy CPU time over the run. wrk keeps every connection busy, so the
/// machine runs flat out and the latencies are mostly time spent queued for a CPU.
pub(crate) fn run(
    netns: &str,
    url: &str,
    close: bool,
    seconds: u32,
    connections: u32,
) -> Result<Wrk> {
    run_with(netns, url, close, None, seconds, connections)
}

/// [`run`] keep-alive at a fixed load: every connection waits `pause_ms` after each answer
/// before it asks again (wrk's Lua `delay()`), so the rate is about
/// `connections / (pause + latency)` whatever the path, and the latencies are the path's,
/// not a CPU queue's (wrk has no open-loop mode; wrk2, which has, is not in Debian).
pub(crate) fn run_paced(
    netns: &str,
    url: &str,
    pause_ms: u32,
    seconds: u32,
    connections: u32,
) -> Result<Wrk> {
    run_with(netns, url, false, Some(pause_ms), seconds, connections)
}

/// Removes the pacing script when the run ends, however it ends.
struct Script(std::path::PathBuf);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_with(
    netns: &str,
    url: &str,
    close: bool,
    pause_ms: Option<u32>,
    seconds: u32,
    connections: u32,
) -> Result<Wrk> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        netns,
        "timeout",
        // Generous: closing many connections can keep wrk past its duration.
        &(3 * seconds + 30).to_string(),
    ])
    .args([
        "wrk",
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let _script = match pause_ms {
        Some(ms) => {
            let path = std::env::temp_dir()
                .join(format!("skein-wrk-pause-{}-{ms}ms.lua", std::process::id()));
            std::fs::write(&path, format!("function delay()\n  return {ms}\nend\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            cmd.arg("-s").arg(&path);
            Some(Script(path))
        }
        None => None,
    };
    cmd.arg(url);
    let before = busy_seconds()?;
    let out = run_command(&mut cmd)?;
    let cpu_s = busy_seconds()? - before;
    parse_wrk(&out, cpu_s)
}

fn parse_wrk(out: &str, cpu_s: f64) -> Result<Wrk> {
    let mut w = Wrk {
        requests_per_s: 0.0,
        requests: 0,
        p50_ms: None,
        p99_ms: None,
        errors: 0,
        cpu_s,
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.requests_per_s = v.trim().parse().context("Requests/sec")?;
        } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            w.requests = words[0].parse().context("requests")?;
        } else if words.first() == Some(&"50%") && words.len() == 2 {
            w.p50_ms = parse_latency_ms(words[1]);
        } else if words.first() == Some(&"99%") && words.len() == 2 {
            w.p99_ms = parse_latency_ms(words[1]);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            w.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if w.requests == 0 {
        bail!("wrk made no requests:\n{out}");
    }
    Ok(w)
}

/// `1.23ms`, `456.00us`, `1.2s` → milliseconds.
fn parse_latency_ms(v: &str) -> Option<f64> {
    for (unit, scale) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3)] {
        if let Some(n) = v.strip_suffix(unit) {
            if let Ok(n) = n.parse::<f64>() {
                return Some(n * scale);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 5s test @ http://10.200.0.11:8180/\n  1 threads and 16 connections\n\
                   Latency Distribution\n     50%  700.00us\n     99%    3.21ms\n\
                   12345 requests in 5.00s, 4.50MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n\
                   Non-2xx or 3xx responses: 4\nRequests/sec:   2469.00\nTransfer/sec:    921.61KB\n";
        let w = parse_wrk(out, 2.0).unwrap();
        assert_eq!(w.requests, 12345);
        assert_eq!(w.requests_per_s, 2469.0);
        assert!((w.p50_ms.unwrap() - 0.7).abs() < 1e-9);
        assert_eq!(w.p99_ms, Some(3.21));
        assert_eq!(w.errors, 10);
        assert!(parse_wrk("nothing", 1.0).is_err());
        assert_eq!(parse_latency_ms("456.00us"), Some(0.456));
        assert_eq!(parse_latency_ms("1.50s"), Some(1500.0));
    }
}
