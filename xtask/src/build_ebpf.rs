//! `cargo xtask build-ebpf`: installs what is missing, builds the programs with the same
//! function `agent/build.rs` uses, and says where the object is and what it holds.

use std::path::{Path, PathBuf};

use anyhow::Result;
use xtask::toolchain::{ensure_ebpf_toolchain, say};

pub(crate) fn run() -> Result<PathBuf> {
    let toolchain = ensure_ebpf_toolchain()?;
    say("building the eBPF programs (bpfel-unknown-none, -C target-cpu=v3)");
    let object = dataplane_ebpf_build::build(&toolchain, &workspace_root())?;
    let summary = dataplane_ebpf_build::inspect(&object)?;
    println!("object: {}", object.display());
    print!("{summary}");
    Ok(object)
}

/// The workspace root: xtask's manifest lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent directory")
        .to_owned()
}
