//! Per-verdict packet and byte counters.
//!
//! Each program owns a per-CPU array of [`Counter`]s indexed by [`Verdict`]; per-CPU so
//! the hot path needs no atomics, summed by the agent when it serves `/metrics`.

/// One slot of a counters map: packets and bytes (whole frame, all fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, two `u64`s, no padding (asserted above); every bit pattern is valid.
unsafe impl aya::Pod for Counter {}

impl Counter {
    /// Counts one packet of `bytes` bytes; wraps rather than traps, as counters do.
    #[inline(always)]
    pub fn record(&mut self, bytes: u64) {
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(bytes);
    }

    /// Sums the per-CPU copies of one slot.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counter>) -> Counter {
        per_cpu
            .into_iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            })
    }
}

/// What a program did with a packet: the index of its counter slot.
///
/// A `u32` newtype rather than an `enum`, because it indexes a map and crosses the
/// kernel/user boundary as a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict(pub u32);

impl Verdict {
    /// Handed on unchanged (to the host stack, or to the next tc program).
    pub const PASS: Verdict = Verdict(0);
    /// Dropped on purpose.
    pub const DROP: Verdict = Verdict(1);
    /// Redirected to another interface.
    pub const REDIRECT: Verdict = Verdict(2);
    /// Sent back out of the interface it arrived on.
    pub const TX: Verdict = Verdict(3);
    /// The program could not process the packet (a bug or a helper failure); dropped.
    pub const ERROR: Verdict = Verdict(4);

    // The overlay's verdicts, each with the reason in its name.
    /// Encapsulated in VXLAN and sent to another host.
    pub const ENCAP: Verdict = Verdict(5);
    /// Decapsulated and delivered to a local endpoint.
    pub const DECAP: Verdict = Verdict(6);
    /// Delivered to another endpoint on this host.
    pub const LOCAL: Verdict = Verdict(7);
    /// An ARP request answered in place (no ARP crosses the underlay).
    pub const ARP_REPLY: Verdict = Verdict(8);
    /// Left to the host stack: traffic leaving the overlay (egress, via the host's NAT).
    pub const TO_HOST: Verdict = Verdict(9);
    /// VXLAN for a VNI this host does not serve: passed to the host stack untouched.
    pub const UNKNOWN_VNI: Verdict = Verdict(10);
    /// VXLAN for a known VNI but an endpoint this host does not have: dropped.
    pub const UNKNOWN_ENDPOINT: Verdict = Verdict(11);
    /// A destination on another overlay network: dropped (networks are isolated).
    pub const OTHER_NETWORK: Verdict = Verdict(12);
    /// A source address that is not the endpoint's own: dropped.
    pub const SPOOFED: Verdict = Verdict(13);
    /// Malformed (truncated headers, bad VXLAN flags, IP options or fragments where
    /// the program needs a plain header): dropped.
    pub const MALFORMED: Verdict = Verdict(14);
    /// No route to the destination's host on the underlay: dropped.
    pub const NO_ROUTE: Verdict = Verdict(15);
    /// Encapsulated, the frame exceeds the underlay's MTU (the endpoint's MTU is not
    /// the underlay's minus the 50-byte VXLAN overhead): dropped.
    pub const TOO_BIG: Verdict = Verdict(16);
    /// From an endpoint veth without its port entry: dropped (fail closed).
    pub const NO_PORT: Verdict = Verdict(17);
    /// A plain IPv4 packet from the underlay addressed into an overlay subnet (someone
    /// routing into the overlay around VXLAN): dropped.
    pub const INTO_OVERLAY: Verdict = Verdict(18);
    /// A workload's packet to one of the cluster's own ports (VXLAN, gossip, peer RPC,
    /// metrics) on this host or a cluster host: dropped.
    pub const CLUSTER_PORT: Verdict = Verdict(19);

    // The routing mesh's verdicts (see [`crate::mesh`]).
    /// A new flow to a published port, balanced to a backend and forwarded.
    pub const MESH_NEW_FLOW: Verdict = Verdict(20);
    /// A packet of a tracked flow, translated and forwarded to its backend.
    pub const MESH_FLOW: Verdict = Verdict(21);
    /// A backend's reply, translated back and sent to the client.
    pub const MESH_REPLY: Verdict = Verdict(22);
    /// Mesh VXLAN from a cluster node, delivered into a local task (backend host).
    pub const MESH_DELIVER: Verdict = Verdict(23);
    /// A new flow to a service without a serving task: refused like a closed port (TCP
    /// RST, ICMP port unreachable).
    pub const MESH_NO_BACKEND: Verdict = Verdict(24);
    /// TCP for no live flow (its backend died, it expired, or it never was): reset.
    pub const MESH_RESET: Verdict = Verdict(25);
    /// Too big for the underlay once encapsulated, with DF: ICMP fragmentation needed.
    pub const MESH_FRAG_NEEDED: Verdict = Verdict(26);
    /// Mesh VXLAN not from a cluster node or not to a local task's published target port:
    /// dropped.
    pub const MESH_REFUSED: Verdict = Verdict(27);
    /// To a published port but not a packet the mesh takes (IP options, fragments, a bad
    /// header checksum, nonsense TCP flags): dropped.
    pub const MESH_INVALID: Verdict = Verdict(28);

    /// A packet for a service VIP (or a node's published port) the sending host's
    /// balancer refused: no serving task, not a target port, TCP without a flow. The
    /// reason is in `VIP_EVENTS` (see [`crate::vip`]). Dropped.
    pub const VIP_REFUSED: Verdict = Verdict(29);

    /// Every verdict, in slot order.
    pub const ALL: [Verdict; 30] = [
        Verdict::PASS,
        Verdict::DROP,
        Verdict::REDIRECT,
        Verdict::TX,
        Verdict::ERROR,
        Verdict::ENCAP,
        Verdict::DECAP,
        Verdict::LOCAL,
        Verdict::ARP_REPLY,
        Verdict::TO_HOST,
        Verdict::UNKNOWN_VNI,
        Verdict::UNKNOWN_ENDPOINT,
        Verdict::OTHER_NETWORK,
        Verdict::SPOOFED,
        Verdict::MALFORMED,
        Verdict::NO_ROUTE,
        Verdict::TOO_BIG,
        Verdict::NO_PORT,
        Verdict::INTO_OVERLAY,
        Verdict::CLUSTER_PORT,
        Verdict::MESH_NEW_FLOW,
        Verdict::MESH_FLOW,
        Verdict::MESH_REPLY,
        Verdict::MESH_DELIVER,
        Verdict::MESH_NO_BACKEND,
        Verdict::MESH_RESET,
        Verdict::MESH_FRAG_NEEDED,
        Verdict::MESH_REFUSED,
        Verdict::MESH_INVALID,
        Verdict::VIP_REFUSED,
    ];

    /// The `verdict` label of this slot in `/metrics`: what happened to the packet.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 | 9 | 10 => "pass",
            1 | 11..=19 | 27..=29 => "drop",
            2 | 5..=7 | 20..=23 => "redirect",
            3 | 8 | 24..=26 => "tx",
            4 => "error",
            _ => "unknown",
        }
    }

    /// The `reason` label in `/metrics`, or `None` for the plain verdict slots.
    pub const fn reason(self) -> Option<&'static str> {
        match self.0 {
            5 => Some("encap"),
            6 => Some("decap"),
            7 => Some("local"),
            8 => Some("arp_reply"),
            9 => Some("to_host"),
            10 => Some("unknown_vni"),
            11 => Some("unknown_endpoint"),
            12 => Some("other_network"),
            13 => Some("spoofed_source"),
            14 => Some("malformed"),
            15 => Some("no_route"),
            16 => Some("too_big"),
            17 => Some("no_port"),
            18 => Some("routed_into_overlay"),
            19 => Some("cluster_port"),
            20 => Some("mesh_new_flow"),
            21 => Some("mesh_flow"),
            22 => Some("mesh_reply"),
            23 => Some("mesh_deliver"),
            24 => Some("mesh_no_backend"),
            25 => Some("mesh_reset"),
            26 => Some("mesh_frag_needed"),
            27 => Some("mesh_refused"),
            28 => Some("mesh_invalid"),
            29 => Some("vip_refused"),
            _ => None,
        }
    }

    /// The map index of this verdict's slot.
    pub const fn slot(self) -> u32 {
        self.0
    }
}

/// Number of slots in every counters map. Larger than [`Verdict::ALL`] so later
/// verdicts (drop reasons, encap/decap) can be added without resizing pinned maps.
pub const COUNTER_SLOTS: u32 = 32;

const _: () = assert!(Verdict::ALL.len() as u32 <= COUNTER_SLOTS);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn verdict_slots_are_dense_and_labelled_uniquely() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.slot(), i as u32);
            assert_ne!(v.name(), "unknown");
            assert_eq!(
                v.reason().is_none(),
                i < 5,
                "slots 0-4 are the plain verdicts"
            );
            for w in &Verdict::ALL[..i] {
                assert_ne!((v.name(), v.reason()), (w.name(), w.reason()));
            }
        }
        assert_eq!(Verdict(COUNTER_SLOTS).name(), "unknown");
    }

    #[test]
    fn counter_layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::align_of::<Counter>(), 8);
        assert_eq!(core::mem::offset_of!(Counter, packets), 0);
        assert_eq!(core::mem::offset_of!(Counter, bytes), 8);
    }

    #[test]
    fn record_and_sum() {
        let mut a = Counter::default();
        a.record(100);
        a.record(60);
        let b = Counter {
            packets: u64::MAX,
            bytes: 1,
        };
        assert_eq!(
            a,
            Counter {
                packets: 2,
                bytes: 160
            }
        );
        assert_eq!(
            Counter::sum([&a, &b]),
            Counter {
                packets: 1,
                bytes: 161
            }
        );
    }
}
