//! The ring, the offers and a whole rotation through the sealer, opener and frame key.

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
    let mut outsider = Opener::new(&ClusterKey::from_bytes(old_bytes), CLUSTER, NodeId([9; 16]));

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
    let from_c = second
        .seal_for(&c, &CLUSTER, idc, idb, &b.public())
        .unwrap();
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
