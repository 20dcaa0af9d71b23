//! Names the agent uses to find programs, maps and globals in the object, and the maps'
//! capacities.

/// XDP program on a host's underlay interface (section `xdp.frags`, so it attaches
/// to jumbo-MTU veths too).
pub const XDP_UNDERLAY: &str = "xdp_underlay";
/// TC program on the host side of an endpoint's veth, at tc ingress: it sees the
/// packets the endpoint sends.
pub const TC_ENDPOINT_INGRESS: &str = "tc_endpoint_ingress";
/// TC program on the underlay interface, at tc ingress: decapsulates VXLAN for local
/// endpoints (on the skb, which keeps checksum and GSO metadata that native XDP
/// redirection into veths loses — KERNEL-NOTES).
pub const TC_UNDERLAY_INGRESS: &str = "tc_underlay_ingress";

/// Per-CPU counters of [`XDP_UNDERLAY`], indexed by [`crate::counters::Verdict`].
pub const XDP_UNDERLAY_COUNTERS: &str = "XDP_UNDERLAY_COUNTERS";
/// Per-CPU counters of [`TC_ENDPOINT_INGRESS`], indexed by [`crate::counters::Verdict`].
pub const TC_ENDPOINT_COUNTERS: &str = "TC_ENDPOINT_COUNTERS";
/// Per-CPU counters of [`TC_UNDERLAY_INGRESS`], indexed by [`crate::counters::Verdict`].
pub const TC_UNDERLAY_COUNTERS: &str = "TC_UNDERLAY_COUNTERS";

/// Hash map [`crate::overlay::EndpointKey`] → [`crate::overlay::EndpointValue`]: every
/// endpoint of the cluster's live nodes.
pub const OVERLAY_ENDPOINTS: &str = "OVERLAY_ENDPOINTS";
/// Hash map host-side veth ifindex → [`crate::overlay::PortValue`]: local endpoints.
pub const OVERLAY_PORTS: &str = "OVERLAY_PORTS";
/// Hash map VNI → [`crate::overlay::NetworkValue`]: the networks this cluster has.
pub const OVERLAY_NETWORKS: &str = "OVERLAY_NETWORKS";
/// LPM trie [`crate::overlay::VtepKey`] → [`crate::overlay::VtepValue`]: external VTEPs.
pub const OVERLAY_VTEPS: &str = "OVERLAY_VTEPS";
/// Array of one [`crate::overlay::UnderlayValue`]: this host's underlay.
pub const OVERLAY_UNDERLAY: &str = "OVERLAY_UNDERLAY";
/// LPM trie [`crate::overlay::SubnetKey`] → VNI: every overlay network's subnet, so
/// traffic to another network is dropped (isolation) rather than routed by the host.
pub const OVERLAY_SUBNETS: &str = "OVERLAY_SUBNETS";

/// Capacities. Pinned maps keep their size across upgrades, so these are generous.
pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_PORTS: u32 = 4_096;
pub const MAX_NETWORKS: u32 = 4_096;
pub const MAX_VTEP_ROUTES: u32 = 4_096;
/// One subnet per network.
pub const MAX_SUBNETS: u32 = MAX_NETWORKS;

/// Every counters map, with the program it counts for.
pub const COUNTER_MAPS: &[(&str, &str)] = &[
    (XDP_UNDERLAY, XDP_UNDERLAY_COUNTERS),
    (TC_ENDPOINT_INGRESS, TC_ENDPOINT_COUNTERS),
    (TC_UNDERLAY_INGRESS, TC_UNDERLAY_COUNTERS),
];

/// Every map the agent pins under `<bpf-dir>/maps`, so a restarted agent adopts them.
pub const PINNED_MAPS: &[&str] = &[
    XDP_UNDERLAY_COUNTERS,
    TC_ENDPOINT_COUNTERS,
    TC_UNDERLAY_COUNTERS,
    OVERLAY_ENDPOINTS,
    OVERLAY_PORTS,
    OVERLAY_NETWORKS,
    OVERLAY_VTEPS,
    OVERLAY_UNDERLAY,
    OVERLAY_SUBNETS,
];
