//! `cargo xtask bench <what>`: figures measured side by side with their reference where
//! there is one, printed for the issue notes; never asserted (the machine is shared).

use std::time::Duration;

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
pub(crate) mod services;
pub(crate) mod wrk;

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
}

pub(crate) fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Dns(args) => dns::run(args),
        Bench::Gossip(args) => gossip::run(args),
        Bench::Mesh(args) => mesh::run(args),
        Bench::MeshLocal(args) => mesh_local::run(args),
        Bench::Overlay(args) => overlay::run(args),
        Bench::Services(args) => services::run(args),
        Bench::MeshVip(args) => mesh_vip::run(args),
        Bench::MeshCost { runs } => mesh_cost::run(runs).map(|_| ()),
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
