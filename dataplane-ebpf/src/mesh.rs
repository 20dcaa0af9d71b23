//! The routing mesh's ABI (ARCHITECTURE.md, packet path 4): every node's published port
//! balances new flows round robin across the service's serving tasks cluster-wide, in XDP
//! on the underlay, with the client's own address kept (no SNAT).
//!
//! A flow has an *ingress node* (the node whose underlay address the client sent to) and
//! a *backend host* (the node running the task the flow was balanced to; possibly the
//! same). The ingress node keeps the flow's conntrack entry ([`Flow`], by [`FlowKey`]) and
//! translates (destination → the task's overlay address and target port); between nodes
//! the translated packet travels in VXLAN on the cluster's *ingress VNI*; the backend host
//! records which ingress node the flow came through ([`Reply`], by [`ReplyKey`]) and sends
//! the task's replies back through it, where they are translated back. So the path is
//! symmetric and nothing on the underlay sees a packet from an address that did not send
//! it. The published port rides along in the inner Ethernet header both ways
//! ([`published_port_mac`]), so the ingress node finds a remote backend's replies' flow
//! without a reply entry of its own.
//!
//! Byte order: fields ending in `_be` or typed `[u8; N]` are network order; the rest are
//! host order.

use crate::guard::{IPPROTO_TCP, IPPROTO_UDP};

/// Service slots: the index space of [`crate::maps::MESH_SERVICES`].
pub const MESH_MAX_SERVICES: u32 = 4_096;

/// [`crate::maps::MESH_CONFIG`] slot 0, written by the agent. `ingress_vni == 0`: the mesh
/// is off (no published port is balanced, no mesh VXLAN accepted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    /// The cluster-internal VNI mesh traffic travels on between nodes.
    pub ingress_vni: u32,
    /// The largest TCP MSS a mesh SYN or SYN-ACK may announce: the overlay MTU − 40, so a
    /// full segment still fits the underlay once encapsulated (see [`clamp_mss`]).
    pub mss: u16,
    pub _pad: u16,
    /// Idle timeouts, nanoseconds (see [`timeout_ns`]).
    pub syn_timeout_ns: u64,
    pub established_timeout_ns: u64,
    pub closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
}

/// Key of [`crate::maps::MESH_PORTS`]: a published port and its protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshPortKey {
    pub port_be: [u8; 2],
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    pub _pad: u8,
}

impl MeshPortKey {
    pub const fn new(protocol: u8, port: u16) -> MeshPortKey {
        MeshPortKey {
            port_be: port.to_be_bytes(),
            protocol,
            _pad: 0,
        }
    }
}

/// What a published port leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshPort {
    /// Index into [`crate::maps::MESH_SERVICES`].
    pub slot: u32,
    /// The port the tasks listen on.
    pub target_port_be: [u8; 2],
    pub _pad: [u8; 2],
}

/// [`crate::maps::MESH_SERVICES`] element: one service's rotation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshService {
    /// How many entries `MESH_BACKENDS` holds for this slot (indices `0..backends`); 0: no
    /// serving task (new flows are refused like a closed port).
    pub backends: u32,
    /// The next pick; advanced only by the programs with an atomic fetch-add (one shared
    /// cursor for all CPUs: exact round robin per ingress node). The agent rewrites the
    /// element keeping the cursor it read.
    pub cursor: u32,
    /// The VNI of the service's network (its tasks' endpoints are `(vni, ip)` in
    /// `OVERLAY_ENDPOINTS`).
    pub vni: u32,
}

/// Key of [`crate::maps::MESH_BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshBackendKey {
    pub slot: u32,
    pub index: u32,
}

/// A serving task: its overlay address and its host's underlay address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshBackend {
    pub ip: [u8; 4],
    pub host_ip: [u8; 4],
}

/// Key of [`crate::maps::MESH_FLOWS`] (the ingress node's conntrack): the flow as the
/// client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub client_ip: [u8; 4],
    /// The address the client sent to (this node's underlay address).
    pub node_ip: [u8; 4],
    pub client_port_be: [u8; 2],
    pub published_port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// A tracked flow, on its ingress node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_ip: [u8; 4],
    pub backend_host: [u8; 4],
    /// The backend's network.
    pub vni: u32,
    /// The service slot (for its counters).
    pub slot: u32,
    pub target_port_be: [u8; 2],
    /// [`TCP_SYN_SENT`], [`TCP_ESTABLISHED`], [`TCP_CLOSING`]; [`UDP_OPEN`] for UDP.
    pub state: u8,
    /// [`FIN_FROM_CLIENT`] | [`FIN_FROM_BACKEND`].
    pub flags: u8,
    /// The next hop to a remote `backend_host` as the FIB last answered (0: none
    /// cached; see [`Flow::hop_dmac`]).
    pub hop_ifindex: u32,
    /// CLOCK_MONOTONIC when the flow was created and last seen (the programs read the
    /// coarse variant, at most a tick behind).
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// The cached next hop: the ingress program asks the FIB once per refresh of
    /// `last_seen_ns` (see [`refresh_after_ns`]), not per packet — a FIB lookup was a
    /// fifth of a conntrack hit. `hop_mtu` is the route's MTU (what the outer packet is
    /// checked against); a packet larger goes through a fresh lookup.
    pub hop_dmac: [u8; 6],
    pub hop_smac: [u8; 6],
    pub hop_mtu: u16,
    pub _pad: [u8; 2],
}

/// Key of [`crate::maps::MESH_REPLIES`]: a flow as the task's replies carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyKey {
    pub backend_ip: [u8; 4],
    pub client_ip: [u8; 4],
    pub backend_port_be: [u8; 2],
    pub client_port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Where a task's replies go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The ingress node's underlay address. This node's own: translate back and send to
    /// the client (the backend is local, or the reply came back from the backend's host);
    /// another node's: encapsulate on the ingress VNI to it.
    pub ingress_ip: [u8; 4],
    /// The published port the flow came in by. On the ingress node (local backends
    /// only: a remote backend's replies carry it back, see [`published_port_mac`]) it
    /// keys the flow's conntrack entry; on a backend host it is the port the ingress
    /// node sent along, echoed in the replies (0 if that node sent none).
    pub published_port_be: [u8; 2],
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns` when written (the agent sweeps entries older than the
    /// established timeout whose flow is gone).
    pub seen_ns: u64,
}

/// Key of [`crate::maps::MESH_TARGETS`]: a local task's address and a target port of its
/// service — the only destinations mesh VXLAN may reach on a backend host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshTargetKey {
    pub ip: [u8; 4],
    pub port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}

/// What a mesh target needs for delivery.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshTarget {
    /// The task's network VNI (what the delivery mark carries).
    pub vni: u32,
}

/// Key of [`crate::maps::MESH_STATS`]: a service's backend, or (`backend_ip` zero) the
/// service itself, for what is refused before any backend is chosen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshStatKey {
    pub slot: u32,
    pub backend_ip: [u8; 4],
}

/// Per-CPU counters of one [`MeshStatKey`]. The agent creates the entries; the programs
/// only add to existing ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Flows balanced to the backend (service row: refused new flows).
    pub new_flows: u64,
    /// Packets and bytes forwarded in both directions (service row: dropped/refused).
    pub packets: u64,
    pub bytes: u64,
}

/// Slots of [`crate::maps::MESH_CT_EVENTS`] (per-CPU `u64`s): conntrack entries the
/// programs created and deleted; with the number present the agent derives LRU evictions.
pub const CT_INSERTED: u32 = 0;
pub const CT_DELETED: u32 = 1;
pub const CT_EVENT_SLOTS: u32 = 4;

/// [`Flow::state`] values.
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_ESTABLISHED: u8 = 2;
/// FIN seen both ways, or a RST: the entry lives for the closing grace only.
pub const TCP_CLOSING: u8 = 3;
pub const UDP_OPEN: u8 = 4;

/// [`Flow::flags`] bits.
pub const FIN_FROM_CLIENT: u8 = 1;
pub const FIN_FROM_BACKEND: u8 = 2;

/// TCP header flag bits (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// Whether a TCP flags byte is one a real stack sends; anything else (no flags, SYN with
/// FIN or RST, FIN without ACK, ...) is dropped before it can touch the conntrack.
pub const fn tcp_flags_valid(flags: u8) -> bool {
    let f = flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK);
    if f & TCP_SYN != 0 {
        // SYN or SYN-ACK, nothing else.
        return f == TCP_SYN || f == TCP_SYN | TCP_ACK;
    }
    if f & TCP_RST != 0 {
        return f & TCP_FIN == 0;
    }
    // FIN only with ACK; otherwise an ACK must be set (a bare segment has no meaning).
    f & TCP_ACK != 0
}

/// Whether a TCP segment may open a flow: a SYN without ACK.
pub const fn opens_flow(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// The state after a segment with `tcp_flags` passed, `from_client` or from the backend.
/// Returns `(state, flags)`.
pub const fn tcp_next(state: u8, flags: u8, tcp_flags: u8, from_client: bool) -> (u8, u8) {
    if tcp_flags & TCP_RST != 0 {
        return (TCP_CLOSING, flags);
    }
    let mut flags = flags;
    if tcp_flags & TCP_FIN != 0 {
        flags |= if from_client {
            FIN_FROM_CLIENT
        } else {
            FIN_FROM_BACKEND
        };
    }
    if flags & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) == FIN_FROM_CLIENT | FIN_FROM_BACKEND {
        return (TCP_CLOSING, flags);
    }
    if state == TCP_CLOSING {
        return (TCP_CLOSING, flags);
    }
    // The client's first ACK after the SYN completes the handshake as far as the
    // balancer cares (it saw the SYN-ACK go back, or the ACK would not come).
    if state == TCP_SYN_SENT && from_client && tcp_flags & TCP_ACK != 0 && tcp_flags & TCP_SYN == 0
    {
        return (TCP_ESTABLISHED, flags);
    }
    (state, flags)
}

/// The idle timeout of a flow in `state` of `protocol`, nanoseconds.
pub const fn timeout_ns(config: &MeshConfig, protocol: u8, state: u8) -> u64 {
    if protocol != IPPROTO_TCP {
        return config.udp_timeout_ns;
    }
    match state {
        TCP_ESTABLISHED => config.established_timeout_ns,
        TCP_CLOSING => config.closing_timeout_ns,
        _ => config.syn_timeout_ns,
    }
}

/// Whether `flow` has been idle past its timeout at `now_ns`.
pub const fn expired(config: &MeshConfig, protocol: u8, flow: &Flow, now_ns: u64) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) > timeout_ns(config, protocol, flow.state)
}

/// The backend index of the pick with cursor value `cursor` among `backends` (> 0).
pub const fn pick_index(cursor: u32, backends: u32) -> u32 {
    if backends == 0 {
        0
    } else {
        cursor % backends
    }
}

/// RFC 1624 incremental checksum update: the checksum `check` (as in the header) after a
/// 16-bit word changed from `old` to `new`.
pub const fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`csum_replace2`] for a 32-bit field (an address), both halves.
pub const fn csum_replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = csum_replace2(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    csum_replace2(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// A UDP checksum after an incremental update: 0 means "no checksum" on the wire, so a
/// computed 0 is sent as 0xffff (RFC 768); a datagram sent without one keeps none.
pub const fn udp_csum_fixup(old_check: u16, new_check: u16) -> u16 {
    if old_check == 0 {
        0
    } else if new_check == 0 {
        0xffff
    } else {
        new_check
    }
}

/// TCP option kinds.
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Most option bytes a TCP header can carry.
pub const TCP_MAX_OPTIONS: usize = 40;

/// Where the MSS value (2 bytes) lies in `options[..len]`, if the segment carries the
/// option. Bounded loop, for the verifier.
pub const fn mss_offset(options: &[u8; TCP_MAX_OPTIONS], len: usize) -> Option<usize> {
    let len = if len > TCP_MAX_OPTIONS {
        TCP_MAX_OPTIONS
    } else {
        len
    };
    let mut i = 0;
    let mut steps = 0;
    while i < len && steps < TCP_MAX_OPTIONS {
        steps += 1;
        let kind = options[i];
        if kind == TCPOPT_EOL {
            return None;
        }
        if kind == TCPOPT_NOP {
            i += 1;
            continue;
        }
        if i + 1 >= len {
            return None;
        }
        let opt_len = options[i + 1] as usize;
        if opt_len < 2 || i + opt_len > len {
            return None;
        }
        if kind == TCPOPT_MSS {
            return if opt_len == 4 { Some(i + 2) } else { None };
        }
        i += opt_len;
    }
    None
}

/// The MSS a segment announcing `mss` may announce through the mesh: at most `clamp`
/// (`None`: leave it).
pub const fn clamp_mss(mss: u16, clamp: u16) -> Option<u16> {
    if clamp != 0 && mss > clamp {
        Some(clamp)
    } else {
        None
    }
}

/// Whether `protocol` is one the mesh balances.
pub const fn balanced_protocol(protocol: u8) -> bool {
    protocol == IPPROTO_TCP || protocol == IPPROTO_UDP
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<MeshConfig>() == 40);
    assert!(size_of::<MeshPortKey>() == 4);
    assert!(size_of::<MeshPort>() == 8);
    assert!(size_of::<MeshService>() == 12);
    assert!(size_of::<MeshBackendKey>() == 8);
    assert!(size_of::<MeshBackend>() == 8);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<Flow>() == 56);
    assert!(size_of::<ReplyKey>() == 16);
    assert!(size_of::<Reply>() == 16);
    assert!(size_of::<MeshTargetKey>() == 8);
    assert!(size_of::<MeshTarget>() == 4);
    assert!(size_of::<MeshStatKey>() == 8);
    assert!(size_of::<MeshStats>() == 24);
};

/// [`crate::overlay::DecapMeta::magic`] of a frame `xdp_underlay` decapsulated for a mesh
/// delivery (a client's packet into a local task), "SKMD": `tc_underlay_ingress` checks
/// and delivers it exactly like an overlay decapsulation, and counts it as
/// `mesh_deliver` rather than `decap`.
pub const MESH_DECAP_META_MAGIC: u32 = 0x534b_4d44;

/// How often (at most) the backend host rewrites a live [`Reply`] entry only to move its
/// `seen_ns` on: once a second keeps the map writes off the per-packet path while the
/// agent's sweep (entries older than the established timeout) still sees the flow live.
pub const REPLY_REFRESH_NS: u64 = 1_000_000_000;

/// Whether the backend host must (re)write the [`Reply`] of a mesh request that came
/// through `ingress_ip` for `published_port_be` at `now_ns`, given the entry already
/// there: when there is none, when it names another ingress node or port (the flow's path
/// changed), or when it was last written more than [`REPLY_REFRESH_NS`] ago.
pub const fn reply_needs_write(
    current: Option<&Reply>,
    ingress_ip: [u8; 4],
    published_port_be: [u8; 2],
    now_ns: u64,
) -> bool {
    match current {
        None => true,
        Some(r) => {
            u32::from_ne_bytes(r.ingress_ip) != u32::from_ne_bytes(ingress_ip)
                || u16::from_ne_bytes(r.published_port_be) != u16::from_ne_bytes(published_port_be)
                || now_ns.saturating_sub(r.seen_ns) > REPLY_REFRESH_NS
        }
    }
}

/// The first four bytes of a [`published_port_mac`]: locally administered, unicast, and
/// unlike every [`crate::overlay::endpoint_mac`] (`02:53:…`) and the gateway's.
pub const PORT_MAC_PREFIX: [u8; 4] = [0x06, 0x53, 0x4b, 0x50];

/// The inner Ethernet address that carries a mesh flow's published port across the
/// ingress VNI, `06:53:4b:50:<port>`: the ingress node writes it as the inner *source* of
/// a client's packet (where the gateway's MAC would be), the backend host keeps the port
/// in its [`Reply`] and writes it as the inner *destination* of the task's replies. So
/// the ingress node needs no reply entry of its own for a remote backend: the port and
/// the packet's addresses make the flow's conntrack key, and the entry found must name
/// the very backend and host the reply came from (a forged reply still finds none).
/// Both ends overwrite the inner Ethernet header before the frame goes on, so the
/// address is never seen outside the ingress VNI.
pub const fn published_port_mac(port_be: [u8; 2]) -> [u8; 6] {
    let p = PORT_MAC_PREFIX;
    [p[0], p[1], p[2], p[3], port_be[0], port_be[1]]
}

/// The published port a [`published_port_mac`] carries; `None` for any other address
/// (a node of an older version sent the gateway's).
pub const fn published_port_of(mac: &[u8; 6]) -> Option<[u8; 2]> {
    let p = PORT_MAC_PREFIX;
    if mac[0] == p[0] && mac[1] == p[1] && mac[2] == p[2] && mac[3] == p[3] {
        Some([mac[4], mac[5]])
    } else {
        None
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `repr(C)`, integer and byte-array fields only, sizes asserted above with
    // no implicit padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for MeshConfig {}
    unsafe impl aya::Pod for MeshPortKey {}
    unsafe impl aya::Pod for MeshPort {}
    unsafe impl aya::Pod for MeshService {}
    unsafe impl aya::Pod for MeshBackendKey {}
    unsafe impl aya::Pod for MeshBackend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for ReplyKey {}
    unsafe impl aya::Pod for Reply {}
    unsafe impl aya::Pod for MeshTargetKey {}
    unsafe impl aya::Pod for MeshTarget {}
    unsafe impl aya::Pod for MeshStatKey {}
    unsafe impl aya::Pod for MeshStats {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn flags_real_stacks_send_are_valid_and_nonsense_is_not() {
        for ok in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            assert!(tcp_flags_valid(ok), "{ok:#x}");
        }
        for bad in [
            0,
            TCP_FIN,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            TCP_RST | TCP_FIN,
            TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG,
            TCP_PSH,
        ] {
            assert!(!tcp_flags_valid(bad), "{bad:#x}");
        }
        assert!(opens_flow(TCP_SYN));
        assert!(!opens_flow(TCP_SYN | TCP_ACK));
        assert!(!opens_flow(TCP_ACK));
    }

    #[test]
    fn tcp_states_follow_the_handshake_and_the_close() {
        let (s, f) = tcp_next(TCP_SYN_SENT, 0, TCP_SYN | TCP_ACK, false);
        assert_eq!((s, f), (TCP_SYN_SENT, 0));
        let (s, f) = tcp_next(s, f, TCP_ACK, true);
        assert_eq!(s, TCP_ESTABLISHED);
        // One FIN: still established (a half-closed download goes on).
        let (s, f) = tcp_next(s, f, TCP_FIN | TCP_ACK, true);
        assert_eq!((s, f), (TCP_ESTABLISHED, FIN_FROM_CLIENT));
        let (s, _) = tcp_next(s, f, TCP_FIN | TCP_ACK, false);
        assert_eq!(s, TCP_CLOSING);
        assert_eq!(tcp_next(TCP_ESTABLISHED, 0, TCP_RST, false).0, TCP_CLOSING);
        assert_eq!(tcp_next(TCP_CLOSING, 0, TCP_ACK, true).0, TCP_CLOSING);
    }

    #[test]
    fn timeouts_by_state() {
        let c = MeshConfig {
            syn_timeout_ns: 1,
            established_timeout_ns: 2,
            closing_timeout_ns: 3,
            udp_timeout_ns: 4,
            ..MeshConfig::default()
        };
        assert_eq!(timeout_ns(&c, IPPROTO_TCP, TCP_SYN_SENT), 1);
        assert_eq!(timeout_ns(&c, IPPROTO_TCP, TCP_ESTABLISHED), 2);
        assert_eq!(timeout_ns(&c, IPPROTO_TCP, TCP_CLOSING), 3);
        assert_eq!(timeout_ns(&c, IPPROTO_UDP, UDP_OPEN), 4);
        let flow = Flow {
            state: TCP_ESTABLISHED,
            last_seen_ns: 10,
            ..Flow::default()
        };
        assert!(!expired(&c, IPPROTO_TCP, &flow, 12));
        assert!(expired(&c, IPPROTO_TCP, &flow, 13));
        // A clock that reads earlier than the entry (another CPU wrote it) is no expiry.
        assert!(!expired(&c, IPPROTO_TCP, &flow, 5));
    }

    #[test]
    fn incremental_checksums_match_a_full_recompute() {
        // An IPv4 header; change the destination and compare with a fresh checksum.
        let mut h: [u8; 20] = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let before = crate::overlay::ipv4_checksum(&h);
        h[10..12].copy_from_slice(&before.to_be_bytes());
        let new_dst = [10, 7, 0, 9];
        let updated = csum_replace4(before, [10, 0, 0, 2], new_dst);
        h[16..20].copy_from_slice(&new_dst);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, crate::overlay::ipv4_checksum(&h));
        assert_eq!(udp_csum_fixup(0, 1234), 0);
        assert_eq!(udp_csum_fixup(5, 0), 0xffff);
    }

    #[test]
    fn the_mss_option_is_found_past_other_options() {
        let mut o = [0u8; TCP_MAX_OPTIONS];
        // NOP, NOP, SACK-permitted (4, 2), MSS 1460, window scale.
        o[..11].copy_from_slice(&[1, 1, 4, 2, 2, 4, 0x05, 0xb4, 3, 3, 7]);
        assert_eq!(mss_offset(&o, 11), Some(6));
        assert_eq!(mss_offset(&o, 7), None, "cut short");
        // A zero-length option must not loop.
        let mut z = [0u8; TCP_MAX_OPTIONS];
        z[..4].copy_from_slice(&[8, 0, 2, 4]);
        assert_eq!(mss_offset(&z, 4), None);
        assert_eq!(clamp_mss(1460, 1410), Some(1410));
        assert_eq!(clamp_mss(1400, 1410), None);
        assert_eq!(pick_index(7, 3), 1);
        assert_eq!(pick_index(7, 0), 0);
    }

    #[test]
    fn reply_entries_are_rewritten_only_when_missing_moved_or_stale() {
        let r = Reply {
            ingress_ip: [10, 200, 0, 1],
            seen_ns: 5_000_000_000,
            ..Reply::default()
        };
        let (a, b, port) = ([10, 200, 0, 1], [10, 200, 0, 2], [0x1f, 0x90]);
        let r = Reply {
            published_port_be: port,
            ..r
        };
        assert!(reply_needs_write(None, a, port, 0));
        assert!(!reply_needs_write(Some(&r), a, port, 5_500_000_000));
        assert!(reply_needs_write(Some(&r), b, port, 5_500_000_000));
        assert!(reply_needs_write(Some(&r), a, [0x1f, 0x91], 5_500_000_000));
        assert!(reply_needs_write(Some(&r), a, port, 6_000_000_001));
        // A clock behind the entry (written on another CPU) is no reason to write.
        assert!(!reply_needs_write(Some(&r), a, port, 1));
    }

    #[test]
    fn a_port_mac_carries_the_published_port_and_nothing_else_does() {
        let mac = published_port_mac(8080u16.to_be_bytes());
        assert_eq!(mac, [0x06, 0x53, 0x4b, 0x50, 0x1f, 0x90]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(published_port_of(&mac), Some(8080u16.to_be_bytes()));
        assert_eq!(published_port_of(&crate::overlay::GATEWAY_MAC), None);
        assert_eq!(
            published_port_of(&crate::overlay::endpoint_mac([0x4b, 0x50, 1, 2])),
            None
        );
    }
}

// ---------------------------------------------------------------------------------------
// Ingress-side helpers (helper "xdp").

/// A hash of a flow's key: the outer UDP source port of its VXLAN comes from it
/// ([`crate::overlay::vxlan_source_port`]), so one flow keeps one underlay path and flows
/// spread across paths. A multiply-xorshift mix (lowbias32); no helper call needed.
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ip = u32::from_be_bytes(key.client_ip);
    let ports = ((u16::from_be_bytes(key.client_port_be) as u32) << 16)
        | u16::from_be_bytes(key.published_port_be) as u32;
    let mut h = ip ^ ports.rotate_left(11) ^ ((key.protocol as u32) << 24);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// How long a flow's `last_seen_ns` may lag behind its packets: at most 1 s (so a busy
/// flow writes its entry about once a second, not on every packet), and never more than
/// a quarter of its timeout (tests set timeouts of milliseconds).
pub const fn refresh_after_ns(config: &MeshConfig, protocol: u8, state: u8) -> u64 {
    let quarter = timeout_ns(config, protocol, state) / 4;
    if quarter < 1_000_000_000 {
        quarter
    } else {
        1_000_000_000
    }
}

#[cfg(test)]
mod ingress_tests {
    use super::*;

    #[test]
    fn flow_hashes_differ_per_port_and_refresh_is_bounded() {
        let a = FlowKey {
            client_ip: [192, 168, 0, 9],
            node_ip: [10, 0, 0, 1],
            client_port_be: 40000u16.to_be_bytes(),
            published_port_be: 8080u16.to_be_bytes(),
            protocol: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let b = FlowKey {
            client_port_be: 40001u16.to_be_bytes(),
            ..a
        };
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_eq!(flow_hash(&a), flow_hash(&a));
        let c = MeshConfig {
            established_timeout_ns: 8_000_000_000_000,
            syn_timeout_ns: 40_000_000,
            ..MeshConfig::default()
        };
        assert_eq!(
            refresh_after_ns(&c, IPPROTO_TCP, TCP_ESTABLISHED),
            1_000_000_000
        );
        assert_eq!(refresh_after_ns(&c, IPPROTO_TCP, TCP_SYN_SENT), 10_000_000);
    }
}
