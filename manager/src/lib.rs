//! Skein's control plane as a library: membership and state dissemination over gossip,
//! the replicated cluster state, placement and address management. It knows nothing of
//! netlink or eBPF, so whole clusters can be simulated in one process.
//!
//! Layout:
//! - [`id`]: node identity.
//! - [`hlc`]: the hybrid logical clock that orders writes.
//! - [`state`]: the replicated store: node-scoped entries and cluster-scoped objects,
//!   last-writer-wins, tombstones, digests for anti-entropy; typed payloads and the
//!   deterministic conflict rules.
//! - [`secure`]: the encrypted, authenticated, replay-protected datagram envelope and
//!   the join token.
//! - [`gossip`]: the sans-IO engine: foca (SWIM) membership and broadcasts, anti-entropy.
//! - [`view`]: consistent snapshots of the cluster for subscribers.
//! - [`driver`]: the engine on a UDP socket under tokio; the [`Manager`] handle.
//! - [`ops`]: the cluster operations behind the CLI (network create, node rm, ...).
//! - [`placement`]: which node runs which task, computed alike on every node.
//! - [`sim`]: whole clusters simulated in one process with virtual time.
//! - `testing` (feature `testing`): fixtures for unit tests here and in the agent.

pub mod driver;
pub mod gossip;
pub mod hlc;
pub mod id;
pub mod limits;
pub mod ops;
pub mod placement;
pub mod rollout;
pub mod secure;
pub mod sim;
pub mod socket_filter;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod view;

pub use driver::Manager;
pub use id::NodeId;
