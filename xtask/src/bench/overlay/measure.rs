//! The overlay bench's measurements: ping, and iperf3 TCP and UDP between endpoints, with
//! what iperf3 reports parsed from its JSON.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xtask::testbed::{run_command, wait_until, Host, Process};

/// An endpoint (Skein's, from `xtask::cluster::create_endpoint`, or the reference's) as
/// (namespace, IP).
pub(super) type Endpoint = (String, String);

pub(super) fn ping_once(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts `iperf3 -s -1 --json` in endpoint namespace `ns` (through `host.spawn`, so the
/// testbed stops it if anything goes wrong) and waits until it listens. `--json` so that the
/// client's `--get-server-output` carries the receiver's figures as JSON; a JSON server prints
/// nothing until the end, hence readiness from `ss` rather than from its log.
pub(super) fn iperf_server(host: &Host, ns: &str) -> Result<Process> {
    let mut cmd = host.command("ip");
    cmd.args(["netns", "exec", ns, "iperf3", "-s", "-1", "--json"]);
    let server = host.spawn(cmd, "iperf3-server")?;
    wait_until("iperf3 server listening", Duration::from_secs(10), || {
        run_command(Command::new("ip").args(["netns", "exec", ns, "ss", "-Hltn", "sport = :5201"]))
            .is_ok_and(|s| !s.trim().is_empty())
    })?;
    Ok(server)
}

/// Runs an iperf3 client in `ns` against `server_ip` with `extra` flags and returns its JSON.
/// `timeout` bounds it even if the server vanished mid-run.
pub(super) fn iperf_client(
    ns: &str,
    server_ip: &str,
    seconds: u32,
    extra: &[&str],
) -> Result<Value> {
    let limit = (seconds + 20).to_string();
    let out = run_command(
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", &limit])
            .args([
                "iperf3",
                "-c",
                server_ip,
                "-t",
                &seconds.to_string(),
                "--json",
            ])
            .args(extra),
    )?;
    let json: Value = serde_json::from_str(&out).context("parsing iperf3 --json")?;
    if let Some(err) = json["error"].as_str() {
        bail!("iperf3 in {ns}: {err}");
    }
    Ok(json)
}

pub(super) fn finish_server(mut server: Process) {
    // `-1` makes it exit after its one test; if it does not, stop it rather than leak it.
    if server.wait(Duration::from_secs(5)).is_err() {
        let _ = server.terminate(Duration::from_secs(2));
    }
}

pub(super) struct Tcp {
    pub(super) gbits: f64,
    bytes: f64,
    seconds: f64,
    /// iperf3's `cpu_utilization_percent` host_total / remote_total (percent of one CPU).
    cpu: Option<(f64, f64)>,
    pub(super) retransmits: Option<u64>,
}

impl Tcp {
    /// CPU seconds (sender + receiver iperf3 processes, as iperf3 reports them, which includes
    /// the kernel work done in their context) per GB received.
    pub(super) fn cpu_s_per_gb(&self) -> Option<f64> {
        let (h, r) = self.cpu?;
        Some((h + r) / 100.0 * self.seconds / (self.bytes / 1e9))
    }

    pub(super) fn describe(&self) -> String {
        let cpu = match self.cpu {
            Some((h, r)) => format!(
                ", CPU host {h:.0}% + remote {r:.0}% = {:.2} CPU-s/GB",
                self.cpu_s_per_gb().unwrap_or(f64::NAN)
            ),
            None => String::new(),
        };
        let retr = self
            .retransmits
            .map_or(String::new(), |r| format!(", {r} retransmits"));
        format!("{:.2} Gbit/s{retr}{cpu}", self.gbits)
    }
}

/// TCP from `client` to `server` (endpoints), the server living on `server_host`.
pub(super) fn iperf_tcp(
    server_host: &Host,
    server: &Endpoint,
    client: &Endpoint,
    seconds: u32,
) -> Result<Tcp> {
    let srv = iperf_server(server_host, &server.0)?;
    let json = iperf_client(&client.0, &server.1, seconds, &[]);
    finish_server(srv);
    let json = json?;
    let end = &json["end"];
    let recv = &end["sum_received"];
    let cpu = &end["cpu_utilization_percent"];
    Ok(Tcp {
        gbits: recv["bits_per_second"]
            .as_f64()
            .context("bits_per_second")?
            / 1e9,
        bytes: recv["bytes"].as_f64().context("bytes")?,
        seconds: recv["seconds"].as_f64().context("seconds")?,
        cpu: cpu["host_total"].as_f64().zip(cpu["remote_total"].as_f64()),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

pub(super) struct Udp {
    pub(super) received_pps: f64,
    sent_pps: f64,
    pub(super) loss_percent: f64,
}

impl Udp {
    pub(super) fn describe(&self) -> String {
        format!(
            "received {:.1} kpps of {:.1} kpps sent, {:.2}% lost",
            self.received_pps / 1e3,
            self.sent_pps / 1e3,
            self.loss_percent
        )
    }
}

/// `iperf3 -u -b 0 -l 64`: the receiver's packet count comes from the server's own report
/// (`--get-server-output`), so loss is what actually arrived, not what was sent.
pub(super) fn iperf_udp(
    server_host: &Host,
    server: &Endpoint,
    client: &Endpoint,
    seconds: u32,
) -> Result<Udp> {
    let srv = iperf_server(server_host, &server.0)?;
    let json = iperf_client(
        &client.0,
        &server.1,
        seconds,
        &["-u", "-b", "0", "-l", "64", "--get-server-output"],
    );
    finish_server(srv);
    let json = json?;
    let sent = &json["end"]["sum"];
    let sent_packets = sent["packets"].as_f64().context("client packets")?;
    let sent_seconds = sent["seconds"].as_f64().context("client seconds")?;
    // The server's view: `packets` is what it expected (highest sequence seen), `lost_packets`
    // the gaps; what arrived is the difference.
    let srv_sum = &json["server_output_json"]["end"]["sum"];
    if srv_sum.is_null() {
        bail!(
            "no server_output_json.end.sum in iperf3's output; end has: {}",
            json["server_output_json"]["end"]
        );
    }
    let (expected, lost, srv_seconds) = (
        srv_sum["packets"].as_f64().context("server packets")?,
        srv_sum["lost_packets"]
            .as_f64()
            .context("server lost_packets")?,
        srv_sum["seconds"].as_f64().context("server seconds")?,
    );
    Ok(Udp {
        received_pps: (expected - lost) / srv_seconds,
        sent_pps: sent_packets / sent_seconds,
        loss_percent: srv_sum["lost_percent"].as_f64().unwrap_or(0.0),
    })
}

pub(super) struct Rtt {
    pub(super) avg_ms: f64,
    pub(super) mdev_ms: f64,
    loss: String,
}

impl Rtt {
    pub(super) fn describe(&self) -> String {
        format!(
            "avg {:.0} µs, mdev {:.0} µs, {}",
            self.avg_ms * 1e3,
            self.mdev_ms * 1e3,
            self.loss
        )
    }
}

/// `ping -c 200 -i 0.005 -q` and its summary: `rtt min/avg/max/mdev = a/b/c/d ms`.
pub(super) fn ping_rtt(ns: &str, ip: &str) -> Result<Rtt> {
    let out = run_command(Command::new("ip").args([
        "netns", "exec", ns, "timeout", "30", "ping", "-n", "-q", "-c", "200", "-i", "0.005", "-W",
        "1", ip,
    ]))?;
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| l.split(", ").find(|p| p.contains("packet loss")))
        .unwrap_or("loss unknown")
        .to_owned();
    let numbers: Vec<f64> = out
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.split('/').filter_map(|x| x.parse().ok()).collect())
        .with_context(|| format!("no rtt summary in ping output:\n{out}"))?;
    if numbers.len() != 4 {
        bail!("unexpected rtt summary in ping output:\n{out}");
    }
    Ok(Rtt {
        avg_ms: numbers[1],
        mdev_ms: numbers[3],
        loss,
    })
}
