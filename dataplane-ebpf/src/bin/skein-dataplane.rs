//! Skein's eBPF programs, built for `bpfel-unknown-none` by `dataplane-ebpf/build-support`
//! (never for the host: the `programs` feature gates this binary).
//!
//! For now each program counts packets and bytes per verdict and passes traffic
//! unchanged; the overlay and the routing mesh build on the same entry points.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    helpers::generated::bpf_xdp_get_buff_len,
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dataplane_ebpf::counters::{Counter, Verdict, COUNTER_SLOTS};

// Pinned by name under `<bpf-dir>/maps`, so a restarted agent keeps counting where the
// previous one stopped.
#[map(name = "XDP_UNDERLAY_COUNTERS")]
static XDP_UNDERLAY_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "TC_ENDPOINT_COUNTERS")]
static TC_ENDPOINT_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, verdict: Verdict, bytes: u64) {
    // The verifier needs the null check; a slot below COUNTER_SLOTS always exists.
    if let Some(slot) = map.get_ptr_mut(verdict.slot()) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe { (*slot).record(bytes) };
    }
}

/// Underlay interface, XDP. In section `xdp.frags` so it attaches to jumbo-MTU veths;
/// `data_end` then covers only the first buffer, so the frame length comes from
/// `bpf_xdp_get_buff_len`.
#[xdp(frags)]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    // SAFETY: the helper only reads the context the kernel handed us.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    count(&XDP_UNDERLAY_COUNTERS, Verdict::PASS, len);
    debug!(&ctx, "xdp_underlay: pass len={}", len);
    xdp_action::XDP_PASS
}

/// Host side of an endpoint's veth, tc ingress: the packets the endpoint sends.
#[classifier]
pub fn tc_endpoint_ingress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    count(&TC_ENDPOINT_COUNTERS, Verdict::PASS, len);
    debug!(&ctx, "tc_endpoint_ingress: pass len={}", len);
    TC_ACT_OK
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
