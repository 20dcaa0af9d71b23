//! `cargo xtask bench` end to end (issue 16, point 4), on the shortest bench of its plan:
//! a bench that runs gives its figures in the one table and in the JSON report, and
//! `bench table` turns the report into the README's markdown; a bench that fails is one
//! `failed:` row, the report is still written, and the command exits non-zero. The other
//! benches' figures come out of the same code path (`bench/all.rs`), unit-tested there.
//!
//! Needs root (the services bench builds a netns testbed); run by `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use xtask::testbed::skein_binary;

/// A scratch directory for one test's report, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("bench-all-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xtask bench <args>` with `SKEIN_BIN=skein` (so no release build is started).
fn xtask(args: &[&str], skein: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("SKEIN_BIN", skein)
        .output()
        .expect("running the xtask binary")
}

fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

#[test]
fn a_failing_bench_is_a_failed_row_and_a_non_zero_exit() {
    let scratch = Scratch::new("fail");
    let json = scratch.0.join("report.json");
    // A skein binary that does not exist: the bench fails at its first agent.
    let out = xtask(
        &[
            "bench",
            "--only",
            "services",
            "--json",
            json.to_str().unwrap(),
        ],
        Path::new("/nonexistent/skein"),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "a failed bench must fail the run:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("1 of 1 benches failed: services"),
        "{stderr}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("services "))
        .unwrap_or_else(|| panic!("no services row in the table:\n{stdout}"));
    assert!(
        row.contains("failed: ") && row.contains("SKEIN_BIN"),
        "{row}"
    );
    let r = report(&json);
    let bench = &r["benches"][0];
    assert_eq!(bench["bench"], "services");
    assert!(bench["failed"].as_str().unwrap().contains("SKEIN_BIN"));
    assert_eq!(bench["figures"].as_array().unwrap().len(), 0, "{bench}");
}

#[test]
fn a_bench_that_runs_gives_its_figures_to_the_table_the_json_and_the_markdown() {
    let scratch = Scratch::new("ok");
    let json = scratch.0.join("report.json");
    let skein = skein_binary().expect("a built skein (SKEIN_BIN)");
    let out = xtask(
        &[
            "bench",
            "--only",
            "services",
            "--json",
            json.to_str().unwrap(),
        ],
        &skein,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("[1/1] bench services"),
        "progress: {stderr}"
    );
    assert!(stderr.contains("[1/1] services: 6 figures in"), "{stderr}");

    let r = report(&json);
    for key in ["date", "commit"] {
        assert!(r[key].as_str().is_some_and(|v| !v.is_empty()), "{key}: {r}");
    }
    assert!(r["machine"]["cpus"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["machine"]["kernel"].as_str().unwrap().contains('.'),
        "{r}"
    );
    let bench = &r["benches"][0];
    assert_eq!(bench["failed"], Value::Null, "{bench}");
    let figures = bench["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 6, "{bench}");
    for f in figures {
        // Every figure measured: a positive time in ms, lower is better.
        assert!(f["value"].as_f64().is_some_and(|v| v > 0.0), "{f}");
        assert_eq!(f["unit"], "ms", "{f}");
        assert_eq!(f["better"], "lower", "{f}");
        let name = f["name"].as_str().unwrap();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("services ") && l.contains(name))
            .unwrap_or_else(|| panic!("{name} is not in the table:\n{stdout}"));
        assert!(line.contains(" ms ↓"), "{line}");
    }

    let md = xtask(
        &["bench", "table", "--from", json.to_str().unwrap()],
        &skein,
    );
    assert!(md.status.success());
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.starts_with("Measured "), "{md}");
    assert!(
        md.contains("| bench | figure | value | reference | ratio |"),
        "{md}"
    );
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| services |")).count(),
        6,
        "{md}"
    );
}
