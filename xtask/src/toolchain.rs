//! Installs what the build, the tests and the demo need on a fresh machine of this kind,
//! idempotently, saying what it does: nightly `rust-src`, `bpf-linker` built against the
//! nightly's own libLLVM (cached once per machine and nightly), and Debian packages.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use dataplane_ebpf_build::{rustup_cmd, Nightly, Toolchain, BPF_LINKER_VERSION, NIGHTLY};

/// Makes sure nightly, its `rust-src` and a matching `bpf-linker` are installed.
pub fn ensure_ebpf_toolchain() -> Result<Toolchain> {
    let nightly = match Nightly::query() {
        Ok(nightly) => nightly,
        Err(_) => {
            say("installing the nightly Rust toolchain (rustup toolchain install nightly)");
            run_checked(rustup_cmd([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
            ]))?;
            Nightly::query()?
        }
    };
    if !nightly.has_rust_src() {
        say("installing nightly rust-src (rustup component add rust-src --toolchain nightly)");
        run_checked(rustup_cmd(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
            .context("could not install rust-src for the nightly toolchain; check access to static.rust-lang.org")?;
    }
    if !nightly.bpf_linker().is_file() {
        install_bpf_linker(&nightly)?;
    }
    Toolchain::find().map_err(|missing| anyhow::anyhow!("{missing} after installing it"))
}

/// Builds bpf-linker against the nightly's own libLLVM: a prefix whose `lib/` holds
/// symlinks to it makes llvm-sys link the exact library rustc uses, so the LLVM versions
/// always match (a mismatch fails with `Invalid record`). No system LLVM is needed.
fn install_bpf_linker(nightly: &Nightly) -> Result<()> {
    let root = nightly.bpf_linker_root();
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} into {} (once per machine, ~2 min)",
        nightly.llvm_version,
        root.display()
    ));
    let llvm_lib = root.join("llvm/lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("creating {}", llvm_lib.display()))?;
    let nightly_lib = nightly.sysroot.join("lib");
    let libllvm = fs::read_dir(&nightly_lib)
        .with_context(|| format!("listing {}", nightly_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "the nightly has no libLLVM.so.* in {}",
                nightly_lib.display()
            )
        })?;
    for link in [libllvm.as_str(), "libLLVM.so"] {
        let path = llvm_lib.join(link);
        let _ = fs::remove_file(&path);
        symlink(nightly_lib.join(&libllvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .args(["--no-default-features", "--features"])
    .arg(format!("llvm-{}", nightly.llvm_major()))
    .arg("--root")
    .arg(&root)
    .env("LLVM_PREFIX", root.join("llvm"))
    .env("CARGO_TARGET_DIR", root.join("build"))
    .env_remove("RUSTUP_TOOLCHAIN");
    run_checked(cmd).context("building bpf-linker failed")?;
    // The build tree is ~1 GB and only needed once.
    let _ = fs::remove_dir_all(root.join("build"));
    Ok(())
}

/// Debian packages the tests, the demo and the benchmarks drive.
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("nft", "nftables"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    // The routing mesh: its bench (`wrk`) and its hostile-traffic test (`hping3`).
    ("wrk", "wrk"),
    ("hping3", "hping3"),
    // Service discovery DNS: queries from inside tasks (`dig`), the tests' upstream.
    ("dig", "bind9-dnsutils"),
    ("dnsmasq", "dnsmasq"),
    // `stack deploy` of seed 000's compose file: its redis, and the counter's client.
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
];

/// Installs the Debian packages whose commands are missing (one `apt-get` run).
pub fn ensure_debian_packages() -> Result<()> {
    ensure_packages(DEBIAN_PACKAGES)
}

/// Installs those of `packages` (command, Debian package) whose commands are missing (one
/// `apt-get` run); for what only one benchmark drives.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(command, _)| !command_exists(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_checked(Command::new("apt-get").arg("update").arg("-q"))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_checked(install)?;
    Ok(())
}

pub fn command_exists(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(command))))
        .unwrap_or(false)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Makes sure the toolchain running this command has clippy and rustfmt (the lint gates of
/// `cargo xtask test`).
pub fn ensure_lint_tools() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let missing: Vec<&str> = [("clippy", "clippy"), ("fmt", "rustfmt")]
        .into_iter()
        .filter(|(subcommand, _)| {
            !Command::new(&cargo)
                .args([subcommand, "--version"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(|(_, component)| component)
        .collect();
    if !missing.is_empty() {
        say(&format!(
            "installing {} (rustup component add {})",
            missing.join(" and "),
            missing.join(" ")
        ));
        // RUSTUP_TOOLCHAIN, set by rustup for this command, picks the toolchain in use.
        run_checked(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// Progress for the user, on stderr, marked so it stands out from cargo's output.
pub fn say(what: &str) {
    eprintln!("==> {what}");
}

/// Runs a command, inheriting stdio, failing with its status.
pub fn run_checked(cmd: impl std::borrow::BorrowMut<Command>) -> Result<()> {
    let mut cmd = cmd;
    let cmd = cmd.borrow_mut();
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
