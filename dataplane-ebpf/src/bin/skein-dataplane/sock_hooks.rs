//! The cgroup socket hooks (`dataplane_ebpf::sock`): host-local access to published
//! services, balanced once per connection.
//!
//! - `sock_connect4` (TCP and connected UDP) and `sock_sendmsg4` (unconnected UDP): a
//!   socket of this agent's host namespace addressing a published port (`MESH_PORTS`) on a
//!   loopback address, this node's underlay address or any cluster node's
//!   (`MESH_NODES`) gets the service's next serving task (the shared cursor of
//!   `MESH_SERVICES`, as the ingress XDP program picks) and its target port instead. The
//!   socket's reverse entry (`SOCK_REVERSE`) remembers the address the client used. No
//!   serving task: the connect or send fails (`EPERM`), like a refused connection.
//! - `sock_recvmsg4`, `sock_getpeername4`: a backend address that stands for a service
//!   address on this socket is shown as that service address.
//!
//! Every hook returns 1 ("go on") for sockets of other namespaces without looking further:
//! several agents share the kernel's one cgroup root (see the ABI's doc).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use dataplane_ebpf::{
    mesh::{pick_index, MeshBackend, MeshBackendKey, MeshPortKey},
    overlay::EndpointKey,
    sock::{is_loopback, port_from_ctx, port_to_ctx, SockAddr, SockKey},
};

use crate::{
    maps::{
        lookup, underlay_config, MESH_BACKENDS, MESH_NODES, MESH_PORTS, MESH_SERVICES,
        OVERLAY_ENDPOINTS, SOCK_CONFIG, SOCK_PICKS, SOCK_REVERSE,
    },
    parse::{be32, IPPROTO_TCP, IPPROTO_UDP},
};

/// Go on (the only value recvmsg and getpeername hooks may return).
const ALLOW: i32 = 1;
/// Fail the connect or send with `EPERM`.
const REFUSE: i32 = 0;
/// Backends tried after the cursor's pick when it is not alive (as the XDP path does).
const PICK_TRIES: u32 = 4;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// Whether the socket belongs to this agent's host namespace.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(config) = SOCK_CONFIG.get(0) else {
        return false;
    };
    if config.netns_cookie == 0 {
        return false;
    }
    // SAFETY: a plain helper call on our own context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    cookie == config.netns_cookie
}

/// The socket's protocol, if TCP or UDP.
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: the kernel's valid context for this run.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol == u32::from(IPPROTO_TCP) {
        Some(IPPROTO_TCP)
    } else if protocol == u32::from(IPPROTO_UDP) {
        Some(IPPROTO_UDP)
    } else {
        None
    }
}

/// Whether `ip` is an address the published ports answer on from this host: loopback,
/// this node's underlay address, any cluster node's.
#[inline(always)]
fn service_address(ip: [u8; 4]) -> bool {
    if is_loopback(ip) {
        return true;
    }
    if let Some(underlay) = underlay_config() {
        if be32(underlay.ip) == be32(ip) {
            return true;
        }
    }
    MESH_NODES.get_ptr(&ip).is_some()
}

/// connect4 / sendmsg4: the destination becomes a serving task (see the module doc).
#[inline(always)]
fn redirect(ctx: &SockAddrContext, unconnected: bool) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let Some(protocol) = protocol(ctx) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's valid context for this run; 4-byte reads as it requires.
    let (user_ip, user_port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let ip = user_ip.to_ne_bytes();
    let port_be = port_from_ctx(user_port);
    let Some(published) = lookup(
        &MESH_PORTS,
        &MeshPortKey {
            port_be,
            protocol,
            _pad: 0,
        },
    ) else {
        return ALLOW;
    };
    if !service_address(ip) {
        return ALLOW;
    }
    // SAFETY: a plain helper call on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let service = SockAddr {
        ip,
        port_be,
        _pad: [0; 2],
    };
    let pick_key = SockKey {
        cookie,
        ip,
        port_be,
        protocol,
        _pad: 0,
    };
    // Unconnected UDP: the socket keeps the backend it was given for this address while
    // that backend lives.
    let mut backend = None;
    if unconnected {
        if let Some(p) = SOCK_PICKS.get_ptr(&pick_key) {
            // SAFETY: a valid map value for this run; copied at once.
            let p = unsafe { *p };
            if still_serving(published.slot, p.ip) {
                backend = Some(p);
            }
        }
    }
    let backend = match backend {
        Some(b) => b,
        None => {
            let Some(b) = pick(published.slot) else {
                return REFUSE;
            };
            let b = SockAddr {
                ip: b.ip,
                port_be: published.target_port_be,
                _pad: [0; 2],
            };
            if unconnected {
                let _ = SOCK_PICKS.insert(&pick_key, &b, 0);
            }
            b
        }
    };
    let reverse_key = SockKey {
        cookie,
        ip: backend.ip,
        port_be: backend.port_be,
        protocol,
        _pad: 0,
    };
    if SOCK_REVERSE.insert(&reverse_key, &service, 0).is_err() {
        return REFUSE;
    }
    // SAFETY: connect4 and sendmsg4 may write the destination.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(backend.ip);
        (*sa).user_port = port_to_ctx(backend.port_be);
    }
    ALLOW
}

/// The next serving task of the service in `slot` from its shared rotation (skipping a
/// pick whose endpoint is gone, as the XDP path does), or `None` when it has none.
#[inline(always)]
fn pick(slot: u32) -> Option<MeshBackend> {
    let service = MESH_SERVICES.get_ptr_mut(slot)?;
    // SAFETY: a valid array element; `backends` and `vni` are written only by the agent.
    let (backends, vni) = unsafe { ((*service).backends, (*service).vni) };
    if backends == 0 {
        return None;
    }
    // SAFETY: an aligned u32 inside the array element; the kernel's atomic add.
    let cursor = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(
            core::ptr::addr_of_mut!((*service).cursor),
            1,
        )
    };
    let mut index = pick_index(cursor, backends);
    for _ in 0..PICK_TRIES {
        if let Some(b) = lookup(&MESH_BACKENDS, &MeshBackendKey { slot, index }) {
            if let Some(ep) = lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip: b.ip }) {
                if be32(ep.host_ip) == be32(b.host_ip) {
                    return Some(b);
                }
            }
        }
        index += 1;
        if index >= backends {
            index = 0;
        }
    }
    None
}

/// Whether the task `ip` still has an endpoint on the service's network.
#[inline(always)]
fn still_serving(slot: u32, ip: [u8; 4]) -> bool {
    let Some(service) = MESH_SERVICES.get(slot) else {
        return false;
    };
    let vni = service.vni;
    lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip }).is_some()
}

/// recvmsg4 / getpeername4: a backend shown as the service address it stands for.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let Some(protocol) = protocol(ctx) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's valid context for this run; 4-byte reads as it requires.
    let (user_ip, user_port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: a plain helper call on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        ip: user_ip.to_ne_bytes(),
        port_be: port_from_ctx(user_port),
        protocol,
        _pad: 0,
    };
    let Some(service) = SOCK_REVERSE.get_ptr(&key) else {
        return;
    };
    // SAFETY: a valid map value for this run; copied at once.
    let service = unsafe { *service };
    // SAFETY: recvmsg4 and getpeername4 may write the address.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(service.ip);
        (*sa).user_port = port_to_ctx(service.port_be);
    }
}
