//! Names the agent uses to find the programs in the object. (Maps are in [`crate::maps`].)

/// XDP program on a host's underlay interface (section `xdp.frags`, so it attaches
/// to jumbo-MTU veths too).
pub const XDP_UNDERLAY: &str = "xdp_underlay";
/// TC program on the host side of an endpoint's veth, at tc ingress: it sees the
/// packets the endpoint sends.
pub const TC_ENDPOINT_INGRESS: &str = "tc_endpoint_ingress";
/// TC program on the underlay interface, at tc ingress: decapsulates VXLAN for local
/// endpoints (on the skb, which keeps checksum and GSO metadata that native XDP
/// redirection into veths loses; see ARCHITECTURE.md).
pub const TC_UNDERLAY_INGRESS: &str = "tc_underlay_ingress";
