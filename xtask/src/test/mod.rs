//! `cargo xtask test`: the whole suite, as CI and a new user run it.
//!
//! 1. installs what is missing (eBPF toolchain, Debian packages);
//! 2. lint gates: `cargo fmt --check` and `cargo clippy --workspace --all-targets -D
//!    warnings` (the workspace's `[workspace.lints]` included);
//! 3. tier 1, no root: `cargo test` over the default members (unit tests, ABI layout);
//! 4. tier 2, root: sweeps leftovers of killed runs, runs the agent's root-only unit tests
//!    (`#[ignore = "needs root…"]`, run with `--ignored`; they fail without root), builds
//!    `skein`, then runs xtask's test binaries (the testbed and the end-to-end tests in
//!    network namespaces), a few at once (`binaries`).
//!
//! Tier 2 never skips silently: without root it fails, saying why.

use std::process::Command;

use anyhow::{bail, Result};
use xtask::toolchain::{
    ensure_debian_packages, ensure_ebpf_toolchain, ensure_lint_tools, run_checked, say,
};

use crate::build_ebpf::workspace_root;

mod binaries;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Run only the unprivileged tier (no root needed).
    #[arg(long)]
    unprivileged_only: bool,
    /// How many privileged test binaries run at once (each with two test threads).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    jobs: u8,
    /// Extra arguments for the privileged test binaries, e.g. a test name filter.
    #[arg(last = true)]
    filter: Vec<String>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    ensure_ebpf_toolchain()?;
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        ensure_debian_packages()?;
    }

    ensure_lint_tools()?;
    say("lint gate: formatting (cargo fmt --all --check)");
    run_checked(cargo(&root).args(["fmt", "--all", "--check"]))?;
    say("lint gate: clippy (cargo clippy --workspace --all-targets -- -D warnings)");
    run_checked(cargo(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    say("tier 1: unit tests, no root (cargo test)");
    run_checked(
        cargo(&root)
            .arg("test")
            .arg("--workspace")
            .args(["--exclude", "xtask"]),
    )?;

    if args.unprivileged_only {
        return Ok(());
    }
    if !is_root {
        bail!("the privileged end-to-end tests need root: run `sudo -E cargo xtask test`, or `cargo xtask test --unprivileged-only` for tier 1 alone");
    }

    let swept = xtask::testbed::sweep_dead_runs()?;
    say(&format!("swept leftovers of dead runs: {swept}"));
    // Before the root-only unit tests too: a task's init is the built `skein task-init`.
    say("building the skein binary for the root-only unit tests and the end-to-end tests");
    run_checked(cargo(&root).args(["build", "--package", "agent", "--bin", "skein"]))?;
    say("tier 2: the agent's root-only unit tests (cargo test -p agent -- --ignored)");
    run_checked(cargo(&root).args(["test", "--package", "agent", "--", "--ignored"]))?;

    say("building the privileged tests");
    let binaries = binaries::build(&mut cargo(&root))?;
    say(&format!(
        "tier 2: privileged tests (testbed, BPF_PROG_TEST_RUN, agents in network namespaces), {} binaries, {} at once",
        binaries.len(),
        args.jobs
    ));
    let mut test_args = vec!["--test-threads=2".to_owned()];
    test_args.extend(args.filter);
    let skein = root.join("target/debug/skein");
    let manifest_dir = root.join("xtask");
    binaries::run_all(
        binaries,
        usize::from(args.jobs),
        &test_args,
        &manifest_dir,
        &[
            ("SKEIN_BIN", skein.as_os_str()),
            // What `cargo test` sets for a test binary at run time.
            ("CARGO_MANIFEST_DIR", manifest_dir.as_os_str()),
        ],
    )?;
    say("all tests passed");
    Ok(())
}

fn cargo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}
