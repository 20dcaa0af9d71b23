//! The routing mesh on the ingress node, in `xdp_underlay` (ARCHITECTURE.md, packet path
//! 4): clients' packets to a published port of this node, and the backends' replies
//! coming back through it. To be built (issue 11).

use aya_ebpf::programs::XdpContext;
use dataplane_ebpf::counters::Verdict;

/// The mesh's decision on a frame arriving on the underlay, or `None` when the frame is
/// not the mesh's (then the overlay's decapsulation judges it).
#[inline(always)]
pub(crate) fn handle(_ctx: &XdpContext) -> Option<(Verdict, u32)> {
    None
}
