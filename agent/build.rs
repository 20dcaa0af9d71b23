//! Builds Skein's eBPF programs (through the same function `cargo xtask build-ebpf`
//! uses) and copies the object into `OUT_DIR`, where `src/dataplane` embeds it.

use std::{env, fs, path::PathBuf};

use anyhow::{Context, Result};
use dataplane_ebpf_build::{build, Toolchain};

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace_root = manifest_dir
        .parent()
        .context("agent/ has no parent directory")?
        .to_owned();
    for path in [
        "dataplane-ebpf/src",
        "dataplane-ebpf/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace_root.join(path).display()
        );
    }
    for var in ["SKEIN_CACHE_DIR", "XDG_CACHE_HOME", "CARGO_TARGET_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let toolchain = match Toolchain::find() {
        Ok(toolchain) => toolchain,
        Err(missing) => {
            // One sentence, naming the fix; cargo prints it under the build-script error.
            eprintln!(
                "error: {missing}; run `cargo xtask build-ebpf` once to install the eBPF toolchain"
            );
            std::process::exit(1);
        }
    };
    let object = build(&toolchain, &workspace_root)?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    // A new file, not a write into the old one: a target directory copied with hard links
    // (one per git worktree) would otherwise hand every copy this build's object.
    let embedded = out_dir.join("skein-dataplane.o");
    let _ = fs::remove_file(&embedded);
    fs::copy(&object, &embedded)
        .with_context(|| format!("copying {} into OUT_DIR", object.display()))?;
    Ok(())
}
