//! The routing mesh on the ingress node, in `xdp_underlay` (ARCHITECTURE.md, packet path
//! 4; MESH-DESIGN.md paths 1 and 4): clients' packets to a published port of this node,
//! and the backends' replies coming back through it.
//!
//! A client's packet (TCP or UDP to this node's underlay address, a port in `MESH_PORTS`)
//! is checked (no IP options, no fragments, a valid header checksum, TCP flags a real
//! stack sends), looked up in the conntrack (`MESH_FLOWS`), balanced when it opens a
//! flow (one shared atomic cursor per service: exact round robin across CPUs), translated
//! (destination → the backend's overlay address and target port; the client's address
//! stays) and delivered: into a local task through `tc_underlay_ingress` (a `DecapMeta`
//! mark, as for decapsulated VXLAN), or in VXLAN on the ingress VNI to the backend's host
//! (`mesh_nat`). TCP that no live flow can take is reset, a service without a serving
//! task refuses like a closed port (`mesh_respond`). Replies from a remote backend's host
//! are `mesh_reply`'s.
//!
//! Everything else returns `None` and the overlay's path runs as before; with
//! `MESH_CONFIG.ingress_vni == 0` (the mesh off) that is every frame.
//!
//! Stack: the heavy parts are separate BPF functions (`#[inline(never)]`) that take the
//! raw context pointer, so no frame holds more than its own part (512 bytes for the
//! whole call chain).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action, xdp_md, BPF_NOEXIST},
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{
        expired, opens_flow, pick_index, refresh_after_ns, tcp_flags_valid, tcp_next, Flow,
        FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshStatKey, Reply, ReplyKey, CT_DELETED,
        CT_INSERTED, TCP_CLOSING, TCP_SYN_SENT, UDP_OPEN,
    },
    overlay::{EndpointKey, UnderlayValue, ETH_LEN, IPV4_LEN, VXLAN_PORT},
    respond::{fold, pseudo_header_sum},
};

use crate::{
    maps::{
        lookup, underlay_config, MESH_BACKENDS, MESH_CONFIG, MESH_CT_EVENTS, MESH_FLOWS,
        MESH_PORTS, MESH_REPLIES, MESH_SERVICES, MESH_STATS, OVERLAY_ENDPOINTS,
    },
    mesh_nat::{deliver, too_big, NextHop},
    mesh_reply, mesh_respond,
    parse::*,
};

/// Where the L4 header starts in a client's frame (IP options are refused).
pub(crate) const L4: usize = ETH_LEN + IPV4_LEN;
/// Attempts to find a backend entry for one pick: the agent may be rewriting the slot's
/// entries (grow: entries first, then the count; shrink: the count first), so a missing
/// index is skipped for the next one, a bounded number of times.
const PICK_TRIES: u32 = 4;
/// The longest flow-opening SYN whose TCP checksum is verified before it may create an
/// entry or advance the rotation (20-byte header + 40 bytes of options: every SYN a real
/// stack sends without data).
const SYN_CHECKED_LEN: usize = 60;

/// A decision of the mesh, as `(verdict, XDP action)` packed in one register (a BPF
/// function returns one): the verdict's slot in the high half. [`NOT_OURS`]: no decision.
pub(crate) type Decision = u64;
pub(crate) const NOT_OURS: Decision = u64::MAX;

#[inline(always)]
pub(crate) fn decided(verdict: Verdict, action: u32) -> Decision {
    ((verdict.slot() as u64) << 32) | action as u64
}

#[inline(always)]
pub(crate) fn drop(verdict: Verdict) -> Decision {
    decided(verdict, xdp_action::XDP_DROP)
}

/// The mesh's decision on a frame arriving on the underlay, or `None` when the frame is
/// not the mesh's (then the overlay's decapsulation judges it). `len` is the whole
/// frame's length (all buffers of a multi-buffer frame).
#[inline(always)]
pub(crate) fn handle(ctx: &XdpContext, len: u64) -> Option<(Verdict, u32)> {
    // Two separate paths, each called straight from the program: BPF's 512 bytes of
    // stack are for the whole call chain.
    let d = if maybe_vxlan(ctx) {
        mesh_reply::reply(ctx.ctx, len)
    } else {
        client(ctx.ctx, len)
    };
    if d == NOT_OURS {
        return None;
    }
    Some((Verdict((d >> 32) as u32), d as u32))
}

/// What the client path knows about a packet once its headers passed.
#[derive(Clone, Copy, Default)]
pub(crate) struct Client {
    pub(crate) key: FlowKey,
    /// The IPv4 header's `frag_off` had DF set.
    pub(crate) df: bool,
    pub(crate) tcp_flags: u8,
    /// IPv4 total length minus the header: the L4 header and payload.
    pub(crate) l4_len: u16,
    /// The whole frame (for the counters).
    pub(crate) len: u64,
    /// The published port's service slot and target port (`MESH_PORTS`).
    pub(crate) slot: u32,
    pub(crate) target_port_be: [u8; 2],
    /// `bpf_ktime_get_ns` when the packet arrived.
    pub(crate) now: u64,
}

/// Whether the frame looks like VXLAN (IPv4 without options, UDP to 4789): a reply's
/// shape. `mesh_reply` checks the rest.
#[inline(always)]
fn maybe_vxlan(ctx: &XdpContext) -> bool {
    let Some(head) = read_at::<[u8; L4 + 4]>(ctx, 0) else {
        return false;
    };
    head[ETH_LEN] == 0x45
        && head[ETH_LEN + 9] == IPPROTO_UDP
        && be16([head[L4 + 2], head[L4 + 3]]) == VXLAN_PORT
}

/// A client's packet to a published port of this node, or [`NOT_OURS`].
#[inline(never)]
fn client(ctx_ptr: *mut xdp_md, len: u64) -> Decision {
    let Some(config) = MESH_CONFIG.get(0) else {
        return NOT_OURS;
    };
    if config.ingress_vni == 0 {
        return NOT_OURS;
    }
    let Some(underlay) = underlay_config() else {
        return NOT_OURS;
    };
    let mut client = Client::default();
    let d = parse(ctx_ptr, &underlay, len, &mut client);
    if d != PARSED {
        return d;
    }
    // One call site each for delivery and answers: the verifier walks a BPF function
    // once per call site.
    let mut plan = Plan::default();
    // The packet must fit the overlay (MSS + 40 = the overlay MTU: a local task's veth
    // has it, a remote one's host drops anything larger), checked before the conntrack
    // so a datagram too big opens no flow and takes no pick.
    let ip_len = client.l4_len as u32 + IPV4_LEN as u32;
    let mut d = if config.mss != 0 && ip_len > config.mss as u32 + 40 {
        too_big(&client, &mut plan, config.mss + 40)
    } else {
        conntrack(config, &client, &mut plan)
    };
    if d == NEW_FLOW || d == NEW_FLOW_REPLACING {
        if client.key.protocol == IPPROTO_TCP && !syn_checksum_ok(ctx_ptr, &client) {
            stat_service(client.slot, 0, client.len);
            return drop(Verdict::MESH_INVALID);
        }
        d = new_flow(&client, &mut plan, d == NEW_FLOW);
    }
    if d == PLAN_DELIVER {
        d = deliver(ctx_ptr, config, &underlay, &client, &mut plan);
    }
    if d == PLAN_ANSWER {
        d = mesh_respond::answer(ctx_ptr, &client, &plan);
    }
    d
}

/// [`conntrack`]'s outcome when the packet is to be delivered as [`Plan`] says.
pub(crate) const PLAN_DELIVER: Decision = u64::MAX - 1;
/// ... when it is to be answered as [`Plan::answer`] says.
pub(crate) const PLAN_ANSWER: Decision = u64::MAX - 2;
/// ... when it opens a new flow (no entry; an entry to replace).
const NEW_FLOW: Decision = u64::MAX - 3;
const NEW_FLOW_REPLACING: Decision = u64::MAX - 4;
/// [`Plan::answer`] values.
pub(crate) const ANSWER_RESET: u8 = 1;
pub(crate) const ANSWER_REFUSE: u8 = 2;
pub(crate) const ANSWER_FRAG_NEEDED: u8 = 3;

/// Where a client's packet goes (or what answers it), as the conntrack decided.
#[derive(Clone, Copy, Default)]
pub(crate) struct Plan {
    pub(crate) backend: MeshBackend,
    /// The backend's network.
    pub(crate) vni: u32,
    pub(crate) target_port_be: [u8; 2],
    /// The backend's host-side veth if it is local; `u32::MAX` if remote.
    pub(crate) ifindex: u32,
    /// The verdict slot a successful delivery or answer is counted in.
    pub(crate) verdict: u32,
    pub(crate) answer: u8,
    /// For [`ANSWER_FRAG_NEEDED`].
    pub(crate) mtu: u16,
    /// The next hop to a remote backend's host (`mesh_nat::deliver` fills it in).
    pub(crate) hop: NextHop,
}

#[inline(always)]
fn answer(plan: &mut Plan, answer: u8, verdict: Verdict) -> Decision {
    plan.answer = answer;
    plan.verdict = verdict.slot();
    PLAN_ANSWER
}

/// [`parse`]'s answer when `c` holds a valid client packet to a published port.
const PARSED: Decision = u64::MAX - 5;

/// Reads a client's packet into `c`: [`PARSED`] if it is to a published port of this
/// node and valid, [`NOT_OURS`] if it is not the mesh's, a drop if it is invalid.
#[inline(never)]
fn parse(ctx_ptr: *mut xdp_md, underlay: &UnderlayValue, len: u64, c: &mut Client) -> Decision {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return NOT_OURS;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return NOT_OURS;
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return NOT_OURS;
    };
    if ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP {
        return NOT_OURS;
    }
    if be32(ip.dst) != be32(underlay.ip) {
        return NOT_OURS;
    }
    // A later fragment carries no ports: the host reassembles (or drops) it; the first
    // fragment of a packet to a published port is dropped below, so none completes.
    if be16(ip.frag_off) & IP_OFFSET_MASK != 0 {
        return NOT_OURS;
    }
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 5 {
        return NOT_OURS;
    }
    // The ports lie after the options, if any: a published port with options is
    // refused, so it must be found first.
    let Some(ports) = read_at::<[u8; 4]>(ctx, ETH_LEN + ihl * 4) else {
        return NOT_OURS;
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let port_key = dataplane_ebpf::mesh::MeshPortKey {
        port_be: dport,
        protocol: ip.protocol,
        _pad: 0,
    };
    let Some(port) = lookup(&MESH_PORTS, &port_key) else {
        return NOT_OURS;
    };
    let Some(valid) = valid_client(ctx, &ip, ihl, sport, dport, len) else {
        stat_service(port.slot, 0, len);
        return drop(Verdict::MESH_INVALID);
    };
    *c = valid;
    c.slot = port.slot;
    c.target_port_be = port.target_port_be;
    // SAFETY: a plain helper call.
    c.now = unsafe { bpf_ktime_get_ns() };
    PARSED
}

/// The packet's headers if the mesh may take it: no IP options, not a fragment, a valid
/// IPv4 header checksum, lengths that hold together, TCP flags a real stack sends.
#[inline(always)]
fn valid_client(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    ihl: usize,
    sport: [u8; 2],
    dport: [u8; 2],
    len: u64,
) -> Option<Client> {
    let frag = be16(ip.frag_off);
    if ihl != 5 || frag & IP_MF != 0 {
        return None;
    }
    let raw = read_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN)?;
    if dataplane_ebpf::overlay::ipv4_checksum(&raw) != 0 {
        return None;
    }
    let total = be16(ip.tot_len) as u64;
    if total < (IPV4_LEN + UDP_HDR_LEN) as u64 || total + ETH_LEN as u64 > len {
        return None;
    }
    let l4_len = (total - IPV4_LEN as u64) as u16;
    let mut tcp_flags = 0;
    if ip.protocol == IPPROTO_TCP {
        let tcp = read_at::<[u8; 20]>(ctx, L4)?;
        let doff = (tcp[12] >> 4) as u16 * 4;
        if doff < 20 || doff > l4_len {
            return None;
        }
        tcp_flags = tcp[13];
        if !tcp_flags_valid(tcp_flags) {
            return None;
        }
    } else {
        let udp = read_at::<UdpHdr>(ctx, L4)?;
        let udp_len = be16(udp.len);
        if (udp_len as usize) < UDP_HDR_LEN || udp_len > l4_len {
            return None;
        }
    }
    Some(Client {
        key: FlowKey {
            client_ip: ip.src,
            node_ip: ip.dst,
            client_port_be: sport,
            published_port_be: dport,
            protocol: ip.protocol,
            _pad: [0; 3],
        },
        df: frag & IP_DF != 0,
        tcp_flags,
        l4_len,
        len,
        slot: 0,
        target_port_be: [0; 2],
        now: 0,
    })
}

const UDP_HDR_LEN: usize = 8;
const IP_DF: u16 = 0x4000;

/// The conntrack's decision for a valid client packet: the entry found, replaced,
/// created or deleted, and a [`Plan`] ([`PLAN_DELIVER`], [`PLAN_ANSWER`]) or a decision.
#[inline(never)]
fn conntrack(config: &MeshConfig, c: &Client, plan: &mut Plan) -> Decision {
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
        touch(
            entry,
            &flow,
            state,
            flags,
            config,
            c.key.protocol,
            now,
            |f| keep_reply(&c.key, f, now),
        );
        stat_backend(flow.slot, flow.backend_ip, 0, c.len);
        *plan = Plan {
            backend: MeshBackend {
                ip: flow.backend_ip,
                host_ip: flow.backend_host,
            },
            vni: flow.vni,
            target_port_be: flow.target_port_be,
            ifindex: endpoint,
            verdict: Verdict::MESH_FLOW.slot(),
            answer: 0,
            mtu: 0,
            hop: NextHop::default(),
        };
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

/// The backend's host-side veth (local) or `u32::MAX` (remote) if the flow's backend is
/// alive — its endpoint is known with the flow's host — and 0 if not.
#[inline(always)]
fn alive(vni: u32, ip: [u8; 4], host_ip: [u8; 4]) -> u32 {
    match lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip }) {
        Some(ep) if be32(ep.host_ip) == be32(host_ip) => {
            if ep.ifindex != 0 {
                ep.ifindex
            } else {
                u32::MAX
            }
        }
        _ => 0,
    }
}

/// Writes a flow's new state, and its last-seen time when it is older than
/// [`refresh_after_ns`] allows; `on_refresh` runs when the time is written.
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
) {
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
}

/// Puts the flow's reply entry back if the LRU evicted it (checked once per refresh, so
/// a long flow's replies keep finding their way).
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
fn new_flow(c: &Client, plan: &mut Plan, fresh: bool) -> Decision {
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
        _pad: [0; 4],
        created_ns: now,
        last_seen_ns: now,
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
    let rk = reply_key(&c.key, backend.ip, c.target_port_be);
    let _ = MESH_REPLIES.insert(&rk, &reply_value(&c.key, now), 0);
    stat_backend(slot, backend.ip, 1, c.len);
    *plan = Plan {
        backend,
        vni,
        target_port_be: c.target_port_be,
        ifindex,
        verdict: Verdict::MESH_NEW_FLOW.slot(),
        answer: 0,
        mtu: 0,
        hop: NextHop::default(),
    };
    PLAN_DELIVER
}

/// Whether a flow-opening segment's TCP checksum verifies (segments longer than
/// [`SYN_CHECKED_LEN`], or with a payload that is not a multiple of 4 bytes, are left to
/// the backend's stack). So a flood of SYNs with bad checksums creates no entries and
/// does not advance the rotation. The segment is copied to the stack and summed by the
/// kernel (`bpf_csum_diff`): no loop for the verifier to walk.
#[inline(never)]
fn syn_checksum_ok(ctx_ptr: *mut xdp_md, c: &Client) -> bool {
    let computed = c.l4_len as u32;
    // SAFETY: a read of a local, opaque to LLVM, so the checks below stay in the form
    // that gives the verifier the size's bounds (20..=60).
    let len = unsafe { core::ptr::read_volatile(&computed) };
    if len > SYN_CHECKED_LEN as u32 || len % 4 != 0 {
        return true;
    }
    if len < 20 {
        return false;
    }
    let mut segment = [0u32; SYN_CHECKED_LEN / 4];
    // SAFETY: `segment` has room for `len` (at most 60) bytes.
    let rc = unsafe { bpf_xdp_load_bytes(ctx_ptr, L4 as u32, segment.as_mut_ptr().cast(), len) };
    if rc != 0 {
        return false;
    }
    // The kernel sums 16-bit words in host order (little-endian): a byte-swapped sum,
    // which folds to "valid" exactly when the network-order one does, given a seed
    // swapped the same way.
    let pseudo = pseudo_header_sum(c.key.client_ip, c.key.node_ip, IPPROTO_TCP, c.l4_len);
    let seed = (!fold(pseudo)).swap_bytes() as u32;
    // SAFETY: no "from" buffer; "to" is `len` bytes of `segment`.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, segment.as_mut_ptr(), len, seed) };
    sum >= 0 && fold(sum as u32) == 0
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
fn stat_service(slot: u32, new_flows: u64, len: u64) {
    stat_backend(slot, [0; 4], new_flows, len);
}

#[inline(always)]
fn stat_refused(slot: u32, len: u64) {
    stat_service(slot, 1, len);
}
