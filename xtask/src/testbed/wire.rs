//! A "wire-like" underlay: what a physical NIC gives a host, which the testbed's veths do not
//! give by themselves, for programs that transmit from XDP (the routing mesh's `XDP_TX` and
//! `XDP_REDIRECT` out of a host's `eth0`).
//!
//! - **GRO (hence NAPI) on every bridge port** (the peers of the hosts' and the client's
//!   `eth0`). A frame an XDP program sends out of a veth (`XDP_TX`, or a redirect into it) is
//!   put on the *peer's* ring, which only a peer with NAPI drains: without an XDP program or
//!   GRO on the peer the kernel drops it silently (ARCHITECTURE.md, "Kernel and toolchain
//!   facts"). A real switch port always takes the frame. GRO on the port changes nothing for
//!   ordinary skb traffic except that the bridge may receive aggregated TCP (as a NIC's GRO
//!   gives a host), and it is the same for Skein and the kernel reference.
//! - **No IP validation on the bridge** (`bridge-nf-call-iptables=0` in the underlay's
//!   namespace): with br_netfilter the bridge would drop IPv4 with bad headers, which a
//!   switch passes — hostile frames must reach the hosts.
//! - **Transmit checksum offload off on every `eth0` on the underlay** (the client's and
//!   the hosts'). A veth hands its peer a TCP or
//!   UDP packet with `CHECKSUM_PARTIAL` (the checksum not yet filled in); as an `xdp_buff`
//!   the partial state is lost, so an XDP program that rewrites and forwards it would send a
//!   wrong checksum. A real client's NIC puts complete checksums on the wire, so the client's
//!   stack computes them here. (TSO goes off with it: with `tx` off the kernel drops
//!   `tso`/`gso` dependants for this device, so the client sends MTU-sized segments, as a
//!   NIC does on the wire.)
//!
//! The hosts' `eth0` too: a host's frames reach another host's XDP (the mesh's replies
//! come back to the ingress node in VXLAN, and leave it by an XDP redirect), and a NIC
//! completes the inner checksums of what it sends, tunnelled or not; over a veth they
//! would arrive partial and leave the ingress node wrong.

use std::process::Command;

use anyhow::{Context, Result};

use super::{run_command, Testbed, UNDERLAY_IFACE};

impl Testbed {
    /// Makes the underlay wire-like (see the module docs): GRO on every bridge port in the
    /// underlay namespace, tx checksum offload off on every `eth0`. Idempotent; call
    /// it once after [`Testbed::new`], before traffic. Applies to everything on the underlay,
    /// so a benchmark's reference and Skein see the same wire.
    pub fn make_wire_like(&self) -> Result<()> {
        for host in self.all_hosts() {
            run_command(
                Command::new("ip")
                    .args(["netns", "exec", &self.underlay_netns, "ethtool", "-K"])
                    .args([host.bridge_port(), "gro", "on"]),
            )
            .with_context(|| format!("GRO on the bridge port of {}", host.name()))?;
        }
        if self.routed {
            for port in ["rt0", "rt1"] {
                run_command(
                    Command::new("ip")
                        .args(["netns", "exec", &self.underlay_netns, "ethtool", "-K"])
                        .args([port, "gro", "on"]),
                )
                .with_context(|| format!("GRO on the router's bridge port {port}"))?;
            }
        }
        // br_netfilter (built in here) makes a bridge validate IPv4 headers and drop bad
        // ones; a switch does not. Per network namespace; absent without br_netfilter.
        let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if std::path::Path::new(sysctl).exists() {
            run_command(
                Command::new("ip")
                    .args(["netns", "exec", &self.underlay_netns, "sysctl", "-qw"])
                    .arg("net.bridge.bridge-nf-call-iptables=0"),
            )
            .context("the underlay bridge as a plain switch (no br_netfilter)")?;
        }
        for host in self.all_hosts() {
            run_command(
                Command::new("ip")
                    .args(["netns", "exec", host.netns(), "ethtool", "-K"])
                    .args([UNDERLAY_IFACE, "tx", "off"]),
            )
            .with_context(|| format!("tx checksum offload off on {}'s eth0", host.name()))?;
        }
        Ok(())
    }

    /// Whether GRO is on for every bridge port and tx checksumming off on every `eth0`
    /// (what [`Testbed::make_wire_like`] sets), read back with `ethtool -k`.
    pub fn is_wire_like(&self) -> Result<bool> {
        let feature = |netns: &str, dev: &str, name: &str| -> Result<bool> {
            let out = run_command(
                Command::new("ip").args(["netns", "exec", netns, "ethtool", "-k", dev]),
            )?;
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().starts_with("on"))
                .with_context(|| format!("no {name} line from ethtool -k {dev} in {netns}"))
        };
        for host in self.all_hosts() {
            if !feature(
                &self.underlay_netns,
                host.bridge_port(),
                "generic-receive-offload",
            )? {
                return Ok(false);
            }
        }
        for host in self.all_hosts() {
            if feature(host.netns(), UNDERLAY_IFACE, "tx-checksumming")? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
