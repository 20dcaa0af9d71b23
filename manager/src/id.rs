//! Node identity.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A node's identity: 128 random bits, created once and kept in the agent's state
/// directory, so a restarted node comes back as itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A fresh random ID.
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// The first 12 hex digits, as `node ls` shows them (like Docker's short IDs).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why a string is not a node ID.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not a node ID (32 hex digits)")]
pub struct ParseNodeIdError {
    input: String,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<NodeId, ParseNodeIdError> {
        let err = || ParseNodeIdError {
            input: s.to_owned(),
        };
        if s.len() != 32 || !s.is_ascii() {
            return Err(err());
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(NodeId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = NodeId::random();
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short().len(), 12);
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("g".repeat(32).parse::<NodeId>().is_err());
    }
}
