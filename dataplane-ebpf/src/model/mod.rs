//! A userspace model of the three programs' rules, as pure functions: what each program
//! decides for a frame (counter slot, action) and the frame it leaves behind, given the
//! maps of a cluster and what the kernel answers (FIB, neighbours, MTU). The
//! differential test (`xtask/tests/differential.rs`) runs random and mutated frames
//! through the real programs with `BPF_PROG_TEST_RUN` and through this model, and fails
//! on any difference.
//!
//! It is an independent re-statement of the parsing and the decisions, written from the
//! rules (the programs' module docs, ARCHITECTURE.md "Programs and packet paths",
//! [`crate::guard`]) over a byte slice rather than a bounds-checked packet; it reuses only
//! the ABI's pure helpers the programs use to build what they write ([`encap_headers`],
//! [`arp_reply`], [`icmp_frag_needed`], [`guard::drops`], the VXLAN and MAC helpers).
//! Built only with the `model` feature (it needs `alloc`), so the eBPF build never sees it.
//!
//! Layout:
//! - this module: the inputs ([`Cluster`], [`Kernel`]), the outputs ([`Outcome`],
//!   [`Action`]) and [`run`];
//! - `underlay`: `xdp_underlay` and `tc_underlay_ingress` (VXLAN classification,
//!   decapsulation, nothing routed into the overlay);
//! - `endpoint`: `tc_endpoint_ingress` (ARP, isolation, spoofing, local delivery,
//!   encapsulation, ICMP "fragmentation needed", the cluster-port guard).

extern crate alloc;

use alloc::{collections::BTreeMap, collections::BTreeSet, vec::Vec};
use core::ops::Range;

use crate::{
    counters::Verdict,
    guard::GuardedPort,
    overlay::{
        prefix_mask, EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, UnderlayValue,
        VtepKey, VtepValue,
    },
};

#[cfg(test)]
mod tests;

mod endpoint;
mod underlay;

/// Which program a frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    XdpUnderlay,
    TcUnderlayIngress,
    /// `tc_endpoint_ingress` on the host-side veth `ifindex`.
    TcEndpointIngress {
        ifindex: u32,
    },
}

/// The maps of a cluster as this host's agent would have written them.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// OVERLAY_PORTS: host-side veth ifindex → the endpoint behind it.
    pub ports: BTreeMap<u32, PortValue>,
    /// OVERLAY_ENDPOINTS.
    pub endpoints: BTreeMap<EndpointKey, EndpointValue>,
    /// OVERLAY_NETWORKS: VNI → addressing.
    pub networks: BTreeMap<u32, NetworkValue>,
    /// OVERLAY_SUBNETS (an LPM trie): subnet → VNI.
    pub subnets: Vec<(SubnetKey, u32)>,
    /// OVERLAY_VTEPS (an LPM trie): (VNI, prefix) → external VTEP.
    pub vteps: Vec<(VtepKey, VtepValue)>,
    /// OVERLAY_UNDERLAY slot 0 (an array slot always exists: all zero if never written).
    pub underlay: UnderlayValue,
    /// GUARDED_HOSTS.
    pub guarded_hosts: BTreeSet<[u8; 4]>,
    /// GUARDED_PORTS.
    pub guarded_ports: BTreeSet<GuardedPort>,
}

impl Cluster {
    /// The longest subnet of OVERLAY_SUBNETS holding `ip`, and its VNI.
    pub fn subnet_of(&self, ip: [u8; 4]) -> Option<u32> {
        self.subnets
            .iter()
            .filter(|(key, _)| in_prefix(ip, key.ip, key.prefix_len))
            .max_by_key(|(key, _)| key.prefix_len)
            .map(|(_, vni)| *vni)
    }

    /// The external VTEP of the longest OVERLAY_VTEPS prefix holding `ip` on `vni`.
    pub fn vtep_for(&self, vni: u32, ip: [u8; 4]) -> Option<VtepValue> {
        self.vteps
            .iter()
            .filter(|(key, _)| key.vni() == vni && in_prefix(ip, key.ip, key.ip_prefix_len()))
            .max_by_key(|(key, _)| key.prefix_len)
            .map(|(_, vtep)| *vtep)
    }

    pub fn endpoint(&self, vni: u32, ip: [u8; 4]) -> Option<EndpointValue> {
        self.endpoints.get(&EndpointKey { vni, ip }).copied()
    }
}

/// A route of the kernel's FIB, as the model needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: [u8; 4],
    pub prefix_len: u32,
    /// The next hop; `None` for a directly connected destination.
    pub gateway: Option<[u8; 4]>,
}

/// What the kernel of the host answers that the model cannot work out from the maps:
/// `bpf_fib_lookup` (routes, forwarding, neighbours) and the underlay's MTU. In the
/// differential test this describes the test's network namespace.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    /// IPv4 forwarding on every interface (`bpf_fib_lookup` answers `FWD_DISABLED`
    /// where it is off).
    pub forwarding: bool,
    /// The `local` table: local and broadcast addresses (`NOT_FWDED`).
    pub local_routes: Vec<Route>,
    /// The `main` table: unicast routes (a destination matching none: `NOT_FWDED`).
    pub routes: Vec<Route>,
    /// Resolved neighbours on the underlay (`NUD_VALID`): address → MAC.
    pub neighbours: BTreeMap<[u8; 4], [u8; 6]>,
    /// The underlay interface's MAC (the source MAC of a resolved next hop).
    pub underlay_mac: [u8; 6],
    /// The underlay interface's MTU.
    pub underlay_mtu: u32,
}

/// `bpf_fib_lookup`'s answer, as far as the programs tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fib {
    /// `FWD_DISABLED`.
    ForwardingDisabled,
    /// `NOT_FWDED`: local, broadcast, or no route.
    NotForwarded,
    /// `SUCCESS`: the next hop's MAC.
    Success { dmac: [u8; 6] },
    /// `NO_NEIGH`: routed, next hop not resolved.
    NoNeighbour,
}

impl Kernel {
    /// `bpf_fib_lookup` for a packet to `dst` arriving on an interface of this host.
    pub fn fib(&self, dst: [u8; 4]) -> Fib {
        if !self.forwarding {
            return Fib::ForwardingDisabled;
        }
        if self
            .local_routes
            .iter()
            .any(|r| in_prefix(dst, r.prefix, r.prefix_len))
        {
            return Fib::NotForwarded;
        }
        let Some(route) = self
            .routes
            .iter()
            .filter(|r| in_prefix(dst, r.prefix, r.prefix_len))
            .max_by_key(|r| r.prefix_len)
        else {
            return Fib::NotForwarded;
        };
        let next_hop = route.gateway.unwrap_or(dst);
        match self.neighbours.get(&next_hop) {
            Some(mac) => Fib::Success { dmac: *mac },
            None => Fib::NoNeighbour,
        }
    }
}

/// What a program returned to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    XdpPass,
    XdpDrop,
    /// `TC_ACT_OK`.
    Pass,
    /// `TC_ACT_SHOT`.
    Drop,
    /// `bpf_redirect` to `ifindex`'s egress.
    Redirect {
        ifindex: u32,
    },
    /// `bpf_redirect_peer` into the namespace behind `ifindex`.
    RedirectPeer {
        ifindex: u32,
    },
    /// `bpf_redirect_neigh` out of `ifindex` (the kernel resolves the next hop).
    RedirectNeigh {
        ifindex: u32,
    },
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

impl Action {
    /// The program's return value (what `BPF_PROG_TEST_RUN` reports: a redirect's target
    /// is recorded in the kernel, not returned).
    pub fn retval(self) -> u32 {
        match self {
            Action::XdpPass => XDP_PASS,
            Action::XdpDrop => XDP_DROP,
            Action::Pass => TC_ACT_OK,
            Action::Drop => TC_ACT_SHOT,
            Action::Redirect { .. }
            | Action::RedirectPeer { .. }
            | Action::RedirectNeigh { .. } => TC_ACT_REDIRECT,
        }
    }
}

/// What a program does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The counter slot the frame is counted in (one packet of the input's length).
    pub verdict: Verdict,
    pub action: Action,
    /// The frame as the program leaves it. For XDP, the metadata in front of the frame
    /// (`data_meta .. data`) comes first, as `BPF_PROG_TEST_RUN` returns it.
    pub frame: Vec<u8>,
    /// Byte ranges of `frame` the model cannot know (the outer UDP source port, from the
    /// kernel's flow hash; the outer IP ID, random; the outer IPv4 checksum, which
    /// covers the ID). The model leaves them zero; [`Outcome::matches`] ignores them.
    pub unknown: Vec<Range<usize>>,
}

impl Outcome {
    fn new(verdict: Verdict, action: Action, frame: Vec<u8>) -> Outcome {
        Outcome {
            verdict,
            action,
            frame,
            unknown: Vec::new(),
        }
    }

    /// Whether `frame` equals the expected frame outside [`Outcome::unknown`].
    pub fn matches(&self, frame: &[u8]) -> bool {
        frame.len() == self.frame.len()
            && frame
                .iter()
                .zip(&self.frame)
                .enumerate()
                .all(|(i, (a, b))| a == b || self.unknown.iter().any(|r| r.contains(&i)))
    }
}

/// What `program` does with `frame` on a host with the maps of `cluster` and the kernel
/// `kernel`.
pub fn run(program: Program, frame: &[u8], cluster: &Cluster, kernel: &Kernel) -> Outcome {
    match program {
        Program::XdpUnderlay => underlay::xdp_underlay(frame, cluster),
        Program::TcUnderlayIngress => underlay::tc_underlay_ingress(frame, cluster),
        Program::TcEndpointIngress { ifindex } => {
            endpoint::tc_endpoint_ingress(frame, ifindex, cluster, kernel)
        }
    }
}

/// Whether `ip` lies in `prefix/len`.
fn in_prefix(ip: [u8; 4], prefix: [u8; 4], len: u32) -> bool {
    let mask = prefix_mask(len);
    u32::from_be_bytes(ip) & mask == u32::from_be_bytes(prefix) & mask
}

// Frame parsing over a byte slice: `None` where the bytes are not there.

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

fn bytes<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(frame: &[u8], at: usize) -> Option<u16> {
    bytes::<2>(frame, at).map(u16::from_be_bytes)
}

/// The fields of a 20-byte IPv4 header (options are not parsed) at `at`.
#[derive(Clone, Copy, Debug)]
struct Ipv4 {
    version_ihl: u8,
    frag_off: u16,
    protocol: u8,
    src: [u8; 4],
    dst: [u8; 4],
}

impl Ipv4 {
    fn at(frame: &[u8], at: usize) -> Option<Ipv4> {
        let h = bytes::<20>(frame, at)?;
        Some(Ipv4 {
            version_ihl: h[0],
            frag_off: u16::from_be_bytes([h[6], h[7]]),
            protocol: h[9],
            src: [h[12], h[13], h[14], h[15]],
            dst: [h[16], h[17], h[18], h[19]],
        })
    }

    fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }
}
