//! Skein's control plane as a library: membership and state dissemination over gossip,
//! the replicated cluster state, placement and address management. It knows nothing of
//! netlink or eBPF, so whole clusters can be simulated in one process.
//!
//! Layout: empty until the control-plane issue lands; the crate exists so the workspace
//! has the shape the design fixes.
