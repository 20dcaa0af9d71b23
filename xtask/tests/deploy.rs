//! The real deployment (issue 16, deliverable 2): `deploy/skein-agent.service` passes
//! `systemd-analyze verify` (a copy whose `ExecStart` names the built binary), and three
//! testbed hosts started exactly as the unit's `ExecStart` line says — each under the unit's
//! `CapabilityBoundingSet` (so the capabilities it keeps are enough), each with its own copy
//! of `deploy/agent.toml` filled in as the README's install section says (`init = true` on
//! the first host, `join` and `token-file` on the others) — form a cluster whose published
//! port answers on every host.
//!
//! Needs root and `systemd-analyze`, `setpriv`; run by `cargo xtask test`.

use std::{fs, path::Path, process::Command};

use xtask::{
    cluster::{
        create_service, in_netns, ready_count, skein_ok, whoami, write_token_file, DEADLINE,
    },
    testbed::{skein_binary, wait_until, Host, Process, Testbed, TestbedConfig},
};

fn workspace_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

/// The value of the first `KEY=` line of the unit, with `\`-continued lines joined.
fn unit_value(unit: &str, key: &str) -> String {
    let joined = unit.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `setpriv --bounding-set` syntax for the unit's `CapabilityBoundingSet`.
fn bounding_set(unit: &str) -> String {
    let caps: Vec<String> = unit_value(unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_unit_verifies_and_three_hosts_started_as_it_says_serve_a_published_port() {
    let unit = workspace_file("deploy/skein-agent.service");
    let example = workspace_file("deploy/agent.toml");
    let skein = skein_binary().expect("the skein binary");
    let exec_start = unit_value(&unit, "ExecStart");
    let mut words = exec_start.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/skein"), "{exec_start}");
    let args: Vec<&str> = words.collect();
    assert_eq!(
        args,
        ["agent", "--config", "/etc/skein/agent.toml"],
        "ExecStart changed: update this test and the README's install section"
    );

    let bed = Testbed::new("deploy", TestbedConfig::with_hosts(3)).unwrap();
    bed.make_wire_like().unwrap();

    // systemd-analyze verify on a copy pointing at the built binary.
    let copy = bed.run_dir().join("skein-agent.service");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/skein", &skein.display().to_string()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("running systemd-analyze");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let bounding = bounding_set(&unit);
    let first = bed.host(0);
    let mut token = String::new();
    let mut agents: Vec<Process> = Vec::new();
    for (i, host) in bed.hosts().iter().enumerate() {
        // The example as the README says to fill it in, plus the testbed's own places
        // (its bpffs is mounted outside the host's namespace; its prefix lets sweeps tell
        // whose leftovers are whose).
        let mut config = example.clone();
        if i == 0 {
            config.push_str("\ninit = true\n");
        } else {
            let token_file = write_token_file(host, "join-token", &token).unwrap();
            config.push_str(&format!(
                "\njoin = [\"{}\"]\ntoken-file = \"{token_file}\"\n",
                first.underlay_ip(),
            ));
        }
        config.push_str(&format!(
            "bpf-dir = \"{}\"\nresource-prefix = \"{}\"\n",
            host.bpf_dir().display(),
            host.netns()
        ));
        let config_path = host.dir().join("agent.toml");
        fs::write(&config_path, config).unwrap();
        agents.push(start_as_the_unit_says(
            host,
            &skein,
            &bounding,
            &config_path,
        ));
        if i == 0 {
            token = wait_until("the join token", DEADLINE, || {
                skein_ok(first, &["join-token"]).map(|t| t.trim().to_owned())
            })
            .unwrap();
        }
    }
    for host in bed.hosts() {
        wait_until(
            &format!("3 ready nodes on {}", host.name()),
            2 * DEADLINE,
            || ready_count(host) == Some(3),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{}",
                agents
                    .iter()
                    .map(Process::log)
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            )
        });
    }
    let status = first.run(
        "grep",
        ["^Cap", &format!("/proc/{}/status", agents[0].pid())],
    );
    eprintln!("h1's agent capabilities:\n{}", status.unwrap_or_default());

    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    for host in bed.hosts() {
        let url = format!("http://{}:8080/", host.underlay_ip());
        let body = wait_until(&format!("curl {url}"), DEADLINE, || {
            let out = in_netns(
                bed.client().netns(),
                &["curl", "-sS", "--max-time", "3", &url],
            )
            .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && body.contains("Hostname:")).then_some(body)
        })
        .unwrap();
        assert!(body.contains("Service: web"), "{body}");
    }
}

/// `setpriv --bounding-set … <skein> agent --config <config>` in `host`: the unit's
/// `ExecStart` with its capability bounding set.
fn start_as_the_unit_says(host: &Host, skein: &Path, bounding: &str, config: &Path) -> Process {
    let mut cmd = host.command("setpriv");
    cmd.arg("--bounding-set")
        .arg(bounding)
        .arg("--")
        .arg(skein)
        .args(["agent", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    host.spawn(cmd, "agent").expect("starting the agent")
}
