//! The kernel reference of `bench mesh` (Swarm's routing mesh without IPVS) and the
//! measurements both sides share: the UDP ingress runs, wrk, the download.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xtask::testbed::{run_command, skein_binary, wait_until, Host, Process, Testbed};

use super::{super::pktgen, Side};

/// The reference's VNI (Skein allocates from 4096 up; the overlay bench uses 77).
const VNI: &str = "78";
const OVERLAY_MTU: &str = "1450";
/// Its published ports (Skein's are 8080, 8081, 9/udp on the same addresses).
const HTTP_PORT: u16 = 8180;
const DOWNLOAD_PORT: u16 = 8181;
const UDP_PORT: u16 = 1009;
/// What leaving the ingress node towards a remote backend looks like, for both sides:
/// VXLAN (the reference's kernel device and Skein's mesh both encapsulate on port 4789).
/// Matching it keeps the agents' gossip and anything else the host sends out of the count.
const LEAVING: &str = "ip protocol udp udp dport 4789";
/// How long the receiver's counter is given to settle after the generator stops.
const DRAIN: Duration = Duration::from_millis(300);

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
// (a) 64-byte UDP through one ingress node.

/// An nftables `netdev` ingress chain on a switch port (the frames a host sends into the
/// switch), counting the IPv4 packets that match `what` (an nft match) and dropping them;
/// removed on drop. (This kernel
/// has no tc `matchall`.)
struct PortFilter {
    netns: String,
    table: String,
}

impl PortFilter {
    fn install(netns: &str, dev: &str, what: &str) -> Result<PortFilter> {
        let table = format!("skport_{dev}");
        let rules = format!(
            "table netdev {table} {{\n  chain in {{\n    type filter hook ingress device \"{dev}\" priority 0; policy accept;\n    meta protocol ip {what} counter drop\n  }}\n}}\n"
        );
        let _ = in_ns(netns, &["nft", "delete", "table", "netdev", &table]);
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("starting nft")?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        ensure!(child.wait()?.success(), "nft -f failed on:\n{rules}");
        Ok(PortFilter {
            netns: netns.to_owned(),
            table,
        })
    }

    /// IPv4 packets the chain has seen.
    fn packets(&self) -> Result<u64> {
        let out = in_ns(
            &self.netns,
            &["nft", "list", "table", "netdev", &self.table],
        )?;
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no packet count in nft's answer: {out}"))
    }
}

impl Drop for PortFilter {
    fn drop(&mut self) {
        let _ = in_ns(
            &self.netns,
            &["nft", "delete", "table", "netdev", &self.table],
        );
    }
}

/// The three runs of one round (see the module docs of `bench mesh`).
#[derive(Clone, Copy, Debug)]
pub(super) struct UdpFigures {
    base_sent: u64,
    base_cpu: f64,
    ing_sent: u64,
    ing_leaving: u64,
    ing_cpu: f64,
    ing_seconds: f64,
    del_sent: u64,
    del_delivered: u64,
    del_cpu: f64,
    del_seconds: f64,
}

impl UdpFigures {
    /// CPU-seconds of the ingress node in the drop-after-ingress run: that run's path minus
    /// the generator and switch's share from the baseline, per frame sent.
    fn ingress_cpu(&self) -> Option<f64> {
        let base = self.base_cpu / self.base_sent.max(1) as f64 * self.ing_sent as f64;
        let cpu = self.ing_cpu - base;
        (cpu > 0.0 && self.ing_leaving > 0).then_some(cpu)
    }
    pub(super) fn leaving_per_cpu_s(&self) -> Option<f64> {
        Some(self.ing_leaving as f64 / self.ingress_cpu()?)
    }
    pub(super) fn ingress_ns_per_frame(&self) -> Option<f64> {
        Some(self.ingress_cpu()? * 1e9 / self.ing_leaving as f64)
    }
    pub(super) fn leaving_kpps(&self) -> f64 {
        self.ing_leaving as f64 / self.ing_seconds / 1e3
    }
    pub(super) fn delivered_kpps(&self) -> f64 {
        self.del_delivered as f64 / self.del_seconds / 1e3
    }
    pub(super) fn sent_kpps(&self) -> f64 {
        self.del_sent as f64 / self.del_seconds / 1e3
    }
    pub(super) fn path_ns_per_delivered(&self) -> Option<f64> {
        (self.del_delivered > 0).then(|| self.del_cpu * 1e9 / self.del_delivered as f64)
    }
    pub(super) fn describe(&self) -> String {
        let ns = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        format!(
            "leaving the ingress {:.0} kpps at {} ns ingress CPU/frame (baseline {:.0} ns/frame); \
             delivered {:.0} of {:.0} kpps sent, path {} ns/packet",
            self.leaving_kpps(),
            ns(self.ingress_ns_per_frame()),
            self.base_cpu * 1e9 / self.base_sent.max(1) as f64,
            self.delivered_kpps(),
            self.sent_kpps(),
            ns(self.path_ns_per_delivered()),
        )
    }
}

/// What [`send`] did.
struct Sent {
    frames: u64,
    elapsed: Duration,
    /// The generator thread's CPU time plus every ksoftirqd's over the run and a short
    /// drain: the whole path's softirq work runs in one or the other.
    cpu: f64,
}

/// This thread's CPU time (the scheduler's exact `sum_exec_runtime`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sends 64-byte UDP datagrams from `flows` sockets (one source port each, in turn) in the
/// client namespace to `target:port` for `duration`, from a thread that enters the namespace.
///
/// Why sockets and not the live-frames generator (`pktgen.rs`): live frames live in a
/// page pool that the test run recycles without re-initialising their data, and both
/// dataplanes rewrite the frame in place (the kernel's NAT in the skb, Skein's XDP in the
/// frame), so after the first round every "new" frame carries the previous one's rewritten
/// headers (seen: the ingress node counted them all as `otherhost`). A socket's packets are
/// fresh skbs; the client's tx checksumming is off, so their checksums are complete, as
/// from a NIC.
fn send(netns: &str, target: &str, port: u16, flows: u16, duration: Duration) -> Result<Sent> {
    let ns_file = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening /run/netns/{netns}"))?;
    let dest: std::net::SocketAddr = format!("{target}:{port}").parse()?;
    let soft = pktgen::ksoftirqd_cpu()?;
    let (frames, elapsed, thread_cpu) = thread::scope(|s| {
        s.spawn(|| -> Result<(u64, Duration, Duration)> {
            use std::os::fd::AsRawFd as _;
            // SAFETY: a valid namespace fd; only this thread changes namespace, and it ends
            // right after the run.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns into the client");
            }
            let sockets = (0..flows.max(1))
                .map(|_| {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    s.connect(dest)?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()?;
            let payload = [0x5au8; pktgen::PAYLOAD_LEN];
            // A hard bound whatever the rate: 5 M datagrams per second of the run.
            let max = 5_000_000 * duration.as_secs().max(1);
            let (start, cpu_start) = (Instant::now(), thread_cpu_time());
            let mut sent = 0u64;
            'run: while sent < max {
                for socket in &sockets {
                    for _ in 0..64 {
                        // ENOBUFS/ECONNREFUSED (an ICMP error from a refusal): not sent.
                        if socket.send(&payload).is_ok() {
                            sent += 1;
                        }
                    }
                    if start.elapsed() >= duration {
                        break 'run;
                    }
                }
            }
            Ok((
                sent,
                start.elapsed(),
                thread_cpu_time().saturating_sub(cpu_start),
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })?;
    thread::sleep(DRAIN);
    let soft = pktgen::ksoftirqd_cpu()?.saturating_sub(soft);
    Ok(Sent {
        frames,
        elapsed,
        cpu: (thread_cpu + soft).as_secs_f64(),
    })
}

/// One round for `side`: baseline, drop-after-ingress, delivery.
pub(super) fn udp_run(
    bed: &Testbed,
    side: &Side,
    flows: u16,
    duration: Duration,
) -> Result<UdpFigures> {
    let ingress = bed.host(side.udp_ingress);
    let (client, ul) = (bed.client().netns(), bed.underlay_netns());
    let target = ingress.underlay_ip().to_string();
    let run = || send(client, &target, side.udp_port, flows, duration);
    let base = {
        let _f = PortFilter::install(ul, bed.client().name(), "")?;
        run()?
    };
    let (ing, leaving) = {
        let f = PortFilter::install(ul, ingress.name(), LEAVING)?;
        let s = run()?;
        (s, f.packets()?)
    };
    let sink = pktgen::Sink::install(&side.udp_receiver)?;
    let before = sink.packets()?;
    let del = run()?;
    let delivered = sink.packets()?.saturating_sub(before);
    Ok(UdpFigures {
        base_sent: base.frames,
        base_cpu: base.cpu,
        ing_sent: ing.frames,
        ing_leaving: leaving,
        ing_cpu: ing.cpu,
        ing_seconds: ing.elapsed.as_secs_f64(),
        del_sent: del.frames,
        del_delivered: delivered,
        del_cpu: del.cpu,
        del_seconds: del.elapsed.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// (b) wrk and the download.

/// Busy CPU-seconds of the whole machine so far (`/proc/stat`: all but idle and iowait).
fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let f: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    ensure!(f.len() >= 8, "short cpu line in /proc/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((f[..8].iter().sum::<u64>() - f[3] - f[4]) as f64 / hz)
}

pub(super) struct Wrk {
    pub(super) requests_per_s: f64,
    requests: u64,
    pub(super) p99_ms: Option<f64>,
    pub(super) errors: u64,
    cpu_s: f64,
}

impl Wrk {
    pub(super) fn cpu_us_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cpu_s * 1e6 / self.requests as f64)
    }
    pub(super) fn describe(&self) -> String {
        format!(
            "{:.0} req/s ({} requests), p99 {} ms, {} errors, {:.1} µs CPU/request",
            self.requests_per_s,
            self.requests,
            self.p99_ms.map_or("n/a".into(), |v| format!("{v:.2}")),
            self.errors,
            self.cpu_us_per_request().unwrap_or(f64::NAN)
        )
    }
}

/// `wrk -t1 -cN -dS --latency [-H 'Connection: close'] url` from the client.
pub(super) fn wrk(
    bed: &Testbed,
    url: &str,
    close: bool,
    (seconds, connections): &(u32, u32),
) -> Result<Wrk> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        bed.client().netns(),
        "timeout",
        &(seconds + 20).to_string(),
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
        assert_eq!(w.p99_ms, Some(3.21));
        assert_eq!(w.errors, 10);
        assert!(parse_wrk("nothing", 1.0).is_err());
        assert_eq!(parse_latency_ms("456.00us"), Some(0.456));
        assert_eq!(parse_latency_ms("1.50s"), Some(1500.0));
    }
}
