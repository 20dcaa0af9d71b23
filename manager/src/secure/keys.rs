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
mod tests {
    use super::*;

    const CLUSTER: [u8; 16] = [7; 16];

    fn try_key(key: [u8; 32]) -> impl FnMut(&XChaCha20Poly1305) -> Option<()> {
        // Which cipher is tried is told by sealing a probe with `key` and opening it.
        let probe = XChaCha20Poly1305::new(&key.into());
        let nonce = XNonce::from_slice(&[0; 24]).to_owned();
        let mut sealed = b"probe".to_vec();
        let tag = probe
            .encrypt_in_place_detached(&nonce, b"", &mut sealed)
            .unwrap();
        move |cipher| {
            let mut copy = sealed.clone();
            cipher
                .decrypt_in_place_detached(&nonce, b"", &mut copy, &tag)
                .ok()
        }
    }

    #[test]
    fn clones_follow_a_rotation() {
        let ring = ClusterKey::generate();
        let old = ring.current_bytes();
        let held_by_opener = ring.clone();
        let rotation = ring.begin_rotation().unwrap();
        // Accepted at once, not yet sealed with.
        assert_eq!(held_by_opener.current_bytes(), old);
        let next = rotation.next;
        assert_eq!(
            held_by_opener.open_with(try_key(next)).map(|(s, _)| s),
            Some(Slot::Next)
        );
        // Opening with it switched every clone.
        assert_eq!(ring.current_bytes(), next);
        assert_eq!(ring.switches(), 1);
        assert_eq!(
            ring.open_with(try_key(old)).map(|(s, _)| s),
            Some(Slot::Previous)
        );
        assert!(ring.rotating());
        assert!(ring.open_with(try_key(random_key())).is_none());
    }

    #[test]
    fn the_previous_key_expires() {
        let ring = ClusterKey::generate();
        let old = ring.current_bytes();
        ring.begin_rotation().unwrap().commit();
        ring.write(|r| r.previous = r.previous.map(|(k, _)| (k, Instant::now())));
        assert!(ring.open_with(try_key(old)).is_none());
        assert!(!ring.rotating());
        assert!(ring.read(|r| r.previous.is_none()));
    }

    #[test]
    fn an_abandoned_rotation_changes_nothing() {
        let ring = ClusterKey::generate();
        let old = ring.current_bytes();
        let rotation = ring.begin_rotation().unwrap();
        let next = rotation.next;
        rotation.abandon();
        assert_eq!(ring.current_bytes(), old);
        assert!(ring.open_with(try_key(next)).is_none());
        assert_eq!(ring.switches(), 0);
    }

    #[test]
    fn an_offer_opens_only_for_its_member() {
        let (a, b, c) = (
            NodeSecret::generate(),
            NodeSecret::generate(),
            NodeSecret::generate(),
        );
        let (ida, idb, idc) = (NodeId::random(), NodeId::random(), NodeId::random());
        let ring_a = ClusterKey::generate();
        let ring_b = ClusterKey::from_bytes(ring_a.current_bytes());
        let ring_c = ClusterKey::from_bytes(ring_a.current_bytes());
        let rotation = ring_a.begin_rotation().unwrap();
        let offer = rotation
            .seal_for(&a, &CLUSTER, ida, idb, &b.public())
            .unwrap();
        assert!(!offer.windows(32).any(|w| w == rotation.next));
        // The old cluster key is no help: c (a member too) cannot open b's offer, nor
        // can b open it as if it came from c, nor from another cluster.
        assert_eq!(
            open_offer(&ring_c, &c, &CLUSTER, ida, idc, &a.public(), &offer),
            Err(OfferError::Forged)
        );
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, idc, idb, &c.public(), &offer),
            Err(OfferError::Forged)
        );
        assert_eq!(
            open_offer(&ring_b, &b, &[8; 16], ida, idb, &a.public(), &offer),
            Err(OfferError::Forged)
        );
        let mut altered = offer.clone();
        altered[30] ^= 1;
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &altered),
            Err(OfferError::Forged)
        );
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &offer[1..]),
            Err(OfferError::Malformed)
        );
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &offer),
            Ok(true)
        );
        assert_eq!(ring_b.read(|r| r.next.map(|(k, _)| k)), Some(rotation.next));
        rotation.commit();
        // Delivered again after the switch: nothing changes.
        ring_b.write(|r| {
            r.promote(Instant::now());
        });
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &offer),
            Ok(false)
        );
        assert_eq!(ring_a.current_bytes(), ring_b.current_bytes());
    }

    /// Two members and an outsider with the old token: gossip goes on through the
    /// switch, and nothing sealed after it opens with the old key.
    #[test]
    fn a_rotation_locks_out_the_old_token_without_interruption() {
        use crate::secure::{Opener, Reject, Sealer};
        let old = ClusterKey::generate();
        let old_bytes = old.current_bytes();
        let (ida, idb) = (NodeId::random(), NodeId::random());
        let (sa, sb) = (NodeSecret::generate(), NodeSecret::generate());
        let ring_a = old.clone();
        let ring_b = ClusterKey::from_bytes(old_bytes);
        let (mut seal_a, mut open_a) = (
            Sealer::new(&ring_a, CLUSTER, ida, 1),
            Opener::new(&ring_a, CLUSTER, ida),
        );
        let (mut seal_b, mut open_b) = (
            Sealer::new(&ring_b, CLUSTER, idb, 1),
            Opener::new(&ring_b, CLUSTER, idb),
        );
        let mut outsider =
            Opener::new(&ClusterKey::from_bytes(old_bytes), CLUSTER, NodeId([9; 16]));

        let rotation = ring_a.begin_rotation().unwrap();
        let offer = rotation
            .seal_for(&sa, &CLUSTER, ida, idb, &sb.public())
            .unwrap();
        // Offered, not committed: both still talk with the old key.
        assert!(open_offer(&ring_b, &sb, &CLUSTER, ida, idb, &sa.public(), &offer).unwrap());
        let before = seal_b.seal(b"b before");
        assert!(open_a.open(&before).is_ok());
        assert!(outsider.open(&before).is_ok(), "the old key still seals");
        rotation.commit();
        let first = seal_a.seal(b"a after");
        assert!(open_b.open(&first).is_ok(), "b accepts the next key");
        // b switched on opening it; a datagram b sealed just before still opens at a.
        let late = seal_b.seal(b"b after");
        assert!(open_a.open(&late).is_ok());
        for datagram in [first, late, seal_a.seal(b"x"), seal_b.seal(b"y")] {
            assert_eq!(outsider.open(&datagram), Err(Reject::Forged));
        }
        assert_eq!(ring_a.current_bytes(), ring_b.current_bytes());
        assert_ne!(ring_a.current_bytes(), old_bytes);
        // Once the switch period is over, the old key is refused too.
        let mut stale = Sealer::new(
            &ClusterKey::from_bytes(old_bytes),
            CLUSTER,
            NodeId([9; 16]),
            1,
        );
        assert!(open_a.open(&stale.seal(b"during the switch")).is_ok());
        ring_a.write(|r| r.previous = r.previous.map(|(k, _)| (k, Instant::now())));
        assert_eq!(open_a.open(&stale.seal(b"after")), Err(Reject::Forged));

        // Peer RPC the same way: an old-key request is refused, and the old key cannot
        // read a request sealed now.
        use crate::secure::{Direction, FrameKey, FrameReject, RequestId};
        let (member, stranger) = (
            FrameKey::new(&ring_a, CLUSTER),
            FrameKey::new(&ClusterKey::from_bytes(old_bytes), CLUSTER),
        );
        let id = RequestId::random();
        let forged = stranger.seal(Direction::Request, id, b"logs").unwrap();
        assert_eq!(member.open_request(&forged), Err(FrameReject::Forged));
        let real = member.seal(Direction::Request, id, b"logs").unwrap();
        assert_eq!(stranger.open_request(&real), Err(FrameReject::Forged));
        assert!(FrameKey::new(&ring_b, CLUSTER).open_request(&real).is_ok());
    }

    #[test]
    fn a_second_rotation_is_refused_while_one_is_pending() {
        let (a, b, c) = (
            NodeSecret::generate(),
            NodeSecret::generate(),
            NodeSecret::generate(),
        );
        let (ida, idb, idc) = (NodeId::random(), NodeId::random(), NodeId::random());
        let ring_a = ClusterKey::generate();
        let ring_b = ClusterKey::from_bytes(ring_a.current_bytes());
        let ring_c = ClusterKey::from_bytes(ring_a.current_bytes());
        let first = ring_a.begin_rotation().unwrap();
        let second = ring_c.begin_rotation().unwrap();
        let from_a = first.seal_for(&a, &CLUSTER, ida, idb, &b.public()).unwrap();
        let from_c = second.seal_for(&c, &CLUSTER, idc, idb, &b.public()).unwrap();
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &from_a),
            Ok(true)
        );
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, idc, idb, &c.public(), &from_c),
            Err(OfferError::Busy)
        );
        // The same offer again is fine (a retried call).
        assert_eq!(
            open_offer(&ring_b, &b, &CLUSTER, ida, idb, &a.public(), &from_a),
            Ok(false)
        );
        assert!(matches!(ring_a.begin_rotation(), Err(OfferError::Busy)));
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        let a = NodeSecret::generate();
        let rotation = ClusterKey::generate().begin_rotation().unwrap();
        let zero = [0u8; 32];
        assert_eq!(
            rotation.seal_for(&a, &CLUSTER, NodeId::random(), NodeId::random(), &zero),
            Err(OfferError::WeakKey)
        );
    }

    #[test]
    fn secrets_round_trip_and_never_show() {
        let a = NodeSecret::generate();
        let b = NodeSecret::from_bytes(a.to_bytes());
        assert_eq!(a.public(), b.public());
        assert_eq!(format!("{a:?}"), "NodeSecret(..)");
        let rotation = ClusterKey::generate().begin_rotation().unwrap();
        assert_eq!(format!("{rotation:?}"), "Rotation(..)");
    }
}
