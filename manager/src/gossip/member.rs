//! The identity foca gossips about: who a member is and where to reach it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A cluster member as SWIM sees it.
///
/// foca keeps one member per [`foca::Identity::addr`], which here is the gossip socket
/// address: a node that restarts at its address replaces its previous identity instead
/// of appearing twice, and a joining node can announce itself to a seed whose node ID it
/// does not know yet (foca accepts an announce addressed to any identity with its
/// address). `generation` starts at the node's boot epoch (time-based, increasing), so a
/// restarted node wins the conflict with its previous identity and is `ready` at once; it
/// is bumped when the node learns it was declared down and rejoins on its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub generation: u64,
}

impl foca::Identity for Member {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Member {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// What the join target is called before we know its identity: foca needs an identity to
/// address an announce to, and accepts one whose address matches; the seed's reply
/// carries its real identity.
pub fn seed_placeholder(addr: SocketAddr) -> Member {
    Member {
        id: NodeId::default(),
        addr,
        generation: 0,
    }
}
