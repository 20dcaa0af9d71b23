//! Skein's eBPF programs, built for `bpfel-unknown-none` by `dataplane-ebpf/build-support`
//! (never for the host: the `programs` feature gates this binary).
//!
//! Layout: one file per attach point, and the modules they share.
//! - `xdp_underlay`: `xdp_underlay` (XDP on the underlay interface), the first stage of
//!   VXLAN from other hosts: decapsulation in place for GRO, spoofed VXLAN dropped.
//! - `tc_underlay`: `tc_underlay_ingress` (tcx ingress of the underlay interface), the
//!   second stage: delivery into the endpoint, decapsulation of what XDP left.
//! - `tc_endpoint`: `tc_endpoint_ingress` (tcx ingress of an endpoint's host-side veth),
//!   what an endpoint sends: ARP answers, local delivery, isolation, the way out.
//! - `decap`: the VXLAN classification both underlay stages share.
//! - `encap`: VXLAN encapsulation towards another host or an external VTEP, ICMP
//!   "fragmentation needed".
//! - `guard`: the fail-closed checks: nothing routed into the overlay, no workload
//!   traffic to the cluster's own ports.
//! - `mesh_ingress`: the routing mesh on the ingress node (clients' packets to published
//!   ports and the replies coming back), called first by `xdp_underlay`; `mesh_conntrack`
//!   keeps the flows, `mesh_nat`
//!   translates and delivers, `mesh_return` takes the replies coming back from backends' hosts,
//!   `mesh_respond` answers in place (TCP reset, ICMP).
//! - `mesh_decap`: the routing mesh on a backend host: the rules for VXLAN on the ingress
//!   VNI (a branch of `decap`'s classification).
//! - `mesh_reply`: a task's replies to the mesh's clients (`tc_endpoint_ingress`).
//! - `vip_nat`: service VIPs balanced on the sending host (`tc_endpoint_ingress`), and
//!   their replies translated back on the way into the client (both tc programs).
//! - `sock_hooks`: the cgroup socket hooks (host-local access to published ports);
//!   `tc_host`: `tc_host_egress`, the host's own connections to tasks on other nodes;
//!   `sock_return`: their replies, handed to the host's stack by `xdp_underlay`.
//! - `maps`: the pinned maps, declared from the ABI's table, and typed lookups.
//! - `parse`: header layouts and the bounds-checked packet accessor.
//! - `outcome`: what a program decided and its counting.
//!
//! Every program returns an `Outcome`: the action for the kernel and the counter slot
//! it is counted under. Nothing panics (the verifier would reject the program).
#![no_std]
#![no_main]
// `atomic_xadd`: the one shared round-robin cursor per service (see `mesh_ingress`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod decap;
mod encap;
mod guard;
mod maps;
mod mesh_conntrack;
mod mesh_decap;
mod mesh_ingress;
mod mesh_nat;
mod mesh_reply;
mod mesh_respond;
mod mesh_return;
mod outcome;
mod parse;
mod sock_hooks;
mod sock_return;
mod tc_endpoint;
mod tc_host;
mod tc_underlay;
mod vip_nat;
mod vip_respond;
mod xdp_underlay;

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
