//! `skein join-token --rotate`: a new cluster key, given to every live member sealed
//! under its pairwise node key, so a holder of only the old token learns nothing of it
//! (see [`manager::secure::keys`] for the ring and the switch without interruption).
//!
//! The rotating node offers the next key to every live member over peer RPC
//! ([`PeerRequest::NextKey`]); once all have accepted it, it starts sealing with it,
//! and every member follows as soon as it opens anything sealed with it. A member that
//! refuses or cannot be reached leaves the rotation undone, so no live member is cut off.
//! A member that was down is not offered the key: it must rejoin with the new token.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Result};
use manager::{
    secure::{keys::open_offer, JoinToken, NodeSecret},
    view::ClusterView,
    NodeId,
};
use tracing::{info, warn};

use super::loops::Shutdown;
use crate::{
    peer::{PeerRequest, PeerResponse, Peers},
    state_dir::StateDir,
};

/// What rotating and accepting a key need: the ring (inside the token), this node's
/// secret and where the token is saved.
pub(super) struct Keys {
    pub(super) token: JoinToken,
    pub(super) secret: Arc<NodeSecret>,
    pub(super) state: Arc<StateDir>,
}

impl Keys {
    /// Rotates the cluster key; returns the new token.
    pub(super) async fn rotate(&self, view: &ClusterView, peers: &Peers) -> Result<String> {
        if self.token.key.rotating() {
            bail!(
                "a key rotation is still in progress (the old key is accepted for {}s after one); try again shortly",
                manager::secure::keys::SWITCH_PERIOD.as_secs()
            );
        }
        let me = view.self_id;
        let mut members = Vec::new();
        for node in view.nodes.iter().filter(|n| n.up && !n.is_self) {
            let (Some(info), Some(addr)) = (&node.info, node.addr) else {
                bail!(
                    "node {} is up but has not described itself yet; try again in a few seconds",
                    node.id.short()
                );
            };
            if info.key_share == [0; 32] {
                bail!(
                    "node {} ({}) publishes no node key (an older agent): upgrade it before rotating",
                    info.hostname,
                    node.id.short()
                );
            }
            members.push((node.id, info.hostname.clone(), addr, info.key_share));
        }
        let rotation = self.token.key.begin_rotation()?;
        let mut calls = Vec::new();
        for (id, hostname, addr, public) in members {
            let offer =
                match rotation.seal_for(&self.secret, &self.token.cluster_id, me, id, &public) {
                    Ok(offer) => offer,
                    Err(error) => {
                        rotation.abandon();
                        bail!("cannot offer the new key to {hostname}: {error}; nothing changed");
                    }
                };
            let request = PeerRequest::NextKey { from: me, offer };
            calls.push(async move { (hostname, peers.call(addr, &request).await) });
        }
        let mut refused = Vec::new();
        for (hostname, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(PeerResponse::KeyAccepted) => {}
                Ok(PeerResponse::Error(reason)) => refused.push(format!("{hostname}: {reason}")),
                Ok(_) => refused.push(format!("{hostname}: an unexpected answer")),
                Err(error) => refused.push(format!("{hostname}: {error}")),
            }
        }
        if !refused.is_empty() {
            rotation.abandon();
            bail!(
                "the key was not rotated, because not every live member took the new key ({}); the old token stays valid",
                refused.join("; ")
            );
        }
        rotation.commit();
        self.state.save_token(&self.token)?;
        info!("cluster key rotated; the old join token is refused from now on");
        Ok(self.token.to_string())
    }

    /// A member's side: opens `from`'s offer with the public key `from`'s node record
    /// holds (not one the request names), and accepts the key as the next one.
    pub(super) fn accept(&self, view: &ClusterView, from: NodeId, offer: &[u8]) -> PeerResponse {
        let Some(public) = view
            .node(&from)
            .and_then(|n| n.info.as_ref())
            .map(|info| info.key_share)
            .filter(|key| *key != [0; 32])
        else {
            return PeerResponse::Error(format!(
                "node {} is not known here with a node key",
                from.short()
            ));
        };
        match open_offer(
            &self.token.key,
            &self.secret,
            &self.token.cluster_id,
            from,
            view.self_id,
            &public,
            offer,
        ) {
            Ok(_) => PeerResponse::KeyAccepted,
            Err(error) => {
                warn!(from = %from.short(), %error, "key offer refused");
                PeerResponse::Error(error.to_string())
            }
        }
    }
}

/// Saves the join token again whenever the current key changes (a member switches when
/// it first opens something sealed with the new key), so a restart comes back with it.
pub(super) async fn save_on_switch(token: JoinToken, state: Arc<StateDir>, mut shutdown: Shutdown) {
    let mut saved = token.key.switches();
    loop {
        let switches = token.key.switches();
        if switches != saved {
            match state.save_token(&token) {
                Ok(()) => saved = switches,
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "could not save the new join token")
                }
            }
        }
        if shutdown
            .unless_requested(tokio::time::sleep(Duration::from_millis(500)))
            .await
            .is_none()
        {
            return;
        }
    }
}
