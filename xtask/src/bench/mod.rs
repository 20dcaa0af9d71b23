//! `cargo xtask bench <what>`: figures measured side by side with their reference where
//! there is one, printed for the issue notes; never asserted (the machine is shared).

pub mod gossip;
pub mod overlay;
pub mod pktgen;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Control plane: change propagation, failure detection, false downs, RSS, bandwidth.
    Gossip(gossip::Args),
    /// Overlay dataplane vs the kernel VXLAN + bridge reference, same testbed, side by side.
    Overlay(overlay::Args),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Gossip(args) => gossip::run(args),
        Bench::Overlay(args) => overlay::run(args),
    }
}
