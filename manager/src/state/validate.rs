//! One validation function per record kind, run on every record before it enters a store:
//! the writer's own writes (they reach the store through the same merge) and every record
//! that arrives by replication or from a saved store.
//!
//! Why on arrival too: a record is sealed with the cluster key, which proves only that a
//! member wrote it, not that the member checked it. A member that turned hostile, or one
//! running a buggy version, could otherwise hand every node a service with
//! `replicas = u32::MAX` (placement sized by it) or a node MTU of 0 (overlay MTU 0), and the
//! saved store would bring it back after every restart. A record that fails is ignored and
//! counted (`skein_gossip_rejected_total{reason="invalid_record"}`), never a panic.
//!
//! Kinds this version does not know ([`Kind::Other`]) pass: newer versions depend on older
//! ones keeping and relaying them. Their number per writer is bounded by the store
//! ([`super::store::MAX_UNKNOWN_PER_WRITER`]). Tombstones carry no payload and always pass.

use super::{
    endpoint::{Endpoint, Vtep},
    network::{Network, MAX_VNI},
    objects::{NodeInfo, PayloadError},
    record::{Kind, Record},
    service::{validate_service_name, Service, Task, MAX_REPLICAS},
};

/// The smallest underlay MTU a node may report: the IPv4 minimum every host must
/// reassemble. Smaller values would leave no room for a gossip datagram or an overlay
/// packet (the overlay MTU is the smallest underlay MTU minus 50).
pub const MIN_UNDERLAY_MTU: u32 = 576;

/// The largest underlay MTU a node may report (an IPv4 packet's size limit).
pub const MAX_UNDERLAY_MTU: u32 = 65_535;

/// The longest hostname a node may report (a DNS name's limit).
pub const MAX_HOSTNAME_BYTES: usize = 253;

/// Linux's interface name limit (IFNAMSIZ − 1).
const MAX_IFNAME_BYTES: usize = 15;

/// Why a record was refused on arrival.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRecord {
    /// The payload is not what its kind promises.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The payload's own name differs from the record's name.
    #[error("{kind:?} record named {key:?} describes {inner:?}")]
    NameMismatch {
        kind: Kind,
        key: String,
        inner: String,
    },
    /// A field breaks the kind's rules.
    #[error("{kind:?} record {name:?}: {reason}")]
    Rule {
        kind: Kind,
        name: String,
        reason: String,
    },
}

/// Checks `record` against its kind's rules. See the module docs.
pub fn validate_record(record: &Record) -> Result<(), InvalidRecord> {
    let Some(value) = record.value.as_deref() else {
        return Ok(());
    };
    let name = record.key.name.as_str();
    let kind = record.key.kind;
    let rule = |reason: String| InvalidRecord::Rule {
        kind,
        name: name.to_owned(),
        reason,
    };
    let same_name = |inner: &str| {
        if inner == name {
            Ok(())
        } else {
            Err(InvalidRecord::NameMismatch {
                kind,
                key: name.to_owned(),
                inner: inner.to_owned(),
            })
        }
    };
    match kind {
        Kind::NodeInfo => {
            let info = NodeInfo::decode(value)?;
            if name != NodeInfo::NAME {
                return Err(rule(format!(
                    "a node's info must be named {:?}",
                    NodeInfo::NAME
                )));
            }
            validate_node_info(&info).map_err(rule)
        }
        Kind::Endpoint => {
            let endpoint = Endpoint::decode(value)?;
            same_name(&endpoint.id)?;
            if !(1..=MAX_VNI).contains(&endpoint.vni) {
                return Err(rule(format!("VNI {} out of range", endpoint.vni)));
            }
            if endpoint.host_ifname.is_empty() || endpoint.host_ifname.len() > MAX_IFNAME_BYTES {
                return Err(rule(format!(
                    "interface name {:?} is not 1 to {MAX_IFNAME_BYTES} bytes",
                    endpoint.host_ifname
                )));
            }
            Ok(())
        }
        Kind::Task => {
            let task = Task::decode(value)?;
            same_name(&task.id)?;
            validate_service_name(&task.service).map_err(|e| rule(e.to_string()))?;
            // Slots run 0..replicas, and replicas is bounded: a larger slot would size
            // per-slot tables by a number a sender chose.
            if task.slot >= MAX_REPLICAS {
                return Err(rule(format!("slot {} out of range", task.slot)));
            }
            Ok(())
        }
        Kind::Network => {
            let network = Network::decode(value)?;
            same_name(&network.name)?;
            network.validate().map_err(|e| rule(e.to_string()))
        }
        Kind::Service => {
            let service = Service::decode(value)?;
            same_name(&service.name)?;
            service.validate().map_err(|e| rule(e.to_string()))
        }
        Kind::Vtep => {
            let vtep = Vtep::decode(value)?;
            same_name(&Vtep::name(&vtep.network, vtep.cidr))
        }
        Kind::NodeAvailability => {
            let availability = crate::rollout::NodeAvailability::decode(value)?;
            same_name(&availability.node.to_string())
        }
        Kind::RolloutStep => {
            let step = crate::rollout::RolloutStep::decode(value)?;
            same_name(&step.service)?;
            validate_service_name(&step.service).map_err(|e| rule(e.to_string()))
        }
        // Port claims carry nothing this version reads; removals are checked by the store
        // (their name must be a node ID); unknown kinds are kept for newer versions.
        Kind::PortClaim | Kind::NodeRemoval | Kind::Other(_) => Ok(()),
    }
}

/// The rules of a node's self-description.
pub fn validate_node_info(info: &NodeInfo) -> Result<(), String> {
    if !(MIN_UNDERLAY_MTU..=MAX_UNDERLAY_MTU).contains(&info.underlay_mtu) {
        return Err(format!(
            "underlay MTU {} out of range {MIN_UNDERLAY_MTU}..={MAX_UNDERLAY_MTU}",
            info.underlay_mtu
        ));
    }
    if info.hostname.len() > MAX_HOSTNAME_BYTES {
        return Err(format!("hostname of {} bytes", info.hostname.len()));
    }
    if info.addr.port() == 0 {
        return Err("gossip port 0".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        state::{Mode, RecordKey, Stamp},
        testing, NodeId,
    };

    fn stamp() -> Stamp {
        Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        }
    }

    fn record(key: RecordKey, value: Vec<u8>) -> Record {
        Record {
            key,
            stamp: stamp(),
            value: Some(value),
        }
    }

    fn info(mtu: u32) -> NodeInfo {
        testing::node(1, true, [10, 0, 0, 1])
            .info
            .map(|mut i| {
                i.underlay_mtu = mtu;
                i
            })
            .expect("fixture has info")
    }

    #[test]
    fn services_are_checked_as_their_writer_checks_them() {
        let ok = testing::service("web", Mode::Replicated { replicas: 3 }, stamp());
        assert!(validate_record(&record(Service::key("web"), ok.encode())).is_ok());
        let huge = testing::service("web", Mode::Replicated { replicas: u32::MAX }, stamp());
        let error = validate_record(&record(Service::key("web"), huge.encode())).unwrap_err();
        assert!(error.to_string().contains("replicas"), "{error}");
        // Named differently from its record: refused.
        assert!(matches!(
            validate_record(&record(Service::key("other"), ok.encode())),
            Err(InvalidRecord::NameMismatch { .. })
        ));
        // Garbage under a known kind: refused.
        assert!(matches!(
            validate_record(&record(Service::key("web"), vec![0xff; 7])),
            Err(InvalidRecord::Payload(_))
        ));
        // A tombstone has nothing to check.
        let mut tomb = record(Service::key("web"), Vec::new());
        tomb.value = None;
        assert!(validate_record(&tomb).is_ok());
    }

    #[test]
    fn node_mtu_must_be_plausible() {
        let key = NodeInfo::key(NodeId([1; 16]));
        assert!(validate_record(&record(key.clone(), info(1500).encode())).is_ok());
        for bad in [0, 575, 65_536, u32::MAX] {
            assert!(
                validate_record(&record(key.clone(), info(bad).encode())).is_err(),
                "mtu {bad}"
            );
        }
    }

    #[test]
    fn task_slots_are_bounded() {
        let service = testing::service("web", Mode::Replicated { replicas: 3 }, stamp());
        let mut task = testing::task("abc", &service, 2, [10, 0, 0, 2]);
        let key = Task::key(NodeId([1; 16]), "abc");
        assert!(validate_record(&record(key.clone(), task.encode())).is_ok());
        task.slot = u32::MAX;
        assert!(validate_record(&record(key, task.encode())).is_err());
    }

    #[test]
    fn unknown_kinds_pass() {
        let key = RecordKey::cluster(Kind::Other(77), "x");
        assert!(validate_record(&record(key, vec![1, 2, 3])).is_ok());
    }
}
