//! The ingress node's conntrack (`MESH_FLOWS`) for the client path of `mesh_ingress`:
//! what a client's packet finds (a live flow, an expired or dead one, none), the new
//! flow's pick from the service's shared rotation, the reply entry (`MESH_REPLIES`) a
//! local backend's replies are recognised by, and the per-service and per-backend
//! counters. A remote backend's replies need no entry here: its host sends the published
//! port back with them (`mesh::published_port_mac`), and `mesh_return` finds the flow's
//! conntrack entry by it. That spares every new flow to a remote backend a second LRU
//! insert (measured: a third of its cost).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::BPF_NOEXIST;
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{
        expired, opens_flow, pick_index, refresh_after_ns, tcp_next, Flow, FlowKey, MeshBackend,
        MeshBackendKey, MeshConfig, MeshStatKey, Reply, ReplyKey, CT_DELETED, CT_INSERTED,
        TCP_CLOSING, TCP_SYN_SENT, UDP_OPEN,
    },
    overlay::EndpointKey,
};

use crate::{
    maps::{
        lookup, MESH_BACKENDS, MESH_CT_EVENTS, MESH_FLOWS, MESH_REPLIES, MESH_SERVICES, MESH_STATS,
        OVERLAY_ENDPOINTS,
    },
    mesh_ingress::{
        answer, drop, Client, Decision, Plan, ANSWER_REFUSE, ANSWER_RESET, NEW_FLOW,
        NEW_FLOW_REPLACING, PLAN_DELIVER,
    },
    mesh_nat::NextHop,
    parse::*,
};

/// Attempts to find a backend entry for one pick: the agent may be rewriting the slot's
/// entries (grow: entries first, then the count; shrink: the count first), so a missing
/// index is skipped for the next one, a bounded number of times.
const PICK_TRIES: u32 = 4;

/// The conntrack's decision for a valid client packet: the entry found, replaced,
/// created or deleted, and a [`Plan`] ([`PLAN_DELIVER`], [`PLAN_ANSWER`]) or a decision.
#[inline(never)]
pub(crate) fn conntrack(config: &MeshConfig, c: &Client, plan: &mut Plan) -> Decision {
    let (now, slot) = (c.now, c.slot);
    let tcp = c.key.protocol == IPPROTO_TCP;
    let opens = tcp && opens_flow(c.tcp_flags);
    let Some(entry) = MESH_FLOWS.get_ptr_mut(&c.key) else {
        if tcp && !opens {
            stat_service(slot, 0, c.len);
            return answer(plan, ANSWER_RESET, Verdict::MESH_RESET);
        }
        return NEW_FLOW;
    };
    // SAFETY: a valid map value for this run; copied at once.
    let flow = unsafe { *entry };
    let endpoint = alive(flow.vni, flow.backend_ip, flow.backend_host);
    let live = endpoint != 0 && !expired(config, c.key.protocol, &flow, now);
    if live && !(opens && flow.state == TCP_CLOSING) {
        let (state, flags) = if tcp {
            tcp_next(flow.state, flow.flags, c.tcp_flags, true)
        } else {
            (flow.state, flow.flags)
        };
        let refreshed = touch(
            entry,
            &flow,
            state,
            flags,
            config,
            c.key.protocol,
            now,
            |f| {
                if endpoint != REMOTE {
                    keep_reply(&c.key, f, now);
                }
            },
        );
        if flow.hop_ifindex != 0 && !refreshed {
            plan.hop = NextHop {
                dmac: flow.hop_dmac,
                smac: flow.hop_smac,
                ifindex: flow.hop_ifindex,
                mtu: flow.hop_mtu,
            };
        } else {
            // `mesh_nat::deliver` asks the FIB and caches its answer here.
            plan.entry = entry;
        }
        stat_backend(flow.slot, flow.backend_ip, 0, c.len);
        // Field by field: the caller zeroed the plan, and a whole struct with a default
        // `hop` would be a `memset` call (see `zeroed`).
        plan.backend = MeshBackend {
            ip: flow.backend_ip,
            host_ip: flow.backend_host,
        };
        plan.vni = flow.vni;
        plan.target_port_be = flow.target_port_be;
        plan.ifindex = endpoint;
        plan.verdict = Verdict::MESH_FLOW.slot();
        return PLAN_DELIVER;
    }
    if !opens && tcp {
        // Its backend died, or it expired: the client learns at once (never a hang).
        let _ = MESH_FLOWS.remove(&c.key);
        ct_event(CT_DELETED);
        stat_service(flow.slot, 0, c.len);
        return answer(plan, ANSWER_RESET, Verdict::MESH_RESET);
    }
    // A SYN on a closing, expired or dead entry, or UDP on an expired or dead one: a new
    // flow in its place (not counted: the entry stays present).
    NEW_FLOW_REPLACING
}

/// [`alive`]'s answer for a backend on another host.
const REMOTE: u32 = u32::MAX;

/// The backend's host-side veth (local) or [`REMOTE`] if the flow's backend is alive —
/// its endpoint is known with the flow's host — and 0 if not.
#[inline(always)]
fn alive(vni: u32, ip: [u8; 4], host_ip: [u8; 4]) -> u32 {
    match lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip }) {
        Some(ep) if be32(ep.host_ip) == be32(host_ip) => {
            if ep.ifindex != 0 {
                ep.ifindex
            } else {
                REMOTE
            }
        }
        _ => 0,
    }
}

/// Writes a flow's new state, and its last-seen time when it is older than
/// [`refresh_after_ns`] allows; `on_refresh` runs when the time is written. Whether it
/// was (the flow's cached next hop is renewed then too).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn touch(
    entry: *mut Flow,
    flow: &Flow,
    state: u8,
    flags: u8,
    config: &MeshConfig,
    protocol: u8,
    now: u64,
    on_refresh: impl FnOnce(&Flow),
) -> bool {
    let changed = state != flow.state || flags != flow.flags;
    let stale = now.saturating_sub(flow.last_seen_ns) > refresh_after_ns(config, protocol, state);
    // SAFETY: a valid map value; plain stores of whole fields (another CPU reading the
    // entry at the same time sees each field old or new).
    unsafe {
        if changed {
            (*entry).state = state;
            (*entry).flags = flags;
        }
        if changed || stale {
            (*entry).last_seen_ns = now;
        }
    }
    if stale {
        on_refresh(flow);
    }
    stale
}

/// Puts a local backend's flow's reply entry back if the LRU evicted it (checked once per
/// refresh, so a long flow's replies keep finding their way).
#[inline(always)]
fn keep_reply(key: &FlowKey, flow: &Flow, now: u64) {
    let rk = reply_key(key, flow.backend_ip, flow.target_port_be);
    if MESH_REPLIES.get_ptr(&rk).is_none() {
        let _ = MESH_REPLIES.insert(&rk, &reply_value(key, now), 0);
    }
}

#[inline(always)]
fn reply_key(key: &FlowKey, backend_ip: [u8; 4], target_port_be: [u8; 2]) -> ReplyKey {
    ReplyKey {
        backend_ip,
        client_ip: key.client_ip,
        backend_port_be: target_port_be,
        client_port_be: key.client_port_be,
        protocol: key.protocol,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn reply_value(key: &FlowKey, now: u64) -> Reply {
    Reply {
        ingress_ip: key.node_ip,
        published_port_be: key.published_port_be,
        _pad: [0; 2],
        seen_ns: now,
    }
}

/// A new flow: the next backend of the service's rotation and an entry for it.
/// `fresh`: no entry exists for the key (one is inserted and counted); otherwise the
/// existing one is replaced.
#[inline(never)]
pub(crate) fn new_flow(c: &Client, plan: &mut Plan, fresh: bool) -> Decision {
    let (slot, now) = (c.slot, c.now);
    let Some(service) = MESH_SERVICES.get_ptr_mut(slot) else {
        return drop(Verdict::ERROR);
    };
    // SAFETY: a valid array element; `backends` and `vni` are written only by the agent.
    let (backends, vni) = unsafe { ((*service).backends, (*service).vni) };
    if backends == 0 {
        stat_refused(slot, c.len);
        return answer(plan, ANSWER_REFUSE, Verdict::MESH_NO_BACKEND);
    }
    // One cursor for every CPU: the fetch-add hands each new flow the next number.
    // SAFETY: an aligned u32 inside the array element; the kernel's atomic add.
    let cursor = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(
            core::ptr::addr_of_mut!((*service).cursor),
            1,
        )
    };
    let mut index = pick_index(cursor, backends);
    let mut picked = None;
    let mut ifindex = 0;
    for _ in 0..PICK_TRIES {
        let key = MeshBackendKey { slot, index };
        if let Some(b) = lookup(&MESH_BACKENDS, &key) {
            let ep = alive(vni, b.ip, b.host_ip);
            if ep != 0 {
                picked = Some(b);
                ifindex = ep;
                break;
            }
        }
        index += 1;
        if index >= backends {
            index = 0;
        }
    }
    let Some(backend) = picked else {
        stat_refused(slot, c.len);
        return answer(plan, ANSWER_REFUSE, Verdict::MESH_NO_BACKEND);
    };
    let state = if c.key.protocol == IPPROTO_TCP {
        TCP_SYN_SENT
    } else {
        UDP_OPEN
    };
    let flow = Flow {
        backend_ip: backend.ip,
        backend_host: backend.host_ip,
        vni,
        slot,
        target_port_be: c.target_port_be,
        state,
        flags: 0,
        hop_ifindex: 0,
        created_ns: now,
        last_seen_ns: now,
        hop_dmac: [0; 6],
        hop_smac: [0; 6],
        hop_mtu: 0,
        _pad: [0; 2],
    };
    if fresh {
        // Another CPU may have created the entry for this very flow a moment ago; the
        // first stays (this packet still goes to its own pick).
        if MESH_FLOWS.insert(&c.key, &flow, BPF_NOEXIST as u64).is_ok() {
            ct_event(CT_INSERTED);
        }
    } else {
        let _ = MESH_FLOWS.insert(&c.key, &flow, 0);
    }
    if ifindex != REMOTE {
        let rk = reply_key(&c.key, backend.ip, c.target_port_be);
        let _ = MESH_REPLIES.insert(&rk, &reply_value(&c.key, now), 0);
    }
    stat_backend(slot, backend.ip, 1, c.len);
    plan.backend = backend;
    plan.vni = vni;
    plan.target_port_be = c.target_port_be;
    plan.ifindex = ifindex;
    plan.verdict = Verdict::MESH_NEW_FLOW.slot();
    PLAN_DELIVER
}

/// Counts one conntrack event (see `mesh::CT_INSERTED`).
#[inline(always)]
fn ct_event(slot: u32) {
    if let Some(n) = MESH_CT_EVENTS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: no other program instance writes it concurrently.
        unsafe { *n = (*n).wrapping_add(1) };
    }
}

/// Adds a packet (and `new_flows`) to the row of `(slot, backend_ip)` if the agent
/// created it.
#[inline(always)]
pub(crate) fn stat_backend(slot: u32, backend_ip: [u8; 4], new_flows: u64, len: u64) {
    let key = MeshStatKey { slot, backend_ip };
    if let Some(s) = MESH_STATS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value: no other program instance writes it concurrently.
        unsafe {
            (*s).new_flows = (*s).new_flows.wrapping_add(new_flows);
            (*s).packets = (*s).packets.wrapping_add(1);
            (*s).bytes = (*s).bytes.wrapping_add(len);
        }
    }
}

/// The service's own row: dropped, reset and refused packets (`new_flows`: refused
/// flows).
#[inline(always)]
pub(crate) fn stat_service(slot: u32, new_flows: u64, len: u64) {
    stat_backend(slot, [0; 4], new_flows, len);
}

#[inline(always)]
fn stat_refused(slot: u32, len: u64) {
    stat_service(slot, 1, len);
}
