//! Overlay networks: the object, user-input validation, the deterministic resolution of
//! conflicting creates, and subnet/VNI allocation.
//!
//! Any node may create a network, and two nodes can do so concurrently (or on both sides of
//! a partition) with overlapping subnets or the same VNI. Same-name creates are already
//! settled by last-writer-wins on the key. Different names that clash are settled by
//! [`valid_networks`], a pure function of the store: the earliest `created` stamp wins and
//! the others are reported as conflicted, so every node draws the same conclusion from the
//! same records without talking to anyone.

use std::{fmt::Write as _, net::Ipv4Addr, ops::RangeInclusive};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{
    objects::{decode_payload, encode_payload, PayloadError},
    record::{Kind, Record, RecordKey, Stamp},
    store::Store,
};

/// The largest VNI: VXLAN carries 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The shortest prefix a network subnet may have. Larger subnets only waste the pool.
pub const MIN_PREFIX_LEN: u8 = 8;

/// The longest prefix a network subnet may have: a /29 leaves six addresses, room for the
/// gateway and a handful of endpoints.
pub const MAX_PREFIX_LEN: u8 = 29;

/// Where networks created without `--subnet` take their subnet from.
pub const DEFAULT_SUBNET_POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 10, 0, 0), 16);

/// The prefix length of subnets taken from the default pool.
pub const DEFAULT_SUBNET_PREFIX: u8 = 24;

/// The cluster-internal VNI the routing mesh carries client traffic on between nodes (as
/// Swarm's `ingress` network): never a user network's, so never handed out (see
/// [`DEFAULT_VNI_RANGE`]) and refused for `network create --vni`.
pub const INGRESS_VNI: u32 = 4096;

/// Where networks created without `--vni` take their VNI from: above [`INGRESS_VNI`]. The
/// low VNIs are left to users who pick them explicitly, e.g. to match an existing VXLAN
/// fabric.
pub const DEFAULT_VNI_RANGE: RangeInclusive<u32> = INGRESS_VNI + 1..=MAX_VNI;

/// Why a network definition is not acceptable. Each message names the bad value and says
/// what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkSpecError {
    /// The name breaks the syntax rule.
    #[error(
        "network name {name:?} is invalid: use 1 to 63 lowercase letters, digits, '-', '_' \
         or '.', starting with a letter or digit"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// The VNI is 0 or does not fit in 24 bits.
    #[error("VNI {vni} is out of range: use a VNI from 1 to {MAX_VNI}")]
    VniOutOfRange {
        /// The VNI given.
        vni: u32,
    },
    /// The subnet is too large or too small.
    #[error(
        "subnet {subnet} is too {size}: use a prefix length from /{MIN_PREFIX_LEN} to \
         /{MAX_PREFIX_LEN}"
    )]
    PrefixOutOfRange {
        /// The subnet given.
        subnet: Ipv4Net,
        /// `"large"` or `"small"`.
        size: &'static str,
    },
    /// The subnet's address is not its network address.
    #[error("subnet {subnet} has host bits set: use {network}")]
    HostBitsSet {
        /// The subnet given.
        subnet: Ipv4Net,
        /// The same prefix with the host bits cleared.
        network: Ipv4Net,
    },
}

/// Checks a network name: 1 to 63 bytes of lowercase ASCII letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit (so it can never be mistaken for a flag, and it is
/// usable as a DNS label and an interface-name suffix).
pub fn validate_network_name(name: &str) -> Result<(), NetworkSpecError> {
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c);
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&c| allowed(c));
    if ok {
        Ok(())
    } else {
        Err(NetworkSpecError::BadName {
            name: name.to_owned(),
        })
    }
}

/// An overlay network: cluster-scoped, kind [`Kind::Network`], named by its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The user's name for it; also the record name.
    pub name: String,
    /// Its address space; endpoints get addresses from it.
    pub subnet: Ipv4Net,
    /// The VXLAN network identifier that carries it between hosts.
    pub vni: u32,
    /// The stamp of the write that created it; updates keep it. Decides which of two
    /// clashing networks wins.
    pub created: Stamp,
}

impl Network {
    /// The key of the network called `name`.
    pub fn key(name: &str) -> RecordKey {
        RecordKey::cluster(Kind::Network, name)
    }

    /// This network as a record written at `stamp`.
    pub fn to_record(&self, stamp: Stamp) -> Record {
        Record {
            key: Network::key(&self.name),
            stamp,
            value: Some(self.encode()),
        }
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    /// Parses payload bytes.
    pub fn decode(bytes: &[u8]) -> Result<Network, PayloadError> {
        decode_payload("network", bytes)
    }

    /// Parses a record's value.
    pub fn from_record(record: &Record) -> Result<Network, PayloadError> {
        Network::decode(record.value.as_deref().ok_or(PayloadError::Tombstone)?)
    }

    /// Checks name, VNI and subnet against the rules for user input.
    pub fn validate(&self) -> Result<(), NetworkSpecError> {
        validate_network_name(&self.name)?;
        if !(1..=MAX_VNI).contains(&self.vni) {
            return Err(NetworkSpecError::VniOutOfRange { vni: self.vni });
        }
        let prefix = self.subnet.prefix_len();
        if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix) {
            return Err(NetworkSpecError::PrefixOutOfRange {
                subnet: self.subnet,
                size: if prefix < MIN_PREFIX_LEN {
                    "large"
                } else {
                    "small"
                },
            });
        }
        if self.subnet.trunc() != self.subnet {
            return Err(NetworkSpecError::HostBitsSet {
                subnet: self.subnet,
                network: self.subnet.trunc(),
            });
        }
        Ok(())
    }

    /// Why `self` cannot coexist with `other`, naming `other`; `None` if it can.
    fn clash_with(&self, other: &Network) -> Option<String> {
        if overlaps(self.subnet, other.subnet) {
            Some(format!(
                "subnet {} overlaps network {:?} ({})",
                self.subnet, other.name, other.subnet
            ))
        } else if self.vni == other.vni {
            Some(format!(
                "VNI {} is already used by network {:?}",
                self.vni, other.name
            ))
        } else {
            None
        }
    }
}

/// CIDR blocks either nest or are disjoint, so they overlap iff one holds the other's start.
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The networks as every node sees them, given the same records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSet {
    /// Networks in force, sorted by name.
    pub valid: Vec<Network>,
    /// Networks that lost a clash (or break the rules), sorted by name, each with a reason
    /// naming the winner. They are kept, not deleted: an operator decides what to do.
    pub conflicted: Vec<(Network, String)>,
}

/// Resolves the network records in `store` into the valid and the conflicted.
///
/// Networks are taken in order of `created` stamp (name breaks a tie, which only a writer
/// reusing a stamp could cause); each one that clashes with an already accepted network —
/// overlapping subnet or equal VNI — is conflicted, the others are accepted. Losers do not
/// block later networks. The result depends only on the records, never on arrival order.
///
/// Consequences of being a pure function of current state: after a partition heals, the
/// network created first wins even if the other side's network is already in use; and
/// deleting a winner can promote a loser, which may in turn displace a later network that
/// only clashed with the loser. The create path avoids the latter by refusing clashes with
/// conflicted networks too ([`NetworkSet::conflicts_with`]).
///
/// Records that do not parse, or whose payload name differs from the key, are skipped.
pub fn valid_networks(store: &Store) -> NetworkSet {
    let mut set = NetworkSet::default();
    let mut candidates = Vec::new();
    for record in store.cluster_records(Kind::Network) {
        if record.is_tombstone() {
            continue;
        }
        let network = match Network::from_record(record) {
            Ok(network) if network.name == record.key.name => network,
            Ok(network) => {
                debug!(key = %record.key, payload_name = %network.name, "skipping misnamed network");
                continue;
            }
            Err(error) => {
                debug!(key = %record.key, %error, "skipping unreadable network");
                continue;
            }
        };
        match network.validate() {
            Ok(()) => candidates.push(network),
            Err(error) => set.conflicted.push((network, error.to_string())),
        }
    }
    candidates.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    for network in candidates {
        match set
            .valid
            .iter()
            .find_map(|winner| network.clash_with(winner))
        {
            Some(reason) => set.conflicted.push((network, reason)),
            None => set.valid.push(network),
        }
    }
    set.valid.sort_by(|a, b| a.name.cmp(&b.name));
    set.conflicted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    set
}

impl NetworkSet {
    /// The valid network called `name`.
    pub fn get(&self, name: &str) -> Option<&Network> {
        self.valid.iter().find(|n| n.name == name)
    }

    /// Every network with a record, valid or conflicted.
    fn all(&self) -> impl Iterator<Item = &Network> {
        self.valid
            .iter()
            .chain(self.conflicted.iter().map(|(n, _)| n))
    }

    /// For the create path: why `candidate` cannot be created now, as one sentence
    /// (`subnet 10.0.1.0/24 overlaps network "web" (10.0.0.0/16)`), or `None`.
    ///
    /// Checks the candidate against every existing network, conflicted ones included: a
    /// conflicted network becomes valid again if its winner is deleted, and a new network
    /// must not be displaced then. The candidate's own syntax is [`Network::validate`]'s job.
    pub fn conflicts_with(&self, candidate: &Network) -> Option<String> {
        if let Some(existing) = self.all().find(|n| n.name == candidate.name) {
            let mut reason = format!("network {:?} already exists", existing.name);
            if self.get(&existing.name).is_none() {
                let _ = write!(reason, " (conflicted; remove it first)");
            }
            return Some(reason);
        }
        self.all().find_map(|other| candidate.clash_with(other))
    }

    /// The first `/prefix_len` block of `pool` that overlaps no existing network (valid or
    /// conflicted), or `None` if the pool is full or `prefix_len` is shorter than the pool's
    /// or longer than 32.
    ///
    /// Two nodes allocating at the same moment can pick the same block; the later create
    /// then shows up as conflicted and must be retried.
    pub fn next_free_subnet(&self, pool: Ipv4Net, prefix_len: u8) -> Option<Ipv4Net> {
        if prefix_len < pool.prefix_len() || prefix_len > 32 {
            return None;
        }
        let span = |net: Ipv4Net| {
            let net = net.trunc();
            (
                u64::from(u32::from(net.network())),
                u64::from(u32::from(net.broadcast())),
            )
        };
        let used: Vec<(u64, u64)> = self.all().map(|n| span(n.subnet)).collect();
        let size = 1u64 << (32 - prefix_len);
        let (mut start, pool_end) = span(pool);
        // Each pass either returns or jumps past one used block, so this ends after at most
        // `used.len() + 1` passes however large the pool.
        while start + size - 1 <= pool_end {
            let end = start + size - 1;
            match used.iter().find(|&&(lo, hi)| lo <= end && start <= hi) {
                // The pool's start is aligned to `size` (its prefix is no longer), so the
                // next aligned block after the clash is a multiple of `size`.
                Some(&(_, hi)) => start = (hi + 1).div_ceil(size) * size,
                None => {
                    // `start` is within the pool, hence below 2^32.
                    let addr = Ipv4Addr::from(u32::try_from(start).ok()?);
                    return Ipv4Net::new(addr, prefix_len).ok();
                }
            }
        }
        None
    }

    /// The smallest VNI in `range` (never 0) used by no existing network (valid or
    /// conflicted), or `None` if all are taken. The same race as for subnets applies.
    pub fn next_free_vni(&self, range: RangeInclusive<u32>) -> Option<u32> {
        let mut used: Vec<u32> = self.all().map(|n| n.vni).collect();
        used.sort_unstable();
        let mut candidate = (*range.start()).max(1);
        for vni in used {
            if vni == candidate {
                candidate = candidate.checked_add(1)?;
            } else if vni > candidate {
                break;
            }
        }
        (candidate <= *range.end()).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

    use super::*;
    use crate::{state::MergeOutcome, NodeId};

    fn stamp(hlc: u64, writer: u8) -> Stamp {
        Stamp {
            hlc,
            writer: NodeId([writer; 16]),
        }
    }

    fn net(name: &str, subnet: &str, vni: u32, created: Stamp) -> Network {
        Network {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            vni,
            created,
        }
    }

    fn store_of(networks: &[Network]) -> Store {
        let mut store = Store::new();
        for n in networks {
            assert_eq!(store.merge(n.to_record(n.created)), MergeOutcome::Applied);
        }
        store
    }

    fn names(networks: &[Network]) -> Vec<&str> {
        networks.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn name_syntax() {
        for good in ["web", "a", "9lives", "my-net_1.x", &"a".repeat(63)] {
            assert_eq!(validate_network_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-web",
            "_web",
            ".web",
            "Web",
            "a b",
            "wéb",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(validate_network_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_messages_name_the_bad_value() {
        let ok = net("web", "10.0.0.0/24", 10, stamp(1, 1));
        assert_eq!(ok.validate(), Ok(()));
        let msg = |n: Network| n.validate().unwrap_err().to_string();
        assert_eq!(
            msg(Network {
                name: "Web".into(),
                ..ok.clone()
            }),
            "network name \"Web\" is invalid: use 1 to 63 lowercase letters, digits, '-', '_' \
             or '.', starting with a letter or digit"
        );
        assert_eq!(
            msg(Network {
                vni: 0,
                ..ok.clone()
            }),
            "VNI 0 is out of range: use a VNI from 1 to 16777215"
        );
        assert_eq!(
            msg(Network {
                vni: 16_777_216,
                ..ok.clone()
            }),
            "VNI 16777216 is out of range: use a VNI from 1 to 16777215"
        );
        assert_eq!(
            msg(net("web", "10.0.0.0/30", 10, stamp(1, 1))),
            "subnet 10.0.0.0/30 is too small: use a prefix length from /8 to /29"
        );
        assert_eq!(
            msg(net("web", "10.0.0.0/7", 10, stamp(1, 1))),
            "subnet 10.0.0.0/7 is too large: use a prefix length from /8 to /29"
        );
        assert_eq!(
            msg(net("web", "10.0.0.5/24", 10, stamp(1, 1))),
            "subnet 10.0.0.5/24 has host bits set: use 10.0.0.0/24"
        );
        // The limits themselves pass.
        assert_eq!(net("a", "10.0.0.0/8", 1, stamp(1, 1)).validate(), Ok(()));
        assert_eq!(
            net("a", "10.0.0.8/29", MAX_VNI, stamp(1, 1)).validate(),
            Ok(())
        );
    }

    #[test]
    fn payload_round_trips() {
        let n = net("web", "10.0.0.0/24", 4096, stamp(77, 3));
        assert_eq!(Network::decode(&n.encode()).unwrap(), n);
        assert_eq!(Network::from_record(&n.to_record(stamp(78, 3))).unwrap(), n);
    }

    #[test]
    fn earliest_created_wins_whatever_the_arrival_order() {
        let networks = [
            // Overlaps "b" only; "b" loses to "a", so "c" survives.
            net("c", "10.1.0.0/24", 3, stamp(30, 1)),
            net("a", "10.0.0.0/16", 1, stamp(10, 2)),
            // Inside "a": loses to it.
            net("b", "10.0.1.0/24", 2, stamp(20, 1)),
            // Same VNI as "a".
            net("d", "10.2.0.0/24", 1, stamp(40, 3)),
            // Same clock as "e2" and same subnet: the writer ID breaks the tie.
            net("e1", "10.3.0.0/24", 5, stamp(50, 9)),
            net("e2", "10.3.0.0/24", 6, stamp(50, 4)),
            // Invalid data from a peer: conflicted with the validation reason.
            net("f", "10.4.0.0/30", 7, stamp(1, 1)),
        ];
        let expected = valid_networks(&store_of(&networks));
        assert_eq!(names(&expected.valid), ["a", "c", "e2"]);
        let reasons: Vec<(&str, &str)> = expected
            .conflicted
            .iter()
            .map(|(n, r)| (n.name.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "b",
                    "subnet 10.0.1.0/24 overlaps network \"a\" (10.0.0.0/16)"
                ),
                ("d", "VNI 1 is already used by network \"a\""),
                (
                    "e1",
                    "subnet 10.3.0.0/24 overlaps network \"e2\" (10.3.0.0/24)"
                ),
                (
                    "f",
                    "subnet 10.4.0.0/30 is too small: use a prefix length from /8 to /29"
                ),
            ]
        );

        let mut rng = StdRng::seed_from_u64(3);
        let mut shuffled = networks.to_vec();
        for _ in 0..50 {
            shuffled.shuffle(&mut rng);
            assert_eq!(valid_networks(&store_of(&shuffled)), expected);
        }
    }

    #[test]
    fn deleted_and_unreadable_networks_do_not_count() {
        let a = net("a", "10.0.0.0/16", 1, stamp(10, 1));
        let b = net("b", "10.0.1.0/24", 2, stamp(20, 1));
        let mut store = store_of(&[a.clone(), b.clone()]);
        assert_eq!(names(&valid_networks(&store).valid), ["a"]);
        let delete = Record {
            value: None,
            ..a.to_record(stamp(30, 1))
        };
        assert_eq!(store.merge(delete), MergeOutcome::Applied);
        assert_eq!(names(&valid_networks(&store).valid), ["b"], "b takes over");
        let garbage = Record {
            key: Network::key("g"),
            stamp: stamp(1, 1),
            value: Some(vec![0xff; 3]),
        };
        assert_eq!(store.merge(garbage), MergeOutcome::Applied);
        let misnamed = Record {
            key: Network::key("h"),
            ..net("other", "10.9.0.0/24", 9, stamp(1, 1)).to_record(stamp(1, 1))
        };
        assert_eq!(store.merge(misnamed), MergeOutcome::Applied);
        let set = valid_networks(&store);
        assert_eq!(names(&set.valid), ["b"]);
        assert!(set.conflicted.is_empty());
    }

    #[test]
    fn conflicts_with_explains_the_clash() {
        let set = valid_networks(&store_of(&[
            net("web", "10.0.0.0/16", 4096, stamp(1, 1)),
            net("lost", "10.0.5.0/24", 4097, stamp(2, 1)),
            net("db", "10.1.0.0/24", 4098, stamp(3, 1)),
        ]));
        assert_eq!(names(&set.valid), ["db", "web"]);
        let check = |n: Network| set.conflicts_with(&n);
        assert_eq!(
            check(net("api", "10.0.1.0/24", 5000, stamp(9, 1))).as_deref(),
            Some("subnet 10.0.1.0/24 overlaps network \"web\" (10.0.0.0/16)")
        );
        assert_eq!(
            check(net("api", "10.2.0.0/24", 4098, stamp(9, 1))).as_deref(),
            Some("VNI 4098 is already used by network \"db\"")
        );
        assert_eq!(
            check(net("db", "10.3.0.0/24", 5000, stamp(9, 1))).as_deref(),
            Some("network \"db\" already exists")
        );
        assert_eq!(
            check(net("lost", "10.3.0.0/24", 5000, stamp(9, 1))).as_deref(),
            Some("network \"lost\" already exists (conflicted; remove it first)")
        );
        // VNI 4097 belongs to a conflicted network: still refused.
        assert_eq!(
            check(net("api", "10.3.0.0/24", 4097, stamp(9, 1))).as_deref(),
            Some("VNI 4097 is already used by network \"lost\"")
        );
        assert_eq!(check(net("api", "10.3.0.0/24", 5000, stamp(9, 1))), None);
    }

    #[test]
    fn next_free_subnet_skips_used_blocks() {
        let pool: Ipv4Net = "10.10.0.0/16".parse().unwrap();
        let empty = NetworkSet::default();
        assert_eq!(
            empty.next_free_subnet(pool, 24),
            Some("10.10.0.0/24".parse().unwrap())
        );
        let set = valid_networks(&store_of(&[
            net("a", "10.10.0.0/24", 1, stamp(1, 1)),
            // A /22 covers four /24 blocks.
            net("b", "10.10.4.0/22", 2, stamp(2, 1)),
            // Conflicted (same VNI as "b"), yet its subnet is still skipped.
            net("c", "10.10.1.0/24", 2, stamp(3, 1)),
            // Outside the pool: irrelevant.
            net("d", "192.168.0.0/24", 4, stamp(4, 1)),
        ]));
        assert_eq!(names(&set.valid), ["a", "b", "d"]);
        let next = |prefix| set.next_free_subnet(pool, prefix).map(|n| n.to_string());
        assert_eq!(next(24).as_deref(), Some("10.10.2.0/24"));
        assert_eq!(next(23).as_deref(), Some("10.10.2.0/23"));
        assert_eq!(next(22).as_deref(), Some("10.10.8.0/22"));
        assert_eq!(next(16), None, "the whole pool is partly used");
        assert_eq!(next(15), None, "larger than the pool");
        // After a clash the search resumes at the next aligned block, not right after it.
        let only_a = valid_networks(&store_of(&[net("a", "10.10.0.0/24", 1, stamp(1, 1))]));
        let got = only_a.next_free_subnet(pool, 23).unwrap();
        assert_eq!(got.to_string(), "10.10.2.0/23");
        assert_eq!(got, got.trunc());
        assert_eq!(next(33), None);
        assert_eq!(
            empty.next_free_subnet(DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_PREFIX),
            Some("10.10.0.0/24".parse().unwrap())
        );
    }

    #[test]
    fn next_free_subnet_reports_exhaustion() {
        let pool: Ipv4Net = "10.20.0.0/22".parse().unwrap();
        let mut networks = Vec::new();
        let mut set = NetworkSet::default();
        for i in 0..4u8 {
            let subnet = set.next_free_subnet(pool, 24).expect("room left");
            assert_eq!(subnet.to_string(), format!("10.20.{i}.0/24"));
            networks.push(Network {
                name: format!("n{i}"),
                subnet,
                vni: u32::from(i) + 1,
                created: stamp(u64::from(i), 1),
            });
            set = valid_networks(&store_of(&networks));
        }
        assert_eq!(set.next_free_subnet(pool, 24), None);
        assert_eq!(set.next_free_subnet(pool, 29), None);
        // A network covering the whole pool exhausts it at once, even at /8 → /29 scale.
        let huge = valid_networks(&store_of(&[net("x", "10.0.0.0/8", 1, stamp(1, 1))]));
        assert_eq!(
            huge.next_free_subnet("10.0.0.0/8".parse().unwrap(), 29),
            None
        );
    }

    #[test]
    fn next_free_vni_skips_used_and_reports_exhaustion() {
        let set = valid_networks(&store_of(&[
            net("a", "10.0.0.0/24", 4096, stamp(1, 1)),
            net("b", "10.0.1.0/24", 4098, stamp(2, 1)),
            net("c", "10.0.2.0/24", 4097, stamp(3, 1)),
            // Conflicted by subnet; its VNI is still skipped.
            net("d", "10.0.2.0/24", 4099, stamp(4, 1)),
            net("e", "10.0.3.0/24", 1, stamp(5, 1)),
        ]));
        assert_eq!(set.next_free_vni(DEFAULT_VNI_RANGE), Some(4100));
        assert_eq!(set.next_free_vni(4096..=4099), None);
        assert_eq!(set.next_free_vni(0..=10), Some(2), "0 is never handed out");
        assert_eq!(set.next_free_vni(1..=1), None);
        let top = valid_networks(&store_of(&[net("t", "10.0.0.0/24", u32::MAX, stamp(1, 1))]));
        assert_eq!(top.next_free_vni(u32::MAX..=u32::MAX), None, "no overflow");
        assert_eq!(
            NetworkSet::default().next_free_vni(DEFAULT_VNI_RANGE),
            Some(4097),
            "the ingress VNI is never handed out"
        );
        assert!(!DEFAULT_VNI_RANGE.contains(&INGRESS_VNI));
    }
}
