//! `node update --availability`: whether a node takes tasks, as a cluster-scoped record
//! (kind [`Kind::NodeAvailability`], named by the node's ID in hex) that any node may write,
//! so an operator can drain a node from anywhere, even one that is down.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::{
    state::{
        objects::{decode_payload, encode_payload, PayloadError},
        Kind, RecordKey, Scope, Store,
    },
    NodeId,
};

/// Whether a node takes tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    /// Takes tasks (the default).
    #[default]
    Active,
    /// Keeps the tasks it runs but gets no new ones.
    Pause,
    /// Gets none: its tasks move to other nodes (each drained before it stops).
    Drain,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        })
    }
}

impl FromStr for Availability {
    type Err = super::config::BadWord;

    fn from_str(text: &str) -> Result<Availability, Self::Err> {
        match text {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(super::config::BadWord::new(text, "active, pause or drain")),
        }
    }
}

/// The record's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAvailability {
    pub node: NodeId,
    pub availability: Availability,
}

impl NodeAvailability {
    pub fn key(node: NodeId) -> RecordKey {
        RecordKey::cluster(Kind::NodeAvailability, node.to_string())
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeAvailability, PayloadError> {
        decode_payload("node availability", bytes)
    }
}

/// Every node's availability other than active, from the store.
pub fn availabilities(store: &Store) -> BTreeMap<NodeId, Availability> {
    store
        .cluster_records(Kind::NodeAvailability)
        .filter(|r| r.key.scope == Scope::Cluster)
        .filter_map(
            |r| match r.value.as_deref().map(NodeAvailability::decode)? {
                Ok(a) if a.node.to_string() == r.key.name => Some((a.node, a.availability)),
                Ok(_) => None,
                Err(error) => {
                    debug!(%error, name = %r.key.name, "skipping unreadable node availability");
                    None
                }
            },
        )
        .collect()
}
