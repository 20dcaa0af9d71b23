//! `cargo xtask <command>`: see `--help`. Thin: each command lives in its own module.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build_ebpf;
mod demo;
mod test;

/// Skein's build, test and demo tasks. Every command installs what it needs first.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF programs (installing nightly rust-src and bpf-linker if missing)
    /// and list the programs and maps the object holds.
    BuildEbpf,
    /// Run the whole test suite: unit tests without root, then the privileged
    /// end-to-end tests in network namespaces (needs root).
    Test(test::Args),
    /// Run the demo: the seeds' tutorial (redis and a counter service published on 4568)
    /// on a 4-host Skein cluster in network namespaces; everything is removed afterwards
    /// unless --keep.
    Demo(demo::DemoArgs),
    /// Remove namespaces, mounts and processes left behind by killed test runs.
    Sweep,
    /// Measure figures. With no subcommand: every benchmark (overlay, gossip, services,
    /// mesh, dns) with short sizes, `[i/N]` progress, one table of figures and ratios
    /// against their references, and a JSON report (target/bench/latest.json, or --json);
    /// exits non-zero if any bench failed. With a subcommand: that benchmark (see its help),
    /// or `table --from PATH` for a report's markdown table.
    Bench(bench::BenchCommand),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::run().map(|_| ()),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(bench) => bench::run(bench),
        Command::Sweep => {
            let report = xtask::testbed::sweep_dead_runs()?;
            println!("{report}");
            Ok(())
        }
    }
}
