//! `cargo xtask bench` with no subcommand: every benchmark, one after the other, with short
//! sizes (the whole run fits in about ten minutes on a 2-core machine), then one table and
//! a JSON report (`target/bench/latest.json` unless `--json`). A bench that fails, or
//! panics, is one `failed: <one line>` row and makes the run exit non-zero at the end;
//! the others still run.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use xtask::toolchain::say;

use super::{
    report::{one_line, utc_date, BenchRun, Figure, Machine, Report},
    Bench,
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where the JSON report goes [default: target/bench/latest.json in the workspace].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Only these benches, comma-separated (of: overlay, gossip, services, mesh, dns).
    #[arg(long, value_delimiter = ',', value_name = "BENCH,...")]
    only: Vec<String>,
}

/// Every bench, in the order, with the short sizes of the whole run: flags of its
/// own subcommand, so a row's figures can be reproduced (or lengthened) by hand.
pub(crate) const PLAN: &[(&str, &[&str])] = &[
    (
        "overlay",
        &[
            "--tcp-seconds",
            "4",
            "--udp-seconds",
            "2",
            "--udp-rounds",
            "1",
        ],
    ),
    (
        "gossip",
        &[
            "--nodes",
            "200",
            "--writes",
            "10",
            "--kills",
            "5",
            "--node-hours",
            "2",
            "--real-changes",
            "8",
            "--real-kills",
            "3",
            "--junk",
            "20000",
            "--junk-rounds",
            "1",
        ],
    ),
    ("services", &["--creates", "3", "--deaths", "2"]),
    (
        "mesh",
        &[
            "--udp-rounds",
            "1",
            "--wrk-rounds",
            "1",
            "--wrk-seconds",
            "3",
            "--cost-runs",
            "5000",
            "--deaths",
            "1",
        ],
    ),
    (
        "dns",
        &[
            "--rounds",
            "1",
            "--seconds",
            "2",
            "--nodes",
            "3",
            "--conv-rounds",
            "4",
        ],
    ),
];

/// One bench's command line, parsed as `cargo xtask bench <name> <flags>` would be.
#[derive(Parser)]
#[command(name = "cargo xtask bench")]
struct One {
    #[command(subcommand)]
    bench: Bench,
}

pub(crate) fn run(args: Args) -> Result<()> {
    for name in &args.only {
        if !PLAN.iter().any(|(n, _)| n == name) {
            bail!(
                "--only {name}: no such bench (the benches are {})",
                PLAN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let plan: Vec<_> = PLAN
        .iter()
        .filter(|(n, _)| args.only.is_empty() || args.only.iter().any(|o| o == n))
        .collect();
    let json = args.json.unwrap_or_else(default_json);
    // Every bench then runs the same release binary (mesh and dns would build it anyway).
    super::use_release_binary().context("building the release skein the benches run")?;
    let started = SystemTime::now();
    let load_start = load_average();
    let benches = run_benches(&plan, run_one);
    let report = Report {
        date: utc_date(
            started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ),
        machine: Machine::this(),
        commit: git_commit(),
        load_average: (load_start, load_average()),
        benches,
    };
    finish(&report, &json)
}

/// Where the report goes unless `--json`: `target/bench/latest.json` in the workspace.
pub(super) fn default_json() -> PathBuf {
    crate::build_ebpf::workspace_root()
        .join("target")
        .join("bench")
        .join("latest.json")
}

/// Runs every bench of `plan` through `runner` with `[i/N]` progress; an error or a panic
/// of one bench is its `failed` line, and the next bench still runs.
fn run_benches(
    plan: &[&(&str, &[&str])],
    mut runner: impl FnMut(&str, &[&str]) -> Result<Vec<Figure>>,
) -> Vec<BenchRun> {
    let mut benches = Vec::new();
    for (i, (name, flags)) in plan.iter().enumerate() {
        let step = format!("[{}/{}]", i + 1, plan.len());
        let command = format!("cargo xtask bench {name} {}", flags.join(" "));
        say(&format!("{step} bench {name} …  ({command})"));
        let t = Instant::now();
        let outcome = match catch_unwind(AssertUnwindSafe(|| runner(name, flags))) {
            Ok(Ok(figures)) => Ok(figures),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        };
        let seconds = t.elapsed().as_secs_f64();
        let (failed, figures) = match outcome {
            Ok(figures) => {
                say(&format!(
                    "{step} {name}: {} figures in {seconds:.0} s",
                    figures.len()
                ));
                (None, figures)
            }
            Err(why) => {
                say(&format!("{step} {name} FAILED after {seconds:.0} s: {why}"));
                (Some(one_line(&why)), Vec::new())
            }
        };
        benches.push(BenchRun {
            bench: (*name).to_owned(),
            command,
            seconds,
            failed,
            figures,
        });
    }
    benches
}

/// Prints the table, writes the JSON to `json`, and fails when a bench did.
fn finish(report: &Report, json: &Path) -> Result<()> {
    println!("\n{}", report.table());
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!(
        "JSON: {}  (README table: cargo xtask bench table --from {0})",
        json.display()
    );
    let failed = report.failed();
    if !failed.is_empty() {
        bail!(
            "{} of {} benches failed: {}",
            failed.len(),
            report.benches.len(),
            failed
                .iter()
                .map(|b| b.bench.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Runs one bench of the plan, parsed as its own command line.
fn run_one(name: &str, flags: &[&str]) -> Result<Vec<Figure>> {
    let argv = ["bench", name].into_iter().chain(flags.iter().copied());
    let one = One::try_parse_from(argv).with_context(|| format!("bad plan for {name}"))?;
    super::figures(one.bench)
}

/// The 1-minute load average now (0 if /proc/loadavg is unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The workspace's commit, `-dirty` when tracked files have uncommitted changes.
fn git_commit() -> String {
    let root = crate::build_ebpf::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{commit}-dirty"),
        _ => commit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_planned_bench_parses_with_its_short_flags() {
        for (name, flags) in PLAN {
            let argv = ["bench", name].into_iter().chain(flags.iter().copied());
            if let Err(e) = One::try_parse_from(argv) {
                panic!("{name} {flags:?}: {e}");
            }
        }
        // And a bad flag would be caught, not ignored.
        assert!(One::try_parse_from(["bench", "overlay", "--no-such-flag"]).is_err());
        let names: Vec<&str> = PLAN.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["overlay", "gossip", "services", "mesh", "dns"]);
    }

    #[test]
    fn a_failing_or_panicking_bench_is_a_failed_row_and_the_run_fails() {
        let plan: Vec<&(&str, &[&str])> = vec![
            &("ok", &["--x", "1"]),
            &("broken", &[]),
            &("panics", &[]),
            &("after", &[]),
        ];
        let mut ran = Vec::new();
        let benches = run_benches(&plan, |name, _| {
            ran.push(name.to_owned());
            match name {
                "broken" => Err(anyhow::anyhow!("no answer\nss output")).context("waiting for web"),
                "panics" => panic!("index out of bounds"),
                _ => {
                    let mut f = super::super::report::Figures::new(name);
                    f.add("n", Some(1.0), "s", super::super::report::Better::Lower);
                    Ok(f.into_vec())
                }
            }
        });
        assert_eq!(ran, ["ok", "broken", "panics", "after"], "every bench ran");
        assert_eq!(benches[0].command, "cargo xtask bench ok --x 1");
        assert_eq!(benches[0].failed, None);
        assert_eq!(benches[0].figures.len(), 1);
        assert_eq!(
            benches[1].failed.as_deref(),
            Some("waiting for web: no answer")
        );
        assert!(benches[1].figures.is_empty());
        assert_eq!(
            benches[2].failed.as_deref(),
            Some("panicked: index out of bounds")
        );
        assert_eq!(benches[3].failed, None);

        let report = Report {
            date: utc_date(0),
            machine: Machine::parse("6.1", "", ""),
            commit: "c".to_owned(),
            load_average: (0.0, 0.0),
            benches,
        };
        let dir = std::env::temp_dir().join(format!("benchall-test-{}", std::process::id()));
        let json = dir.join("sub").join("latest.json");
        let err = finish(&report, &json).expect_err("failed benches fail the run");
        assert_eq!(err.to_string(), "2 of 4 benches failed: broken, panics");
        let back: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(back, report, "the JSON is written even when a bench failed");
        std::fs::remove_dir_all(&dir).unwrap();

        let ok = Report {
            benches: report.benches[..1].to_vec(),
            ..report
        };
        finish(&ok, &json).expect("no failed bench: success");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
