//! `xdp_underlay`, attached (XDP) to the underlay interface: the first stage of VXLAN
//! from other hosts (see [`crate::decap`]). A frame that is plainly VXLAN for a local
//! endpoint loses its outer headers right here and gets a [`DecapMeta`] mark for
//! `tc_underlay_ingress`, so the device's GRO aggregates the inner packets; spoofed
//! VXLAN is dropped, and so is plain IPv4 routed here into an overlay subnet; everything
//! else is counted and passed.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_get_buff_len},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    mesh::MESH_DECAP_META_MAGIC,
    overlay::{DecapMeta, DECAP_META_MAGIC, ENCAP_LEN},
};

use crate::{
    decap::{classify, inner_ethernet, Vxlan},
    guard::into_overlay,
    maps::XDP_UNDERLAY_COUNTERS,
    mesh_ingress,
    outcome::count,
    parse::*,
};

/// Underlay interface, XDP: decapsulates VXLAN for local endpoints in place (marked for
/// `tc_underlay_ingress`, see [`crate::decap`]), so the device's GRO aggregates the inner
/// packets; drops VXLAN whose outer source may not send for its inner source; counts
/// and passes everything else. In section `xdp.frags` so it attaches to
/// jumbo-MTU veths; `data_end` then covers only the first buffer (enough for the
/// headers), so the frame length comes from `bpf_xdp_get_buff_len`.
#[xdp(frags)]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    // SAFETY: the helper only reads the context the kernel handed us.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    if let Some((verdict, action)) = mesh_ingress::handle(&ctx, len) {
        count(&XDP_UNDERLAY_COUNTERS, verdict, len);
        return action;
    }
    let (verdict, action) = match xdp_decap(&ctx) {
        XdpDecap::Decapsulated => (Verdict::DECAP, xdp_action::XDP_PASS),
        XdpDecap::MeshDelivered => (Verdict::MESH_DELIVER, xdp_action::XDP_PASS),
        XdpDecap::MeshRefused => (Verdict::MESH_REFUSED, xdp_action::XDP_DROP),
        XdpDecap::Untouched => (Verdict::PASS, xdp_action::XDP_PASS),
        XdpDecap::Spoofed => (Verdict::SPOOFED, xdp_action::XDP_DROP),
        XdpDecap::IntoOverlay => (Verdict::INTO_OVERLAY, xdp_action::XDP_DROP),
    };
    count(&XDP_UNDERLAY_COUNTERS, verdict, len);
    action
}

/// What `xdp_underlay` did with a frame.
enum XdpDecap {
    /// Decapsulated and marked.
    Decapsulated,
    /// A mesh request for a local task (backend host): decapsulated and marked as such.
    MeshDelivered,
    /// On the mesh's ingress VNI but refused (see `crate::mesh_decap`): dropped.
    MeshRefused,
    /// Left whole for tc to judge.
    Untouched,
    /// VXLAN for a local endpoint from an underlay source that may not send for its
    /// inner source: to be dropped right here.
    Spoofed,
    /// Plain IPv4 routed here into an overlay subnet (see [`into_overlay`]): dropped.
    IntoOverlay,
}

/// `xdp_underlay`'s part: decapsulates a frame for a local endpoint in place and marks it
/// with a [`DecapMeta`]. Spoofed frames are dropped; anything else is left untouched for tc.
#[inline(always)]
fn xdp_decap(ctx: &XdpContext) -> XdpDecap {
    let (vni, dst, ifindex, mesh) = match classify(ctx) {
        Vxlan::Deliver {
            vni,
            dst,
            ifindex,
            mesh,
            ..
        } => (vni, dst, ifindex, mesh),
        Vxlan::MeshRefused { .. } => return XdpDecap::MeshRefused,
        Vxlan::Spoofed { outer, inner } => {
            debug!(
                ctx,
                "VXLAN from {:i} claiming inner source {:i}: dropped", outer, inner
            );
            return XdpDecap::Spoofed;
        }
        Vxlan::NotOurs if into_overlay(ctx) => return XdpDecap::IntoOverlay,
        _ => return XdpDecap::Untouched,
    };
    let magic = if mesh {
        MESH_DECAP_META_MAGIC
    } else {
        DECAP_META_MAGIC
    };
    if !xdp_pop(ctx, vni, dst, ifindex, magic) {
        return XdpDecap::Untouched;
    }
    if mesh {
        XdpDecap::MeshDelivered
    } else {
        XdpDecap::Decapsulated
    }
}

/// Pops the outer headers of a frame [`classify`] found deliverable and writes the mark
/// (`magic`: an overlay or a mesh delivery); false (and no mark) if it could not.
#[inline(always)]
fn xdp_pop(ctx: &XdpContext, vni: u32, dst: [u8; 4], ifindex: u32, magic: u32) -> bool {
    let meta_len = size_of::<DecapMeta>() as i32;
    // Room for the metadata first, zeroed at once: should popping the headers fail, no
    // stale bytes there may look like a mark. A driver without metadata support refuses,
    // and the frame goes to tc whole.
    // SAFETY: helper calls on our own context; every pointer is bounds-checked below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -meta_len) } != 0 {
        return false;
    }
    if !write_meta(ctx, &DecapMeta::default()) {
        return false;
    }
    // The inner frame's new Ethernet header goes right before its IPv4 header; then the
    // 50 bytes in front of it (outer Ethernet, IPv4, UDP, VXLAN) are popped. The
    // metadata moves along with the start of the frame.
    if !write_at(ctx, ENCAP_LEN, &inner_ethernet(dst)) {
        return false;
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, ENCAP_LEN as i32) } != 0 {
        return false;
    }
    write_meta(
        ctx,
        &DecapMeta {
            magic,
            ifindex,
            vni,
        },
    )
}

/// Writes the XDP metadata in front of the frame (`data_meta .. data`).
#[inline(always)]
fn write_meta(ctx: &XdpContext, meta: &DecapMeta) -> bool {
    let (start, data) = (ctx.metadata(), ctx.data());
    if start + size_of::<DecapMeta>() > data {
        return false;
    }
    // SAFETY: [start, start + size) lies in the metadata area (checked above).
    unsafe { *(start as *mut DecapMeta) = *meta };
    true
}
