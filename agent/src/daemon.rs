//! `skein agent`: wires the dataplane, the eBPF log forwarder, `/metrics` and shutdown.
//!
//! Exiting (SIGTERM, SIGINT, or dying) leaves the programs attached and the maps pinned:
//! the next agent adopts them. Only `skein agent cleanup` takes the dataplane down.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, net::TcpListener, sync::Mutex};
use tracing::{info, warn};

use crate::{
    cli::{AgentAction, AgentArgs},
    dataplane::{self, Attachments, Dataplane, PinDirs, XdpMode},
    metrics,
};

/// The agent's settings, validated.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub underlay_iface: String,
    pub xdp_mode: XdpMode,
    pub metrics_addr: SocketAddr,
    pub bpf_dir: PathBuf,
    pub endpoint_ifaces: Vec<String>,
    pub resource_prefix: String,
}

/// Runs `skein agent [cleanup]` to completion.
pub fn run_command(args: AgentArgs) -> Result<()> {
    if let Some(AgentAction::Cleanup(pins)) = args.action {
        let removed = dataplane::cleanup(&PinDirs::new(&pins.bpf_dir))
            .with_context(|| format!("cleaning up {}", pins.bpf_dir.display()))?;
        println!("removed {removed} pins under {}", pins.bpf_dir.display());
        return Ok(());
    }
    let config = AgentConfig {
        underlay_iface: args
            .underlay_iface
            .context("--underlay-iface is required to run the agent")?,
        xdp_mode: args.xdp_mode,
        metrics_addr: args.metrics_addr,
        bpf_dir: args.pins.bpf_dir,
        endpoint_ifaces: args.endpoint_ifaces,
        resource_prefix: args.resource_prefix,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "could not listen on {} for /metrics (--metrics-addr)",
                    config.metrics_addr
                )
            })?;
        run(config, listener, shutdown_signal()).await
    })
}

/// Runs the agent until `shutdown` completes. Takes an already bound metrics listener,
/// so callers (and tests) choose the port and bind failures surface before anything is
/// attached.
pub async fn run(
    config: AgentConfig,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let span = tracing::info_span!("agent", prefix = %config.resource_prefix);
    let _enter = span.enter();
    let want = Attachments {
        underlay_iface: config.underlay_iface.clone(),
        xdp_mode: config.xdp_mode,
        endpoint_ifaces: config.endpoint_ifaces.clone(),
    };
    for (flag, iface) in std::iter::once(("--underlay-iface", &config.underlay_iface)).chain(
        config
            .endpoint_ifaces
            .iter()
            .map(|i| ("--endpoint-iface", i)),
    ) {
        if dataplane::if_index(iface).is_err() {
            anyhow::bail!("interface {iface:?} given to {flag} does not exist in this network namespace (see `ip link`)");
        }
    }
    let mut dataplane =
        Dataplane::start(PinDirs::new(&config.bpf_dir), &want).context("starting the dataplane")?;

    let logs = dataplane
        .take_logger()
        .map(|logger| tokio::spawn(forward_ebpf_logs(logger)));
    let counters = Arc::new(Mutex::new(dataplane.counters()?));
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics = tokio::spawn(metrics::serve(metrics_listener, counters));
    info!(
        underlay = %config.underlay_iface,
        xdp_mode = %dataplane.xdp_attached_mode,
        endpoints = config.endpoint_ifaces.len(),
        metrics = %metrics_addr,
        bpf_dir = %config.bpf_dir.display(),
        "agent running"
    );

    shutdown.await;
    info!("shutting down; the dataplane stays attached for the next agent");
    metrics.abort();
    if let Some(logs) = logs {
        logs.abort();
    }
    Ok(())
}

/// Copies the programs' aya-log records into `tracing` as they arrive.
async fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, for as
    // long as it lives inside the AsyncFd.
    let mut logger = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(error) => {
            warn!(error = %error, "eBPF logs unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
