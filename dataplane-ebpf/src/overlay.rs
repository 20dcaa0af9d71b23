//! The overlay's ABI: the maps the agent fills and the programs read, and the pure
//! helpers both sides share (MACs, VXLAN header, outer IPv4 checksum, source port).
//!
//! The overlay is routed at L3: every endpoint's default route points at a gateway
//! address whose MAC ([`GATEWAY_MAC`]) is the same on every host, and every endpoint's
//! own MAC is derived from its IP ([`endpoint_mac`]). So no map needs MAC addresses and no
//! ARP ever crosses the underlay: the endpoint program answers ARP for any address of the
//! endpoint's network with the gateway MAC.
//!
//! Byte order: fields ending in `_be` or typed `[u8; N]` are in network order, as on the
//! wire; everything else is host order.

/// UDP destination port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// The VXLAN flags byte: only the I flag (valid VNI) is set.
pub const VXLAN_FLAGS: u8 = 0x08;
/// Outer Ethernet + IPv4 + UDP + VXLAN header, pushed on encapsulation.
pub const ENCAP_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN;
pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// The gateway's MAC on every host and network: locally administered, unicast.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x53, 0x4b, 0x00, 0x00, 0x01];

/// An endpoint's MAC, derived from its overlay IP: `02:53:<ip>` (locally administered,
/// unicast; never equal to [`GATEWAY_MAC`], since `.0.0.0.1`-style IPs are not endpoints).
pub const fn endpoint_mac(ip: [u8; 4]) -> [u8; 6] {
    [0x02, 0x53, ip[0], ip[1], ip[2], ip[3]]
}

/// Key of [`crate::maps::OVERLAY_ENDPOINTS`]: an endpoint by network and IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub vni: u32,
    pub ip: [u8; 4],
}

/// Where an endpoint lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// Underlay address of the endpoint's host (for encapsulation).
    pub host_ip: [u8; 4],
    /// Host-side veth of a local endpoint; 0 for an endpoint on another host.
    pub ifindex: u32,
}

/// Key of [`crate::maps::OVERLAY_PORTS`]: the host-side veth a packet arrived on.
pub type PortKey = u32;

/// What the endpoint program knows about the endpoint behind a host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortValue {
    pub vni: u32,
    /// The endpoint's own overlay IP (anything else as source is spoofing: dropped).
    pub ip: [u8; 4],
}

/// Key of [`crate::maps::OVERLAY_NETWORKS`]: the VNI.
pub type NetworkKey = u32;

/// A network's addressing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkValue {
    pub subnet: [u8; 4],
    pub prefix_len: u32,
    pub gateway: [u8; 4],
}

impl NetworkValue {
    /// Whether `ip` is inside the network's subnet.
    pub fn contains(&self, ip: [u8; 4]) -> bool {
        let mask = prefix_mask(self.prefix_len);
        (u32::from_be_bytes(ip) & mask) == (u32::from_be_bytes(self.subnet) & mask)
    }
}

/// The netmask of a prefix length, host order; 0 for /0, all ones for /32 and above.
pub const fn prefix_mask(prefix_len: u32) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len)
    }
}

/// Key of [`crate::maps::OVERLAY_VTEPS`], an LPM trie: (VNI, prefix) → external VTEP.
/// `prefix_len` counts the VNI's 32 bits too, so a /24 route is `prefix_len = 32 + 24`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct VtepKey {
    pub prefix_len: u32,
    /// Network order, so the trie matches the VNI before the address.
    pub vni_be: [u8; 4],
    pub ip: [u8; 4],
}

impl VtepKey {
    /// The trie key for `ip/ip_prefix_len` on network `vni`; host bits are cleared, so
    /// equal routes always have equal keys.
    pub const fn new(vni: u32, ip: [u8; 4], ip_prefix_len: u32) -> VtepKey {
        let ip_prefix_len = if ip_prefix_len > 32 {
            32
        } else {
            ip_prefix_len
        };
        VtepKey {
            prefix_len: 32 + ip_prefix_len,
            vni_be: vni.to_be_bytes(),
            ip: (u32::from_be_bytes(ip) & prefix_mask(ip_prefix_len)).to_be_bytes(),
        }
    }

    /// The key a program looks an address up with: every bit counts.
    pub const fn lookup(vni: u32, ip: [u8; 4]) -> VtepKey {
        VtepKey::new(vni, ip, 32)
    }

    /// The key's data after `prefix_len`, as the kernel's LPM trie sees it
    /// (`struct bpf_lpm_trie_key` is `prefix_len` then the data bytes).
    pub const fn data(&self) -> [u8; 8] {
        let (v, i) = (self.vni_be, self.ip);
        [v[0], v[1], v[2], v[3], i[0], i[1], i[2], i[3]]
    }

    /// The VNI, in host order.
    pub const fn vni(&self) -> u32 {
        u32::from_be_bytes(self.vni_be)
    }

    /// The prefix length of the address part (without the VNI's 32 bits).
    pub const fn ip_prefix_len(&self) -> u32 {
        self.prefix_len.saturating_sub(32)
    }
}

/// Key of [`crate::maps::OVERLAY_SUBNETS`], an LPM trie: every overlay network's subnet
/// → its VNI, so the endpoint program can tell "another overlay network" (isolated:
/// dropped) from "outside the overlay" (left to the host to route).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubnetKey {
    pub prefix_len: u32,
    pub ip: [u8; 4],
}

impl SubnetKey {
    /// The trie key for `ip/prefix_len`, host bits cleared.
    pub const fn new(ip: [u8; 4], prefix_len: u32) -> SubnetKey {
        let prefix_len = if prefix_len > 32 { 32 } else { prefix_len };
        SubnetKey {
            prefix_len,
            ip: (u32::from_be_bytes(ip) & prefix_mask(prefix_len)).to_be_bytes(),
        }
    }

    /// The key a program looks an address up with.
    pub const fn lookup(ip: [u8; 4]) -> SubnetKey {
        SubnetKey::new(ip, 32)
    }
}

/// Value of [`crate::maps::OVERLAY_SUBNETS`]: the VNI of the network owning the subnet.
pub type SubnetValue = u32;

/// An external (non-Skein) VXLAN endpoint: where to send and which inner MAC to use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtepValue {
    pub underlay_ip: [u8; 4],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// [`crate::maps::OVERLAY_UNDERLAY`] slot 0: this host's underlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayValue {
    pub ifindex: u32,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// What `xdp_underlay` leaves in front of a frame it decapsulated (XDP metadata, which
/// the kernel carries into the skb as `data_meta`), for `tc_underlay_ingress` to deliver
/// it without parsing again. Only our XDP program writes metadata on the underlay, and
/// the tc program trusts it only with [`DECAP_META_MAGIC`] and only after checking that
/// the port `ifindex` is an endpoint of `vni` whose address is the frame's destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapMeta {
    pub magic: u32,
    /// The endpoint's host-side veth.
    pub ifindex: u32,
    /// The VNI the frame arrived with.
    pub vni: u32,
}

/// [`DecapMeta::magic`]: "SKDC".
pub const DECAP_META_MAGIC: u32 = 0x534b_4443;

const _: () = {
    assert!(size_of::<EndpointKey>() == 8);
    assert!(size_of::<EndpointValue>() == 8);
    assert!(size_of::<PortValue>() == 8);
    assert!(size_of::<NetworkValue>() == 12);
    assert!(size_of::<VtepKey>() == 12);
    assert!(size_of::<SubnetKey>() == 8);
    assert!(size_of::<VtepValue>() == 12);
    assert!(size_of::<UnderlayValue>() == 16);
    // XDP metadata: a multiple of 4 bytes, at most 32.
    assert!(size_of::<DecapMeta>() == 12);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `repr(C)`, integer and byte-array fields only, sizes asserted above with
    // no implicit padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for PortValue {}
    unsafe impl aya::Pod for NetworkValue {}
    unsafe impl aya::Pod for VtepKey {}
    unsafe impl aya::Pod for SubnetKey {}
    unsafe impl aya::Pod for VtepValue {}
    unsafe impl aya::Pod for UnderlayValue {}
}

/// The 8-byte VXLAN header for `vni`.
pub const fn vxlan_header(vni: u32) -> [u8; 8] {
    [
        VXLAN_FLAGS,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ]
}

/// The VNI of a VXLAN header, if its flags are valid (I set; reserved bits are ignored on
/// receipt, as RFC 7348 asks).
pub const fn vxlan_vni(header: &[u8; 8]) -> Option<u32> {
    if header[0] & VXLAN_FLAGS == 0 {
        return None;
    }
    Some(((header[4] as u32) << 16) | ((header[5] as u32) << 8) | header[6] as u32)
}

/// Outer UDP source port from a hash of the inner flow (RFC 7348 §5): the dynamic range
/// 49152–65535, so the underlay's ECMP spreads flows and keeps each flow on one path.
pub const fn vxlan_source_port(flow_hash: u32) -> u16 {
    // Fold the high bits in: some hashes vary mostly there.
    let folded = flow_hash ^ (flow_hash >> 16);
    49152 + (folded % 16384) as u16
}

/// The IPv4 header checksum of a 20-byte header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8; IPV4_LEN]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < IPV4_LEN {
        sum += u16::from_be_bytes([header[i], header[i + 1]]) as u32;
        i += 2;
    }
    // Two folds always suffice (ten 16-bit words sum to less than 2^20), and a fixed
    // count keeps the verifier from exploring a loop whose bound it cannot see.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The outer IPv4 header (no options, DF clear, TTL 64, UDP) for `payload_len` bytes of
/// UDP header + VXLAN + inner frame, checksum filled in.
pub fn outer_ipv4(src: [u8; 4], dst: [u8; 4], payload_len: u16, id: u16) -> [u8; IPV4_LEN] {
    let total = (IPV4_LEN as u16).wrapping_add(payload_len).to_be_bytes();
    let id = id.to_be_bytes();
    let mut header = [
        0x45, 0, total[0], total[1], id[0], id[1], 0, 0, 64, 17, 0, 0, src[0], src[1], src[2],
        src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let checksum = ipv4_checksum(&header).to_be_bytes();
    header[10] = checksum[0];
    header[11] = checksum[1];
    header
}

/// The Internet checksum (RFC 1071) of `N` bytes, `N` even; fixed size, so the verifier
/// sees a bounded loop.
pub fn internet_checksum<const N: usize>(bytes: &[u8; N]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The bytes of a packet an ICMP error quotes: its IPv4 header (no options) and the
/// first 8 bytes after it (RFC 792).
pub const ICMP_QUOTE_LEN: usize = IPV4_LEN + 8;
/// IPv4 header + ICMP header + quote.
pub const ICMP_FRAG_NEEDED_LEN: usize = IPV4_LEN + 8 + ICMP_QUOTE_LEN;

/// "Destination unreachable: fragmentation needed and DF set" (ICMP type 3 code 4, RFC
/// 1191) from `from` (the gateway: the router that cannot forward, as the endpoint sees
/// it) to `to`, announcing `next_hop_mtu`, quoting the packet's first bytes: IPv4 header,
/// ICMP header, quote. Built from [`icmp_error_ipv4`] and [`icmp_frag_needed_header`],
/// which the program writes into the packet piece by piece (BPF stacks are small).
pub fn icmp_frag_needed(
    from: [u8; 4],
    to: [u8; 4],
    next_hop_mtu: u16,
    quoted: &[u8; ICMP_QUOTE_LEN],
) -> [u8; ICMP_FRAG_NEEDED_LEN] {
    let mut out = [0u8; ICMP_FRAG_NEEDED_LEN];
    let ip = icmp_error_ipv4(from, to);
    let icmp = icmp_frag_needed_header(next_hop_mtu, quoted);
    out[..IPV4_LEN].copy_from_slice(&ip);
    out[IPV4_LEN..IPV4_LEN + 8].copy_from_slice(&icmp);
    out[IPV4_LEN + 8..].copy_from_slice(quoted);
    out
}

/// The IPv4 header of an ICMP error of [`ICMP_FRAG_NEEDED_LEN`] bytes (TTL 64, TOS 0xc0
/// as the kernel sends its ICMP errors), checksum filled in.
pub fn icmp_error_ipv4(from: [u8; 4], to: [u8; 4]) -> [u8; IPV4_LEN] {
    let total = (ICMP_FRAG_NEEDED_LEN as u16).to_be_bytes();
    let mut ip = [
        0x45, 0xc0, total[0], total[1], 0, 0, 0, 0, 64, 1, 0, 0, from[0], from[1], from[2],
        from[3], to[0], to[1], to[2], to[3],
    ];
    let sum = ipv4_checksum(&ip).to_be_bytes();
    ip[10] = sum[0];
    ip[11] = sum[1];
    ip
}

/// The 8-byte ICMP header of "fragmentation needed" with `next_hop_mtu`; its checksum
/// covers the header and the `quoted` bytes that follow it.
pub fn icmp_frag_needed_header(next_hop_mtu: u16, quoted: &[u8; ICMP_QUOTE_LEN]) -> [u8; 8] {
    let mtu = next_hop_mtu.to_be_bytes();
    let mut header = [3, 4, 0, 0, 0, 0, mtu[0], mtu[1]];
    // One's complement sums add up piecewise: fold the quote's sum into the header's.
    let quote_sum = !internet_checksum(quoted) as u32;
    let header_sum = !internet_checksum(&header) as u32;
    let mut sum = quote_sum + header_sum;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let check = (!(sum as u16)).to_be_bytes();
    header[2] = check[0];
    header[3] = check[1];
    header
}

/// EtherTypes, as they appear on the wire.
pub const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
pub const ETH_P_ARP: [u8; 2] = [0x08, 0x06];

/// An Ethernet header followed by an ARP packet for IPv4 over Ethernet.
pub const ARP_FRAME_LEN: usize = ETH_LEN + 28;
/// ARP operations, as on the wire.
pub const ARP_OP_REQUEST: [u8; 2] = [0, 1];
pub const ARP_OP_REPLY: [u8; 2] = [0, 2];

/// The gateway's answer to an endpoint's ARP request "who has `target_ip`? tell
/// `asker_ip` (`asker_mac`)": Ethernet + ARP reply, "`target_ip` is at [`GATEWAY_MAC`]",
/// addressed back to the asker. Every overlay address resolves to the gateway: the
/// overlay is routed, so the endpoint sends everything to the host's program.
pub const fn arp_reply(
    asker_mac: [u8; 6],
    asker_ip: [u8; 4],
    target_ip: [u8; 4],
) -> [u8; ARP_FRAME_LEN] {
    let (a, g, ip, t) = (asker_mac, GATEWAY_MAC, asker_ip, target_ip);
    #[rustfmt::skip]
    let frame = [
        // Ethernet: to the asker, from the gateway, ARP.
        a[0], a[1], a[2], a[3], a[4], a[5], g[0], g[1], g[2], g[3], g[4], g[5], 0x08, 0x06,
        // ARP: Ethernet (1), IPv4 (0x0800), 6-byte MACs, 4-byte addresses, reply (2).
        0, 1, 0x08, 0x00, 6, 4, 0, 2,
        // Sender: the target address, at the gateway's MAC.
        g[0], g[1], g[2], g[3], g[4], g[5], t[0], t[1], t[2], t[3],
        // Target: the asker.
        a[0], a[1], a[2], a[3], a[4], a[5], ip[0], ip[1], ip[2], ip[3],
    ];
    frame
}

/// What [`encap_headers`] needs to know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encap {
    /// This host's underlay address.
    pub outer_src: [u8; 4],
    /// The destination host's (or external VTEP's) underlay address.
    pub outer_dst: [u8; 4],
    /// Total length of the outer IPv4 packet (header included), i.e. the frame length
    /// after encapsulation minus the outer Ethernet header; capped at 65535 (a GSO
    /// super-packet's segments get their own lengths when the kernel splits it).
    pub outer_ip_len: u16,
    pub ip_id: u16,
    /// See [`vxlan_source_port`].
    pub udp_src_port: u16,
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_mac: [u8; 6],
}

/// The [`ENCAP_LEN`] bytes that encapsulation inserts after the (then outer) Ethernet
/// header: outer IPv4, UDP (checksum 0, allowed for IPv4 and what the kernel's VXLAN
/// device sends by default), VXLAN, and the inner Ethernet header of an IPv4 frame.
pub fn encap_headers(e: &Encap) -> [u8; ENCAP_LEN] {
    let mut out = [0u8; ENCAP_LEN];
    let udp_len = e.outer_ip_len.saturating_sub(IPV4_LEN as u16);
    let ip = outer_ipv4(e.outer_src, e.outer_dst, udp_len, e.ip_id);
    let mut i = 0;
    while i < IPV4_LEN {
        out[i] = ip[i];
        i += 1;
    }
    let sport = e.udp_src_port.to_be_bytes();
    let dport = VXLAN_PORT.to_be_bytes();
    let len = udp_len.to_be_bytes();
    let udp = [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0];
    let vxlan = vxlan_header(e.vni);
    let mut j = 0;
    while j < UDP_LEN {
        out[IPV4_LEN + j] = udp[j];
        out[IPV4_LEN + UDP_LEN + j] = vxlan[j];
        j += 1;
    }
    let inner = IPV4_LEN + UDP_LEN + VXLAN_LEN;
    let mut k = 0;
    while k < 6 {
        out[inner + k] = e.inner_dst_mac[k];
        out[inner + 6 + k] = e.inner_src_mac[k];
        k += 1;
    }
    out[inner + 12] = ETH_P_IPV4[0];
    out[inner + 13] = ETH_P_IPV4[1];
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn checksum_matches_a_known_header() {
        // From RFC 1071-style worked examples (wikipedia's IPv4 header checksum example).
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
        header[10] = 0xb8;
        header[11] = 0x61;
        // A header with its checksum in place sums to 0xffff (checksum of it is 0).
        assert_eq!(ipv4_checksum(&header), 0);
    }

    #[test]
    fn outer_header_is_valid() {
        let h = outer_ipv4([10, 200, 0, 11], [10, 200, 0, 12], 8 + 8 + 98, 7);
        assert_eq!(h[0], 0x45);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 20 + 8 + 8 + 98);
        assert_eq!(h[9], 17);
        assert_eq!(ipv4_checksum(&h), 0, "checksum verifies");
    }

    #[test]
    fn vxlan_header_round_trips_and_checks_flags() {
        for vni in [1, 4096, 0x123456, MAX_VNI] {
            let h = vxlan_header(vni);
            assert_eq!(h[0], 0x08);
            assert_eq!(vxlan_vni(&h), Some(vni));
        }
        assert_eq!(
            vxlan_vni(&[0, 0, 0, 0, 0, 0x10, 0, 0]),
            None,
            "I flag clear"
        );
        assert_eq!(
            vxlan_vni(&[0x0c, 0xff, 0xff, 0xff, 0, 0, 1, 0xff]),
            Some(1),
            "reserved bits ignored"
        );
    }

    #[test]
    fn source_port_is_in_the_dynamic_range_and_spreads() {
        let mut seen = std::collections::BTreeSet::new();
        for hash in (0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761)) {
            let port = vxlan_source_port(hash);
            assert!(port >= 49152);
            seen.insert(port);
        }
        assert!(seen.len() > 5000, "ports spread: {}", seen.len());
    }

    #[test]
    fn subnet_membership_and_masks() {
        let net = NetworkValue {
            subnet: [10, 10, 1, 0],
            prefix_len: 24,
            gateway: [10, 10, 1, 1],
        };
        assert!(net.contains([10, 10, 1, 77]));
        assert!(!net.contains([10, 10, 2, 77]));
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(8), 0xff00_0000);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(prefix_mask(40), u32::MAX);
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let mac = endpoint_mac([10, 10, 1, 5]);
        assert_eq!(mac, [0x02, 0x53, 10, 10, 1, 5]);
        for m in [mac, GATEWAY_MAC] {
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(endpoint_mac([0, 0, 0, 1]), GATEWAY_MAC);
    }

    #[test]
    fn arp_reply_answers_with_the_gateway_mac() {
        let asker = [0x02, 0x53, 10, 10, 1, 5];
        let frame = arp_reply(asker, [10, 10, 1, 5], [10, 10, 1, 1]);
        assert_eq!(&frame[0..6], &asker, "to the asker");
        assert_eq!(&frame[6..12], &GATEWAY_MAC, "from the gateway");
        assert_eq!(&frame[12..14], &ETH_P_ARP);
        assert_eq!(
            &frame[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 2],
            "IPv4-over-Ethernet reply"
        );
        assert_eq!(&frame[22..28], &GATEWAY_MAC, "sender MAC");
        assert_eq!(
            &frame[28..32],
            &[10, 10, 1, 1],
            "sender IP: the address asked for"
        );
        assert_eq!(&frame[32..38], &asker, "target MAC");
        assert_eq!(&frame[38..42], &[10, 10, 1, 5], "target IP");
    }

    #[test]
    fn encap_headers_are_ipv4_udp_vxlan_ethernet() {
        let e = Encap {
            outer_src: [10, 200, 0, 11],
            outer_dst: [10, 200, 0, 12],
            outer_ip_len: 20 + 8 + 8 + 14 + 84,
            ip_id: 0x1234,
            udp_src_port: 50000,
            vni: 4097,
            inner_dst_mac: endpoint_mac([10, 10, 1, 7]),
            inner_src_mac: endpoint_mac([10, 10, 1, 5]),
        };
        let h = encap_headers(&e);
        let ip: [u8; IPV4_LEN] = h[..20].try_into().unwrap();
        assert_eq!(
            ip,
            outer_ipv4(e.outer_src, e.outer_dst, 8 + 8 + 14 + 84, 0x1234)
        );
        assert_eq!(ipv4_checksum(&ip), 0);
        assert_eq!(
            &h[20..28],
            &[0xc3, 0x50, 0x12, 0xb5, 0, 114, 0, 0],
            "UDP 50000 -> 4789, len, csum 0"
        );
        assert_eq!(&h[28..36], &vxlan_header(4097));
        assert_eq!(&h[36..42], &e.inner_dst_mac);
        assert_eq!(&h[42..48], &e.inner_src_mac);
        assert_eq!(&h[48..50], &ETH_P_IPV4);
    }

    #[test]
    fn icmp_frag_needed_is_a_valid_type_3_code_4_with_the_mtu_and_the_quote() {
        let quoted: [u8; ICMP_QUOTE_LEN] = core::array::from_fn(|i| i as u8 + 1);
        let p = icmp_frag_needed([10, 0, 1, 1], [10, 0, 1, 5], 1450, &quoted);
        let ip: [u8; IPV4_LEN] = p[..20].try_into().unwrap();
        assert_eq!(ipv4_checksum(&ip), 0, "IPv4 checksum verifies");
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 56, "total length");
        assert_eq!((p[8], p[9]), (64, 1), "TTL 64, ICMP");
        assert_eq!(&p[12..16], &[10, 0, 1, 1]);
        assert_eq!(&p[16..20], &[10, 0, 1, 5]);
        let icmp: [u8; 36] = p[20..].try_into().unwrap();
        assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
        assert_eq!(&icmp[8..], &quoted);
        assert_eq!(internet_checksum(&icmp), 0, "ICMP checksum verifies");
    }

    #[test]
    fn lpm_keys_clear_host_bits_and_count_the_vni() {
        let k = VtepKey::new(4096, [192, 168, 7, 99], 24);
        assert_eq!(k.prefix_len, 56);
        assert_eq!(k.vni_be, [0, 0, 0x10, 0]);
        assert_eq!(k.ip, [192, 168, 7, 0]);
        assert_eq!(k.data(), [0, 0, 0x10, 0, 192, 168, 7, 0]);
        assert_eq!((k.vni(), k.ip_prefix_len()), (4096, 24));
        assert_eq!(VtepKey::lookup(1, [1, 2, 3, 4]).prefix_len, 64);
        let s = SubnetKey::new([10, 10, 1, 77], 24);
        assert_eq!((s.prefix_len, s.ip), (24, [10, 10, 1, 0]));
        assert_eq!(SubnetKey::new([10, 0, 0, 1], 40).prefix_len, 32);
        assert_eq!(core::mem::offset_of!(SubnetKey, ip), 4);
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::offset_of!(EndpointValue, ifindex), 4);
        assert_eq!(core::mem::offset_of!(NetworkValue, gateway), 8);
        assert_eq!(core::mem::offset_of!(VtepKey, ip), 8);
        assert_eq!(core::mem::offset_of!(UnderlayValue, mac), 8);
    }
}
