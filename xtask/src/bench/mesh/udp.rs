//! (a) of `bench mesh`: 64-byte UDP through one ingress node to a remote backend, for both
//! sides.
//!
//! **The ingress node's CPU, measured directly.** Namespaces have no CPU accounting, and by
//! default a veth's receive work runs as softirq in whatever context queued the frame (the
//! generator's thread, or the previous hop's poll), so it cannot be told apart. For the
//! runs, the ingress host's `eth0` and its switch port get **threaded NAPI**
//! (`/sys/class/net/<dev>/threaded`): every frame the ingress node receives is then handled
//! in the kernel thread `napi/eth0-<id>` — Skein's XDP program and its redirect, or the
//! reference's whole stack (conntrack, DNAT, routing, the VXLAN device, masquerade) — up to
//! handing the frame to the switch port's ring; the switch port's own work runs in its own
//! thread. The ingress node's CPU is the scheduler's exact run time of its NAPI thread(s)
//! (`/proc/<pid>/schedstat`), as a NIC's receive softirq would be on a real host. GRO is
//! turned on on that `eth0` for the runs (a NIC has it on, and a veth has NAPI only with XDP
//! or GRO: without it the reference's frames would never reach the thread).
//!
//! The generator is `pktgen.rs`'s live frames (8 flows: UDP source ports; each frame
//! written afresh by the generator's program, complete checksums), fed into the client's
//! `eth0`. For the drop-after-ingress run the client's switch port redirects them straight
//! to the ingress node's `eth0` ([`DirectWire`]), so they arrive as raw frames — what a NIC
//! hands its driver — not as skbs the bridge built: Skein's XDP program runs on the frame
//! itself, and for the reference the ingress node's veth builds the skb in the ingress
//! node's own NAPI thread, as a NIC driver does. (Through the bridge, every frame reaches
//! the ingress node as an skb made on the switch, and freeing or converting it lands on
//! Skein's bill though no NIC path has it; with socket-made skbs a veth with XDP even copies
//! each into a page.) The generator (one thread, which also runs the client's switch port)
//! and the ingress node (its NAPI thread, at real-time priority like a receive softirq) run
//! on different CPUs where they can. The delivery run goes through the bridge as usual.
//!
//! Two runs per round: frames leaving the ingress node are counted and dropped by an
//! nftables netdev ingress chain on its switch port (VXLAN towards the backend's host,
//! which is how both sides forward; the agents' gossip is left out) → frames leaving per
//! ingress CPU-second; then a delivery run to the backend (counted by an nftables rule in
//! its namespace) → delivered rate and the whole path's CPU per delivered packet.

use std::{collections::BTreeSet, os::fd::OwnedFd, process::Command, thread, time::Duration};

use anyhow::{ensure, Context, Result};
use xtask::testbed::{run_command, Testbed};

use super::{
    super::{pktgen, rawbpf},
    Side,
};

/// What leaving the ingress node towards a remote backend looks like, for both sides:
/// VXLAN (the reference's kernel device and Skein's mesh both encapsulate on port 4789).
/// Matching it keeps the agents' gossip and anything else the host sends out of the count.
const LEAVING: &str = "ip protocol udp udp dport 4789";
/// How long the receiver's counter is given to settle after the generator stops.
const DRAIN: Duration = Duration::from_millis(300);

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    run_command(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// An nftables `netdev` ingress chain on a switch port (the frames a host sends into the
/// switch), counting the IPv4 packets that match `what` (an nft match) and dropping them;
/// removed on drop. (This kernel has no tc `matchall`.)
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

/// The client's frames handed straight to the ingress node's `eth0` for as long as this
/// lives: an XDP program on the client's switch port redirects every frame out of the
/// ingress node's switch port, so it reaches the node as the raw frame a NIC would hand its
/// driver (an `xdp_frame` on the veth's ring), not as an skb the bridge built. Then the
/// ingress node's XDP program runs on the frame itself, and for the reference the node's
/// veth builds the skb in its own NAPI thread, as a NIC driver does — each side pays for
/// exactly what a real host would.
struct DirectWire {
    _link: OwnedFd,
}

impl DirectWire {
    fn attach(underlay_netns: &str, from_port: &str, to_port: &str) -> Result<DirectWire> {
        let ns = std::fs::File::open(format!("/run/netns/{underlay_netns}"))
            .with_context(|| format!("opening /run/netns/{underlay_netns}"))?;
        thread::scope(|s| {
            s.spawn(|| -> Result<DirectWire> {
                use std::os::fd::{AsFd as _, AsRawFd as _};
                // SAFETY: a valid namespace fd; only this short-lived thread changes namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns into the underlay");
                }
                let index = |name: &str| -> Result<u32> {
                    let c = std::ffi::CString::new(name)?;
                    // SAFETY: a NUL-terminated name, looked up in this thread's namespace.
                    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
                    ensure!(i != 0, "no interface {name} in {underlay_netns}");
                    Ok(i)
                };
                let prog =
                    rawbpf::load_xdp(&rawbpf::redirect_program(index(to_port)?), "skein_wire")?;
                let link = rawbpf::attach_xdp(prog.as_fd(), index(from_port)?)?;
                Ok(DirectWire { _link: link })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
        })
    }
}

/// PIDs of the kernel threads whose name starts like `napi/<dev>-` (names are cut at 15
/// bytes by the kernel).
fn napi_threads(dev: &str) -> Result<BTreeSet<u32>> {
    let name = format!("napi/{dev}-");
    let prefix = &name[..name.len().min(15)];
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// Run time of a thread so far (the scheduler's `sum_exec_runtime`), zero once it is gone.
fn thread_run_time(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Threaded NAPI (and GRO) on one interface for as long as this lives; the interface's NAPI
/// threads are known, so their CPU time can be read.
struct ThreadedNapi {
    netns: String,
    dev: String,
    gro_was_on: bool,
    threads: Vec<u32>,
}

impl ThreadedNapi {
    fn enable(netns: &str, dev: &str) -> Result<ThreadedNapi> {
        let features = in_ns(netns, &["ethtool", "-k", dev])?;
        let gro_was_on = features
            .lines()
            .any(|l| l.trim() == "generic-receive-offload: on");
        in_ns(netns, &["ethtool", "-K", dev, "gro", "on"])?;
        let set = |v: &str| {
            in_ns(
                netns,
                &[
                    "sh",
                    "-c",
                    &format!("echo {v} > /sys/class/net/{dev}/threaded"),
                ],
            )
        };
        // Off first, so the threads that appear are this interface's (every host's `eth0` has
        // the same name, and a thread of an interface already threaded would not be new).
        set("0")?;
        let before = napi_threads(dev)?;
        set("1")?;
        let mut napi = ThreadedNapi {
            netns: netns.to_owned(),
            dev: dev.to_owned(),
            gro_was_on,
            threads: Vec::new(),
        };
        napi.threads = napi_threads(dev)?.difference(&before).copied().collect();
        ensure!(
            !napi.threads.is_empty(),
            "no NAPI thread appeared for {dev} in {netns} (a veth has NAPI only with XDP or GRO)"
        );
        // Real-time priority, as a NIC's receive softirq has over every task: otherwise the
        // thread waits behind whatever else runs (the generator, compilers on a shared
        // machine) while its 256-frame ring overflows.
        for pid in &napi.threads {
            run_command(Command::new("chrt").args(["-f", "-p", "50", &pid.to_string()]))?;
        }
        Ok(napi)
    }

    /// CPU time of this interface's NAPI threads so far.
    fn cpu(&self) -> Duration {
        self.threads.iter().map(|&pid| thread_run_time(pid)).sum()
    }
}

impl Drop for ThreadedNapi {
    fn drop(&mut self) {
        let path = format!("/sys/class/net/{}/threaded", self.dev);
        let _ = in_ns(&self.netns, &["sh", "-c", &format!("echo 0 > {path}")]);
        if !self.gro_was_on {
            let _ = in_ns(&self.netns, &["ethtool", "-K", &self.dev, "gro", "off"]);
        }
    }
}

/// The two runs of one round (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct UdpFigures {
    /// Drop-after-ingress run: frames sent, frames leaving, the ingress node's CPU-seconds.
    sent: u64,
    leaving: u64,
    ingress_cpu: f64,
    seconds: f64,
    /// Delivery run.
    del_sent: u64,
    del_delivered: u64,
    del_cpu: f64,
    del_seconds: f64,
}

impl UdpFigures {
    pub(super) fn leaving_per_cpu_s(&self) -> Option<f64> {
        (self.ingress_cpu > 0.0).then(|| self.leaving as f64 / self.ingress_cpu)
    }
    pub(super) fn ingress_ns_per_frame(&self) -> Option<f64> {
        (self.leaving > 0).then(|| self.ingress_cpu * 1e9 / self.leaving as f64)
    }
    /// How busy the ingress node's NAPI thread was (1.0 = a whole CPU).
    pub(super) fn ingress_busy(&self) -> f64 {
        self.ingress_cpu / self.seconds
    }
    pub(super) fn leaving_kpps(&self) -> f64 {
        self.leaving as f64 / self.seconds / 1e3
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
            "{} of {} frames sent left the ingress: {:.0} kpps at {} ns ingress CPU/frame \
             (its NAPI thread {:.0} % busy); delivered {:.0} of {:.0} kpps sent, path {} ns/packet",
            self.leaving,
            self.sent,
            self.leaving_kpps(),
            ns(self.ingress_ns_per_frame()),
            self.ingress_busy() * 100.0,
            self.delivered_kpps(),
            self.sent_kpps(),
            ns(self.path_ns_per_delivered()),
        )
    }
}

/// One round for `side`: drop-after-ingress, then delivery.
pub(super) fn run(
    bed: &Testbed,
    side: &Side,
    flows: u16,
    duration: Duration,
) -> Result<UdpFigures> {
    let ingress = bed.host(side.udp_ingress);
    let (client, ul) = (bed.client().netns(), bed.underlay_netns());
    let target = ingress.underlay_ip().to_string();
    let napi = ThreadedNapi::enable(ingress.netns(), "eth0")?;
    let switch_port = ThreadedNapi::enable(ul, ingress.name())?;
    let addressing = pktgen::addressing_to(client, &target)?;
    let senders = pktgen::senders(&addressing, flows, side.udp_port)?;
    let send = || pktgen::send(&senders, client, duration);

    let (ing, leaving, ingress_cpu) = {
        let f = PortFilter::install(ul, ingress.name(), LEAVING)?;
        let _wire = DirectWire::attach(ul, bed.client().name(), ingress.name())?;
        let cpu = napi.cpu();
        let s = send()?;
        thread::sleep(DRAIN);
        (s, f.packets()?, napi.cpu().saturating_sub(cpu))
    };
    ensure!(ing.frames > 0, "the generator sent nothing");

    let sink = pktgen::Sink::install(&side.udp_receiver)?;
    let before = sink.packets()?;
    let threads = || napi.cpu() + switch_port.cpu();
    let (soft, napi_before) = (pktgen::ksoftirqd_cpu()?, threads());
    let del = send()?;
    thread::sleep(DRAIN);
    let path_cpu = del.thread_cpu
        + pktgen::ksoftirqd_cpu()?.saturating_sub(soft)
        + threads().saturating_sub(napi_before);
    let delivered = sink.packets()?.saturating_sub(before);
    Ok(UdpFigures {
        sent: ing.frames,
        leaving,
        ingress_cpu: ingress_cpu.as_secs_f64(),
        seconds: ing.elapsed.as_secs_f64(),
        del_sent: del.frames,
        del_delivered: delivered,
        del_cpu: path_cpu.as_secs_f64(),
        del_seconds: del.elapsed.as_secs_f64(),
    })
}
