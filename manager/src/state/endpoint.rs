//! Endpoints (a network namespace attached to an overlay network on one node) and external
//! VTEPs, their addressing, and the rules that make concurrent allocations converge.
//!
//! Addresses are allocated without a central allocator: a node picks a random free address
//! of the network (random, so two nodes allocating at once rarely collide), writes its
//! endpoint entry, and waits for the cluster to settle; if two endpoints claim one address,
//! the one created first (smallest `created` stamp) keeps it everywhere and the other node
//! allocates again ([`endpoints`] applies the rule). Entries of down nodes keep their
//! addresses reserved until the endpoint is removed or the node is `node rm`-ed.
//!
//! Each network's addresses: the network address and broadcast are never used; the first
//! host address is the gateway (owned by every host); the upper quarter of the host range
//! is reserved for service VIPs; endpoints get the rest.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    objects::{decode_payload, encode_payload},
    Kind, PayloadError, Record, RecordKey, Scope, Stamp, Store,
};
use crate::NodeId;

/// Bytes VXLAN adds to every frame (outer Ethernet, IPv4, UDP, VXLAN): the overlay MTU is
/// the smallest underlay MTU minus this.
pub const ENCAP_OVERHEAD: u32 = 50;

/// An endpoint: node-scoped entry, kind [`Kind::Endpoint`], named by its ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 12 hex digits, unique (random).
    pub id: String,
    /// The user's name for it (defaults to the ID).
    pub name: String,
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    /// The namespace on its node: a name under `/run/netns` or a path.
    pub netns: String,
    /// The host side of its veth pair.
    pub host_ifname: String,
    /// The stamp of the write that allocated `ip`: the earliest claim of an address wins.
    pub created: Stamp,
    /// Whether the agent created the namespace (`endpoint create`: deleted with the
    /// endpoint) or was given it (`endpoint attach`: left in place).
    pub owns_netns: bool,
}

impl Endpoint {
    pub fn key(node: NodeId, id: &str) -> RecordKey {
        RecordKey::node(node, Kind::Endpoint, id)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Endpoint, PayloadError> {
        decode_payload("endpoint", bytes)
    }
}

/// Every endpoint entry with its owner, after collision resolution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// Endpoints holding their address, with their node.
    pub valid: Vec<(NodeId, Endpoint)>,
    /// Endpoints that lost their address to an earlier claim, with the winner's ID.
    pub collided: Vec<(NodeId, Endpoint, String)>,
}

impl EndpointSet {
    /// Addresses of `network` taken by any entry (dead nodes' too: their addresses stay
    /// reserved until the endpoint or the node is removed).
    pub fn used_ips(&self, network: &str) -> HashSet<Ipv4Addr> {
        self.valid
            .iter()
            .map(|(_, e)| e)
            .chain(self.collided.iter().map(|(_, e, _)| e))
            .filter(|e| e.network == network)
            .map(|e| e.ip)
            .collect()
    }
}

/// Every endpoint entry in the store (of live and down nodes alike; callers filter by
/// liveness), collisions resolved: per (network, address), the earliest `created` wins.
pub fn endpoints(store: &Store) -> EndpointSet {
    let mut claims: BTreeMap<(String, Ipv4Addr), Vec<(NodeId, Endpoint)>> = BTreeMap::new();
    for record in store.iter_kind(Kind::Endpoint) {
        let (Scope::Node(node), Some(value)) = (record.key.scope, record.value.as_deref()) else {
            continue;
        };
        let Ok(endpoint) = Endpoint::decode(value) else {
            continue;
        };
        if endpoint.id != record.key.name {
            continue;
        }
        claims
            .entry((endpoint.network.clone(), endpoint.ip))
            .or_default()
            .push((node, endpoint));
    }
    let mut set = EndpointSet::default();
    for (_, mut claimants) in claims {
        claimants.sort_by(|a, b| (a.1.created, &a.1.id).cmp(&(b.1.created, &b.1.id)));
        let mut claimants = claimants.into_iter();
        let Some(winner) = claimants.next() else {
            continue;
        };
        for (node, loser) in claimants {
            set.collided.push((node, loser, winner.1.id.clone()));
        }
        set.valid.push(winner);
    }
    set
}

/// The range of a network's addresses endpoints may get: after the gateway, below the
/// VIP quarter. Empty for networks too small to have one.
pub fn endpoint_range(subnet: Ipv4Net) -> std::ops::RangeInclusive<u32> {
    let network = u32::from(subnet.network());
    let broadcast = u32::from(subnet.broadcast());
    let hosts = broadcast.saturating_sub(network).saturating_sub(1); // excluding both ends
    let vips = hosts / 4;
    // first host = gateway; endpoints from the second host address
    let first = network + 2;
    let last = broadcast.saturating_sub(1).saturating_sub(vips);
    first..=last
}

/// The gateway of a network: its first host address.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// A random free endpoint address of `subnet`, or `None` if it is full. `random` is a
/// source of uniform u32s (so tests can seed it).
pub fn pick_free_ip(
    subnet: Ipv4Net,
    used: &HashSet<Ipv4Addr>,
    mut random: impl FnMut() -> u32,
) -> Option<Ipv4Addr> {
    let range = endpoint_range(subnet);
    let (first, last) = (*range.start(), *range.end());
    if first > last {
        return None;
    }
    let size = last - first + 1;
    // A few random probes (the common, collision-avoiding case), then a scan from a random
    // start, so a nearly full network still finds its last free address.
    for _ in 0..16 {
        let ip = Ipv4Addr::from(first + random() % size);
        if !used.contains(&ip) {
            return Some(ip);
        }
    }
    let start = random() % size;
    (0..size)
        .map(|i| Ipv4Addr::from(first + (start + i) % size))
        .find(|ip| !used.contains(ip))
}

/// The overlay MTU: the smallest underlay MTU among `mtus` minus the encapsulation.
pub fn overlay_mtu(mtus: impl IntoIterator<Item = u32>) -> Option<u32> {
    mtus.into_iter()
        .min()
        .map(|m| m.saturating_sub(ENCAP_OVERHEAD))
}

/// An external VTEP on a network: cluster-scoped, kind [`Kind::Vtep`], named
/// `<network>/<cidr>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vtep {
    pub network: String,
    pub underlay: Ipv4Addr,
    pub mac: [u8; 6],
    pub cidr: Ipv4Net,
}

impl Vtep {
    pub fn name(network: &str, cidr: Ipv4Net) -> String {
        format!("{network}/{cidr}")
    }

    pub fn key(network: &str, cidr: Ipv4Net) -> RecordKey {
        RecordKey::cluster(Kind::Vtep, Vtep::name(network, cidr))
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Vtep, PayloadError> {
        decode_payload("vtep", bytes)
    }

    pub fn from_record(record: &Record) -> Result<Vtep, PayloadError> {
        Vtep::decode(record.value.as_deref().ok_or(PayloadError::Tombstone)?)
    }
}

/// Every external VTEP, by name order.
pub fn vteps(store: &Store) -> Vec<Vtep> {
    store
        .cluster_records(Kind::Vtep)
        .filter_map(|r| {
            Vtep::from_record(r)
                .ok()
                .filter(|v| Vtep::name(&v.network, v.cidr) == r.key.name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MergeOutcome;

    fn stamp(hlc: u64, writer: u8) -> Stamp {
        Stamp {
            hlc,
            writer: NodeId([writer; 16]),
        }
    }

    fn endpoint(id: &str, ip: &str, created: Stamp) -> Endpoint {
        Endpoint {
            id: id.to_owned(),
            name: id.to_owned(),
            network: "web".to_owned(),
            vni: 4096,
            ip: ip.parse().unwrap(),
            netns: format!("ns-{id}"),
            host_ifname: format!("sk{id}"),
            created,
            owns_netns: true,
        }
    }

    fn put(store: &mut Store, node: u8, e: &Endpoint) {
        let record = Record {
            key: Endpoint::key(NodeId([node; 16]), &e.id),
            stamp: e.created,
            value: Some(e.encode()),
        };
        assert_eq!(store.merge(record), MergeOutcome::Applied);
    }

    #[test]
    fn the_earliest_claim_of_an_address_wins_in_any_order() {
        let a = endpoint("aaaa", "10.10.0.5", stamp(100, 1));
        let b = endpoint("bbbb", "10.10.0.5", stamp(200, 2));
        let c = endpoint("cccc", "10.10.0.6", stamp(150, 2));
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &a, &c]] {
            let mut store = Store::new();
            for e in order {
                let node = e.created.writer.0[0];
                put(&mut store, node, e);
            }
            let set = endpoints(&store);
            let valid: Vec<&str> = set.valid.iter().map(|(_, e)| e.id.as_str()).collect();
            assert_eq!(valid, ["aaaa", "cccc"]);
            assert_eq!(set.collided.len(), 1);
            assert_eq!(set.collided[0].1.id, "bbbb");
            assert_eq!(set.collided[0].2, "aaaa");
            assert_eq!(set.used_ips("web").len(), 2);
        }
    }

    #[test]
    fn ranges_reserve_gateway_and_vips() {
        let subnet: Ipv4Net = "10.10.0.0/24".parse().unwrap();
        let range = endpoint_range(subnet);
        assert_eq!(Ipv4Addr::from(*range.start()), Ipv4Addr::new(10, 10, 0, 2));
        // 254 hosts, 63 VIPs reserved at the top: .191 is the last endpoint address.
        assert_eq!(Ipv4Addr::from(*range.end()), Ipv4Addr::new(10, 10, 0, 191));
        assert_eq!(gateway(subnet), Ipv4Addr::new(10, 10, 0, 1));
        let tiny: Ipv4Net = "10.10.0.0/30".parse().unwrap();
        assert!(pick_free_ip(tiny, &HashSet::new(), || 0)
            .is_some_and(|ip| ip == Ipv4Addr::new(10, 10, 0, 2)));
    }

    #[test]
    fn picking_skips_used_addresses_and_reports_full() {
        let subnet: Ipv4Net = "10.10.0.0/28".parse().unwrap();
        let mut used = HashSet::new();
        let mut x = 7u32;
        let mut rng = move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x >> 8
        };
        let range = endpoint_range(subnet);
        let capacity = (range.end() - range.start() + 1) as usize;
        for _ in 0..capacity {
            let ip = pick_free_ip(subnet, &used, &mut rng).expect("room left");
            assert!(range.contains(&u32::from(ip)));
            assert!(used.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(pick_free_ip(subnet, &used, &mut rng), None);
    }

    #[test]
    fn mtu_is_the_smallest_underlay_minus_encapsulation() {
        assert_eq!(overlay_mtu([1500, 9000, 1400]), Some(1350));
        assert_eq!(overlay_mtu([]), None);
    }

    #[test]
    fn vteps_round_trip() {
        let v = Vtep {
            network: "web".to_owned(),
            underlay: Ipv4Addr::new(10, 200, 0, 99),
            mac: [2, 0, 0, 0, 0, 9],
            cidr: "10.10.0.200/29".parse::<Ipv4Net>().unwrap().trunc(),
        };
        let mut store = Store::new();
        let record = Record {
            key: Vtep::key(&v.network, v.cidr),
            stamp: stamp(1, 1),
            value: Some(v.encode()),
        };
        assert_eq!(store.merge(record), MergeOutcome::Applied);
        assert_eq!(vteps(&store), vec![v]);
    }
}
