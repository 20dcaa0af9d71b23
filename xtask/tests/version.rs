//! `skein version` and `skein_build_info` (issue 16, deliverable 2): the binary names the
//! eBPF object it embeds by its SHA-256, equal to `sha256sum` of the object the build left
//! in `target/ebpf`, and a running agent's `/metrics` (and its "agent running" log line)
//! carries the same three values.
//!
//! Needs root (the agent); run by `cargo xtask test`, which builds `skein` first.

use std::{path::Path, process::Command, time::Duration};

use dataplane_ebpf_build::{BPF_TARGET, EBPF_BIN};
use xtask::{
    scrape::METRICS_URL,
    testbed::{run_command, skein_binary, wait_until, Testbed, TestbedConfig},
};

/// Generous: starting includes verifying the programs, slower beside other test binaries.
const STARTUP: Duration = Duration::from_secs(90);

/// `sha256sum` of the object `cargo build` (through `agent/build.rs`) last built.
fn object_sha256() -> String {
    let object = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/ebpf")
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_BIN);
    let out = run_command(Command::new("sha256sum").arg(&object)).expect("sha256sum");
    out.split_whitespace()
        .next()
        .expect("sha256sum prints the hash first")
        .to_owned()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn version_and_metrics_name_the_embedded_ebpf_object() {
    let skein = skein_binary().expect("the skein binary");
    let text = run_command(Command::new(&skein).arg("version")).expect("skein version");
    let json: serde_json::Value = serde_json::from_str(
        &run_command(Command::new(&skein).args(["version", "--format", "json"]))
            .expect("skein version --format json"),
    )
    .expect("skein version --format json prints JSON");
    let (version, commit, hash) = (
        json["version"].as_str().expect("version"),
        json["commit"].as_str().expect("commit"),
        json["ebpf_sha256"].as_str().expect("ebpf_sha256"),
    );
    assert!(is_hex(hash, 64), "not 64 hex digits: {hash}");
    assert_eq!(
        hash,
        object_sha256(),
        "skein version's hash is not the object's in target/ebpf (is SKEIN_BIN stale?)"
    );
    let bare = commit.trim_end_matches("-dirty");
    assert!(bare == "unknown" || is_hex(bare, 12), "commit {commit}");
    for value in [version, commit, hash] {
        assert!(
            text.contains(value),
            "`skein version` lacks {value}:\n{text}"
        );
    }

    let bed = Testbed::new("version", TestbedConfig::with_hosts(1)).expect("the testbed");
    let host = bed.host(0);
    let mut agent = host.start_agent(&["--init"]).expect("starting the agent");
    let metrics = wait_until("the agent's /metrics", STARTUP, || {
        host.run("curl", ["-sf", "--max-time", "5", METRICS_URL])
            .ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    let expected = format!(
        "skein_build_info{{version=\"{version}\",commit=\"{commit}\",ebpf_sha256=\"{hash}\"}} 1"
    );
    assert!(
        metrics.lines().any(|l| l == expected),
        "/metrics lacks {expected}:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("build"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And its start line in the log (the journal, under systemd).
    agent
        .wait_for_log(&format!("ebpf_sha256={hash}"), STARTUP)
        .expect("the agent logs its build when it runs");
    agent
        .terminate(Duration::from_secs(30))
        .expect("the agent stops");
}
