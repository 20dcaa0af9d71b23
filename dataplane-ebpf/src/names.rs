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

/// `tc_host_egress`: tcx egress of the host-path veth (`sock::HOST_PATH_IFACE`).
pub const TC_HOST_EGRESS: &str = "tc_host_egress";
/// The cgroup socket hooks (attached at the cgroup v2 root).
pub const SOCK_CONNECT4: &str = "sock_connect4";
pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
