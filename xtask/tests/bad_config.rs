//! Bad configuration stops `skein agent` before it touches the kernel (issue 16,
//! deliverable 5): an unknown key, a wrong type, a bad address, an interface that does not
//! exist, a listen address already in use — in the config file or on the command line —
//! each ends the agent with a non-zero status and one `error:` sentence naming the key or
//! value, and leaves nothing behind: no bpffs mount, no pin, no XDP/tc attachment, no
//! interface, no namespace, no cgroup.
//!
//! Every run is the unit's `ExecStart` (`skein agent --config FILE`, under its capability
//! bounding set, as `deploy.rs` runs it) with a copy of `deploy/agent.toml` edited for the
//! case, and the default paths an agent in a named namespace takes (so its bpffs is the
//! default `/sys/fs/bpf`, which `ip netns exec` leaves unmounted: an agent that got as far
//! as the dataplane would mount one). A wrapper shell in the agent's own mount namespace
//! records the mounts, the pins and the attachments before the agent starts and after it
//! exits (a mount made there dies with that namespace, so only it can see one); the test
//! compares interfaces, namespaces and cgroups itself. A last run with the config left
//! valid shows that these observations do see an agent's kernel work.
//!
//! Needs root, `bpftool`, `setpriv`; run by `cargo xtask test`.

use std::{
    fs,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xtask::testbed::{run_command, skein_binary, Host, InNetns, Process, Testbed, TestbedConfig};

/// How long a refused start may take (it should take milliseconds; the machine is shared).
const REFUSAL: Duration = Duration::from_secs(60);
/// How long the valid start may take to verify and attach the programs.
const STARTUP: Duration = Duration::from_secs(120);

/// Records what an agent can leave in its mount namespace: `$1` the output directory,
/// `$2` the agent's bpffs directory, the rest the agent's command line. SIGTERM (the
/// test stopping the valid agent) goes to the agent; the shell records and exits after it.
const OBSERVE: &str = r#"out=$1; bpf=$2; shift 2
snap() {
    cat /proc/self/mountinfo > "$out/mounts-$1"
    find "$bpf" -mindepth 1 > "$out/pins-$1" 2>/dev/null
    bpftool -j net show > "$out/attached-$1" 2>&1
}
snap before
"$@" &
agent=$!
trap 'kill -TERM $agent' TERM
wait $agent
rc=$?
# A trapped signal ends `wait` early; then wait for the agent itself (bounded by the test).
while kill -0 $agent 2>/dev/null; do wait $agent; rc=$?; done
snap after
exit $rc
"#;

/// A socket the case holds while the agent starts.
enum Occupy {
    Nothing,
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// A live listener on the agent's API socket path.
    ApiSocket,
}

struct Case {
    name: &'static str,
    /// (line of the example replaced, its replacement); `None` to replace nothing.
    replace: Option<(&'static str, &'static str)>,
    /// Lines appended to the example.
    append: &'static str,
    /// Flags after `--config FILE`.
    flags: &'static [&'static str],
    occupy: Occupy,
    /// What the `error:` sentence must name.
    needles: Vec<String>,
}

const UNDERLAY_LINE: &str = "underlay-iface = \"eth0\"";

fn cases(host: &Host) -> Vec<Case> {
    let gossip: SocketAddr = (host.underlay_ip(), 7946).into();
    let socket = api_socket(host);
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        Case {
            name: "unknown key",
            replace: Some((UNDERLAY_LINE, "underlay-interface = \"eth0\"")),
            append: "",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["unknown setting `underlay-interface`"]),
        },
        Case {
            name: "wrong type",
            replace: None,
            append: "gossip-port = \"7946\"",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["gossip-port", "\"7946\"", "without quotes"]),
        },
        Case {
            // The agent takes no CIDR setting; a CIDR where an address goes is the closest.
            name: "CIDR for an address",
            replace: None,
            append: "advertise-addr = \"10.200.0.3/24\"",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["advertise-addr", "10.200.0.3/24", "not an IPv4 address"]),
        },
        Case {
            name: "bad address",
            replace: None,
            append: "metrics-addr = \"127.0.0.1:99999\"",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["metrics-addr", "127.0.0.1:99999"]),
        },
        Case {
            name: "missing underlay interface",
            replace: Some((UNDERLAY_LINE, "underlay-iface = \"nosuch0\"")),
            append: "",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["\"nosuch0\"", "underlay-iface", "does not exist"]),
        },
        Case {
            name: "missing endpoint interface",
            replace: None,
            append: "endpoint-iface = [\"nosuch1\"]",
            flags: &[],
            occupy: Occupy::Nothing,
            needles: s(&["\"nosuch1\"", "endpoint-iface", "does not exist"]),
        },
        Case {
            name: "metrics address in use",
            replace: None,
            append: "",
            flags: &[],
            occupy: Occupy::Tcp("127.0.0.1:9946".parse().unwrap()),
            needles: s(&["127.0.0.1:9946", "metrics-addr", "in use"]),
        },
        Case {
            name: "gossip port in use",
            replace: None,
            append: "",
            flags: &[],
            occupy: Occupy::Udp(gossip),
            needles: vec![gossip.to_string(), "gossip-port".into(), "in use".into()],
        },
        Case {
            name: "DNS address in use",
            replace: None,
            append: "dns-addr = \"127.0.0.1:5353\"",
            flags: &[],
            occupy: Occupy::Udp("127.0.0.1:5353".parse().unwrap()),
            needles: s(&["127.0.0.1:5353", "dns-addr", "in use"]),
        },
        Case {
            name: "API socket in use",
            replace: None,
            append: "",
            flags: &[],
            occupy: Occupy::ApiSocket,
            needles: vec![socket.display().to_string(), "already listening".into()],
        },
        Case {
            name: "bad flag value",
            replace: None,
            append: "",
            flags: &["--metrics-addr", "nope"],
            occupy: Occupy::Nothing,
            needles: s(&["--metrics-addr", "'nope'"]),
        },
        Case {
            name: "unknown flag",
            replace: None,
            append: "",
            flags: &["--underlay-interface", "eth0"],
            occupy: Occupy::Nothing,
            needles: s(&["'--underlay-interface'"]),
        },
        Case {
            // A flag beats the (valid) file, and its interface is checked like the file's.
            name: "missing interface by flag",
            replace: None,
            append: "",
            flags: &["--underlay-iface", "nosuch2"],
            occupy: Occupy::Nothing,
            needles: s(&["\"nosuch2\"", "underlay-iface", "does not exist"]),
        },
    ]
}

/// The agent's default API socket inside `host` (`config::paths`).
fn api_socket(host: &Host) -> PathBuf {
    Path::new("/run/skein")
        .join(host.netns())
        .join("skein.sock")
}

/// The agent's default state directory inside `host`.
fn state_dir(host: &Host) -> PathBuf {
    Path::new("/var/lib/skein").join(host.netns())
}

/// The agent's default bpffs directory inside `host`.
fn bpf_dir(host: &Host) -> PathBuf {
    Path::new("/sys/fs/bpf/skein").join(host.netns())
}

fn workspace_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `setpriv --bounding-set` syntax for the unit's `CapabilityBoundingSet` (as `deploy.rs`).
fn bounding_set(unit: &str) -> String {
    let joined = unit.replace("\\\n", " ");
    let caps: Vec<String> = joined
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

/// Runs `f` on a thread inside `host`'s network namespace (sockets made there stay there).
fn inside<T: Send>(host: &Host, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _netns = InNetns::enter(host);
                f()
            })
            .join()
            .expect("the thread inside the namespace")
    })
}

/// What the test sees of a host outside the agent's mount namespace.
#[derive(Debug, PartialEq, Eq)]
struct Outside {
    /// `ip -j link` in the host: (ifindex, name) of every interface.
    links: Vec<(u64, String)>,
    /// Named namespaces of this testbed.
    namespaces: Vec<String>,
}

fn outside(bed: &Testbed, host: &Host) -> Outside {
    let json: serde_json::Value = serde_json::from_str(
        &run_command(Command::new("ip").args(["-n", host.netns(), "-j", "link", "show"]))
            .expect("ip link"),
    )
    .expect("ip -j link prints JSON");
    let mut links: Vec<(u64, String)> = json
        .as_array()
        .expect("a list of links")
        .iter()
        .map(|l| {
            (
                l["ifindex"].as_u64().unwrap_or(0),
                l["ifname"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    links.sort();
    let mut namespaces: Vec<String> = fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(bed.prefix()))
        .collect();
    namespaces.sort();
    Outside { links, namespaces }
}

/// Cgroup groups of the agent's node (`skein/<node-id>` in any hierarchy), if its state
/// directory got a node ID.
fn node_groups(host: &Host) -> Vec<PathBuf> {
    let Ok(id) = fs::read_to_string(state_dir(host).join("node-id")) else {
        return Vec::new();
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| left.split(' ').nth(4))?
        })
        .map(|mount| Path::new(mount).join("skein").join(id.trim()))
        .filter(|group| group.exists())
        .collect()
}

/// What changed inside the agent's mount namespace between before and after.
struct Inside {
    new_mounts: Vec<String>,
    pins: Vec<String>,
    attached_before: String,
    attached_after: String,
}

/// `prefix`: the testbed's, which everything the agent names carries.
fn inside_changes(out: &Path, prefix: &str) -> Inside {
    let read =
        |name: &str| fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    // A mount's line is the same before and after unless it changed; IDs are stable.
    // `ip netns exec` makes the agent's mount namespace a slave of the machine's, so other
    // tests' mounts (their namespaces in /run/netns, their bpffs) arrive in it meanwhile,
    // tagged `master:N`; a mount made in it has no such tag. Ours (a namespace the agent
    // names after the testbed, made in the machine's mount namespace) are kept either way.
    let before = read("mounts-before");
    let new_mounts = read("mounts-after")
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .filter(|l| {
            let (fields, _) = l.split_once(" - ").unwrap_or((l, ""));
            !fields.split(' ').any(|f| f.starts_with("master:")) || l.contains(prefix)
        })
        .map(str::to_owned)
        .collect();
    Inside {
        new_mounts,
        pins: read("pins-after").lines().map(str::to_owned).collect(),
        attached_before: read("attached-before"),
        attached_after: read("attached-after"),
    }
}

struct Run {
    agent: Process,
    out: PathBuf,
}

/// Starts the unit's `ExecStart` (`skein agent --config <config> <flags>`) in `host` under
/// the unit's bounding set, inside the observing wrapper.
fn start(host: &Host, name: &str, config: &str, flags: &[&str], bounding: &str) -> Run {
    let dir = host.dir().join(name.replace(' ', "-"));
    fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("agent.toml");
    fs::write(&config_path, config).unwrap();
    let mut cmd = host.command("sh");
    cmd.args(["-c", OBSERVE, "observe"])
        .arg(&dir)
        .arg(bpf_dir(host))
        .arg("setpriv")
        .args(["--bounding-set", bounding, "--"])
        .arg(skein_binary().expect("the skein binary"))
        .args(["agent", "--config"])
        .arg(&config_path)
        .args(flags)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let agent = host
        .spawn(cmd, &name.replace(' ', "-"))
        .expect("starting the agent");
    Run { agent, out: dir }
}

/// Removes the default directories an agent of `host` made (state, socket), so each case
/// starts as a fresh host does.
fn forget_agent_dirs(host: &Host) {
    for dir in [
        state_dir(host),
        api_socket(host).parent().unwrap().to_owned(),
    ] {
        if let Err(e) = fs::remove_dir_all(&dir) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::NotFound,
                "{}: {e}",
                dir.display()
            );
        }
    }
}

#[test]
fn bad_configuration_stops_the_agent_with_one_sentence_before_the_kernel_is_touched() {
    let unit = workspace_file("deploy/skein-agent.service");
    let example = workspace_file("deploy/agent.toml");
    assert!(
        example.lines().any(|l| l == UNDERLAY_LINE),
        "deploy/agent.toml no longer has `{UNDERLAY_LINE}`: update this test"
    );
    let bounding = bounding_set(&unit);
    let bed = Testbed::new("bad_config", TestbedConfig::with_hosts(1)).expect("the testbed");
    let host = bed.host(0);
    // As the README fills in the example on the first host; the prefix lets sweeps find
    // whatever an agent made.
    let valid = format!(
        "{example}\ninit = true\nresource-prefix = \"{}\"\n",
        host.resource_prefix()
    );

    let mut failures = Vec::new();
    for case in cases(host) {
        forget_agent_dirs(host);
        let mut config = valid.clone();
        if let Some((from, to)) = case.replace {
            config = config.replace(from, to);
        }
        config.push_str(case.append);
        config.push('\n');

        let before = outside(&bed, host);
        // Held until the agent has exited.
        let _held: Option<Box<dyn std::any::Any>> = match case.occupy {
            Occupy::Nothing => None,
            Occupy::Tcp(addr) => Some(Box::new(
                inside(host, || TcpListener::bind(addr)).expect("occupying the port"),
            )),
            Occupy::Udp(addr) => Some(Box::new(
                inside(host, || UdpSocket::bind(addr)).expect("occupying the port"),
            )),
            Occupy::ApiSocket => {
                let path = api_socket(host);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                Some(Box::new(
                    UnixListener::bind(&path).expect("occupying the socket"),
                ))
            }
        };
        let mut run = start(host, case.name, &config, case.flags, &bounding);
        let status = match run.agent.wait(REFUSAL) {
            Ok(status) => status,
            Err(e) => {
                failures.push(format!(
                    "{}: did not exit: {e:#}\n{}",
                    case.name,
                    run.agent.log()
                ));
                let _ = run.agent.terminate(Duration::from_secs(10));
                continue;
            }
        };
        let log = run.agent.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error")).collect();
        let mut problems = Vec::new();
        if status.success() {
            problems.push(format!("exited with {status}"));
        }
        match errors.as_slice() {
            [sentence] => {
                for needle in &case.needles {
                    if !sentence.contains(needle.as_str()) {
                        problems.push(format!("the sentence does not name {needle}"));
                    }
                }
            }
            _ => problems.push(format!("{} error lines, not one", errors.len())),
        }
        let inside = inside_changes(&run.out, bed.prefix());
        if !inside.new_mounts.is_empty() {
            problems.push(format!("mounted: {:?}", inside.new_mounts));
        }
        if !inside.pins.is_empty() {
            problems.push(format!("pinned: {:?}", inside.pins));
        }
        if inside.attached_before != inside.attached_after {
            problems.push(format!(
                "attached programs: {} -> {}",
                inside.attached_before.trim(),
                inside.attached_after.trim()
            ));
        }
        let after = outside(&bed, host);
        if after != before {
            problems.push(format!("links or namespaces: {before:?} -> {after:?}"));
        }
        let groups = node_groups(host);
        if !groups.is_empty() {
            problems.push(format!("cgroups: {groups:?}"));
        }
        eprintln!(
            "{}: {status}, {}",
            case.name,
            errors.first().copied().unwrap_or("(no error line)")
        );
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{log}", case.name, problems.join("; ")));
        }
    }

    // The same observations see a valid agent's work: the bpffs it mounts, its pins, its
    // attachments, its host-path interface. (Its state directory stays, so the testbed's
    // cleanup removes its node's cgroups; checked below.)
    forget_agent_dirs(host);
    let before = outside(&bed, host);
    let mut run = start(host, "valid", &valid, &[], &bounding);
    match run.agent.wait_for_log("agent running", STARTUP) {
        Ok(()) => {
            let status = run
                .agent
                .terminate(Duration::from_secs(30))
                .expect("the valid agent stops");
            let inside = inside_changes(&run.out, bed.prefix());
            let after = outside(&bed, host);
            eprintln!(
                "valid: {status}; mounted {}, pinned {}, attachments changed: {}, links {} -> {}",
                inside.new_mounts.len(),
                inside.pins.len(),
                inside.attached_before != inside.attached_after,
                before.links.len(),
                after.links.len()
            );
            if inside.new_mounts.is_empty()
                || inside.pins.is_empty()
                || inside.attached_before == inside.attached_after
            {
                failures.push(format!(
                    "the observations missed a valid agent's kernel work: mounts {:?}, pins {:?}",
                    inside.new_mounts, inside.pins
                ));
            }
        }
        Err(e) => failures.push(format!("the valid config did not start: {e:#}")),
    }
    let node = fs::read_to_string(state_dir(host).join("node-id")).unwrap_or_default();
    let groups = node_groups(host);
    drop(run);
    drop(bed);
    let left: Vec<&PathBuf> = groups.iter().filter(|g| g.exists()).collect();
    assert!(
        left.is_empty(),
        "the valid agent's node {} left cgroups: {left:?}",
        node.trim()
    );

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
