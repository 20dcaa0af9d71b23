//! `cargo xtask bench gossip --junk N [--baseline-bin PATH]`: what junk costs a real agent.
//!
//! N datagrams a member would never send (random bytes, half with the envelope's version
//! byte so they reach the cipher, one in ten larger than any member sends) from the client
//! namespace to h1's gossip port in a 2-host testbed; the figure is h1's agent CPU time
//! (utime + stime from /proc) during the flood minus an idle window of the same length.
//! `--junk-size BYTES` sends every datagram at that size with the version byte instead
//! (an attacker's costliest junk; up to 65,507).
//! `--junk-services N` first creates N services (no replicas), so the cluster view a
//! needless rebuild would make is the size of a real cluster's, not a toy's.
//! With `--baseline-bin`, the same run with that binary (e.g. the previous main's
//! `skein`, copied), alternating, so both meet the same machine load.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result};

use super::report::{Better, Figures};
use xtask::{
    cluster::{skein_ok, start_cluster},
    testbed::{skein_binary, Testbed, TestbedConfig},
    toolchain::say,
};

/// CPU time (ms) the process `pid` has used.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks * 10.0)
}

/// One run with `bin`: returns (flood CPU ms, idle CPU ms, flood seconds).
fn one_run(
    bin: &Path,
    junk: usize,
    size: usize,
    services: usize,
    round: usize,
) -> Result<(f64, f64, f64)> {
    // The testbed starts agents from `SKEIN_BIN`; what was there before (say the release
    // binary `cargo xtask bench` set for every bench) is put back afterwards, also on error.
    let _bin = SkeinBin::set(bin);
    let bed = Testbed::new(&format!("bench-junk{round}"), TestbedConfig::with_hosts(2))?;
    let (agents, _token) = start_cluster(&bed)?;
    let pid = agents[0].pid();
    for i in 0..services {
        let name = format!("junk{i}");
        skein_ok(
            bed.host(i % 2),
            &[
                "service",
                "create",
                &name,
                "--replicas",
                "0",
                // DNS round robin: no VIP, so the default network's VIP range is no limit.
                "--endpoint-mode",
                "dnsrr",
                "--",
                "sleep",
                "1",
            ],
        )?;
    }
    if services > 0 {
        // Both members hold every record before the idle window starts.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        // The table: a header line, then one line per service.
        while skein_ok(bed.host(0), &["service", "ls"])?.lines().count() < services + 1 {
            anyhow::ensure!(Instant::now() < deadline, "services did not replicate");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let target = bed.host(0).underlay_ip();
    let script = format!(
        "import os, socket, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)\n\
         n = int(sys.argv[1]); idle = sys.argv[2] == 'idle'; fixed = int(sys.argv[3])\n\
         import time\n\
         big = bytearray(os.urandom(fixed))\n\
         for i in range(n):\n\
         \x20   if fixed:\n\
         \x20       d = big; d[0] = 1; d[1:9] = os.urandom(8)\n\
         \x20   else:\n\
         \x20       size = 9000 if i % 10 == 0 else 1 + (i * 131) % 1400\n\
         \x20       d = bytearray(os.urandom(size))\n\
         \x20       if i % 2 == 0: d[0] = 1\n\
         \x20   if not idle: s.sendto(d, ('{target}', 7946))\n\
         \x20   if i % 64 == 0: time.sleep(0.0005)\n"
    );
    let flood = |mode: &str| -> Result<(f64, f64)> {
        let before = cpu_ms(pid)?;
        let started = Instant::now();
        bed.client()
            .run(
                "python3",
                ["-c", &script, &junk.to_string(), mode, &size.to_string()],
            )
            .context("sending junk")?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok((cpu_ms(pid)? - before, started.elapsed().as_secs_f64()))
    };
    let (idle_ms, _) = flood("idle")?;
    let (flood_ms, secs) = flood("flood")?;
    drop(agents);
    Ok((flood_ms, idle_ms, secs))
}

/// `SKEIN_BIN` set for as long as this lives, then restored.
struct SkeinBin(Option<std::ffi::OsString>);

impl SkeinBin {
    fn set(bin: &Path) -> SkeinBin {
        let before = std::env::var_os("SKEIN_BIN");
        std::env::set_var("SKEIN_BIN", bin);
        SkeinBin(before)
    }
}

impl Drop for SkeinBin {
    fn drop(&mut self) {
        match self.0.take() {
            Some(v) => std::env::set_var("SKEIN_BIN", v),
            None => std::env::remove_var("SKEIN_BIN"),
        }
    }
}

pub(crate) fn run(
    figs: &mut Figures,
    junk: usize,
    size: usize,
    services: usize,
    baseline: Option<&Path>,
    rounds: usize,
) -> Result<()> {
    anyhow::ensure!(rounds > 0, "--junk-rounds must be at least 1");
    let candidate = skein_binary()?;
    let shape = match size {
        0 => "mixed sizes".to_owned(),
        size => format!("{size} bytes each"),
    };
    say(&format!(
        "{junk} junk datagrams ({shape}) at h1:7946 with {services} services in the store, agent CPU \
         during the flood minus an idle window"
    ));
    let mut bins = vec![("this tree", candidate.clone())];
    if let Some(base) = baseline {
        anyhow::ensure!(
            base.is_file(),
            "--baseline-bin {} is not a file",
            base.display()
        );
        bins.push(("baseline", base.to_path_buf()));
    }
    let mut results: Vec<(&str, Vec<f64>)> = bins.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for round in 0..rounds {
        for (i, (name, bin)) in bins.iter().enumerate() {
            let (flood, idle, secs) = one_run(bin, junk, size, services, round * 10 + i)?;
            let cost = (flood - idle).max(0.0);
            println!(
                "   round {round} {name:>9}: flood {flood:.0} ms CPU, idle {idle:.0} ms, \
                 junk cost {cost:.0} ms ({:.2} µs/datagram, flood took {secs:.1} s)",
                cost * 1000.0 / junk as f64
            );
            results[i].1.push(cost);
        }
    }
    for (name, costs) in &results {
        let mut sorted = costs.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "   {name:>9}: median junk cost {:.0} ms CPU per {junk} datagrams",
            sorted[sorted.len() / 2]
        );
    }
    let median = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied()
    };
    let per_datagram = |ms: Option<f64>| ms.map(|ms| ms * 1000.0 / junk.max(1) as f64);
    let figure = figs.add(
        &format!("junk datagrams ({shape}): agent CPU per datagram"),
        per_datagram(median(&results[0].1)),
        "µs",
        Better::Lower,
    );
    if let Some((_, base)) = results.get(1) {
        figure.against("baseline binary", per_datagram(median(base)));
    }
    if results.len() == 2 {
        let median = |v: &Vec<f64>| median(v).unwrap_or(f64::NAN);
        println!(
            "   this tree / baseline: {:.2}x",
            median(&results[0].1) / median(&results[1].1).max(1.0)
        );
    }
    Ok(())
}
