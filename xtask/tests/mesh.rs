//! The routing mesh end to end (issue 11's acceptance), on three hosts and a client
//! namespace on a wire-like underlay ([`Testbed::make_wire_like`]), driven through the
//! `skein` CLI: every node's published port rotates over every task and keeps the client's
//! address (TCP and UDP); 100 MB both ways through every node, also to an MTU-1500 backend,
//! and ICMP fragmentation-needed for DF UDP that does not fit; a download across scaling; a
//! killed host's flows reset and the survivors serve every request; conntrack timeouts;
//! hostile traffic counted and harmless; VXLAN on the ingress VNI with valid checksums on
//! the underlay; only what is published opens. Needs root.
//!
//! The client-side probes are Python (`mesh_scripts.py`, beside this file): raw sockets and
//! connections held open across events are simpler there than through curl. Every wait is
//! bounded; the testbed removes everything on failure.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use xtask::{
    cluster::{
        create_service, in_netns, kill_host, netns_with_ip, node_rows, running_tasks, skein,
        skein_ok, start_cluster_with, wait_node_down, whoami, TaskInfo, DEADLINE,
    },
    scrape::{scrape, verdict_packets},
    testbed::{wait_until, Process, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

/// The ingress VNI (MESH-DESIGN: `MeshConfig.ingress_vni`; the first of Skein's VNI range).
const INGRESS_VNI: u32 = 4096;
/// Published ports.
const WEB: u16 = 8080;
const UDP: u16 = 5300;
const MB100: u64 = 100 << 20;
/// Bytes VXLAN adds (outer Ethernet, IPv4, UDP, VXLAN).
const VXLAN_OVERHEAD: u32 = 50;

fn scripts() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mesh_scripts.py")
        .display()
        .to_string()
}

/// A 3-host cluster on a wire-like underlay, each agent with `extra` flags.
fn cluster(label: &str, extra: &[String]) -> (Testbed, Vec<Process>, String) {
    let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().expect("wire-like underlay");
    assert!(bed.is_wire_like().unwrap());
    let extra = extra.to_vec();
    let (agents, token) = start_cluster_with(&bed, |_| extra.clone(), &[]).expect("cluster");
    (bed, agents, token)
}

/// Waits until every host lists `n` running tasks of `service`; returns h1's list.
fn wait_running(bed: &Testbed, service: &str, n: usize) -> Vec<TaskInfo> {
    for host in bed.hosts() {
        wait_until(
            &format!("{n} running {service} tasks on {}", host.name()),
            DEADLINE,
            || running_tasks(host, service).len() == n,
        )
        .unwrap();
    }
    running_tasks(bed.host(0), service)
}

/// `curl` from the client: the body, or an error with curl's stderr.
fn curl(bed: &Testbed, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["curl", "-sS", "--max-time", "5"];
    all.extend_from_slice(args);
    let out = in_netns(bed.client().netns(), &all).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// The client's probe script: its stdout lines.
fn probe(bed: &Testbed, args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            bed.client().netns(),
            "timeout",
            "120",
            "python3",
            &scripts(),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every window of 3 consecutive answers names 3 different tasks, and all of `tasks` answer.
fn assert_strict_rotation(answers: &[String], tasks: &BTreeSet<String>, what: &str) {
    for w in answers.windows(3) {
        let distinct: BTreeSet<&String> = w.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "{what}: not a strict rotation at {w:?} in {answers:?}"
        );
    }
    let seen: BTreeSet<String> = answers.iter().cloned().collect();
    assert_eq!(&seen, tasks, "{what}: answers {answers:?}");
}

#[test]
fn published_tcp_port_rotates_over_every_task_through_every_node_keeping_the_client_address() {
    let (bed, _agents, _) = cluster("mesh-rotate", &[]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    let tasks: BTreeSet<String> = wait_running(&bed, "web", 3)
        .into_iter()
        .map(|t| t.id)
        .collect();
    for host in bed.hosts() {
        let url = format!("http://{}:{WEB}/", host.underlay_ip());
        wait_until(&format!("the mesh answering on {url}"), DEADLINE, || {
            curl(&bed, &[&url])
        })
        .unwrap();
        let mut answers = Vec::new();
        for i in 0..30 {
            let body = curl(&bed, &[&url]).unwrap_or_else(|e| panic!("request {i} to {url}: {e}"));
            let remote = field(&body, "RemoteAddr:");
            assert_eq!(
                remote.rsplit_once(':').map(|(ip, _)| ip),
                Some(CLIENT_UNDERLAY_IP.to_string().as_str()),
                "the backend sees the client's own address: {body}"
            );
            answers.push(field(&body, "Hostname:").to_owned());
        }
        assert_strict_rotation(&answers, &tasks, &format!("through {}", host.name()));
    }
}

#[test]
fn published_udp_port_answers_through_every_node_and_rotates_per_flow() {
    let (bed, _agents, _) = cluster("mesh-udp", &[]);
    create_service(
        &bed,
        "dns",
        &["--replicas", "3", "--publish", "5300:5300/udp"],
        &whoami(&["--udp", "--port", "5300"]),
    );
    let tasks: BTreeSet<String> = wait_running(&bed, "dns", 3)
        .into_iter()
        .map(|t| t.id)
        .collect();
    for host in bed.hosts() {
        let ip = host.underlay_ip().to_string();
        wait_until(
            &format!("UDP answers through {}", host.name()),
            DEADLINE,
            || probe(&bed, &["udp", &ip, &UDP.to_string(), "1"])[0] != "TIMEOUT",
        )
        .unwrap();
        let lines = probe(&bed, &["udp", &ip, &UDP.to_string(), "12"]);
        let mut answers = Vec::new();
        for line in &lines {
            assert_ne!(line, "TIMEOUT", "through {}: {lines:?}", host.name());
            // `Hostname: H Task: T Node: N RemoteAddr: A`
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |k: &str| {
                words
                    .iter()
                    .position(|w| *w == k)
                    .map(|i| words[i + 1])
                    .unwrap_or("")
            };
            assert!(
                at("RemoteAddr:").starts_with(&format!("{CLIENT_UNDERLAY_IP}:")),
                "the backend sees the client's address: {line}"
            );
            answers.push(at("Hostname:").to_owned());
        }
        assert_strict_rotation(&answers, &tasks, &format!("UDP through {}", host.name()));
    }
}

/// A file of `bytes` random bytes in the run directory, and its sha256.
fn blob(bed: &Testbed, bytes: u64) -> (PathBuf, String) {
    let dir = bed.shared_dir().join("blob");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blob");
    let status = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&path).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    (path.clone(), sha256_file(&path))
}

fn sha256_file(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Downloads `url` in the client into `dest`; its sha256.
fn download(bed: &Testbed, url: &str, dest: &std::path::Path, extra: &[&str]) -> String {
    let dest_s = dest.display().to_string();
    let mut args = vec!["--max-time", "150", "-o", &dest_s];
    args.extend_from_slice(extra);
    args.push(url);
    let mut all = vec!["curl", "-sS", "-f"];
    all.extend(args);
    let out = in_netns(bed.client().netns(), &all).unwrap();
    assert!(
        out.status.success(),
        "download {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sha256_file(dest)
}

/// `python3 -m http.server PORT` serving `dir`, as a service's command.
fn file_server(dir: &std::path::Path, port: u16) -> Vec<String> {
    [
        "/usr/bin/python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--directory",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(dir.display().to_string()))
    .collect()
}

#[test]
fn hundred_megabytes_both_ways_through_every_node_also_to_an_mtu_1500_backend() {
    let (bed, _agents, _) = cluster("mesh-bulk", &[]);
    let (blob_path, sum) = blob(&bed, MB100);
    let blob_dir = blob_path.parent().unwrap().to_owned();
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    create_service(
        &bed,
        "files",
        &["--replicas", "3", "--publish", "8081:8000"],
        &file_server(&blob_dir, 8000),
    );
    wait_running(&bed, "web", 3);
    wait_running(&bed, "files", 3);

    // The MTU-1500 backend: an attached namespace on h2 (its MTU raised to the underlay's
    // after attach), the only task of `big`, serving whoami on 80 and the file on 8000.
    let h2 = bed.host(1);
    let ns = format!("{}-big", h2.resource_prefix());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    create_service(
        &bed,
        "big",
        &[
            "--replicas",
            "1",
            "--publish",
            "8082:80",
            "--publish",
            "8083:8000",
        ],
        &whoami(&["--port", "80"]),
    );
    skein_ok(h2, &["service", "attach", "big", "--netns", &ns]).unwrap();
    wait_until(
        "big served by the attached namespace only",
        DEADLINE,
        || {
            let r = running_tasks(bed.host(0), "big");
            r.len() == 1 && r[0].name.starts_with("big.attached")
        },
    )
    .unwrap();
    let links = in_netns(&ns, &["ip", "-o", "link", "show"]).unwrap();
    let iface = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .find(|n| n != "lo")
        .expect("the attached namespace has an interface");
    let mtu = bed.underlay_mtu().to_string();
    assert!(in_netns(&ns, &["ip", "link", "set", &iface, "mtu", &mtu])
        .unwrap()
        .status
        .success());
    let mut servers = Vec::new();
    for (cmd, log) in [
        (whoami(&["--port", "80"]), "big-whoami"),
        (file_server(&blob_dir, 8000), "big-files"),
    ] {
        let mut c = h2.command("ip");
        c.args(["netns", "exec", &ns]).args(&cmd);
        servers.push(h2.spawn(c, log).unwrap());
    }

    let dest = bed.run_dir().join("downloaded");
    for host in bed.hosts() {
        let ip = host.underlay_ip();
        for (get_port, post_port) in [(8081, WEB), (8083, 8082)] {
            let url = format!("http://{ip}:{get_port}/blob");
            wait_until(&format!("{url} answering"), DEADLINE, || {
                curl(&bed, &["-o", "/dev/null", "-r", "0-0", &url])
            })
            .unwrap();
            assert_eq!(
                download(&bed, &url, &dest, &[]),
                sum,
                "download {url} intact"
            );
            let blob_arg = format!("@{}", blob_path.display());
            let up = format!("http://{ip}:{post_port}/upload");
            let body = curl(
                &bed,
                &["--max-time", "150", "--data-binary", &blob_arg, &up],
            )
            .unwrap_or_else(|e| panic!("upload to {up}: {e}"));
            assert_eq!(field(&body, "Length:"), MB100.to_string(), "{body}");
            assert_eq!(field(&body, "SHA256:"), sum, "upload {up} intact");
        }
    }
    drop(servers);
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}

#[test]
fn udp_with_df_too_big_once_encapsulated_gets_fragmentation_needed() {
    let (bed, _agents, _) = cluster("mesh-df", &[]);
    create_service(
        &bed,
        "dns",
        &["--replicas", "3", "--publish", "5300:5300/udp"],
        &whoami(&["--udp", "--port", "5300"]),
    );
    wait_running(&bed, "dns", 3);
    let before: u64 = bed
        .hosts()
        .iter()
        .map(|h| verdict_packets(&scrape(h).unwrap(), "mesh_frag_needed"))
        .sum();
    let want = (bed.underlay_mtu() - VXLAN_OVERHEAD).to_string();
    let mut lowered = 0;
    // Each probe is a new flow: over 3 nodes × 3 probes, flows to remote backends are certain.
    for host in bed.hosts() {
        let ip = host.underlay_ip().to_string();
        wait_until("UDP answering", DEADLINE, || {
            probe(&bed, &["udp", &ip, "5300", "1"])[0] != "TIMEOUT"
        })
        .unwrap();
        for _ in 0..3 {
            let out = probe(&bed, &["df", &ip, "5300"]);
            if out.iter().any(|l| *l == format!("mtu={want}")) {
                lowered += 1;
            }
        }
    }
    let after: u64 = bed
        .hosts()
        .iter()
        .map(|h| verdict_packets(&scrape(h).unwrap(), "mesh_frag_needed"))
        .sum();
    assert!(lowered > 0, "no probe learnt a path MTU of {want}");
    // The client caches the path MTU per destination, so later probes to a node are
    // lowered without another ICMP: at least one per node is counted.
    assert!(
        after >= before + bed.hosts().len() as u64,
        "mesh_frag_needed {before} → {after}, {lowered} probes lowered"
    );
}

#[test]
fn a_long_download_continues_across_scaling_up_and_back() {
    let (bed, _agents, _) = cluster("mesh-scale", &[]);
    let (blob_path, sum) = blob(&bed, MB100);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:8000"],
        &file_server(blob_path.parent().unwrap(), 8000),
    );
    wait_running(&bed, "web", 3);
    let url = format!("http://{}:{WEB}/blob", bed.host(0).underlay_ip());
    // "running" means the process started, not that it listens yet: wait until a full
    // rotation (every task) answers.
    wait_until("every web task answering", DEADLINE, || {
        (0..3)
            .map(|_| curl(&bed, &["-o", "/dev/null", "-r", "0-0", &url]))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap();
    let dest = bed.run_dir().join("downloaded");
    // ~25 s at 4 MB/s: long enough to span both scalings.
    let mut cmd = bed.client().command("curl");
    cmd.args(["-sS", "-f", "--limit-rate", "4M", "--max-time", "120", "-o"])
        .arg(&dest)
        .arg(&url);
    let mut dl = bed.client().spawn(cmd, "long-download").unwrap();
    thread::sleep(Duration::from_secs(3));
    for n in [5, 3] {
        skein_ok(bed.host(0), &["service", "scale", &format!("web={n}")]).unwrap();
        wait_running(&bed, "web", n);
        thread::sleep(Duration::from_secs(2));
    }
    let status = dl
        .wait(Duration::from_secs(150))
        .expect("the download ends");
    assert!(status.success(), "the download failed: {}", dl.log());
    assert_eq!(sha256_file(&dest), sum, "the download is intact");
}

#[test]
fn a_killed_host_resets_its_flows_and_the_survivors_serve_every_request() {
    let (bed, mut agents, _) = cluster("mesh-kill", &[]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    let tasks = wait_running(&bed, "web", 3);
    let h3 = bed.host(2);
    let victim = tasks
        .iter()
        .find(|t| t.host == h3.netns())
        .expect("a task on h3")
        .clone();
    let h1_url = format!("http://{}:{WEB}/", bed.host(0).underlay_ip());
    wait_until("the mesh answering", DEADLINE, || curl(&bed, &[&h1_url])).unwrap();

    // A connection through h1 held open to h3's task.
    let go = bed.run_dir().join("go");
    let mut cmd = bed.client().command("timeout");
    cmd.args(["180", "python3", &scripts(), "held"])
        .args([
            bed.host(0).underlay_ip().to_string(),
            WEB.to_string(),
            victim.id.clone(),
        ])
        .arg(&go)
        .arg("150");
    let held = bed.client().spawn(cmd, "held").unwrap();
    wait_until("the held connection to h3's task", DEADLINE, || {
        held.log().contains("CONNECTED")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", held.log()));

    kill_host(h3, &mut agents[2]).unwrap();
    let survivors = [bed.host(0), bed.host(1)];
    wait_node_down(&survivors, h3.netns(), Duration::from_secs(60)).unwrap();
    for host in survivors {
        let url = format!("http://{}:{WEB}/", host.underlay_ip());
        for i in 0..12 {
            curl(&bed, &["--max-time", "3", &url]).unwrap_or_else(|e| {
                panic!("request {i} through {} after h3 died: {e}", host.name())
            });
        }
    }
    std::fs::write(&go, b"").unwrap();
    let result = wait_until(
        "the held connection's outcome",
        Duration::from_secs(20),
        || {
            held.log()
                .lines()
                .find(|l| !l.starts_with("CONNECTED") && !l.trim().is_empty())
                .map(str::to_owned)
        },
    )
    .unwrap();
    assert!(
        result.starts_with("RESET"),
        "a reset on the next packet, never a hang: {result}"
    );
}

/// Agent flags for short conntrack timeouts, through the config file's `[mesh]` table.
/// The key names are the ones the agent helper was told to use (MESH-DESIGN: SYN,
/// established, closing, UDP); adjust here if they land under other names.
fn short_timeouts(bed: &Testbed, established: &str) -> Vec<String> {
    let path = bed.run_dir().join("mesh-timeouts.toml");
    std::fs::write(
        &path,
        format!(
            "[mesh]\nsyn_timeout = \"2s\"\nclosing_timeout = \"2s\"\nudp_timeout = \"2s\"\nestablished_timeout = \"{established}\"\n"
        ),
    )
    .unwrap();
    vec!["--config".into(), path.display().to_string()]
}

#[test]
fn idle_connections_outlive_short_timeouts_and_an_expired_one_is_reset() {
    // The testbed first, to write the config into its run directory; then the cluster.
    let bed = Testbed::new("mesh-idle", TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().unwrap();
    let extra = short_timeouts(&bed, "8s");
    let (_agents, _) = start_cluster_with(&bed, |_| extra.clone(), &[]).unwrap();
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    wait_running(&bed, "web", 3);
    let ip = bed.host(0).underlay_ip().to_string();
    wait_until("the mesh answering", DEADLINE, || {
        curl(&bed, &[&format!("http://{ip}:{WEB}/")])
    })
    .unwrap();
    // Idle 4 s (past SYN, closing and UDP timeouts of 2 s, inside the established 8 s): still
    // answered. Then idle 16 s (2T; whoami's own idle timeout is 30 s): reset at once.
    let lines = probe(&bed, &["idle", &ip, &WEB.to_string(), "4", "16"]);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("FIRST ANSWERED"),
        "{lines:?}"
    );
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some("AFTER 4 ANSWERED"),
        "{lines:?}"
    );
    let last = lines.get(2).cloned().unwrap_or_default();
    assert!(
        last.starts_with("AFTER 16 RESET"),
        "an expired flow is reset, never left hanging: {lines:?}"
    );
}

#[test]
fn hostile_traffic_is_counted_and_the_agent_and_other_traffic_are_unaffected() {
    let (bed, _agents, _) = cluster("mesh-hostile", &[]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    create_service(
        &bed,
        "empty",
        &["--replicas", "0", "--publish", "8090:80"],
        &whoami(&["--port", "80"]),
    );
    wait_running(&bed, "web", 3);
    let h1 = bed.host(0);
    let ip = h1.underlay_ip().to_string();
    let url = format!("http://{ip}:{WEB}/");
    wait_until("the mesh answering", DEADLINE, || curl(&bed, &[&url])).unwrap();

    // A service without tasks refuses like a closed port: at once, not a timeout.
    let started = Instant::now();
    let refused = curl(&bed, &["--max-time", "5", &format!("http://{ip}:8090/")]).unwrap_err();
    assert!(
        refused.contains("refused") || refused.contains("Couldn't connect"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once"
    );

    let count = 50u64;
    let before = scrape(h1).unwrap();
    // Raw frames from the client's eth0 (MACs as its stack would use them).
    let client_mac = String::from_utf8_lossy(
        &in_netns(
            bed.client().netns(),
            &["cat", "/sys/class/net/eth0/address"],
        )
        .unwrap()
        .stdout,
    )
    .trim()
    .to_owned();
    let neigh = String::from_utf8_lossy(
        &in_netns(bed.client().netns(), &["ip", "neigh", "show", &ip])
            .unwrap()
            .stdout,
    )
    .into_owned();
    let h1_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no neighbour entry for h1: {neigh}"))
        .to_owned();
    let sent = probe(
        &bed,
        &[
            "hostile",
            "eth0",
            &client_mac,
            &h1_mac,
            &CLIENT_UNDERLAY_IP.to_string(),
            &ip,
            "8080",
            "8090",
            &count.to_string(),
        ],
    );
    assert_eq!(sent, [format!("sent {}", 7 * count)]);
    // A bounded SYN flood.
    let flood = in_netns(
        bed.client().netns(),
        &[
            "timeout", "60", "hping3", "-q", "-S", "-p", "8080", "-c", "2000", "-i", "u500", &ip,
        ],
    )
    .unwrap();
    assert!(flood.status.code() != Some(124), "hping3 ran out of time");

    let after = wait_until("the counters", DEADLINE, || scrape(h1)).unwrap();
    let delta = |v: &str| verdict_packets(&after, v) - verdict_packets(&before, v);
    let (invalid, reset, no_backend) = (
        delta("mesh_invalid"),
        delta("mesh_reset"),
        delta("mesh_no_backend"),
    );
    assert!(
        invalid >= 4 * count,
        "bad checksum, options, fragments, SYN+FIN: mesh_invalid +{invalid}"
    );
    assert!(reset >= count, "ACKs without a flow: mesh_reset +{reset}");
    assert!(
        no_backend >= count,
        "SYNs for a service with no task: mesh_no_backend +{no_backend}"
    );
    assert!(
        invalid + reset + no_backend >= 7 * count,
        "random bytes counted too: {invalid} + {reset} + {no_backend}"
    );

    // The agent and ordinary traffic are unaffected.
    for host in bed.hosts() {
        assert_eq!(
            node_rows(host).map(|r| r.len()),
            Some(3),
            "{} answers node ls",
            host.name()
        );
        let url = format!("http://{}:{WEB}/", host.underlay_ip());
        for _ in 0..6 {
            curl(&bed, &[&url]).unwrap();
        }
    }
}

/// `InCsumErrors` of TCP and UDP in a namespace's `/proc/net/snmp`.
fn csum_errors(ns: &str) -> u64 {
    let out = in_netns(ns, &["cat", "/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut total = 0;
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if n == "InCsumErrors" {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    total
}

#[test]
fn mesh_traffic_on_the_underlay_is_vxlan_on_the_ingress_vni_with_valid_checksums() {
    let (bed, _agents, _) = cluster("mesh-wire", &[]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    let tasks = wait_running(&bed, "web", 3);
    let task_ns: Vec<String> = tasks
        .iter()
        .map(|t| {
            let host = bed.hosts().iter().find(|h| h.netns() == t.host).unwrap();
            netns_with_ip(host, &t.ip).unwrap()
        })
        .collect();
    let url = format!("http://{}:{WEB}/", bed.host(0).underlay_ip());
    wait_until("the mesh answering", DEADLINE, || curl(&bed, &[&url])).unwrap();
    let errors_before: Vec<u64> = task_ns.iter().map(|ns| csum_errors(ns)).collect();

    // Capture on h1's switch port: everything h1 (the ingress node) sends and receives.
    let pcap = bed.run_dir().join("h1.pcap");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            bed.underlay_netns(),
            "timeout",
            "60",
            "tcpdump",
            "-U",
            "-n",
            "-i",
            "h1",
            "-c",
            "20000",
            "-w",
        ])
        .arg(&pcap)
        .arg("udp port 4789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(1));
    let (path, _) = blob(&bed, 4 << 20);
    for i in 0..15 {
        curl(&bed, &[&url]).unwrap_or_else(|e| panic!("request {i}: {e}"));
        curl(
            &bed,
            &[
                "--data-binary",
                &format!("@{}", path.display()),
                &format!("{url}upload"),
            ],
        )
        .unwrap();
    }
    thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) of the capture this test started; SIGINT makes it flush and exit.
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let _ = capture.wait();

    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args([
            "-d",
            "udp.port==4789,vxlan",
            "-Y",
            "vxlan",
            "-T",
            "fields",
            "-E",
            "separator=;",
        ])
        .args([
            "-e",
            "vxlan.vni",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let frames: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        frames.len() >= 20,
        "mesh traffic between hosts crosses the underlay as VXLAN: {text}"
    );
    let hosts: Vec<String> = bed
        .hosts()
        .iter()
        .map(|h| h.underlay_ip().to_string())
        .collect();
    for frame in &frames {
        let f: Vec<&str> = frame.split(';').collect();
        assert_eq!(f[0], INGRESS_VNI.to_string(), "on the ingress VNI: {frame}");
        // Outer and inner IPv4 checksums: 1 = good (0 = bad, 2 = unverified).
        assert!(
            f[1].split(',').all(|s| s == "1"),
            "IPv4 checksums (outer, inner): {frame}"
        );
        // The outer UDP checksum: good, or absent (zero, allowed for VXLAN over IPv4);
        // never bad.
        assert!(
            f[2].split(',').next().is_some_and(|s| s != "0"),
            "outer UDP checksum: {frame}"
        );
        let outer: Vec<&str> = f[3]
            .split(',')
            .zip(f[4].split(','))
            .map(|(s, _)| s)
            .collect();
        assert!(
            hosts.iter().any(|h| h == outer[0]),
            "outer source is a cluster host: {frame}"
        );
        // The inner Ethernet header carries the published port both ways (the request's
        // source, the reply's destination: `mesh::published_port_mac`).
        let port_mac = "06:53:4b:50:1f:90";
        let inner_mac = |field: &str| field.split(',').nth(1) == Some(port_mac);
        assert!(
            inner_mac(f[5]) || inner_mac(f[6]),
            "the published port in the inner Ethernet header: {frame}"
        );
    }
    let errors_after: Vec<u64> = task_ns.iter().map(|ns| csum_errors(ns)).collect();
    assert_eq!(
        errors_before, errors_after,
        "inner TCP/UDP checksums are good at the receivers (InCsumErrors)"
    );
}

#[test]
fn only_published_ports_open_and_skeins_own_ports_cannot_be_published() {
    let (bed, _agents, _) = cluster("mesh-closed", &[]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    wait_running(&bed, "web", 3);
    // A host's own TCP listener on an unpublished port keeps working from the client.
    let h2 = bed.host(1);
    let mut c = h2.command("python3");
    c.args([
        "-m",
        "http.server",
        "9999",
        "--bind",
        &h2.underlay_ip().to_string(),
    ]);
    let _server = h2.spawn(c, "host-listener").unwrap();
    let url = format!("http://{}:9999/", h2.underlay_ip());
    wait_until("the host's own listener", DEADLINE, || {
        curl(&bed, &["-o", "/dev/null", &url])
    })
    .unwrap();
    for _ in 0..5 {
        curl(&bed, &["-o", "/dev/null", &url]).unwrap();
    }
    // Publishing a port Skein itself uses is refused at create, and creates nothing.
    // A command that would run (whoami, detached): only the refusal can make create fail.
    let command = whoami(&["--port", "81"]);
    for publish in ["4789:80/udp", "7946:80", "7946:80/udp"] {
        let mut args = vec![
            "service",
            "create",
            "bad",
            "--detach",
            "--publish",
            publish,
            "--",
        ];
        args.extend(command.iter().map(String::as_str));
        let out = skein(bed.host(0), &args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--publish {publish} was accepted");
        let port = publish.split(':').next().unwrap();
        assert!(
            stderr.contains(port),
            "the refusal names the port {port}: {stderr}"
        );
    }
    let ls = skein_ok(bed.host(0), &["service", "ls"]).unwrap();
    assert!(!ls.contains("bad"), "{ls}");
}
