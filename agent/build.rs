//! Builds Skein's eBPF programs (through the same function `cargo xtask build-ebpf`
//! uses) and copies the object into `OUT_DIR`, where `src/dataplane` embeds it; and
//! records the git commit the binary is built from (`SKEIN_GIT_COMMIT`, for `skein
//! version` and `/metrics`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

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
    println!(
        "cargo:rustc-env=SKEIN_GIT_COMMIT={}",
        git_commit(&workspace_root)
    );

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

/// The commit `workspace_root` is checked out at: `git rev-parse --short=12 HEAD`, with
/// `-dirty` when tracked files differ from it; `unknown` without git or a repository (a
/// source tarball): the version string must never fail a build.
///
/// Also tells cargo when to ask again: when HEAD or the branch it names moves, and when
/// the sources the binary is built from change (which may make the tree dirty or clean).
fn git_commit(workspace_root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            // Never write the index from a build (a refresh would change its mtime).
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(workspace_root)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    // Only this workspace's own repository: a source tarball unpacked inside some other
    // checkout must not take that checkout's commit.
    let toplevel = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    if toplevel.and_then(|t| t.canonicalize().ok()) != workspace_root.canonicalize().ok() {
        return "unknown".to_owned();
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = workspace_root.join(path);
            // A path that does not exist would make cargo rerun this script every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for path in [
        "Cargo.toml",
        "agent/Cargo.toml",
        "agent/src",
        "manager/Cargo.toml",
        "manager/src",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace_root.join(path).display()
        );
    }
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => commit,
        Some(_) => format!("{commit}-dirty"),
        // HEAD was readable but the status was not: say what is known.
        None => commit,
    }
}
