//! The one eBPF build, shared by `agent/build.rs` (which embeds the object) and
//! `cargo xtask build-ebpf` (which also installs missing toolchain pieces).
//!
//! Layout:
//! - [`Toolchain::find`]: locates nightly `rust-src` and the cached `bpf-linker`
//!   without installing anything, naming what is missing.
//! - [`build`]: builds the programs binary for `bpfel-unknown-none` with
//!   `-C target-cpu=v3` (aya-build 0.2.0 cannot pass it; the v3 CPU is what makes
//!   atomic fetch-add usable for exact round robin).
//! - [`inspect`]: lists the programs and maps an object holds.
//!
//! `bpf-linker` links libLLVM dynamically and must match the nightly's LLVM major, so it
//! is built against the nightly's own libLLVM and cached per nightly commit under
//! [`cache_dir`]: once per machine and nightly.

use std::{
    env,
    ffi::OsString,
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// The rustup toolchain the eBPF programs build with (`-Z build-std` needs nightly).
pub const NIGHTLY: &str = "nightly";
/// The bpf-linker release known to work with aya 0.14 (see ARCHITECTURE.md, "Kernel and toolchain facts").
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The target the programs are built for.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// The package and binary holding the programs.
pub const EBPF_PACKAGE: &str = "dataplane-ebpf";
pub const EBPF_BIN: &str = "skein-dataplane";

/// What the nightly toolchain says about itself.
#[derive(Clone, Debug)]
pub struct Nightly {
    /// `rustc --print sysroot`.
    pub sysroot: PathBuf,
    /// The full commit hash: the cache key for bpf-linker.
    pub commit_hash: String,
    /// e.g. `22.1.4`.
    pub llvm_version: String,
}

impl Nightly {
    /// Asks `rustup run nightly rustc -vV`; fails if rustup or the nightly is missing.
    pub fn query() -> Result<Nightly> {
        let verbose = run_capture(rustup_cmd(["run", NIGHTLY, "rustc", "-vV"])).context(
            "the nightly toolchain is not installed (rustup run nightly rustc -vV failed)",
        )?;
        let field = |key: &str| {
            verbose
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                .with_context(|| format!("`rustc -vV` printed no `{key}` line"))
        };
        let commit_hash = field("commit-hash:")?;
        let llvm_version = field("LLVM version:")?;
        let sysroot = run_capture(rustup_cmd(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
        Ok(Nightly {
            sysroot: PathBuf::from(sysroot.trim()),
            commit_hash,
            llvm_version,
        })
    }

    /// The LLVM major version, e.g. `22`.
    pub fn llvm_major(&self) -> &str {
        self.llvm_version.split('.').next().unwrap_or_default()
    }

    /// Whether the nightly has `rust-src` (needed for `-Z build-std=core`).
    pub fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
    }

    /// Where bpf-linker for this nightly lives once installed.
    pub fn bpf_linker_root(&self) -> PathBuf {
        let short = &self.commit_hash[..self.commit_hash.len().min(12)];
        cache_dir().join("bpf-linker").join(format!(
            "{BPF_LINKER_VERSION}-llvm{}-nightly-{short}",
            self.llvm_version
        ))
    }

    pub fn bpf_linker(&self) -> PathBuf {
        self.bpf_linker_root().join("bin/bpf-linker")
    }
}

/// Skein's per-machine cache: `$SKEIN_CACHE_DIR`, else `$XDG_CACHE_HOME/skein`, else
/// `$HOME/.cache/skein`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("SKEIN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("skein");
    }
    let home = env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    PathBuf::from(home).join(".cache/skein")
}

/// The pieces the eBPF build needs, all present.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub nightly: Nightly,
    pub bpf_linker: PathBuf,
}

/// A piece of the eBPF toolchain that is not installed.
#[derive(Debug)]
pub enum Missing {
    Nightly(String),
    RustSrc,
    BpfLinker(PathBuf),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Nightly(why) => write!(f, "the nightly Rust toolchain is missing ({why})"),
            Missing::RustSrc => write!(f, "the nightly toolchain has no rust-src component"),
            Missing::BpfLinker(path) => {
                write!(f, "bpf-linker is not installed at {}", path.display())
            }
        }
    }
}

impl Toolchain {
    /// Finds every piece without installing anything.
    pub fn find() -> Result<Toolchain, Missing> {
        let nightly = Nightly::query().map_err(|e| Missing::Nightly(format!("{e:#}")))?;
        if !nightly.has_rust_src() {
            return Err(Missing::RustSrc);
        }
        let bpf_linker = nightly.bpf_linker();
        if !bpf_linker.is_file() {
            return Err(Missing::BpfLinker(bpf_linker));
        }
        Ok(Toolchain {
            nightly,
            bpf_linker,
        })
    }
}

/// Where the eBPF build keeps its artifacts: `$CARGO_TARGET_DIR/ebpf`, else
/// `<workspace>/target/ebpf`. Separate from the host target directory because the
/// build runs nested inside cargo (`agent/build.rs`), and cargo locks a target
/// directory while it builds.
pub fn ebpf_target_dir(workspace_root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir.join("ebpf")
            } else {
                workspace_root.join(dir).join("ebpf")
            }
        }
        None => workspace_root.join("target/ebpf"),
    }
}

/// Builds the programs and returns the path of the object. Output of the nested cargo
/// goes to this process's stderr.
pub fn build(toolchain: &Toolchain, workspace_root: &Path) -> Result<PathBuf> {
    let target_dir = ebpf_target_dir(workspace_root);
    let mut cmd = rustup_cmd(["run", NIGHTLY, "cargo", "build"]);
    cmd.current_dir(workspace_root)
        .args(["--package", EBPF_PACKAGE, "--bin", EBPF_BIN])
        .args(["--features", "programs", "--release", "--locked"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The flags this build needs, and only those. `target-cpu=v3` enables the atomic
    // instructions; rustc passes `--cpu` to bpf-linker itself, so no second link arg.
    let flags = [
        "-Ctarget-cpu=v3".to_owned(),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        format!("-Clinker={}", toolchain.bpf_linker.display()),
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // Inherited from an enclosing cargo (build.rs) these would pick the wrong compiler
    // or flags for the nested build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS_HOST",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("the eBPF build failed ({status}); its output is above");
    }
    let object = target_dir.join(BPF_TARGET).join("release").join(EBPF_BIN);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but left no object at {}",
            object.display()
        );
    }
    Ok(object)
}

/// The programs and maps an object holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectSummary {
    /// (program name, ELF section, i.e. the program type).
    pub programs: Vec<(String, String)>,
    pub maps: Vec<String>,
}

impl fmt::Display for ObjectSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "programs:")?;
        for (name, section) in &self.programs {
            writeln!(f, "  {name:<28} {section}")?;
        }
        writeln!(f, "maps:")?;
        for name in &self.maps {
            writeln!(f, "  {name}")?;
        }
        Ok(())
    }
}

/// Lists an object's programs (functions in sections other than `.text`) and maps
/// (symbols in the `maps` or `.maps` section).
pub fn inspect(object: &Path) -> Result<ObjectSummary> {
    let data = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("parsing {} as ELF", object.display()))?;
    let mut summary = ObjectSummary::default();
    for symbol in file.symbols() {
        let (Some(index), Ok(name)) = (symbol.section_index(), symbol.name()) else {
            continue;
        };
        let Ok(section) = file
            .section_by_index(index)
            .and_then(|s| s.name().map(str::to_owned))
        else {
            continue;
        };
        if section == "maps" || section == ".maps" {
            summary.maps.push(name.to_owned());
        } else if symbol.kind() == SymbolKind::Text && symbol.is_global() && section != ".text" {
            summary.programs.push((name.to_owned(), section));
        }
    }
    summary.programs.sort();
    summary.maps.sort();
    Ok(summary)
}

/// A `rustup` command with the toolchain-selecting environment of any enclosing cargo
/// removed, so `rustup run nightly` really selects nightly.
pub fn rustup_cmd<const N: usize>(args: [&str; N]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cmd
}

fn run_capture(mut cmd: Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("command printed non-UTF-8 output")
}
