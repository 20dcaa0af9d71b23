//! RAII multi-host testbeds in network namespaces, shared by the privileged end-to-end tests,
//! `cargo xtask demo` and the benchmarks.
//!
//! A [`Testbed`] is a small data centre on one machine: each "host" is a network namespace with
//! an underlay interface `eth0`, and all of them, plus a client namespace, hang off one Linux
//! bridge that plays the switch:
//!
//! ```text
//!   <prefix>-h1         <prefix>-h2        ...   <prefix>-client
//!   eth0 10.200.0.11    eth0 10.200.0.12         eth0 10.200.0.2
//!     |                   |                        |
//!   --h1------------------h2-----------------------client----  br0 in <prefix>-ul
//! ```
//!
//! No interface ever exists in the root namespace: each veth pair is created with one end
//! already in the host and the other in the bridge namespace.
//!
//! # Naming and ownership
//! Everything a testbed makes is named after its prefix `sk-<pid>-<n>` (this process's PID and
//! a process-wide counter), so testbeds in parallel threads and processes never collide, and a
//! later [`sweep_dead_runs`] can find what a killed test process left behind by name alone. The
//! run directory `/run/skein-test/<prefix>/` holds an `owner` file (PID and process start time,
//! which tells a live run from a dead one even after PID reuse), and per host a directory with
//! the host's bpffs mount `bpf/` and the logs of the processes started there. An agent is told
//! to prefix everything it creates with its host's namespace name, so its leftovers match too.
//!
//! Dropping a [`Testbed`] (also while a test panics) stops its processes and removes its
//! namespaces, mounts and run directory; while panicking it first prints the tail of every log.
//!
//! # Layout
//! - this file: [`TestbedConfig`], [`Testbed`], [`Host`], [`wait_until`].
//! - `process`: [`Process`], a child started inside a host, and the testbed's record of them.
//! - `cleanup`: removing a run by its prefix, and [`sweep_dead_runs`].
//! - `wire`: [`Testbed::make_wire_like`], an underlay that behaves like NICs and a switch
//!   for programs that transmit from XDP.

mod cgroup_sweep;
mod cleanup;
mod in_netns;
mod process;
mod sock_sweep;
#[cfg(test)]
mod tests;
mod wire;

use std::{
    env,
    ffi::{CString, OsStr},
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

pub use cleanup::{sweep_dead_runs, SweepReport};
pub use in_netns::InNetns;
pub use process::Process;
pub use sock_sweep::{netns_cookie, socket_hooks, SocketHook};

use cleanup::{remove_run, write_owner_file};
use process::Registry;

/// Where run directories live. Under `/run` so a reboot clears them along with the namespaces.
pub const RUN_ROOT: &str = "/run/skein-test";
/// Where [`Testbed::shared_dir`]s go: somewhere tasks can see.
pub const SHARED_ROOT: &str = "/var/lib/skein-test";

/// The underlay interface's name inside every host namespace.
pub const UNDERLAY_IFACE: &str = "eth0";

/// The bridge inside the underlay namespace that connects all hosts.
pub const UNDERLAY_BRIDGE: &str = "br0";

/// Prefix length of the underlay subnet 10.200.0.0/24.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;

/// The client namespace's underlay address.
pub const CLIENT_UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);

/// Host `i` (0-based) gets the underlay address 10.200.0.(11 + i).
const FIRST_HOST_OCTET: u8 = 11;

/// The underlay MTU unless a test asks for another.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Lines of each log printed when a testbed is dropped during a panic.
const LOG_TAIL_LINES: usize = 40;

/// How long a dropped testbed gives its still-running processes to exit after SIGTERM.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Numbers testbeds within this process; with the PID it makes prefixes unique on the machine.
static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

/// The shape of a [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestbedConfig {
    /// Number of hosts, at least 1 (the client namespace comes in addition).
    pub hosts: usize,
    /// MTU of every underlay link: both veth ends and the bridge.
    pub underlay_mtu: u32,
    /// Two underlay subnets joined by a router namespace: hosts h1, h3, ... (and the
    /// client) on 10.200.0.0/24, hosts h2, h4, ... on 10.201.0.0/24, each with a default
    /// route via the router (`.1` on its subnet). Otherwise one flat subnet.
    pub routed: bool,
}

impl TestbedConfig {
    /// `hosts` hosts with the default underlay MTU.
    pub fn with_hosts(hosts: usize) -> TestbedConfig {
        TestbedConfig {
            hosts,
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            routed: false,
        }
    }
}

/// The second underlay subnet of a routed testbed, and the bridge it hangs off.
const ROUTED_SECOND_OCTET: u8 = 201;
const SECOND_BRIDGE: &str = "br1";

impl Default for TestbedConfig {
    /// Two hosts, the smallest testbed where traffic crosses the underlay.
    fn default() -> Self {
        TestbedConfig::with_hosts(2)
    }
}

/// A set of hosts (network namespaces) and a client on one bridged underlay. Dropping it
/// removes everything it made; see the [module docs](self).
#[derive(Debug)]
pub struct Testbed {
    label: String,
    prefix: String,
    run_dir: PathBuf,
    underlay_netns: String,
    underlay_mtu: u32,
    routed: bool,
    hosts: Vec<Host>,
    client: Host,
    registry: Arc<Registry>,
}

impl Testbed {
    /// Builds a testbed. `label` is a short test name, recorded in the run directory and shown
    /// in logs (interface and namespace names use only the prefix). If building fails
    /// half-way, whatever was made is removed again before the error is returned.
    pub fn new(label: &str, config: TestbedConfig) -> Result<Testbed> {
        ensure!(
            (1..=usize::from(u8::MAX - FIRST_HOST_OCTET)).contains(&config.hosts),
            "a testbed needs 1 to {} hosts, not {}",
            u8::MAX - FIRST_HOST_OCTET,
            config.hosts
        );
        ensure!(
            (68..=65535).contains(&config.underlay_mtu),
            "underlay MTU {} is outside 68..=65535",
            config.underlay_mtu
        );
        let prefix = format!(
            "sk-{}-{}",
            std::process::id(),
            NEXT_TESTBED.fetch_add(1, Ordering::Relaxed)
        );
        let run_dir = cleanup::run_dir(&prefix);
        let registry = Arc::new(Registry::default());
        let host = |name: String, underlay_ip: Ipv4Addr| {
            let dir = run_dir.join(&name);
            Host {
                netns: format!("{prefix}-{name}"),
                bpf_dir: dir.join("bpf"),
                dir,
                name,
                underlay_ip,
                registry: Arc::clone(&registry),
            }
        };
        let hosts = (0..config.hosts)
            .map(|i| {
                let third = if config.routed && i % 2 == 1 {
                    ROUTED_SECOND_OCTET
                } else {
                    200
                };
                let ip = Ipv4Addr::new(10, third, 0, FIRST_HOST_OCTET + i as u8);
                host(format!("h{}", i + 1), ip)
            })
            .collect();
        let client = host("client".to_owned(), CLIENT_UNDERLAY_IP);
        // The struct exists before anything is made, so an early return drops it and removes
        // whatever was made so far.
        let testbed = Testbed {
            label: label.replace(['\n', '/'], "_"),
            underlay_netns: format!("{prefix}-ul"),
            underlay_mtu: config.underlay_mtu,
            routed: config.routed,
            prefix,
            run_dir,
            hosts,
            client,
            registry,
        };
        testbed
            .build()
            .with_context(|| format!("building testbed {} ({})", testbed.prefix, testbed.label))?;
        Ok(testbed)
    }

    fn build(&self) -> Result<()> {
        // Our PID and counter are new, so anything already named like this was left by a dead
        // process that had the same PID.
        let stale = remove_run(&self.prefix);
        ensure!(
            stale.errors.is_empty(),
            "removing a dead run's leftovers: {}",
            stale.errors.join("; ")
        );

        fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
        fs::create_dir(&self.run_dir)
            .with_context(|| format!("creating {}", self.run_dir.display()))?;
        // Before any namespace exists, so a concurrent sweep always finds the owner record.
        write_owner_file(&self.run_dir, &self.label)?;
        for host in self.all_hosts() {
            fs::create_dir_all(&host.bpf_dir)
                .with_context(|| format!("creating {}", host.bpf_dir.display()))?;
            // In this process's mount namespace, which outlives `ip netns exec` children; they
            // get a copy of it when they start.
            mount_bpffs(&host.bpf_dir)?;
        }

        let mtu = self.underlay_mtu.to_string();
        let ul = self.underlay_netns.as_str();
        for ns in std::iter::once(ul).chain(self.all_hosts().map(|h| h.netns.as_str())) {
            run_command(Command::new("ip").args(["netns", "add", ns]))?;
            // Before any interface is up: router solicitations and MLD reports would otherwise
            // show up in the packet counters tests read. Writing `all` also sets `default`.
            run_command(Command::new("ip").args(["netns", "exec", ns]).args([
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]))?;
        }
        run_command(
            Command::new("ip")
                .args(["-n", ul, "link", "add", UNDERLAY_BRIDGE])
                .args(["mtu", &mtu, "type", "bridge"]),
        )?;
        let mut bridge_batch = format!("link set {UNDERLAY_BRIDGE} up\n");
        for host in self.all_hosts() {
            // One step, both ends already in place: nothing ever appears in the root namespace.
            run_command(
                Command::new("ip")
                    .args(["-n", &host.netns, "link", "add"])
                    .args([
                        UNDERLAY_IFACE,
                        "mtu",
                        &mtu,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        host.bridge_port(),
                        "netns",
                        ul,
                        "mtu",
                        &mtu,
                    ]),
            )?;
            let on_second = host.underlay_ip.octets()[1] == ROUTED_SECOND_OCTET;
            let mut host_batch = format!(
                "link set lo up\naddr add {}/{UNDERLAY_PREFIX_LEN} dev {UNDERLAY_IFACE}\n\
                 link set {UNDERLAY_IFACE} up\n",
                host.underlay_ip
            );
            if self.routed {
                let third = if on_second { ROUTED_SECOND_OCTET } else { 200 };
                host_batch += &format!("route add default via 10.{third}.0.1\n");
            }
            ip_batch(&host.netns, &host_batch)?;
            let bridge = if on_second {
                SECOND_BRIDGE
            } else {
                UNDERLAY_BRIDGE
            };
            bridge_batch += &format!("link set {} master {bridge} up\n", host.bridge_port());
        }
        if self.routed {
            self.build_router(&mut bridge_batch)?;
        }
        ip_batch(ul, &bridge_batch)?;
        Ok(())
    }

    /// The router of a routed testbed: a namespace with a leg on each underlay bridge
    /// (`.1` on each subnet) that forwards between them.
    fn build_router(&self, bridge_batch: &mut String) -> Result<()> {
        let (mtu, ul, rt) = (
            self.underlay_mtu.to_string(),
            self.underlay_netns.as_str(),
            self.router_netns(),
        );
        run_command(Command::new("ip").args(["netns", "add", &rt]))?;
        run_command(Command::new("ip").args(["netns", "exec", &rt]).args([
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv4.ip_forward=1",
        ]))?;
        run_command(
            Command::new("ip")
                .args(["-n", ul, "link", "add", SECOND_BRIDGE])
                .args(["mtu", &mtu, "type", "bridge"]),
        )?;
        for (leg, third, bridge) in [
            (0, 200, UNDERLAY_BRIDGE),
            (1, ROUTED_SECOND_OCTET, SECOND_BRIDGE),
        ] {
            let (inside, port) = (format!("eth{leg}"), format!("rt{leg}"));
            run_command(
                Command::new("ip")
                    .args(["-n", &rt, "link", "add", &inside, "mtu", &mtu])
                    .args([
                        "type", "veth", "peer", "name", &port, "netns", ul, "mtu", &mtu,
                    ]),
            )?;
            ip_batch(
                &rt,
                &format!("link set lo up\naddr add 10.{third}.0.1/{UNDERLAY_PREFIX_LEN} dev {inside}\nlink set {inside} up\n"),
            )?;
            *bridge_batch +=
                &format!("link set {SECOND_BRIDGE} up\nlink set {port} master {bridge} up\n");
        }
        Ok(())
    }

    /// The router namespace of a routed testbed.
    pub fn router_netns(&self) -> String {
        format!("{}-rt", self.prefix)
    }

    /// The hosts, in order `h1`, `h2`, ... (without the client).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`, 0-based (`host(0)` is `h1`). Panics if there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        self.hosts.get(i).unwrap_or_else(|| {
            panic!(
                "testbed {} has {} hosts; there is no host {i}",
                self.prefix,
                self.hosts.len()
            )
        })
    }

    /// The client namespace: on the underlay like a host, but meant to run no agent.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The test name given to [`Testbed::new`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `/run/skein-test/<prefix>`: the owner record, and per host its bpffs and logs.
    /// Tasks do not see it (they get an empty `/run`): files for tasks go to
    /// [`Testbed::shared_dir`].
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `/var/lib/skein-test/<prefix>`, created on first use: files a test shares with its
    /// services' tasks, which get `/run`, `/tmp` and `/var/lib/skein` empty (issue 14).
    /// Removed with the run.
    pub fn shared_dir(&self) -> PathBuf {
        let dir = Path::new(SHARED_ROOT).join(&self.prefix);
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        dir
    }

    /// `sk-<pid>-<n>`: every namespace and directory of this testbed starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge `br0` (to capture underlay traffic, for instance).
    pub fn underlay_netns(&self) -> &str {
        &self.underlay_netns
    }

    /// The MTU of every underlay link.
    pub fn underlay_mtu(&self) -> u32 {
        self.underlay_mtu
    }

    /// Takes host `host`'s (0-based) underlay link down or brings it back up. It is switched
    /// on the bridge side, like unplugging the cable at the switch: the host keeps its
    /// address, routes and attached programs, and its `eth0` loses carrier.
    pub fn set_underlay_link(&self, host: usize, up: bool) -> Result<()> {
        let Some(h) = self.hosts.get(host) else {
            bail!(
                "testbed {} has {} hosts; there is no host {host}",
                self.prefix,
                self.hosts.len()
            );
        };
        let state = if up { "up" } else { "down" };
        run_command(
            Command::new("ip")
                .args(["-n", &self.underlay_netns, "link", "set"])
                .args([h.bridge_port(), state]),
        )
        .map(|_| ())
        .with_context(|| format!("setting {}'s underlay link {state}", h.name))
    }

    /// The hosts, then the client.
    fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().chain(std::iter::once(&self.client))
    }

    /// Prints the last lines of every process log to stderr, so a failing test shows them.
    fn dump_logs(&self) {
        for path in self.registry.logs() {
            let text = fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(unreadable: {e})\n"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let mut out = format!(
                "===== testbed {} ({}): last {} lines of {} =====\n",
                self.label,
                self.prefix,
                tail.len(),
                path.display()
            );
            for line in tail {
                out += line;
                out.push('\n');
            }
            // One write per log so parallel tests' dumps do not interleave line by line; through
            // `eprint!` so the test harness shows it with the failing test's own output.
            eprint!("{out}");
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        let killed = self.registry.terminate_all(DROP_GRACE);
        if killed > 0 {
            eprintln!(
                "testbed {} ({}): {killed} processes ignored SIGTERM for {DROP_GRACE:?}; killed",
                self.label, self.prefix
            );
        }
        let removal = remove_run(&self.prefix);
        for error in removal.errors {
            eprintln!("testbed {} ({}): cleanup: {error}", self.label, self.prefix);
        }
    }
}

/// One host of a [`Testbed`]: a network namespace on the underlay.
#[derive(Debug)]
pub struct Host {
    name: String,
    netns: String,
    underlay_ip: Ipv4Addr,
    /// `<run dir>/<name>`: its bpffs and logs.
    dir: PathBuf,
    bpf_dir: PathBuf,
    registry: Arc<Registry>,
}

impl Host {
    /// `h1`, `h2`, ..., or `client`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full network namespace name, `<prefix>-<name>`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The underlay interface inside the namespace ([`UNDERLAY_IFACE`]).
    pub fn underlay_iface(&self) -> &str {
        UNDERLAY_IFACE
    }

    /// The host's address on the underlay (a /[`UNDERLAY_PREFIX_LEN`]).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// This host's own bpffs mount, outside `/sys` (which `ip netns exec` remounts), where
    /// its agent pins maps.
    pub fn bpf_dir(&self) -> &Path {
        &self.bpf_dir
    }

    /// `<run dir>/<name>`: holds [`Host::bpf_dir`] and the logs of processes started here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the agent of this host must start the names of everything it creates with (its
    /// namespace name), so cleanup and sweeps find those by the testbed's prefix.
    pub fn resource_prefix(&self) -> &str {
        &self.netns
    }

    /// `ip netns exec <netns> <program>`: a command that runs inside this host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `program args...` inside this host to completion and returns its stdout; fails,
    /// showing its stderr, if it exits unsuccessfully.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(self.command(program).args(args))
    }

    /// Starts `cmd` (made by [`Host::command`] or [`Host::skein`], so it runs inside this
    /// host) in the background, its stdout and stderr going to `<dir>/<log_name>.log`. If that
    /// log exists (a restarted process), the new one is `<log_name>-2.log`, `-3`, and so on,
    /// so each [`Process::log`] holds only its own run.
    pub fn spawn(&self, mut cmd: Command, log_name: &str) -> Result<Process> {
        // A command outside the namespace would act on the machine's own network.
        let args: Vec<&OsStr> = cmd.get_args().take(3).collect();
        ensure!(
            cmd.get_program() == "ip" && args == ["netns", "exec", self.netns.as_str()],
            "Host::spawn takes a command made by Host::command or Host::skein of {}, not {cmd:?}",
            self.netns
        );
        ensure!(
            !log_name.is_empty() && !log_name.contains('/'),
            "log name {log_name:?} must be a non-empty file name"
        );
        let (log_path, log) = (1..)
            .map(|n| match n {
                1 => self.dir.join(format!("{log_name}.log")),
                n => self.dir.join(format!("{log_name}-{n}.log")),
            })
            .find_map(
                |path| match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    result => Some(result.map(|file| (path, file))),
                },
            )
            .expect("an unbounded range always yields")
            .with_context(|| {
                format!(
                    "creating a log file for {log_name} in {}",
                    self.dir.display()
                )
            })?;
        let stderr = log.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
        Process::spawn(
            Arc::clone(&self.registry),
            &mut cmd,
            format!("{}/{log_name}", self.name),
            log_path,
        )
    }

    /// `ip netns exec <netns> <skein binary>`; see [`skein_binary`] for where it is found.
    pub fn skein(&self) -> Result<Command> {
        Ok(self.command(skein_binary()?))
    }

    /// Starts `skein agent` in this host with the flags the testbed owns
    /// (`--underlay-iface eth0 --bpf-dir <bpf_dir> --resource-prefix <resource_prefix>`) and
    /// then `extra`, logging to `agent.log`. `RUST_LOG` is `info` unless already set.
    pub fn start_agent(&self, extra: &[&str]) -> Result<Process> {
        self.start_agent_with_env(extra, &[])
    }

    /// [`Host::start_agent`] with `env` added to the agent's environment (test settings
    /// such as `SKEIN_TEST_NO_MAP_SYNC`).
    pub fn start_agent_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Result<Process> {
        let mut cmd = self.skein()?;
        cmd.arg("agent")
            .args(["--underlay-iface", UNDERLAY_IFACE])
            .arg("--bpf-dir")
            .arg(&self.bpf_dir)
            .args(["--resource-prefix", &self.netns])
            .args(extra);
        if env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // The log is a file: keep colour escapes out of it.
        if env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1");
        }
        cmd.envs(env.iter().copied());
        self.spawn(cmd, "agent")
    }

    /// The name of this host's veth end in the bridge namespace.
    pub fn bridge_port(&self) -> &str {
        &self.name
    }
}

/// Where the `skein` binary is: `$SKEIN_BIN` if set, else `debug/skein` in the workspace's
/// target directory (`$CARGO_TARGET_DIR` if set, else `<workspace>/target`). Fails with what
/// to do if it is not there.
pub fn skein_binary() -> Result<PathBuf> {
    if let Some(bin) = env::var_os("SKEIN_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(
            bin.is_file(),
            "SKEIN_BIN is {}, which is not a file; point it at a built skein binary",
            bin.display()
        );
        return Ok(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace");
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace.join(dir))
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug/skein");
    ensure!(
        bin.is_file(),
        "the skein binary is not at {}; build it with `cargo build -p agent --bin skein`, or set \
         SKEIN_BIN to a built one",
        bin.display()
    );
    Ok(bin)
}

/// Runs `cmd` to completion and returns its stdout; fails, showing the command, its exit
/// status and its stderr, if it cannot start or exits unsuccessfully.
pub fn run_command(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            if stdout.is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim_end())
            }
        );
    }
    Ok(stdout)
}

/// Runs `ip -n <netns> -batch -` with `commands`, one per line: one fork instead of several.
fn ip_batch(netns: &str, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(commands.as_bytes())
        .context("writing to ip -batch")?;
    drop(stdin);
    let output = child.wait_with_output().context("waiting for ip -batch")?;
    ensure!(
        output.status.success(),
        "ip -n {netns} -batch failed ({}) on:\n{commands}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(())
}

/// Mounts a fresh bpffs on `dir`.
fn mount_bpffs(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).context("bpffs path has a NUL byte")?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {}", dir.display()));
    }
    Ok(())
}

/// What a condition polled by [`wait_until`] returns: `true`/`Some(value)`/`Ok(value)` when it
/// holds; `false`/`None`/`Err(reason)` while it does not (the last reason is shown on timeout).
pub trait Ready {
    /// What [`wait_until`] returns once the condition holds.
    type Value;
    /// `Ok(value)` when ready, else `Err` with the reason if there is one.
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Display> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

/// Polls `f` every 50 ms until it returns `true`, `Some` or `Ok`, and returns the value;
/// fails naming `what` (and the last error `f` gave, if any) once `timeout` has passed.
/// `f` is always called at least once, and once more at the deadline.
pub fn wait_until<R: Ready>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> R,
) -> Result<R::Value> {
    let start = Instant::now();
    loop {
        let reason = match f().ready() {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            match reason {
                Some(reason) => bail!("timed out after {timeout:?} waiting for {what}: {reason}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
    }
}
