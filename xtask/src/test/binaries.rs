//! Tier 2's test binaries, run side by side.
//!
//! `cargo test` runs a package's test binaries one after another. Ours spend most of their
//! time waiting (agents converging, failure detection, timeouts), not computing, so running
//! a few binaries at once cuts the wall time of the suite roughly by that factor on this
//! machine's two cores. Each binary's output is captured and printed whole when it ends
//! (failed ones in full, passed ones as their summary line), so logs do not interleave.
//! Every test already makes uniquely named namespaces, pins and cgroups, so binaries do not
//! share state.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Binaries known to take longest start first, so the last to finish is a short one.
/// Order only; a binary missing from the list runs after these, in cargo's order.
const LONGEST_FIRST: &[&str] = &[
    "mesh",
    "services",
    "mesh_local",
    "dns",
    "overlay",
    "fail_closed",
    "mesh_hostmode",
    "mesh_vip",
    "dns_malformed",
];

/// One compiled test binary of the xtask package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestBinary {
    /// The test target's name (`mesh` for `tests/mesh.rs`, `xtask` for the library's tests).
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

/// Builds the xtask package's test binaries and returns them, longest-running first.
pub(crate) fn build(cargo: &mut Command) -> Result<Vec<TestBinary>> {
    let output = cargo
        .args([
            "test",
            "--package",
            "xtask",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the privileged tests failed ({})", output.status);
    }
    let mut binaries = parse_artifacts(&String::from_utf8_lossy(&output.stdout))?;
    binaries.sort_by_key(|b| {
        LONGEST_FIRST
            .iter()
            .position(|n| *n == b.name)
            .unwrap_or(LONGEST_FIRST.len())
    });
    Ok(binaries)
}

/// The test executables in cargo's JSON messages (one JSON object per line).
fn parse_artifacts(json_lines: &str) -> Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo printed {line:?}"))?;
        let is_test =
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true;
        let (Some(name), Some(path)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if is_test {
            // `tests/NAME.rs` is `NAME`; the library's and the binary's own unit tests
            // share the package's name, so they carry their kind.
            let kind = message["target"]["kind"][0].as_str().unwrap_or("test");
            let name = if kind == "test" {
                name.to_owned()
            } else {
                format!("{name} ({kind})")
            };
            binaries.push(TestBinary {
                name,
                path: PathBuf::from(path),
            });
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no test binaries for xtask");
    }
    Ok(binaries)
}

struct Running {
    binary: TestBinary,
    child: Child,
    log: File,
    started: Instant,
}

/// Runs `binaries` with at most `jobs` at once, each with `args` (test threads, filter),
/// in `dir` with `envs`. Returns an error naming every binary that failed.
pub(crate) fn run_all(
    binaries: Vec<TestBinary>,
    jobs: usize,
    args: &[String],
    dir: &Path,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<()> {
    let mut queue: VecDeque<TestBinary> = binaries.into();
    let mut running: Vec<Running> = Vec::new();
    let mut failed = Vec::new();
    let suite = Instant::now();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < jobs.max(1) {
            let Some(binary) = queue.pop_front() else {
                break;
            };
            running.push(start(binary, args, dir, envs)?);
        }
        let mut index = 0;
        while index < running.len() {
            match running[index].child.try_wait()? {
                None => index += 1,
                Some(status) => {
                    let mut done = running.swap_remove(index);
                    if !report(&mut done, status.success())? {
                        failed.push(done.binary.name);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "==> privileged test binaries done in {:.0} s",
        suite.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("privileged tests failed in: {}", failed.join(", "));
    }
    Ok(())
}

fn start(
    binary: TestBinary,
    args: &[String],
    dir: &Path,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<Running> {
    // An unnamed temporary file: gone when dropped, also if this process dies.
    let log = tempfile_in(&std::env::temp_dir())?;
    let mut command = Command::new(&binary.path);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("could not start {}", binary.path.display()))?;
    eprintln!("==> started {}", binary.name);
    Ok(Running {
        binary,
        child,
        log,
        started: Instant::now(),
    })
}

/// Prints a finished binary's result; its whole output if it failed. Returns `passed`.
fn report(done: &mut Running, passed: bool) -> Result<bool> {
    let seconds = done.started.elapsed().as_secs_f64();
    done.log.rewind()?;
    if passed {
        let summary = BufReader::new(&done.log)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("test result:"))
            .last()
            .unwrap_or_default();
        eprintln!("==> {}: {summary} ({seconds:.0} s)", done.binary.name);
    } else {
        let mut output = String::new();
        done.log.read_to_string(&mut output)?;
        eprintln!(
            "==> {} FAILED after {seconds:.0} s; its output:\n{output}",
            done.binary.name
        );
    }
    Ok(passed)
}

fn tempfile_in(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .with_context(|| format!("could not make a temporary file in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_artifacts_are_found_and_others_ignored() {
        let lines = r#"{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"xtask","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"mesh","kind":["test"]},"executable":"/t/mesh-1"}
{"reason":"build-finished","success":true}
{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"xtask","kind":["lib"]},"executable":"/t/xtask-2"}"#;
        let found = parse_artifacts(lines).unwrap();
        assert_eq!(
            found,
            vec![
                TestBinary {
                    name: "mesh".into(),
                    path: "/t/mesh-1".into()
                },
                TestBinary {
                    name: "xtask (lib)".into(),
                    path: "/t/xtask-2".into()
                },
            ]
        );
    }

    #[test]
    fn no_test_binaries_is_an_error() {
        assert!(parse_artifacts(r#"{"reason":"build-finished","success":true}"#).is_err());
    }
}
