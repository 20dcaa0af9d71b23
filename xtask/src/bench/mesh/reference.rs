//! The kernel reference of `bench mesh` (Swarm's routing mesh without IPVS) and the
//! measurements both sides share: wrk, the download.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xtask::testbed::{run_command, skein_binary, wait_until, Host, Process, Testbed};

use super::Side;

/// The reference's VNI (Skein allocates from 4096 up; the overlay bench uses 77).
const VNI: &str = "78";
const OVERLAY_MTU: &str = "1450";
/// Its published ports (Skein's are 8080, 8081, 9/udp on the same addresses).
const HTTP_PORT: u16 = 8180;
const DOWNLOAD_PORT: u16 = 8181;
const UDP_PORT: u16 = 1009;

fn host_mac(i: usize) -> String {
    format!("02:78:00:00:00:{:02x}", i + 1)
}
fn backend_mac(i: usize) -> String {
    format!("02:78:00:00:01:{:02x}", i + 1)
}
fn host_ip(i: usize) -> String {
    format!("10.78.0.{}", i + 1)
}
fn backend_ip(i: usize) -> String {
    format!("10.78.0.{}", i + 11)
}
fn backend_ns(host: &Host) -> String {
    format!("{}-rweb", host.resource_prefix())
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    run_command(Command::new("ip").args(["-n", ns]).args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    run_command(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Builds the reference on every host of `bed` and starts its servers; returns its side
/// and the servers (dropping a [`Process`] stops it).
pub(super) fn build(bed: &Testbed, blob_dir: &Path) -> Result<(Side, Vec<Process>)> {
    let hosts = bed.hosts();
    let mut servers = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let ns = host.netns();
        let local = host.underlay_ip().to_string();
        in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // As the overlay bench's reference: no learning, the FDB below decides.
        ip(
            ns,
            &[
                "link",
                "add",
                "vxm",
                "type",
                "vxlan",
                "id",
                VNI,
                "dstport",
                "4789",
                "local",
                &local,
                "dev",
                "eth0",
                "nolearning",
            ],
        )?;
        ip(ns, &["link", "set", "vxm", "mtu", OVERLAY_MTU])?;
        ip(
            ns,
            &[
                "link",
                "add",
                "brm",
                "address",
                &host_mac(i),
                "type",
                "bridge",
            ],
        )?;
        ip(
            ns,
            &["addr", "add", &format!("{}/24", host_ip(i)), "dev", "brm"],
        )?;
        ip(ns, &["link", "set", "vxm", "master", "brm", "up"])?;
        ip(ns, &["link", "set", "brm", "up"])?;

        let bns = backend_ns(host);
        run_command(Command::new("ip").args(["netns", "add", &bns]))?;
        in_ns(&bns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ip(
            ns,
            &[
                "link",
                "add",
                "vrweb",
                "mtu",
                OVERLAY_MTU,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &bns,
                "mtu",
                OVERLAY_MTU,
                "address",
                &backend_mac(i),
            ],
        )?;
        ip(ns, &["link", "set", "vrweb", "master", "brm", "up"])?;
        ip(
            &bns,
            &[
                "addr",
                "add",
                &format!("{}/24", backend_ip(i)),
                "dev",
                "eth0",
            ],
        )?;
        ip(&bns, &["link", "set", "eth0", "up"])?;
        ip(&bns, &["link", "set", "lo", "up"])?;
        ip(&bns, &["route", "add", "default", "via", &host_ip(i)])?;

        // What Swarm's control plane writes: where every MAC lives, every neighbour.
        for (j, other) in hosts.iter().enumerate() {
            for (addr, mac) in [(host_ip(j), host_mac(j)), (backend_ip(j), backend_mac(j))] {
                if j != i {
                    let remote = other.underlay_ip().to_string();
                    run_command(
                        Command::new("bridge")
                            .args(["-n", ns])
                            .args(["fdb", "append", &mac, "dev", "vxm", "dst", &remote]),
                    )?;
                    run_command(
                        Command::new("bridge")
                            .args(["-n", ns])
                            .args(["fdb", "replace", &mac, "dev", "vxm", "master", "static"]),
                    )?;
                }
                if addr != host_ip(i) {
                    ip(
                        ns,
                        &[
                            "neigh",
                            "replace",
                            &addr,
                            "lladdr",
                            &mac,
                            "dev",
                            "brm",
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
                if addr != backend_ip(i) {
                    ip(
                        &bns,
                        &[
                            "neigh",
                            "replace",
                            &addr,
                            "lladdr",
                            &mac,
                            "dev",
                            "eth0",
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
            }
        }

        let me = host.underlay_ip();
        let rules = format!(
            "table ip skref {{\n\
               chain pre {{\n\
                 type nat hook prerouting priority dstnat; policy accept;\n\
                 ip daddr {me} tcp dport {HTTP_PORT} dnat to numgen inc mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }} : 80\n\
                 ip daddr {me} tcp dport {DOWNLOAD_PORT} dnat to {} : 8000\n\
                 ip daddr {me} udp dport {UDP_PORT} dnat to {} : 9\n\
               }}\n\
               chain post {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 oifname \"brm\" ip saddr != 10.78.0.0/24 masquerade\n\
               }}\n\
             }}\n",
            backend_ip(0),
            backend_ip(1),
            backend_ip(2),
            backend_ip(1),
            backend_ip(1),
        );
        let path = bed.run_dir().join(format!("skref-{}.nft", host.name()));
        std::fs::write(&path, rules)?;
        run_command(
            Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f"])
                .arg(&path),
        )?;

        let mut whoami = host.command("ip");
        whoami
            .args(["netns", "exec", &bns])
            .arg(skein_binary()?)
            .args(["whoami", "--port", "80"])
            .env("SKEIN_TASK", format!("ref-{}", host.name()))
            .env("SKEIN_SERVICE", "ref");
        servers.push(host.spawn(whoami, "ref-whoami")?);
        if i == 1 {
            let mut dl = host.command("ip");
            dl.args([
                "netns",
                "exec",
                &bns,
                "/usr/bin/python3",
                "-m",
                "http.server",
                "8000",
                "--directory",
            ])
            .arg(blob_dir);
            servers.push(host.spawn(dl, "ref-download")?);
        }
    }
    let side = Side {
        label: "kernel",
        udp_ingress: 0,
        udp_port: UDP_PORT,
        udp_receiver: backend_ns(&hosts[1]),
        http_port: HTTP_PORT,
        download_ingress: 0,
        download_port: DOWNLOAD_PORT,
        download_backend: backend_ns(&hosts[1]),
    };
    Ok((side, servers))
}

/// The reference answers through h1 and rotates over the three backends.
pub(super) fn check(bed: &Testbed) -> Result<()> {
    let url = format!("http://{}:{HTTP_PORT}/", bed.host(0).underlay_ip());
    wait_until(
        "the reference answering through h1",
        Duration::from_secs(20),
        || curl_ok(bed, &url, 2),
    )?;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let body = in_ns(
            bed.client().netns(),
            &["curl", "-sf", "--max-time", "3", &url],
        )?;
        let task = body
            .lines()
            .find(|l| l.starts_with("Task:"))
            .unwrap_or_default()
            .to_owned();
        tasks.push(task);
    }
    tasks.sort();
    tasks.dedup();
    ensure!(
        tasks.len() == 3,
        "the reference does not rotate over 3 backends: {tasks:?}"
    );
    let port = format!("http://{}:{DOWNLOAD_PORT}/", bed.host(0).underlay_ip());
    wait_until(
        "the reference's download server",
        Duration::from_secs(20),
        || curl_ok(bed, &port, 2),
    )?;
    Ok(())
}

/// One request from the client succeeds within `seconds`.
pub(super) fn curl_ok(bed: &Testbed, url: &str, seconds: u32) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            bed.client().netns(),
            "curl",
            "-sf",
            "-o",
            "/dev/null",
        ])
        .args(["--max-time", &seconds.to_string(), url])
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------
// (b) wrk and the download.

pub(super) struct Download {
    pub(super) gbits: f64,
    pub(super) retransmits: u64,
    seconds: f64,
}

impl Download {
    pub(super) fn describe(&self) -> String {
        format!(
            "{:.2} Gbit/s ({:.1} s), {} retransmitted segments at the backend",
            self.gbits, self.seconds, self.retransmits
        )
    }
}

/// `RetransSegs` of `Tcp:` in the namespace's `/proc/net/snmp`.
fn retransmits(ns: &str) -> Result<u64> {
    let snmp = in_ns(ns, &["cat", "/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("Tcp header")?,
        tcp.next().context("Tcp values")?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .context("no RetransSegs")
}

/// Downloads `/blob` through the side's download ingress, checking its length.
pub(super) fn download(bed: &Testbed, side: &Side, bytes: u64) -> Result<Download> {
    let url = format!(
        "http://{}:{}/blob",
        bed.host(side.download_ingress).underlay_ip(),
        side.download_port
    );
    let before = retransmits(&side.download_backend)?;
    let start = Instant::now();
    let out = in_ns(
        bed.client().netns(),
        &[
            "timeout",
            "150",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "120",
            "-w",
            "%{size_download}",
            &url,
        ],
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let got: u64 = out.trim().parse().context("curl's size_download")?;
    ensure!(got == bytes, "downloaded {got} bytes of {bytes} from {url}");
    Ok(Download {
        gbits: bytes as f64 * 8.0 / seconds / 1e9,
        retransmits: retransmits(&side.download_backend)?.saturating_sub(before),
        seconds,
    })
}
