//! A 64-byte UDP packet generator for the overlay and mesh benches that is not itself the
//! bottleneck: `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux ≥
//! 5.18, what `xdp-trafficgen` uses), fed into a sender's `eth0` as if that interface had
//! received the frames, with a small XDP program per flow that writes the flow's frame over
//! the packet (pages are recycled without their data being reset: [`stamp_program`]) and
//! sends it straight back out with `XDP_TX`. The frames therefore leave the endpoint exactly like
//! packets its own stack would send (same MACs, IPs, complete checksums) and cross the
//! dataplane under test (Skein or the kernel reference) to the receiving endpoint.
//!
//! How a run works ([`measure`]):
//! - Frames: Ethernet/IPv4/UDP with a 64-byte payload ([`udp_frame`]), one per flow (UDP
//!   source ports `FIRST_SRC_PORT..+flows`, destination port [`SINK_PORT`]), addressed as the
//!   sender's own stack would ([`addressing`]: its route to the receiver, its `eth0` MAC, and
//!   its neighbour entry for the next hop, read after a ping so the entry exists — Skein's
//!   gateway MAC `02:53:4b:00:00:01`, which the endpoint program answers ARP with; the
//!   reference receiver's own MAC). The source port changes per call (every [`CHUNK`]
//!   frames), not per packet: one program per flow.
//! - Sending: a thread `setns()`s into the sender's namespace (the test run looks
//!   `ingress_ifindex` up in the caller's namespace) and calls `BPF_PROG_TEST_RUN` with
//!   `data_in` = one flow's frame, `ctx_in` = `xdp_md { ingress_ifindex: eth0 }`,
//!   `repeat` = [`CHUNK`], `flags` = live frames, cycling through the flows, until the run's
//!   duration is over (and never more than a bounded number of calls). In live mode the
//!   kernel turns `XDP_TX` into a redirect to the same device, i.e. `veth_ndo_xdp_xmit`,
//!   which puts the frame on the peer's (host-side veth's) ring.
//! - The host-side peer: native XDP frames arriving on a veth are dropped silently unless
//!   the peer has an XDP program or NAPI, which GRO turns on (ARCHITECTURE.md, "Kernel and
//!   toolchain facts": native XDP redirect into a veth). Skein's host-side veth carries its TC endpoint program and the reference's is a
//!   bridge port; neither has XDP, and an XDP program would change Skein's path. So both get
//!   the same setting, `ethtool -K <host-side veth> gro on`, for the run only; the previous
//!   state is restored afterwards. With NAPI the veth builds an skb from each frame and
//!   hands it on (TC for Skein, the bridge for the reference) exactly as for any packet.
//! - Receiving: an nftables rule in the receiver's namespace at prerouting (priority raw)
//!   counts and drops UDP to [`SINK_PORT`]: it counts what really reached the receiving
//!   endpoint's IP stack (after the IPv4 header checks) and, dropping, sends no ICMP back.
//! - CPU, two ways, both per delivered packet. (1) As asked: the whole machine's busy time
//!   (`/proc/stat`, all CPUs, everything but idle and iowait) from the first frame until the
//!   receiver's counter has settled. It includes the generator (cheap: tens of ns per frame)
//!   and anything else running — on a shared machine, other people's compilers;
//!   [`measure`] samples the busy share just before each run so a noisy run shows. (2) The
//!   packets' own path, which that noise does not reach: the generator thread's exact CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`) plus every `ksoftirqd`'s (`/proc/<pid>/schedstat`). The whole
//!   path runs there: the test run raises the veth's NAPI on its own CPU and runs it when it
//!   re-enables bottom halves, every later hop (veth backlog, bridge, VXLAN, TC, the far
//!   veths) is softirq work on that same CPU, and what the kernel defers goes to ksoftirqd;
//!   with no `IRQ_TIME_ACCOUNTING` in this kernel, softirqs are charged to the task they
//!   interrupt. Left out: softirqs that happen to run on another task's interrupt exit, and
//!   the agents' user-space work (none per packet).
//!
//! Everything is bounded: each call sends [`CHUNK`] frames, the loop stops at the deadline
//! or after a fixed number of calls, and the nftables table is removed when the run ends.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use dataplane_ebpf_test_run::{xdp_live_frames, LiveFrames};

use super::rawbpf::{insn, load_xdp};
use serde_json::Value;
use xtask::testbed::run_command;

/// UDP payload bytes: "64-byte UDP" as `iperf3 -l 64` means it.
pub(crate) const PAYLOAD_LEN: usize = 64;
/// Destination port the receiver's nftables rule counts and drops (discard).
pub(crate) const SINK_PORT: u16 = 9;
/// First UDP source port; flow `i` uses `FIRST_SRC_PORT + i`.
const FIRST_SRC_PORT: u16 = 40000;
/// Frames per `BPF_PROG_TEST_RUN` call: short enough (tens of ms) that the deadline is met
/// closely and flows alternate often, long enough that the per-call setup does not matter.
pub(crate) const CHUNK: u32 = 1 << 15;
/// Frames the kernel processes per batch inside one call (its default is 64, its max 256).
const BATCH_SIZE: u32 = 64;
/// A hard bound on calls per run whatever the rate: 20 Mpps for the whole duration.
const MAX_PPS_BOUND: u64 = 20_000_000;
/// How long the receiver's counter is given to settle after the last frame was sent.
const DRAIN: Duration = Duration::from_millis(300);
/// How long the background load is sampled before a run.
const BACKGROUND_SAMPLE: Duration = Duration::from_millis(700);

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Length of every generated frame (without FCS).
pub(crate) const FRAME_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN + PAYLOAD_LEN;

// ---------------------------------------------------------------------------------------------
// Frames.

/// Who sends to whom, as the sender endpoint's stack would address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addressing {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

/// An Ethernet/IPv4/UDP frame with a [`PAYLOAD_LEN`]-byte payload and complete IPv4 header and
/// UDP checksums (nothing downstream fills them in: there is no skb, hence no offload).
pub(crate) fn udp_frame(addr: &Addressing, src_port: u16, dst_port: u16) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&addr.dst_mac);
    f[6..12].copy_from_slice(&addr.src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);

    let ip = ETH_LEN;
    let ip_total = (IPV4_LEN + UDP_LEN + PAYLOAD_LEN) as u16;
    f[ip] = 0x45; // version 4, IHL 5
    f[ip + 2..ip + 4].copy_from_slice(&ip_total.to_be_bytes());
    f[ip + 6] = 0x40; // DF, as Linux sends UDP with PMTU discovery
    f[ip + 8] = 64; // TTL
    f[ip + 9] = 17; // UDP
    f[ip + 12..ip + 16].copy_from_slice(&addr.src_ip.octets());
    f[ip + 16..ip + 20].copy_from_slice(&addr.dst_ip.octets());
    let csum = fold(sum16(&f[ip..ip + IPV4_LEN]));
    f[ip + 10..ip + 12].copy_from_slice(&csum.to_be_bytes());

    let udp = ip + IPV4_LEN;
    let udp_len = (UDP_LEN + PAYLOAD_LEN) as u16;
    f[udp..udp + 2].copy_from_slice(&src_port.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&dst_port.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[udp + UDP_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo =
        sum16(&addr.src_ip.octets()) + sum16(&addr.dst_ip.octets()) + 17 + u32::from(udp_len);
    let mut csum = fold(pseudo + sum16(&f[udp..]));
    if csum == 0 {
        csum = 0xffff; // 0 means "no checksum" in UDP over IPv4
    }
    f[udp + 6..udp + 8].copy_from_slice(&csum.to_be_bytes());
    f
}

/// Sum of big-endian 16-bit words (an odd trailing byte padded with zero).
fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// The Internet checksum of a sum: folded to 16 bits, complemented.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// The XDP program, loaded by the raw bpf() syscall (`rawbpf`); the live-frames test run is
// the shared `dataplane_ebpf_test_run::xdp_live_frames`.

const XDP_TX: u64 = 3;

/// The instructions of a program that writes `frame` over the packet (when the packet is
/// at least that long) and returns `XDP_TX`.
///
/// Why write the frame on every run: live frames live in a page pool that the kernel
/// recycles without copying `data_in` again, and a dataplane under test may rewrite a frame
/// in place (the kernel's NAT in the skb built on the page, Skein's XDP in the frame) before
/// the page comes back; without this every later "new" frame would carry those rewritten
/// headers. Immediate stores (no map): 4 bytes per instruction, the tail in 2 and 1.
fn stamp_program(frame: &[u8]) -> Vec<u64> {
    let len = i32::try_from(frame.len()).expect("a frame shorter than 2 GiB");
    let mut stores = Vec::new();
    let mut at = 0usize;
    while at < frame.len() {
        let left = frame.len() - at;
        let (code, width) = match left {
            4.. => (0x62, 4),   // BPF_ST | BPF_MEM | BPF_W
            2 | 3 => (0x6a, 2), // BPF_ST | BPF_MEM | BPF_H
            _ => (0x72, 1),     // BPF_ST | BPF_MEM | BPF_B
        };
        let mut bytes = [0u8; 4];
        bytes[..width].copy_from_slice(&frame[at..at + width]);
        let off = i16::try_from(at).expect("a frame shorter than 32 KiB");
        stores.push(insn(code, 2, 0, off, i32::from_le_bytes(bytes)));
        at += width;
    }
    let skip = i16::try_from(stores.len()).expect("fewer than 32 Ki stores");
    let mut insns = vec![
        insn(0x61, 2, 1, 0, 0),    // r2 = ctx->data (BPF_LDX | BPF_MEM | BPF_W)
        insn(0x61, 3, 1, 4, 0),    // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),    // r4 = r2
        insn(0x07, 4, 0, 0, len),  // r4 += len
        insn(0x2d, 4, 3, skip, 0), // if r4 > r3: skip the stores
    ];
    insns.extend(stores);
    insns.push(insn(0xb7, 0, 0, 0, XDP_TX as i32)); // r0 = XDP_TX
    insns.push(insn(0x95, 0, 0, 0, 0)); // exit
    insns
}

/// One flow of the generator: a loaded program that writes its frame over every live frame
/// and sends it with `XDP_TX` ([`stamp_program`]), and the frame (`data_in`).
pub(crate) struct FrameSender {
    prog: OwnedFd,
    frame: [u8; FRAME_LEN],
}

impl FrameSender {
    pub(crate) fn load(frame: [u8; FRAME_LEN]) -> Result<FrameSender> {
        let prog = load_xdp(&stamp_program(&frame), "skein_pktgn")
            .context("loading the generator's frame-writing program")?;
        Ok(FrameSender { prog, frame })
    }

    /// One live-frames run: `repeat` copies of the frame as if received on `ifindex` (in the
    /// calling thread's network namespace).
    fn run_live(&self, ifindex: u32, repeat: u32) -> io::Result<()> {
        let live = LiveFrames {
            ingress_ifindex: ifindex,
            repeat,
            batch_size: BATCH_SIZE,
        };
        xdp_live_frames(self.prog.as_fd(), &self.frame, &live)
    }
}

/// What [`send`] did: frames sent, wall time, and the generator thread's own CPU time (which,
/// with no `IRQ_TIME_ACCOUNTING`, includes the softirqs that ran in its context).
pub(crate) struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
    pub thread_cpu: Duration,
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

/// Sends the senders' frames (cycling through them, [`CHUNK`] per call) out of `eth0` of
/// namespace `netns` for `duration`, from a thread that enters the namespace.
pub(crate) fn send(senders: &[FrameSender], netns: &str, duration: Duration) -> Result<Sent> {
    let ns_file = File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening /run/netns/{netns}"))?;
    let max_calls = (MAX_PPS_BOUND * duration.as_secs().max(1)).div_ceil(u64::from(CHUNK));
    thread::scope(|s| {
        s.spawn(|| -> Result<Sent> {
            // SAFETY: a valid namespace fd; only this thread changes namespace, and it ends
            // right after the run.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns into the sender's netns");
            }
            // SAFETY: a NUL-terminated name; looked up in this thread's (new) namespace.
            let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            ensure!(ifindex != 0, "no eth0 in {netns}");
            let (start, cpu_start) = (Instant::now(), thread_cpu_time());
            let mut sent = 0u64;
            for call in 0..max_calls {
                if start.elapsed() >= duration {
                    break;
                }
                let sender = &senders[call as usize % senders.len()];
                match sender.run_live(ifindex, CHUNK) {
                    Ok(()) => sent += u64::from(CHUNK),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("BPF_PROG_TEST_RUN (live frames) on eth0 of {netns}")
                        })
                    }
                }
            }
            Ok(Sent {
                frames: sent,
                elapsed: start.elapsed(),
                thread_cpu: thread_cpu_time().saturating_sub(cpu_start),
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })
}

// ---------------------------------------------------------------------------------------------
// The host-side veth's GRO, the receiver's counter, CPU time.

/// `ip -n <netns> -j <args>` parsed.
fn ip_json(netns: &str, args: &[&str]) -> Result<Value> {
    let out = run_command(Command::new("ip").args(["-n", netns, "-j"]).args(args))?;
    serde_json::from_str(&out).with_context(|| format!("parsing `ip -j {args:?}` in {netns}"))
}

/// The name, in `host_netns`, of the veth peer of `eth0` in `endpoint_netns`.
fn host_side_veth(endpoint_netns: &str, host_netns: &str) -> Result<String> {
    let eth0 = ip_json(endpoint_netns, &["link", "show", "eth0"])?;
    let peer = eth0[0]["link_index"]
        .as_u64()
        .with_context(|| format!("no link_index on eth0 of {endpoint_netns}: {eth0}"))?;
    let links = ip_json(host_netns, &["link", "show"])?;
    links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["ifindex"].as_u64() == Some(peer)))
        .and_then(|l| l["ifname"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no interface {peer} in {host_netns}"))
}

/// Whether GRO is on for `dev` in `netns` (`ethtool -k`).
fn gro(netns: &str, dev: &str) -> Result<bool> {
    let out = run_command(Command::new("ip").args(["netns", "exec", netns, "ethtool", "-k", dev]))?;
    out.lines()
        .find_map(|l| l.strip_prefix("generic-receive-offload:"))
        .map(|v| v.trim().starts_with("on"))
        .with_context(|| format!("no generic-receive-offload line from ethtool -k {dev}"))
}

fn set_gro(netns: &str, dev: &str, on: bool) -> Result<()> {
    let v = if on { "on" } else { "off" };
    run_command(Command::new("ip").args(["netns", "exec", netns, "ethtool", "-K", dev, "gro", v]))
        .map(drop)
}

/// GRO (hence NAPI) on the sender's host-side veth while it lives; the previous state after.
struct PeerGro {
    netns: String,
    dev: String,
    was_on: bool,
}

impl PeerGro {
    fn enable(endpoint_netns: &str, host_netns: &str) -> Result<PeerGro> {
        let dev = host_side_veth(endpoint_netns, host_netns)?;
        let was_on = gro(host_netns, &dev)?;
        if !was_on {
            set_gro(host_netns, &dev, true)?;
        }
        Ok(PeerGro {
            netns: host_netns.to_owned(),
            dev,
            was_on,
        })
    }
}

impl Drop for PeerGro {
    fn drop(&mut self) {
        if !self.was_on {
            if let Err(e) = set_gro(&self.netns, &self.dev, false) {
                eprintln!(
                    "   warning: could not turn GRO off again on {}: {e:#}",
                    self.dev
                );
            }
        }
    }
}

const SINK_TABLE: &str = "skein_pktgen_sink";

/// The receiver's nftables table: counts and drops UDP to [`SINK_PORT`] at prerouting.
pub(crate) struct Sink {
    netns: String,
}

impl Sink {
    pub(crate) fn install(netns: &str) -> Result<Sink> {
        let rules = format!(
            "table inet {SINK_TABLE} {{\n\
               counter delivered {{ }}\n\
               chain pre {{\n\
                 type filter hook prerouting priority raw; policy accept;\n\
                 udp dport {SINK_PORT} counter name delivered drop\n\
               }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{SINK_TABLE}-{}.nft", std::process::id()));
        std::fs::write(&path, rules).context("writing the nftables rules")?;
        let added = run_command(
            Command::new("ip")
                .args(["netns", "exec", netns, "nft", "-f"])
                .arg(&path),
        );
        let _ = std::fs::remove_file(&path);
        added.context("installing the receiver's counting nftables table")?;
        Ok(Sink {
            netns: netns.to_owned(),
        })
    }

    pub(crate) fn packets(&self) -> Result<u64> {
        let out = run_command(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            SINK_TABLE,
            "delivered",
        ]))?;
        let json: Value = serde_json::from_str(&out).context("parsing nft -j")?;
        json["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
            .with_context(|| format!("no counter in nft's answer: {out}"))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = run_command(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "nft",
            "delete",
            "table",
            "inet",
            SINK_TABLE,
        ]));
    }
}

/// Busy, kernel-mode and total ticks of all CPUs (first line of `/proc/stat`).
#[derive(Clone, Copy)]
struct CpuTimes {
    /// Everything but idle and iowait.
    busy: u64,
    /// system + irq + softirq: where all of the packets' work happens (the generator spends
    /// its time inside the bpf() syscall, the dataplanes in softirq), and little of the
    /// compilers' and agents' user-space work that shares the machine.
    kernel: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> Result<CpuTimes> {
        // user nice system idle iowait irq softirq steal.
        let fields = super::cpu_ticks("cpu")?;
        let (busy, total) = super::busy_and_total(&fields);
        Ok(CpuTimes {
            busy,
            kernel: fields[2] + fields[5] + fields[6],
            total,
        })
    }

    /// Busy and kernel-mode CPU-seconds since `earlier`, and the busy share of all CPUs'
    /// time (0..=1).
    fn since(self, earlier: CpuTimes) -> (f64, f64, f64) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let kernel = self.kernel.saturating_sub(earlier.kernel) as f64;
        let total = self.total.saturating_sub(earlier.total) as f64;
        let share = if total > 0.0 { busy / total } else { 0.0 };
        (busy / hz, kernel / hz, share)
    }
}

// ---------------------------------------------------------------------------------------------
// A measurement.

/// One side of the comparison: a sender endpoint on `sender_host_netns` and a receiver.
pub(crate) struct Side<'a> {
    pub sender_netns: &'a str,
    pub sender_host_netns: &'a str,
    pub receiver_netns: &'a str,
    pub receiver_ip: &'a str,
}

impl<'a> Side<'a> {
    pub(crate) fn new(
        sender_netns: &'a str,
        sender_host_netns: &'a str,
        receiver_netns: &'a str,
        receiver_ip: &'a str,
    ) -> Side<'a> {
        Side {
            sender_netns,
            sender_host_netns,
            receiver_netns,
            receiver_ip,
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figures {
    pub sent: u64,
    pub delivered: u64,
    /// Seconds the generator ran.
    pub seconds: f64,
    /// Whole-machine busy CPU-seconds (`/proc/stat`) from the first frame until the counter
    /// settled: includes whatever else runs on the machine.
    pub cpu_seconds: f64,
    /// The kernel-mode (system + irq + softirq) part of `cpu_seconds`.
    pub kernel_cpu_seconds: f64,
    /// CPU-seconds of the packets' own path: the generator thread (its syscall and the
    /// softirqs that ran in its context) plus every `ksoftirqd`.
    pub path_cpu_seconds: f64,
    /// Busy share of all CPUs in the moment before the run (other work on the machine).
    pub background: f64,
}

impl Figures {
    pub(crate) fn sent_kpps(&self) -> f64 {
        self.sent as f64 / self.seconds / 1e3
    }
    pub(crate) fn delivered_kpps(&self) -> f64 {
        self.delivered as f64 / self.seconds / 1e3
    }
    pub(crate) fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.delivered) as f64 / self.sent as f64
    }
    fn per_packet_ns(&self, cpu_seconds: f64) -> Option<f64> {
        (self.delivered > 0).then(|| cpu_seconds * 1e9 / self.delivered as f64)
    }
    /// Whole-machine busy CPU nanoseconds per delivered packet.
    pub(crate) fn cpu_ns_per_packet(&self) -> Option<f64> {
        self.per_packet_ns(self.cpu_seconds)
    }
    /// Kernel-mode CPU nanoseconds per delivered packet (whole machine).
    pub(crate) fn kernel_ns_per_packet(&self) -> Option<f64> {
        self.per_packet_ns(self.kernel_cpu_seconds)
    }
    /// The packets' own path's CPU nanoseconds per delivered packet.
    pub(crate) fn path_ns_per_packet(&self) -> Option<f64> {
        self.per_packet_ns(self.path_cpu_seconds)
    }
    pub(crate) fn describe(&self) -> String {
        let ns = |v: Option<f64>| v.map_or("n/a".to_owned(), |n| format!("{n:.0}"));
        format!(
            "sent {:.0} kpps, delivered {:.0} kpps ({:.2}% lost); CPU ns per delivered packet: \
             machine {} (kernel-mode {}), generator+softirq path {}; {:.1} s, {:.0}% busy \
             just before",
            self.sent_kpps(),
            self.delivered_kpps(),
            self.loss_percent(),
            ns(self.cpu_ns_per_packet()),
            ns(self.kernel_ns_per_packet()),
            ns(self.path_ns_per_packet()),
            self.seconds,
            self.background * 100.0
        )
    }
}

/// Total CPU time of every `ksoftirqd/N` (their `/proc/<pid>/schedstat`, exact nanoseconds):
/// softirq work the kernel deferred from the generator's context runs there.
pub(crate) fn ksoftirqd_cpu() -> Result<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let dir = entry?.path();
        let is_pid = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("ksoftirqd/") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat"))
            .with_context(|| format!("reading {}/schedstat", dir.display()))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("parsing {}/schedstat: {stat:?}", dir.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// How the sender's own stack would address a packet to the receiver: its route to the
/// receiver's IP (source address, next hop: the receiver itself or a gateway) and the
/// neighbour entry for that next hop, which a ping first makes sure exists. For a Skein
/// endpoint that entry is the gateway MAC its endpoint program answers ARP with; for the
/// reference it is the receiving endpoint's own MAC, learnt across the bridges and VXLAN.
fn addressing(side: &Side) -> Result<Addressing> {
    addressing_to(side.sender_netns, side.receiver_ip)
}

/// [`addressing`] of a packet from namespace `ns` to `receiver_ip`.
pub(crate) fn addressing_to(ns: &str, receiver_ip: &str) -> Result<Addressing> {
    let _ = run_command(Command::new("ip").args(["netns", "exec", ns]).args([
        "ping",
        "-n",
        "-q",
        "-c",
        "1",
        "-W",
        "1",
        receiver_ip,
    ]));
    let route = ip_json(ns, &["route", "get", receiver_ip])?;
    let route = &route[0];
    ensure!(
        route["dev"] == "eth0",
        "the route from {ns} to {} is not via eth0: {route}",
        receiver_ip
    );
    let next_hop = route["gateway"].as_str().unwrap_or(receiver_ip);
    let src_ip: Ipv4Addr = route["prefsrc"]
        .as_str()
        .with_context(|| format!("no prefsrc in the route from {ns}: {route}"))?
        .parse()?;
    let eth0 = ip_json(ns, &["link", "show", "eth0"])?;
    let src_mac = eth0[0]["address"]
        .as_str()
        .and_then(parse_mac)
        .with_context(|| format!("no MAC on eth0 of {ns}: {eth0}"))?;
    let neigh = ip_json(ns, &["neigh", "show", "to", next_hop, "dev", "eth0"])?;
    let dst_mac = neigh[0]["lladdr"]
        .as_str()
        .and_then(parse_mac)
        .with_context(|| format!("no neighbour entry for {next_hop} in {ns}: {neigh}"))?;
    Ok(Addressing {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip: receiver_ip.parse()?,
    })
}

/// The generator's flows: one per UDP source port (`FIRST_SRC_PORT..`), all to `dst_port`;
/// the same set for every side.
pub(crate) fn senders(addr: &Addressing, flows: u16, dst_port: u16) -> Result<Vec<FrameSender>> {
    (0..flows.max(1))
        .map(|i| FrameSender::load(udp_frame(addr, FIRST_SRC_PORT + i, dst_port)))
        .collect()
}

fn format_mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// One bounded run of `duration` for `side`: GRO on the sender's host-side veth, a counting
/// sink in the receiver, the generator, the counter after a short drain, and the CPU time.
pub(crate) fn measure(side: &Side, flows: u16, duration: Duration) -> Result<Figures> {
    let senders = senders(&addressing(side)?, flows, SINK_PORT)?;
    let _gro = PeerGro::enable(side.sender_netns, side.sender_host_netns)?;
    let sink = Sink::install(side.receiver_netns)?;
    let before = sink.packets()?;
    let bg_start = CpuTimes::now()?;
    thread::sleep(BACKGROUND_SAMPLE);
    let (cpu_start, softirqd_start) = (CpuTimes::now()?, ksoftirqd_cpu()?);
    let (_, _, background) = cpu_start.since(bg_start);
    let sent = send(&senders, side.sender_netns, duration)?;
    thread::sleep(DRAIN);
    let (cpu_seconds, kernel_cpu_seconds, _) = CpuTimes::now()?.since(cpu_start);
    let softirqd = ksoftirqd_cpu()?.saturating_sub(softirqd_start);
    let delivered = sink.packets()?.saturating_sub(before);
    if sent.frames == 0 {
        bail!("the generator sent nothing");
    }
    Ok(Figures {
        sent: sent.frames,
        delivered,
        seconds: sent.elapsed.as_secs_f64(),
        cpu_seconds,
        kernel_cpu_seconds,
        path_cpu_seconds: (sent.thread_cpu + softirqd).as_secs_f64(),
        background,
    })
}

/// The medians over runs, figure by figure.
pub(crate) struct Medians {
    pub sent_kpps: f64,
    pub delivered_kpps: f64,
    pub loss_percent: f64,
    pub cpu_ns_per_packet: Option<f64>,
    pub path_ns_per_packet: Option<f64>,
}

impl Medians {
    pub(crate) fn of(runs: &[Figures]) -> Option<Medians> {
        fn med(mut v: Vec<f64>) -> Option<f64> {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            match n {
                0 => None,
                _ if n % 2 == 1 => Some(v[n / 2]),
                _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            }
        }
        Some(Medians {
            sent_kpps: med(runs.iter().map(Figures::sent_kpps).collect())?,
            delivered_kpps: med(runs.iter().map(Figures::delivered_kpps).collect())?,
            loss_percent: med(runs.iter().map(Figures::loss_percent).collect())?,
            cpu_ns_per_packet: med(runs.iter().filter_map(Figures::cpu_ns_per_packet).collect()),
            path_ns_per_packet: med(runs
                .iter()
                .filter_map(Figures::path_ns_per_packet)
                .collect()),
        })
    }
}

/// `rounds` rounds, each measuring every side once in order (so the sides alternate and share
/// the machine's conditions), `duration` per run; prints each run as it ends. Returns the runs
/// per side, in the order of `sides`.
pub(crate) fn compare(
    sides: &[(&str, Side)],
    flows: u16,
    rounds: u32,
    duration: Duration,
) -> Result<Vec<Vec<Figures>>> {
    for (label, side) in sides {
        let a = addressing(side)?;
        println!(
            "   {label}: {FRAME_LEN}-byte frames {} {} -> {} {}, UDP {}..{} -> {SINK_PORT}, \
             {CHUNK} per run, fed into eth0 of {}",
            format_mac(a.src_mac),
            a.src_ip,
            format_mac(a.dst_mac),
            a.dst_ip,
            FIRST_SRC_PORT,
            FIRST_SRC_PORT + flows.saturating_sub(1),
            side.sender_netns
        );
    }
    let mut runs = vec![Vec::new(); sides.len()];
    for round in 1..=rounds {
        for ((label, side), runs) in sides.iter().zip(&mut runs) {
            let f =
                measure(side, flows, duration).with_context(|| format!("pktgen run, {label}"))?;
            println!("   round {round}, {label}: {}", f.describe());
            runs.push(f);
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const ADDR: Addressing = Addressing {
        src_mac: [0x02, 0x53, 10, 1, 0, 2],
        dst_mac: [0x02, 0x53, 0x4b, 0, 0, 1],
        src_ip: Ipv4Addr::new(10, 1, 0, 2),
        dst_ip: Ipv4Addr::new(10, 1, 0, 3),
    };

    #[test]
    fn frame_has_the_addresses_ports_and_lengths() {
        let f = udp_frame(&ADDR, 40001, SINK_PORT);
        assert_eq!(f.len(), 14 + 20 + 8 + 64);
        let p = SlicedPacket::from_ethernet(&f).expect("parses");
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(eth.source(), ADDR.src_mac);
        assert_eq!(eth.destination(), ADDR.dst_mac);
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), ADDR.src_ip);
        assert_eq!(ip.header().destination_addr(), ADDR.dst_ip);
        assert_eq!(ip.header().total_len(), 92);
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.source_port(), 40001);
        assert_eq!(udp.destination_port(), SINK_PORT);
        assert_eq!(udp.length(), 72);
        assert_eq!(udp.payload().len(), PAYLOAD_LEN);
    }

    #[test]
    fn checksums_are_complete_and_correct() {
        for port in [FIRST_SRC_PORT, 40007, 1, 65535] {
            let f = udp_frame(&ADDR, port, SINK_PORT);
            // Independently: etherparse recomputes both checksums.
            let p = SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .expect("fits");
            assert_eq!(udp.checksum(), expected);
            assert_ne!(udp.checksum(), 0);
            // And the receiver's way: the one's-complement sum over header (or pseudo-header
            // and segment) including the checksum is all ones.
            assert_eq!(fold(sum16(&f[14..34])), 0);
            let pseudo = sum16(&f[26..34]) + 17 + 72;
            assert_eq!(fold(pseudo + sum16(&f[34..])), 0);
        }
    }

    #[test]
    fn checksum_helpers_match_a_known_header() {
        // The IPv4 header example from Wikipedia's "IPv4 header checksum": checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum16(&h)), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum16(&h)), 0);
    }

    #[test]
    fn the_stamp_program_writes_every_byte_of_the_frame() {
        for len in [FRAME_LEN, 7, 6, 5, 1] {
            let frame: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(37) ^ 0xa5)
                .collect();
            let insns = stamp_program(&frame);
            let mut written = vec![0u8; len];
            for insn in &insns[5..insns.len() - 2] {
                let width = match *insn as u8 {
                    0x62 => 4,
                    0x6a => 2,
                    0x72 => 1,
                    code => panic!("not a store: {code:#x}"),
                };
                assert_eq!((insn >> 8) as u8, 2, "stores go through r2 (the packet)");
                let off = usize::from((insn >> 16) as u16);
                let imm = ((insn >> 32) as u32).to_le_bytes();
                written[off..off + width].copy_from_slice(&imm[..width]);
            }
            assert_eq!(written, frame);
            // The bounds check skips exactly the stores.
            assert_eq!((insns[4] >> 16) as u16 as usize, insns.len() - 7);
        }
    }

    /// Needs root (BPF_PROG_LOAD), like every xtask test: the privileged tier.
    #[test]
    fn the_generator_program_runs_plain_and_in_live_frames_mode() {
        let frame = udp_frame(&ADDR, 40001, SINK_PORT);
        let sender = FrameSender::load(frame).expect("loading the generator program (needs root)");
        // Whatever the page holds, the program writes its frame over it.
        let stale = [0x33u8; FRAME_LEN];
        let out = dataplane_ebpf_test_run::test_run(sender.prog.as_fd(), &stale, 4).unwrap();
        assert_eq!(out.retval, XDP_TX as u32);
        assert_eq!(out.data_out, frame, "the program writes the frame");
        // Too short a packet is left alone.
        let out = dataplane_ebpf_test_run::test_run(sender.prog.as_fd(), &stale[..60], 1).unwrap();
        assert_eq!(out.data_out, stale[..60]);
        // Live frames into this namespace's loopback: lo cannot transmit XDP frames, so the
        // kernel drops them, but the run (flags, context, batch size) must be accepted.
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0);
        sender.run_live(lo, 8).expect("a live-frames run on lo");
        // The batch size only counts in live mode, where more than 256 is E2BIG.
        let too_big = LiveFrames {
            ingress_ifindex: lo,
            repeat: 1,
            batch_size: 257,
        };
        let error = xdp_live_frames(sender.prog.as_fd(), &frame, &too_big).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::E2BIG), "{error}");
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:53:4b:00:00:01"),
            Some([0x02, 0x53, 0x4b, 0, 0, 1])
        );
        assert_eq!(parse_mac("02:53:4b:00:00"), None);
        assert_eq!(parse_mac("zz:53:4b:00:00:01"), None);
    }
}
