//! Answers the routing mesh's ingress program sends back to a client in place of its
//! packet (ARCHITECTURE.md, packet path 4): a TCP reset for a segment no live flow can take,
//! ICMP "port unreachable" for UDP to a service without a serving task, ICMP
//! "fragmentation needed" for a datagram too big for the overlay. Also the checksum pieces
//! the program needs to verify a segment's TCP checksum. Pure and fixed-size (the program
//! writes the results into the packet; BPF stacks are small), unit-tested on the host.
//!
//! Byte order: addresses and `_be` fields are network order; sequence numbers are host
//! order (the program reads them with `u32::from_be_bytes`).

use crate::overlay::{icmp_error_ipv4, internet_checksum, ICMP_QUOTE_LEN, IPV4_LEN};

/// IPv4 + TCP header of a reset, no options.
pub const TCP_RST_LEN: usize = IPV4_LEN + TCP_HEADER_LEN;
/// A TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// ICMP destination unreachable codes (RFC 792, RFC 1191).
pub const ICMP_PORT_UNREACHABLE: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What a reset answers: the offending segment as the client sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// The client (the segment's source) and the address it sent to.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub seq: u32,
    pub ack: u32,
    /// TCP header flags byte.
    pub flags: u8,
    /// Payload bytes (after the TCP header and its options).
    pub payload_len: u16,
}

/// The IPv4 and TCP headers of the reset answering `seg` (RFC 793, "Reset Generation"):
/// from the address and port the client sent to, back to the client. A segment with ACK
/// gets `<SEQ=SEG.ACK><CTL=RST>`; one without gets `<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
/// <CTL=RST,ACK>`, SYN and FIN counting one each, so a refused SYN looks exactly like a
/// closed port's answer. Never answers a reset (the program checks before calling).
/// TTL 64, DF set, IP ID 0 (as the kernel sends resets), window 0.
#[inline(never)]
pub fn tcp_rst(seg: &Segment) -> [u8; TCP_RST_LEN] {
    let (seq, ack, flags) = if seg.flags & TCP_ACK != 0 {
        (seg.ack, 0, TCP_RST)
    } else {
        let mut len = seg.payload_len as u32;
        if seg.flags & TCP_SYN != 0 {
            len += 1;
        }
        if seg.flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, seg.seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let (from, to) = (seg.dst, seg.src);
    let total = (TCP_RST_LEN as u16).to_be_bytes();
    let (s, a) = (seq.to_be_bytes(), ack.to_be_bytes());
    let (sp, dp) = (seg.dport_be, seg.sport_be);
    #[rustfmt::skip]
    let mut out = [
        // IPv4: no options, length 40, ID 0, DF, TTL 64, TCP.
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 6, 0, 0,
        from[0], from[1], from[2], from[3], to[0], to[1], to[2], to[3],
        // TCP: ports swapped, seq, ack, data offset 5, flags, window 0, checksum, urgent 0.
        sp[0], sp[1], dp[0], dp[1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3],
        0x50, flags, 0, 0, 0, 0, 0, 0,
    ];
    let mut ip = [0u8; IPV4_LEN];
    let mut tcp = [0u8; TCP_HEADER_LEN];
    let mut i = 0;
    while i < IPV4_LEN {
        ip[i] = out[i];
        tcp[i] = out[IPV4_LEN + i];
        i += 1;
    }
    let ip_check = crate::overlay::ipv4_checksum(&ip).to_be_bytes();
    out[10] = ip_check[0];
    out[11] = ip_check[1];
    let sum =
        pseudo_header_sum(from, to, 6, TCP_HEADER_LEN as u16) + !internet_checksum(&tcp) as u32;
    let tcp_check = fold(sum).to_be_bytes();
    out[IPV4_LEN + 16] = tcp_check[0];
    out[IPV4_LEN + 17] = tcp_check[1];
    out
}

/// The 8-byte ICMP "destination unreachable" header with `code` (a `next_hop_mtu` for
/// [`ICMP_FRAG_NEEDED`], 0 otherwise); its checksum covers the header and the `quoted`
/// bytes (the offending packet's IPv4 header and first 8 bytes) that follow it. The IPv4
/// header in front is [`icmp_error_ipv4`]'s (the same length for every code).
#[inline(never)]
pub fn icmp_unreachable_header(
    code: u8,
    next_hop_mtu: u16,
    quoted: &[u8; ICMP_QUOTE_LEN],
) -> [u8; 8] {
    let mtu = next_hop_mtu.to_be_bytes();
    let mut header = [3, code, 0, 0, 0, 0, mtu[0], mtu[1]];
    // One's complement sums add up piecewise: fold the quote's sum into the header's.
    let sum = !internet_checksum(quoted) as u32 + !internet_checksum(&header) as u32;
    let check = fold(sum).to_be_bytes();
    header[2] = check[0];
    header[3] = check[1];
    header
}

/// The IPv4 header of an ICMP error from `from` to `to` (re-exported for the program, so
/// both halves of an answer come from this module).
#[inline(never)]
pub fn icmp_ipv4(from: [u8; 4], to: [u8; 4]) -> [u8; IPV4_LEN] {
    icmp_error_ipv4(from, to)
}

/// The one's complement sum (unfolded) of the IPv4 pseudo-header TCP and UDP checksums
/// cover: source, destination, protocol, L4 length.
pub const fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u32 {
    u16::from_be_bytes([src[0], src[1]]) as u32
        + u16::from_be_bytes([src[2], src[3]]) as u32
        + u16::from_be_bytes([dst[0], dst[1]]) as u32
        + u16::from_be_bytes([dst[2], dst[3]]) as u32
        + protocol as u32
        + l4_len as u32
}

/// A sum of 16-bit words folded to 16 bits and complemented: the checksum field's value.
/// A checksum verifies when the sum over everything it covers, itself included, folds
/// to 0 here. Three folds suffice for any sum below 2^32 of at most 2^16 words.
pub const fn fold(sum: u32) -> u16 {
    let mut s = (sum & 0xffff) + (sum >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// [`crate::mesh::csum_replace2`] for a 16-bit field at byte `offset` of the area the
/// checksum covers: at an odd offset its bytes straddle two words, which adds the field
/// byte-swapped (one's complement sums are byte-order independent).
pub const fn csum_replace2_at(check: u16, offset: usize, old: u16, new: u16) -> u16 {
    if offset % 2 == 1 {
        crate::mesh::csum_replace2(check, old.swap_bytes(), new.swap_bytes())
    } else {
        crate::mesh::csum_replace2(check, old, new)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::overlay::ipv4_checksum;

    /// RFC 1071 over any bytes (odd length padded), written independently of the module.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for pair in bytes.chunks(2) {
            let word = (pair[0] as u64) << 8 | pair.get(1).copied().unwrap_or(0) as u64;
            sum += word;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn tcp_verifies(src: [u8; 4], dst: [u8; 4], tcp: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(tcp);
        checksum(&pseudo) == 0
    }

    const CLIENT: [u8; 4] = [192, 168, 50, 9];
    const NODE: [u8; 4] = [10, 200, 0, 11];

    #[test]
    fn a_syn_gets_rst_ack_acknowledging_it_from_the_port_it_tried() {
        let syn = Segment {
            src: CLIENT,
            dst: NODE,
            sport_be: 40000u16.to_be_bytes(),
            dport_be: 8080u16.to_be_bytes(),
            seq: 0xffff_ffff,
            ack: 0,
            flags: TCP_SYN,
            payload_len: 0,
        };
        let r = tcp_rst(&syn);
        let ip: [u8; 20] = r[..20].try_into().unwrap();
        assert_eq!(ipv4_checksum(&ip), 0, "IPv4 checksum verifies");
        assert_eq!(u16::from_be_bytes([r[2], r[3]]), 40);
        assert_eq!((r[8], r[9]), (64, 6));
        assert_eq!(&r[12..16], &NODE, "from the address the client sent to");
        assert_eq!(&r[16..20], &CLIENT);
        let t = &r[20..];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 8080);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
        assert_eq!(&t[4..8], &[0, 0, 0, 0], "seq 0");
        assert_eq!(&t[8..12], &0u32.to_be_bytes(), "ack wraps: seq + 1");
        assert_eq!(t[12], 0x50);
        assert_eq!(t[13], TCP_RST | TCP_ACK);
        assert!(tcp_verifies(NODE, CLIENT, t), "TCP checksum verifies");
    }

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_at_its_ack_number() {
        let seg = Segment {
            src: CLIENT,
            dst: NODE,
            sport_be: 40001u16.to_be_bytes(),
            dport_be: 80u16.to_be_bytes(),
            seq: 1000,
            ack: 0x1234_5678,
            flags: TCP_ACK | 0x08,
            payload_len: 100,
        };
        let r = tcp_rst(&seg);
        let t = &r[20..];
        assert_eq!(&t[4..8], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&t[8..12], &[0; 4]);
        assert_eq!(t[13], TCP_RST);
        assert!(tcp_verifies(NODE, CLIENT, t));
        // Payload and FIN count towards the acknowledgement of a segment without ACK.
        let fin = Segment {
            flags: TCP_FIN,
            ack: 0,
            ..seg
        };
        let t = tcp_rst(&fin);
        assert_eq!(&t[28..32], &1101u32.to_be_bytes());
        assert!(tcp_verifies(NODE, CLIENT, &t[20..]));
    }

    #[test]
    fn icmp_unreachable_checksums_cover_the_quote() {
        let quoted: [u8; ICMP_QUOTE_LEN] = core::array::from_fn(|i| (i * 7) as u8);
        for (code, mtu) in [(ICMP_PORT_UNREACHABLE, 0), (ICMP_FRAG_NEEDED, 1450)] {
            let h = icmp_unreachable_header(code, mtu, &quoted);
            assert_eq!((h[0], h[1]), (3, code));
            assert_eq!(u16::from_be_bytes([h[6], h[7]]), mtu);
            let mut all = h.to_vec();
            all.extend_from_slice(&quoted);
            assert_eq!(checksum(&all), 0, "code {code}: ICMP checksum verifies");
        }
        // The frag-needed variant is the overlay's own.
        let ip = icmp_ipv4(NODE, CLIENT);
        let whole = crate::overlay::icmp_frag_needed(NODE, CLIENT, 1450, &quoted);
        assert_eq!(&whole[..20], &ip);
        assert_eq!(
            &whole[20..28],
            &icmp_unreachable_header(ICMP_FRAG_NEEDED, 1450, &quoted)
        );
    }

    #[test]
    fn pseudo_header_and_fold_verify_a_real_segment() {
        // A SYN with options, checksum filled in by the independent implementation.
        let mut tcp = [
            0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x70, 0x02, 0xff, 0xff, 0, 0, 0, 0, 2,
            4, 5, 0xb4, 1, 1, 4, 2,
        ];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&CLIENT);
        pseudo.extend_from_slice(&NODE);
        pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
        pseudo.extend_from_slice(&tcp);
        let c = checksum(&pseudo).to_be_bytes();
        tcp[16] = c[0];
        tcp[17] = c[1];
        let mut sum = pseudo_header_sum(CLIENT, NODE, 6, tcp.len() as u16);
        for pair in tcp.chunks(2) {
            sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
        }
        assert_eq!(fold(sum), 0, "verifies");
        tcp[5] ^= 1;
        let mut bad = pseudo_header_sum(CLIENT, NODE, 6, tcp.len() as u16);
        for pair in tcp.chunks(2) {
            bad += u16::from_be_bytes([pair[0], pair[1]]) as u32;
        }
        assert_ne!(fold(bad), 0, "a flipped bit does not");
    }

    #[test]
    fn a_field_at_an_odd_offset_updates_the_checksum_byte_swapped() {
        // 7 bytes, a 16-bit field at offset 3.
        let mut bytes = [1u8, 2, 3, 0x05, 0xb4, 6, 7, 0];
        let before = checksum(&bytes);
        bytes[3..5].copy_from_slice(&1410u16.to_be_bytes());
        assert_eq!(csum_replace2_at(before, 3, 1460, 1410), checksum(&bytes));
        let mut even = [0x05u8, 0xb4, 9, 9];
        let before = checksum(&even);
        even[..2].copy_from_slice(&1410u16.to_be_bytes());
        assert_eq!(csum_replace2_at(before, 0, 1460, 1410), checksum(&even));
    }
}
