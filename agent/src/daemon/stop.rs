//! How `skein agent` stops: why ([`Stop`]), the OS signals that ask for it, and taking the
//! dataplane down (`agent leave`, `agent cleanup`).

use std::path::Path;

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::dataplane::{self, PinDirs};

/// Why the agent stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    Running,
    /// SIGTERM/SIGINT: exit, leave the dataplane for the next agent.
    Signal,
    /// `skein agent leave`: the cluster was told; take the dataplane down too.
    Leave,
}

/// Completes on SIGTERM or SIGINT.
pub(super) async fn os_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Removes the egress NAT rule and every pin under `pins`: the dataplane is gone. Our own
/// program fds must be closed first, or they keep the links alive.
pub(super) fn remove_dataplane(pins: &PinDirs) -> Result<usize> {
    let removed = dataplane::cleanup(pins).context("removing the dataplane")?;
    dataplane::remove_host_path();
    remove_egress_rule();
    Ok(removed)
}

fn remove_egress_rule() {
    if let Err(error) = crate::egress::remove() {
        warn!(error = %format!("{error:#}"), "could not remove the egress NAT rule");
    }
}

/// `skein agent cleanup`.
pub(crate) fn cleanup(bpf_dir: &Path) -> Result<()> {
    remove_egress_rule();
    let removed = dataplane::cleanup(&PinDirs::new(bpf_dir))
        .with_context(|| format!("cleaning up {}", bpf_dir.display()))?;
    dataplane::remove_host_path();
    println!("removed {removed} pins under {}", bpf_dir.display());
    Ok(())
}
