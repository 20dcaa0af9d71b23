//! What a program decided ([`Outcome`]: the action for the kernel and the counter slot
//! it is counted under), and [`count`], which records it in a program's counters map.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    maps::PerCpuArray,
};
use dataplane_ebpf::counters::{Counter, Verdict};

/// What a program decided: the action the kernel gets and the slot it is counted in.
#[derive(Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    pub(crate) action: i32,
}

impl Outcome {
    /// Handed on to the host stack (or the next program) unchanged.
    #[inline(always)]
    pub(crate) fn pass(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            action: TC_ACT_OK,
        }
    }

    #[inline(always)]
    pub(crate) fn drop(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            action: TC_ACT_SHOT,
        }
    }

    /// A helper failed where it should not: dropped, counted as an error.
    #[inline(always)]
    pub(crate) fn error() -> Outcome {
        Outcome::drop(Verdict::ERROR)
    }

    /// Out of `ifindex` (its egress: for a host-side veth, into the endpoint).
    /// `bpf_redirect` returns `TC_ACT_REDIRECT`, or `TC_ACT_SHOT` on bad flags.
    #[inline(always)]
    pub(crate) fn redirect(verdict: Verdict, ifindex: u32) -> Outcome {
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
    pub(crate) fn redirect_peer(verdict: Verdict, ifindex: u32) -> Outcome {
        // SAFETY: a plain helper call; it only records the target for after we return.
        let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
        Outcome { verdict, action }
    }
}

/// Adds one packet of `bytes` bytes to `verdict`'s slot of `map`.
#[inline(always)]
pub(crate) fn count(map: &PerCpuArray<Counter>, verdict: Verdict, bytes: u64) {
    // The verifier needs the null check; a slot below COUNTER_SLOTS always exists.
    if let Some(slot) = map.get_ptr_mut(verdict.slot()) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe { (*slot).record(bytes) };
    }
}
