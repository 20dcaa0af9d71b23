//! The join token as a secret, and its rotation (issue 15, deliverable 4), on a 3-host
//! testbed driven through the `skein` CLI as the README says (`--token-file`):
//!
//! - no token in `ps -eo args`; the state directory is 0700, its token and node key 0600;
//!   `skein join-token` (and reading the token file) refused to `nobody`;
//! - `skein join-token --rotate` while a request loop runs through the routing mesh
//!   (published port on two nodes, tasks on both): no request fails; the members switch;
//!   gossip captured on the underlay afterwards does not open with the old key (the
//!   manager crate's own [`Opener`]) and does with the new one; an agent joining with the
//!   old token fails with a sentence that says why; the member that was down during the
//!   rotation rejoins with the new token.
//!
//! Needs root; run by `cargo xtask test` (which builds the `skein` binary first).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use manager::{
    secure::{keys::SWITCH_PERIOD, JoinToken, Opener, Reject},
    NodeId,
};
use xtask::{
    cluster::{
        create_service, in_netns, kill_host, ready_count, running_tasks, skein, skein_ok,
        start_cluster, wait_node_down, whoami, write_token_file, DEADLINE,
    },
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig},
};

const WEB: u16 = 8080;

/// Where an agent of the testbed keeps its state (the default, scoped to its namespace).
fn state_dir(host: &Host) -> PathBuf {
    Path::new("/var/lib/skein").join(host.netns())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `args` inside `host` as the user `nobody` (setpriv drops root after the
/// namespace is entered).
fn as_nobody(host: &Host, args: &[&str]) -> std::process::Output {
    host.command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv")
}

/// One HTTP request from the client through the mesh.
fn curl(bed: &Testbed, url: &str) -> Result<String, String> {
    let out = in_netns(
        bed.client().netns(),
        &["curl", "-sS", "--max-time", "5", url],
    )
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Requests in a loop (bounded in count and time) until `stop`; counts the failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(bed: &Testbed, urls: Vec<String>) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let client = bed.client().netns().to_owned();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = thread::spawn(move || {
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(240);
            for i in 0..20_000usize {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let url = &urls[i % urls.len()];
                let out = in_netns(&client, &["curl", "-sS", "--max-time", "5", url]);
                match out {
                    Ok(out) if out.status.success() => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(
                            "{url}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{url}: {e}"));
                    }
                }
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            thread,
        }
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.join().expect("load thread");
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// The UDP payloads to or from port 7946 in a pcap file (Ethernet, IPv4).
fn gossip_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    assert!(pcap.len() >= 24, "pcap too short");
    let little = pcap[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], at: usize| {
        let bytes: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = &frame[14 + ihl..];
        let (src, dst) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        if src == 7946 || dst == 7946 {
            payloads.push(udp[8..].to_vec());
        }
    }
    payloads
}

/// Captures gossip on `host`'s underlay for `seconds`.
fn capture_gossip(host: &Host, seconds: u64) -> Vec<Vec<u8>> {
    let file = host.dir().join("gossip.pcap");
    let _ = fs::remove_file(&file);
    let out = host
        .command("timeout")
        .args([
            &seconds.to_string(),
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-s",
            "0",
        ])
        .arg("-w")
        .arg(&file)
        .args(["udp", "port", "7946"])
        .output()
        .expect("tcpdump");
    // timeout's 124: it ran the whole time, as meant.
    assert!(
        out.status.code() == Some(124) || out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    gossip_payloads(&fs::read(&file).expect("reading the capture"))
}

/// How many of `datagrams` open with `token`'s key (a fresh opener per datagram, so
/// replay state plays no part).
fn opened_with(token: &JoinToken, datagrams: &[Vec<u8>]) -> (usize, usize) {
    let (mut opened, mut forged) = (0, 0);
    for d in datagrams {
        let mut opener = Opener::new(&token.key, token.cluster_id, NodeId([0xee; 16]));
        match opener.open(d) {
            Ok(_) => opened += 1,
            Err(Reject::Forged) => forged += 1,
            Err(other) => panic!("a captured datagram was {other:?}, not forged or opened"),
        }
    }
    (opened, forged)
}

fn join_token(host: &Host) -> String {
    skein_ok(host, &["join-token"]).unwrap().trim().to_owned()
}

#[test]
fn the_token_stays_secret_and_a_rotation_revokes_it_without_interruption() {
    let bed = Testbed::new("token", TestbedConfig::with_hosts(3)).expect("testbed");
    // The mesh's replies cross hosts in VXLAN: the underlay must complete checksums.
    bed.make_wire_like().expect("wire-like underlay");
    let (mut agents, old_text) = start_cluster(&bed).expect("cluster");
    let old: JoinToken = old_text.parse().expect("the printed token parses");
    let (h1, h2, h3) = (bed.host(0), bed.host(1), bed.host(2));

    // --- The token as a secret (regression tests for what already held, and the README
    // way of starting agents). ---
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    // This testbed's processes only (other tests may run beside this one).
    let ps: String = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(bed.prefix()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(ps.contains("--token-file"), "agents started the README way");
    assert!(!ps.contains(&old_text), "a token on a command line:\n{ps}");
    assert!(!ps.contains("SKEIN-1-"), "a token on a command line:\n{ps}");
    for host in bed.hosts() {
        let dir = state_dir(host);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&dir.join("join-token")), 0o600);
        assert_eq!(mode(&dir.join("node-key")), 0o600);
        let skein_bin = xtask::testbed::skein_binary().unwrap();
        let refused = as_nobody(host, &[&skein_bin.display().to_string(), "join-token"]);
        assert!(!refused.status.success(), "join-token answered nobody");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&refused.stdout),
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(!shown.contains("SKEIN-1-"), "{shown}");
        let token_file = dir.join("join-token").display().to_string();
        let read = as_nobody(host, &["cat", &token_file]);
        assert!(!read.status.success(), "nobody read {token_file}");
    }
    // The check above can fail: root (the same command without setpriv) gets the token.
    assert_eq!(join_token(h2), old_text);

    // --- The member that will miss the rotation goes down first; its tasks move. ---
    create_service(
        &bed,
        "web",
        &["--replicas", "4", "--publish", &format!("{WEB}:80")],
        &whoami(&["--port", "80"]),
    );
    wait_until("4 web tasks running", DEADLINE, || {
        running_tasks(h1, "web").len() == 4
    })
    .unwrap();
    kill_host(h3, &mut agents[2]).unwrap();
    wait_node_down(&[h1, h2], h3.netns(), DEADLINE).unwrap();
    wait_until(
        "4 web tasks running on h1 and h2",
        Duration::from_secs(60),
        || {
            let tasks = running_tasks(h1, "web");
            tasks.len() == 4 && tasks.iter().all(|t| t.host != h3.netns())
        },
    )
    .unwrap();
    let hosts_with_tasks: std::collections::BTreeSet<String> = running_tasks(h1, "web")
        .into_iter()
        .map(|t| t.host)
        .collect();
    assert_eq!(hosts_with_tasks.len(), 2, "tasks on both live hosts");
    let urls: Vec<String> = [h1, h2]
        .iter()
        .map(|h| format!("http://{}:{WEB}/", h.underlay_ip()))
        .collect();
    for url in &urls {
        wait_until(&format!("{url} answering"), DEADLINE, || curl(&bed, url)).unwrap();
    }

    // --- Rotation under load. ---
    let load = Load::start(&bed, urls.clone());
    thread::sleep(Duration::from_secs(3));
    let rotated = skein(h1, &["join-token", "--rotate"]).unwrap();
    assert!(
        rotated.status.success(),
        "rotate: {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let rotated_at = Instant::now();
    let new_text = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    let new: JoinToken = new_text.parse().expect("the rotated token parses");
    assert_eq!(new.cluster_id, old.cluster_id);
    assert_ne!(new_text, old_text);
    assert_eq!(join_token(h1), new_text);
    wait_until("h2 to switch to the new key", DEADLINE, || {
        join_token(h2) == new_text
    })
    .unwrap();
    // Saved for restarts, still 0600.
    wait_until("h2 to save the new token", DEADLINE, || {
        fs::read_to_string(state_dir(h2).join("join-token")).is_ok_and(|t| t.trim() == new_text)
    })
    .unwrap();
    assert_eq!(mode(&state_dir(h2).join("join-token")), 0o600);
    thread::sleep(Duration::from_secs(3));

    // Gossip after the switch: none of it opens with the old key, all with the new.
    let captured = capture_gossip(h2, 4);
    assert!(
        captured.len() >= 10,
        "only {} gossip datagrams",
        captured.len()
    );
    let (opened_old, _) = opened_with(&old, &captured);
    let (opened_new, _) = opened_with(&new, &captured);
    assert_eq!(
        opened_old, 0,
        "gossip after the rotation opened with the old key"
    );
    assert_eq!(
        opened_new,
        captured.len(),
        "every captured datagram is the cluster's, under the new key"
    );

    // The old key is refused once the switch period is over; the load runs meanwhile.
    while rotated_at.elapsed() < SWITCH_PERIOD + Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(500));
    }
    let (ok, failed, errors) = load.finish();
    eprintln!("requests through the rotation: {ok} answered, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok >= 20, "only {ok} requests ran");

    // --- An agent joining with the old token fails and says why. ---
    h3.run("ip", ["link", "set", "eth0", "up"]).unwrap();
    let seed = h1.underlay_ip().to_string();
    let old_file = write_token_file(h3, "old-token", &old_text).unwrap();
    let fresh = h3.dir().join("fresh-state").display().to_string();
    let mut stranger = h3
        .start_agent(&[
            "--join",
            &seed,
            "--token-file",
            &old_file,
            "--state-dir",
            &fresh,
            "--join-timeout",
            "8s",
        ])
        .unwrap();
    let status = stranger.wait(Duration::from_secs(90)).unwrap();
    assert!(!status.success(), "the old token joined");
    let log = stranger.log();
    assert!(
        log.contains("could not join the cluster")
            && log.contains("no longer valid")
            && log.contains("join-token --rotate"),
        "{log}"
    );
    assert!(!log.contains(&old_text), "the token in the log");
    assert_eq!(ready_count(h1), Some(2), "the stranger is no member");

    // --- The member that was down rejoins with the new token (its own state dir). ---
    let new_file = write_token_file(h3, "new-token", &new_text).unwrap();
    let back: Process = h3
        .start_agent(&["--join", &seed, "--token-file", &new_file])
        .unwrap();
    agents[2] = back;
    for host in bed.hosts() {
        wait_until(
            &format!("3 ready nodes on {}", host.name()),
            Duration::from_secs(60),
            || ready_count(host) == Some(3),
        )
        .unwrap();
    }
    assert_eq!(join_token(h3), new_text);
    assert_eq!(
        fs::read_to_string(state_dir(h3).join("join-token"))
            .unwrap()
            .trim(),
        new_text
    );
    drop(agents);
}
