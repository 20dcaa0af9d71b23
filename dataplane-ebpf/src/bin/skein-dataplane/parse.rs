//! Packet headers and the one bounds-checked way to reach them.
//!
//! Every header is a `repr(C)` struct of bytes and byte arrays: alignment 1, so any
//! offset is fine, and multi-byte fields stay in wire (network) order until a helper
//! below reads them. Arrays are compared through these integer helpers, never with
//! `==` on arrays, which may lower to a `memcmp` call that does not exist in BPF.

use aya_ebpf::programs::{TcContext, XdpContext};

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// ARP for IPv4 over Ethernet (RFC 826), the only kind the overlay answers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

const _: () = {
    assert!(size_of::<EthHdr>() == 14);
    assert!(size_of::<ArpHdr>() == 28);
    assert!(size_of::<Ipv4Hdr>() == 20);
    assert!(size_of::<UdpHdr>() == 8);
};

/// EtherTypes, host order (as [`be16`] reads them).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 `frag_off` bits (host order once read with [`be16`]).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// A wire-order 16-bit field as a host-order number.
#[inline(always)]
pub fn be16(field: [u8; 2]) -> u16 {
    u16::from_be_bytes(field)
}

/// A wire-order IPv4 address as a number, for comparisons.
#[inline(always)]
pub fn be32(field: [u8; 4]) -> u32 {
    u32::from_be_bytes(field)
}

/// Where a program's packet lies: the bounds the verifier checks reads against. Both
/// the skb (tc) and the XDP buffer have them, so header parsing is written once.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A copy of the `T` at `offset` bytes into the packet's linear data, if it is there.
///
/// The verifier allows a packet read only after a comparison against `data_end` that
/// covers it; this is that comparison, written so LLVM keeps it in the form the
/// verifier tracks (`data + offset + size > data_end`). Headers beyond the skb's linear
/// part (or an XDP multi-buffer frame's first buffer) are not visible here: on tc, call
/// [`pull_headers`] first.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &impl Packet, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bytes [start + offset, start + offset + size) are inside the packet
    // (checked above); `T` is a byte struct with alignment 1, valid for any bytes.
    Some(unsafe { *((start + offset) as *const T) })
}

/// Overwrites the `T` at `offset` bytes into the packet, if it is there; false if not.
#[inline(always)]
pub fn write_at<T: Copy>(ctx: &impl Packet, offset: usize, value: &T) -> bool {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return false;
    }
    // SAFETY: as in `read_at`; the packet is writable for both program types.
    unsafe { *((start + offset) as *mut T) = *value };
    true
}

/// Makes the first `len` bytes (or the whole packet if it is shorter) directly
/// readable. Locally sent packets can carry their headers in page fragments rather than
/// the skb's linear area; pulling is a copy, so only done when needed. A failure leaves
/// the packet as it was, and the reads that need the bytes then fail cleanly.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext, len: u32) {
    let want = if ctx.len() < len { ctx.len() } else { len };
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
}
