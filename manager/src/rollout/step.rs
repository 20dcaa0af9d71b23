//! The rollout writer's state transitions as their own record (kind [`Kind::RolloutStep`],
//! named by the service), apart from the service record that only users write.
//!
//! Why apart: the store keeps one value per key, the last written. When the writer wrote
//! its transitions (`completed`, `paused`, an automatic rollback) into the service record
//! itself, a `service update` written at nearly the same moment on another node could be
//! overwritten by a transition computed from the older definition, and the update was lost
//! on every node. Now each user write (create, update, rollback) bumps the service's
//! [`generation`](super::ServiceUpdate::generation), and a step names the generation it
//! advances; [`effective`] applies a step only to that generation. A step racing with an
//! update is ignored wherever the update is known, the same on every node, and both records
//! survive whatever order gossip delivers them in.

use serde::{Deserialize, Serialize};

use crate::state::{
    objects::{decode_payload, encode_payload, PayloadError},
    Kind, RecordKey, Service, Stamp, Store,
};

use super::{rolled_back, RolloutState};

/// The writer's latest transition of one service's rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStep {
    pub service: String,
    /// The service record's identity (its `created`), so a step of a removed service never
    /// applies to a new one of the same name.
    pub created: Stamp,
    /// The user generation this step advances; other generations ignore it.
    pub generation: u64,
    pub state: RolloutState,
    /// Whether the writer rolled this generation back after a failure: the definition in
    /// effect is then the previous one (see [`rolled_back`]).
    pub rolled_back: bool,
    /// When the automatic rollback started (ms; the writer's clock); else unused.
    pub started_ms: u64,
}

impl RolloutStep {
    pub fn key(service: &str) -> RecordKey {
        RecordKey::cluster(Kind::RolloutStep, service)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<RolloutStep, PayloadError> {
        decode_payload("rollout step", bytes)
    }

    /// Whether this step advances `user`'s current generation.
    pub fn advances(&self, user: &Service) -> bool {
        self.service == user.name
            && self.created == user.created
            && self.generation == user.update.generation
    }
}

/// The service in effect: the user's record `user` with the writer's `step` applied when it
/// advances `user`'s generation (a stale or foreign step changes nothing).
pub fn effective(user: Service, step: Option<&RolloutStep>) -> Service {
    let Some(step) = step.filter(|s| s.advances(&user)) else {
        return user;
    };
    let mut service = if step.rolled_back {
        match rolled_back(&user, String::new(), step.started_ms) {
            Some(mut back) => {
                back.update.generation = user.update.generation;
                back.update.automatic_rollback = true;
                back
            }
            // A step claiming a rollback of a generation without a previous definition
            // (only a hostile writer makes one): ignored.
            None => return user,
        }
    } else {
        user
    };
    service.update.state = step.state.clone();
    service
}

/// `user` with the step the store holds for it (see [`effective`]).
pub fn effective_in(store: &Store, user: Service) -> Service {
    let step = store
        .get(&RolloutStep::key(&user.name))
        .and_then(|r| r.value.as_deref())
        .and_then(|bytes| RolloutStep::decode(bytes).ok());
    effective(user, step.as_ref())
}
