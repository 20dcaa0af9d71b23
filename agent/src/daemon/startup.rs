//! The first steps of `skein agent`: checks a user can fail (before anything is bound or
//! attached), binding every listener, and joining (or creating) the cluster.

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use manager::{
    gossip::{EngineConfig, Tuning},
    secure::{max_plaintext, JoinToken, NodeSecret},
    state::NodeInfo,
    Manager, NodeId,
};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tracing::info;

use crate::{
    api,
    config::AgentConfig,
    dataplane, dns, netif,
    state_dir::{Membership, StateDir},
};

/// The underlay as checked at start: the address the node advertises and the MTU.
#[derive(Clone, Copy, Debug)]
pub(super) struct Underlay {
    pub(super) advertise: Ipv4Addr,
    pub(super) mtu: u32,
}

/// Checks the interfaces given exist, picks the advertised address and reads the MTU.
pub(super) fn check_underlay(config: &AgentConfig) -> Result<Underlay> {
    for (flag, iface) in std::iter::once(("--underlay-iface", &config.underlay_iface)).chain(
        config
            .endpoint_ifaces
            .iter()
            .map(|i| ("--endpoint-iface", i)),
    ) {
        if dataplane::if_index(iface).is_err() {
            bail!("interface {iface:?} given to {flag} does not exist in this network namespace (see `ip link`)");
        }
    }
    let underlay_addrs = netif::ipv4_addrs(&config.underlay_iface)
        .context("reading the underlay interface's addresses")?;
    let advertise = match config.advertise_addr {
        Some(addr) if underlay_addrs.contains(&addr) => addr,
        Some(addr) => bail!(
            "--advertise-addr {addr} is not an address of the underlay interface {} (it has: {})",
            config.underlay_iface,
            list(&underlay_addrs)
        ),
        None => *underlay_addrs.first().with_context(|| {
            format!(
                "the underlay interface {} has no IPv4 address; give it one, or pick another with --underlay-iface",
                config.underlay_iface
            )
        })?,
    };
    let mtu = netif::mtu(&config.underlay_iface).context("reading the underlay MTU")?;
    if max_plaintext(mtu) < 512 {
        bail!(
            "the underlay MTU {mtu} of {} is too small for gossip (needs at least 613)",
            config.underlay_iface
        );
    }
    Ok(Underlay { advertise, mtu })
}

fn list(addrs: &[Ipv4Addr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sockets the agent serves besides gossip, bound (with the gossip socket) before
/// the cluster is joined so a port in use fails the start with the flag to change.
pub(super) struct Listeners {
    pub(super) gossip_addr: SocketAddr,
    /// The peer RPC (remote `service logs`) on the gossip address and port, over TCP.
    pub(super) peer: TcpListener,
    pub(super) metrics: TcpListener,
    pub(super) api: UnixListener,
    /// The DNS server's host listener (`--dns-addr`).
    pub(super) dns: dns::HostSockets,
}

impl Listeners {
    /// The gossip socket (the manager's) and the others.
    pub(super) async fn bind(
        config: &AgentConfig,
        underlay: Underlay,
    ) -> Result<(UdpSocket, Listeners)> {
        let gossip_addr = SocketAddr::from((underlay.advertise, config.gossip_port));
        let gossip = UdpSocket::bind(gossip_addr).await.with_context(|| {
            format!("could not bind the gossip port {gossip_addr} (--gossip-port)")
        })?;
        let peer = TcpListener::bind(gossip_addr).await.with_context(|| {
            format!("could not listen on {gossip_addr}/tcp for peer requests (--gossip-port)")
        })?;
        let metrics = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "could not listen on {} for /metrics (--metrics-addr)",
                    config.metrics_addr
                )
            })?;
        let dns = dns::HostSockets::bind(config.dns.addr).await?;
        let api = api::bind(&config.socket)
            .with_context(|| format!("could not serve the API on {}", config.socket.display()))?;
        Ok((
            gossip,
            Listeners {
                gossip_addr,
                peer,
                metrics,
                api,
                dns,
            },
        ))
    }
}

/// This node as a member of the cluster.
pub(super) struct Member {
    pub(super) manager: Manager,
    pub(super) token: JoinToken,
    /// What this node published about itself (the restart grace republishes it).
    pub(super) info: NodeInfo,
    /// Its node key, whose public half `info` carries.
    pub(super) secret: Arc<NodeSecret>,
}

/// Starts the embedded manager on the gossip socket, publishes this node, and, on a first
/// join, waits until the cluster has answered.
pub(super) async fn join_cluster(
    config: &AgentConfig,
    state: &Arc<StateDir>,
    node: NodeId,
    membership: Membership,
    underlay: Underlay,
    gossip_addr: SocketAddr,
    gossip: UdpSocket,
) -> Result<Member> {
    let secret = Arc::new(state.node_secret()?);
    let (token, seeds, created, first_join) = match membership {
        Membership::Create(token) => {
            state.save_token(&token)?;
            (token, Vec::new(), true, false)
        }
        Membership::Join {
            token,
            seeds,
            first,
        } => {
            let mut seeds = resolve_seeds(&seeds)?;
            for peer in state.peers() {
                if !seeds.contains(&peer) {
                    seeds.push(peer);
                }
            }
            (token, seeds, false, first)
        }
        Membership::Rejoin { token, peers } => (token, peers, false, false),
    };
    let boot_epoch = state.next_boot_epoch(manager::driver::wall_ms())?;
    let engine = EngineConfig {
        node,
        addr: gossip_addr,
        boot_epoch,
        token: token.clone(),
        underlay_mtu: underlay.mtu,
        tuning: Tuning::default(),
        rng_seed: rand_seed(),
        initial_records: if created { Vec::new() } else { state.records() },
    };
    let manager = Manager::start(engine, gossip, seeds.clone());
    let info = NodeInfo {
        hostname: config.hostname.clone(),
        addr: gossip_addr,
        underlay_ip: underlay.advertise,
        underlay_mtu: underlay.mtu,
        boot_epoch,
        started_at_ms: manager::driver::wall_ms(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        leaving: false,
        restart_grace_until_ms: 0,
        key_share: secret.public(),
    };
    manager.publish_self(&info).await?;

    if first_join {
        wait_for_cluster(&manager, &seeds, config.join_timeout).await?;
        state.save_token(&token)?;
    }
    if created {
        println!("{}", join_instructions(gossip_addr));
    }
    info!(node = %node.short(), %gossip_addr, "member of the cluster");
    Ok(Member {
        manager,
        token,
        info,
        secret,
    })
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

fn resolve_seeds(entries: &[String]) -> Result<Vec<SocketAddr>> {
    let mut seeds = Vec::new();
    for entry in entries {
        let addr = entry
            .to_socket_addrs()
            .with_context(|| format!("--join {entry}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("--join {entry} has no IPv4 address"))?;
        seeds.push(addr);
    }
    Ok(seeds)
}

/// Waits for the first authenticated datagram from the cluster, or fails saying why
/// it probably did not come.
async fn wait_for_cluster(
    manager: &Manager,
    seeds: &[SocketAddr],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if manager.heard_from_cluster().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
    bail!(
        "could not join the cluster: no authenticated answer from {} within {:?}: the token is wrong or no longer valid (after `skein join-token --rotate` only the new one is accepted; `skein join-token` on a member prints it), or the address is unreachable",
        seeds.join(", "),
        timeout
    )
}

/// Never the token on a command line (every local user can read one in `/proc`, and it
/// stays in shell history): the operator copies it into a root-only file.
fn join_instructions(addr: SocketAddr) -> String {
    format!(
        "Cluster created; this node is its first member.\n\
         To add a node, put the output of `skein join-token` (run here) in a file only root\n\
         can read on the new node, then start its agent with that file:\n\n    \
         (umask 077; cat > /root/skein-token)   # paste the token, then Ctrl-D\n    \
         skein agent --underlay-iface IFACE --join {addr} --token-file /root/skein-token\n\n\
         (SKEIN_TOKEN in the agent's environment works too; never pass --token TOKEN:\n\
         a command line is visible to every local user)\n"
    )
}
