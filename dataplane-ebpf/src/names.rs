//! Names the agent uses to find programs, maps and globals in the object.

/// XDP program on a host's underlay interface (section `xdp.frags`, so it attaches
/// to jumbo-MTU veths too).
pub const XDP_UNDERLAY: &str = "xdp_underlay";
/// TC program on the host side of an endpoint's veth, at tc ingress: it sees the
/// packets the endpoint sends.
pub const TC_ENDPOINT_INGRESS: &str = "tc_endpoint_ingress";

/// Per-CPU counters of [`XDP_UNDERLAY`], indexed by [`crate::counters::Verdict`].
pub const XDP_UNDERLAY_COUNTERS: &str = "XDP_UNDERLAY_COUNTERS";
/// Per-CPU counters of [`TC_ENDPOINT_INGRESS`], indexed by [`crate::counters::Verdict`].
pub const TC_ENDPOINT_COUNTERS: &str = "TC_ENDPOINT_COUNTERS";

/// Every map the agent pins under `<bpf-dir>/maps`, so a restarted agent adopts them.
pub const PINNED_MAPS: &[&str] = &[XDP_UNDERLAY_COUNTERS, TC_ENDPOINT_COUNTERS];
