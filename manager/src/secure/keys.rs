//! Key management: the cluster key as a ring that can be rotated, and the per-node keys
//! that carry a new cluster key to each member so that a holder of only the old join
//! token never learns it.
//!
//! # The ring
//!
//! A [`ClusterKey`] is a handle on the cluster's keys: the *current* key (every datagram
//! and peer frame is sealed with it), and during a rotation a *next* key (offered, not yet
//! used) or a *previous* key (still accepted for [`SWITCH_PERIOD`], never used). Clones
//! share the ring, so the gossip sealer and opener, the peer RPC's frame key and the join
//! token the agent saves all follow a rotation at once. Opening tries the current key,
//! then the next and the previous one (at most three AEAD checks, two outside a rotation
//! never happen: with one key there is one check).
//!
//! Switching without interruption: a member first *accepts* the next key (it opens
//! with it, still seals with the current one); only once every live member holds it does
//! the rotating node start sealing with it, and a member that opens anything with its
//! next key starts sealing with it too (it is then everyone's). The old key stays
//! accepted for [`SWITCH_PERIOD`] after that, for datagrams in flight and members that
//! have not heard a new-key datagram yet, then it is forgotten. A next key that is never
//! used is forgotten after [`OFFER_TTL`].
//!
//! # Node keys
//!
//! Every node has a static X25519 key pair ([`NodeSecret`]), made on its first start and
//! kept in its state directory; the public half is in its node record. The rotating node
//! sends the new cluster key to each member sealed under their pairwise key:
//! HKDF-SHA256 of the X25519 shared secret, salted with the cluster ID, bound to both node
//! IDs ([`Rotation::seal_for`], [`open_offer`]). Someone with only the old cluster key sees
//! the sealed offers (and can open the peer frames around them) but cannot open them: that
//! needs a node's secret, which never leaves its host.

use std::{
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chacha20poly1305::{
    aead::{rand_core::RngCore, OsRng},
    AeadInPlace, KeyInit, Tag, XChaCha20Poly1305, XNonce,
};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::NodeId;

/// How long the previous key is still accepted after this node starts sealing with the
/// next one: long enough for every live member to hear a new-key datagram (gossip
/// probes every 250 ms) and for datagrams in flight, short enough to revoke promptly.
pub const SWITCH_PERIOD: Duration = Duration::from_secs(20);

/// How long an offered next key is kept if nobody starts using it (a rotation that
/// failed half-way).
pub const OFFER_TTL: Duration = Duration::from_secs(60);

/// Which key of the ring opened something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Next,
    Previous,
}

struct Ring {
    current: [u8; 32],
    /// Offered, accepted, not yet sealed with; forgotten at the instant.
    next: Option<([u8; 32], Instant)>,
    /// Replaced, still accepted until the instant.
    previous: Option<([u8; 32], Instant)>,
    /// How many times the current key changed in this process.
    switches: u64,
}

impl Ring {
    fn expire(&mut self, now: Instant) {
        if self.next.is_some_and(|(_, until)| now >= until) {
            self.next = None;
        }
        if self.previous.is_some_and(|(_, until)| now >= until) {
            self.previous = None;
        }
    }

    fn promote(&mut self, now: Instant) -> bool {
        match self.next.take() {
            Some((next, _)) => {
                let old = std::mem::replace(&mut self.current, next);
                self.previous = Some((old, now + SWITCH_PERIOD));
                self.switches += 1;
                true
            }
            None => false,
        }
    }
}

/// The cluster's key ring (see the module documentation). Clones share it.
#[derive(Clone)]
pub struct ClusterKey(Arc<RwLock<Ring>>);

impl ClusterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> ClusterKey {
        ClusterKey::from_bytes(random_key())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(Arc::new(RwLock::new(Ring {
            current: bytes,
            next: None,
            previous: None,
            switches: 0,
        })))
    }

    fn read<R>(&self, f: impl FnOnce(&Ring) -> R) -> R {
        // The lock is only held for copies of 32-byte keys: nothing can poison it.
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write<R>(&self, f: impl FnOnce(&mut Ring) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// The current key's bytes (for the join token's text).
    pub(super) fn current_bytes(&self) -> [u8; 32] {
        self.read(|r| r.current)
    }

    /// The cipher of the key everything is sealed with now.
    pub(super) fn sealing_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.current_bytes().into())
    }

    /// Tries `attempt` with the current key, then the next and the previous one, and says
    /// which succeeded. Opening with the next key means someone seals with it, so it is
    /// everyone's: this node switches to it too.
    pub(super) fn open_with<T>(
        &self,
        mut attempt: impl FnMut(&XChaCha20Poly1305) -> Option<T>,
    ) -> Option<(Slot, T)> {
        let now = Instant::now();
        let (current, next, previous) = self.read(|r| {
            let live = |k: Option<([u8; 32], Instant)>| k.filter(|(_, until)| now < *until);
            (r.current, live(r.next), live(r.previous))
        });
        if let Some(found) = attempt(&XChaCha20Poly1305::new(&current.into())) {
            return Some((Slot::Current, found));
        }
        if let Some((key, _)) = next {
            if let Some(found) = attempt(&XChaCha20Poly1305::new(&key.into())) {
                self.write(|r| {
                    // Unless another thread promoted it already.
                    if r.next.is_some_and(|(k, _)| k == key) {
                        r.promote(now);
                    }
                });
                return Some((Slot::Next, found));
            }
        }
        if let Some((key, _)) = previous {
            if let Some(found) = attempt(&XChaCha20Poly1305::new(&key.into())) {
                return Some((Slot::Previous, found));
            }
        }
        let stale = self.read(|r| {
            r.next.is_some_and(|(_, until)| now >= until)
                || r.previous.is_some_and(|(_, until)| now >= until)
        });
        if stale {
            self.write(|r| r.expire(now));
        }
        None
    }

    /// Accepts `key` as the next one (opens with it, seals with it once someone does).
    /// Returns false, changing nothing, if it is the current or the next key already (an
    /// offer delivered twice). Refuses another next key while one is pending: of two
    /// rotations started at once, each then finds a member that refuses it, and both are
    /// abandoned rather than leaving members with different next keys.
    fn accept_next(&self, key: [u8; 32]) -> Result<bool, OfferError> {
        let now = Instant::now();
        self.write(|r| {
            r.expire(now);
            if r.current == key || r.next.is_some_and(|(k, _)| k == key) {
                return Ok(false);
            }
            if r.next.is_some() {
                return Err(OfferError::Busy);
            }
            r.next = Some((key, now + OFFER_TTL));
            Ok(true)
        })
    }

    /// Starts a rotation on this node: a fresh next key, accepted here at once. Offer it
    /// to every live member ([`Rotation::seal_for`]), then [`Rotation::commit`] once all
    /// have accepted it.
    pub fn begin_rotation(&self) -> Result<Rotation, OfferError> {
        let next = random_key();
        self.accept_next(next)?;
        Ok(Rotation {
            ring: self.clone(),
            next,
        })
    }

    /// Drops the next key without using it (a rotation abandoned before its commit).
    pub fn withdraw_next(&self) {
        self.write(|r| r.next = None);
    }

    /// How many times the current key changed in this process: the agent saves the
    /// join token again when it moves.
    pub fn switches(&self) -> u64 {
        self.read(|r| r.switches)
    }

    /// Whether an old key is still accepted or a new one is pending.
    pub fn rotating(&self) -> bool {
        let now = Instant::now();
        self.read(|r| {
            r.next.is_some_and(|(_, until)| now < until)
                || r.previous.is_some_and(|(_, until)| now < until)
        })
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// Never shows a key, so a `{:?}` in a log line cannot leak it.
impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Compares the current keys without an early exit, so timing does not reveal how much
/// of a guessed key is right.
impl PartialEq for ClusterKey {
    fn eq(&self, other: &ClusterKey) -> bool {
        let (a, b) = (self.current_bytes(), other.current_bytes());
        a.iter()
            .zip(b.iter())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
    }
}

impl Eq for ClusterKey {}

/// A rotation in progress on the node that started it.
pub struct Rotation {
    ring: ClusterKey,
    next: [u8; 32],
}

impl Rotation {
    /// The offer for member `to` (public key `their_public`, from its node record):
    /// the next key sealed under the pairwise key of `from` (this node) and `to`.
    pub fn seal_for(
        &self,
        ours: &NodeSecret,
        cluster_id: &[u8; 16],
        from: NodeId,
        to: NodeId,
        their_public: &[u8; 32],
    ) -> Result<Vec<u8>, OfferError> {
        let cipher = pairwise_cipher(ours, their_public, cluster_id, from, to)?;
        let nonce: [u8; 24] = rand::random();
        let mut body = self.next.to_vec();
        let aad = offer_aad(cluster_id, from, to);
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut body)
            .expect("a 32-byte message always seals");
        let mut offer = Vec::with_capacity(OFFER_LEN);
        offer.extend_from_slice(&nonce);
        offer.extend_from_slice(&body);
        offer.extend_from_slice(&tag);
        Ok(offer)
    }

    /// Starts sealing with the new key: call once every live member accepted it. The old
    /// one stays accepted for [`SWITCH_PERIOD`].
    pub fn commit(self) {
        let now = Instant::now();
        self.ring.write(|r| {
            if r.next.is_none_or(|(k, _)| k != self.next) {
                // Expired or replaced meanwhile: take it back as the next key first.
                r.next = Some((self.next, now + OFFER_TTL));
            }
            r.promote(now);
        });
    }

    /// Gives up: the next key is dropped here (members that accepted it forget it after
    /// [`OFFER_TTL`]).
    pub fn abandon(self) {
        self.ring.write(|r| {
            if r.next.is_some_and(|(k, _)| k == self.next) {
                r.next = None;
            }
        });
    }
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rotation(..)")
    }
}

/// Opens an offer member `to` (this node, holding `ours`) received from `from` (public
/// key `their_public`, from `from`'s node record) and accepts the key as the next one.
/// Returns whether it was new.
pub fn open_offer(
    ring: &ClusterKey,
    ours: &NodeSecret,
    cluster_id: &[u8; 16],
    from: NodeId,
    to: NodeId,
    their_public: &[u8; 32],
    offer: &[u8],
) -> Result<bool, OfferError> {
    if offer.len() != OFFER_LEN {
        return Err(OfferError::Malformed);
    }
    let cipher = pairwise_cipher(ours, their_public, cluster_id, from, to)?;
    let (nonce, rest) = offer.split_at(24);
    let (body, tag) = rest.split_at(32);
    let mut key = [0u8; 32];
    key.copy_from_slice(body);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &offer_aad(cluster_id, from, to),
            &mut key,
            Tag::from_slice(tag),
        )
        .map_err(|_| OfferError::Forged)?;
    ring.accept_next(key)
}

/// Nonce, sealed key, tag.
const OFFER_LEN: usize = 24 + 32 + 16;
/// Domain separation from every other use of the pairwise key.
const OFFER_LABEL: &[u8] = b"skein-rotate-1";

/// Why an offer could not be made or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the member's public key is unusable (a low-order point)")]
    WeakKey,
    #[error("the key offer has the wrong length")]
    Malformed,
    #[error("the key offer failed authentication (not from the node it names, or altered)")]
    Forged,
    #[error(
        "another key rotation is pending here; try again in {} s",
        OFFER_TTL.as_secs()
    )]
    Busy,
}

fn offer_aad(cluster_id: &[u8; 16], from: NodeId, to: NodeId) -> Vec<u8> {
    [OFFER_LABEL, &cluster_id[..], &from.0, &to.0].concat()
}

/// XChaCha20-Poly1305 keyed with HKDF-SHA256(X25519(ours, theirs)), salted with the
/// cluster ID and bound to the direction `from` → `to`.
fn pairwise_cipher(
    ours: &NodeSecret,
    their_public: &[u8; 32],
    cluster_id: &[u8; 16],
    from: NodeId,
    to: NodeId,
) -> Result<XChaCha20Poly1305, OfferError> {
    let shared = ours.0.diffie_hellman(&PublicKey::from(*their_public));
    // An all-zero result means a low-order public key: anyone could compute it.
    if !shared.was_contributory() {
        return Err(OfferError::WeakKey);
    }
    let hkdf = Hkdf::<Sha256>::new(Some(cluster_id), shared.as_bytes());
    let mut key = [0u8; 32];
    hkdf.expand(&offer_aad(cluster_id, from, to), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Ok(XChaCha20Poly1305::new(&key.into()))
}

/// A node's static X25519 secret. Never leaves its host.
pub struct NodeSecret(StaticSecret);

impl NodeSecret {
    pub fn generate() -> NodeSecret {
        NodeSecret::from_bytes(random_key())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> NodeSecret {
        NodeSecret(StaticSecret::from(bytes))
    }

    /// The bytes to keep in the state directory.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half, for the node record.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

#[cfg(test)]
mod tests;
