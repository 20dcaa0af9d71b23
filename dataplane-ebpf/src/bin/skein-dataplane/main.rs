//! Skein's eBPF programs, built for `bpfel-unknown-none` by `dataplane-ebpf/build-support`
//! (never for the host: the `programs` feature gates this binary).
//!
//! Layout:
//! - this file: the maps, the entry points and counting;
//! - `parse`: header layouts and the bounds-checked packet accessor;
//! - `endpoint`: `tc_endpoint_ingress`, what an endpoint sends (ARP answers, local
//!   delivery, VXLAN encapsulation, isolation);
//! - `underlay`: `xdp_underlay` and `tc_underlay_ingress`, VXLAN from other hosts
//!   (decapsulation).
//!
//! Every program returns an [`Outcome`]: the action for the kernel and the counter slot
//! it is counted under. Nothing panics (the verifier would reject the program).
#![no_std]
#![no_main]

mod endpoint;
mod parse;
mod underlay;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_xdp_get_buff_len},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use dataplane_ebpf::{
    counters::{Counter, Verdict, COUNTER_SLOTS},
    names::{MAX_ENDPOINTS, MAX_NETWORKS, MAX_PORTS, MAX_SUBNETS, MAX_VTEP_ROUTES},
    overlay::{EndpointKey, EndpointValue, NetworkValue, PortValue, UnderlayValue, VtepValue},
};

// Every map is pinned by name under `<bpf-dir>/maps`, so a restarted agent keeps the
// counters counting and the overlay's state in place. The names match `names::*`.

#[map(name = "XDP_UNDERLAY_COUNTERS")]
static XDP_UNDERLAY_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "TC_ENDPOINT_COUNTERS")]
static TC_ENDPOINT_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "TC_UNDERLAY_COUNTERS")]
static TC_UNDERLAY_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "OVERLAY_ENDPOINTS")]
static OVERLAY_ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "OVERLAY_PORTS")]
static OVERLAY_PORTS: HashMap<u32, PortValue> = HashMap::pinned(MAX_PORTS, 0);

#[map(name = "OVERLAY_NETWORKS")]
static OVERLAY_NETWORKS: HashMap<u32, NetworkValue> = HashMap::pinned(MAX_NETWORKS, 0);

/// Key data: VNI (network order) then the IPv4 address; see `overlay::VtepKey`.
#[map(name = "OVERLAY_VTEPS")]
static OVERLAY_VTEPS: LpmTrie<[u8; 8], VtepValue> = LpmTrie::pinned(MAX_VTEP_ROUTES, 0);

/// Key data: the IPv4 address; see `overlay::SubnetKey`. Value: the VNI.
#[map(name = "OVERLAY_SUBNETS")]
static OVERLAY_SUBNETS: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MAX_SUBNETS, 0);

#[map(name = "OVERLAY_UNDERLAY")]
static OVERLAY_UNDERLAY: Array<UnderlayValue> = Array::pinned(1, 0);

/// What a program decided: the action the kernel gets and the slot it is counted in.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: Verdict,
    pub action: i32,
}

impl Outcome {
    /// Handed on to the host stack (or the next program) unchanged.
    #[inline(always)]
    pub fn pass(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            action: TC_ACT_OK,
        }
    }

    #[inline(always)]
    pub fn drop(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            action: TC_ACT_SHOT,
        }
    }

    /// A helper failed where it should not: dropped, counted as an error.
    #[inline(always)]
    pub fn error() -> Outcome {
        Outcome::drop(Verdict::ERROR)
    }

    /// Out of `ifindex` (its egress: for a host-side veth, into the endpoint).
    /// `bpf_redirect` returns `TC_ACT_REDIRECT`, or `TC_ACT_SHOT` on bad flags.
    #[inline(always)]
    pub fn redirect(verdict: Verdict, ifindex: u32) -> Outcome {
        // SAFETY: a plain helper call; it only records the target for after we return.
        let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
        Outcome { verdict, action }
    }

    /// Into the namespace behind the veth `ifindex`: the packet enters the ingress of the
    /// veth's peer (the endpoint's `eth0`) within this same softirq, without the veth's
    /// transmit path and the per-CPU backlog queue `bpf_redirect` goes through (Cilium's
    /// way; valid only from tc ingress). The kernel scrubs the skb (`pkt_type` becomes
    /// `PACKET_HOST`, route and socket dropped), as crossing a veth would.
    #[inline(always)]
    pub fn redirect_peer(verdict: Verdict, ifindex: u32) -> Outcome {
        // SAFETY: a plain helper call; it only records the target for after we return.
        let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
        Outcome { verdict, action }
    }
}

/// Adds one packet of `bytes` bytes to `verdict`'s slot of `map`.
#[inline(always)]
fn count(map: &PerCpuArray<Counter>, verdict: Verdict, bytes: u64) {
    // The verifier needs the null check; a slot below COUNTER_SLOTS always exists.
    if let Some(slot) = map.get_ptr_mut(verdict.slot()) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe { (*slot).record(bytes) };
    }
}

/// A copy of a hash map value (copied at once: the kernel may reuse the element's memory
/// after an update from userspace).
#[inline(always)]
fn lookup<K, V: Copy>(map: &HashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: the pointer the kernel returned is valid for this program run.
    map.get_ptr(key).map(|value| unsafe { *value })
}

#[inline(always)]
fn network(vni: u32) -> Option<NetworkValue> {
    lookup(&OVERLAY_NETWORKS, &vni)
}

#[inline(always)]
fn underlay_config() -> Option<UnderlayValue> {
    OVERLAY_UNDERLAY.get(0).copied()
}

/// Underlay interface, XDP: decapsulates VXLAN for local endpoints in place (marked for
/// `tc_underlay_ingress`, see `underlay`), so the device's GRO aggregates the inner
/// packets; drops VXLAN whose outer source may not send for its inner source; counts
/// and passes everything else. In section `xdp.frags` so it attaches to
/// jumbo-MTU veths; `data_end` then covers only the first buffer (enough for the
/// headers), so the frame length comes from `bpf_xdp_get_buff_len`.
#[xdp(frags)]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    // SAFETY: the helper only reads the context the kernel handed us.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let (verdict, action) = match underlay::xdp_decap(&ctx) {
        underlay::XdpDecap::Decapsulated => (Verdict::DECAP, xdp_action::XDP_PASS),
        underlay::XdpDecap::Untouched => (Verdict::PASS, xdp_action::XDP_PASS),
        underlay::XdpDecap::Spoofed => (Verdict::SPOOFED, xdp_action::XDP_DROP),
    };
    count(&XDP_UNDERLAY_COUNTERS, verdict, len);
    action
}

/// Host side of an endpoint's veth, tc ingress: the packets the endpoint sends.
#[classifier]
pub fn tc_endpoint_ingress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    let outcome = endpoint::handle(&ctx);
    count(&TC_ENDPOINT_COUNTERS, outcome.verdict, len);
    outcome.action
}

/// Underlay interface, tc ingress: VXLAN for this host's endpoints.
#[classifier]
pub fn tc_underlay_ingress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    let outcome = underlay::handle(&ctx);
    count(&TC_UNDERLAY_COUNTERS, outcome.verdict, len);
    outcome.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panics are reachable: the verifier would reject the program otherwise.
    loop {}
}

// The license the kernel checks before it allows GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
