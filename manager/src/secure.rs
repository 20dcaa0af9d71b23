//! The sealed datagram layer: every gossip datagram is encrypted and authenticated
//! with the cluster key and checked against replay, and the join token that carries
//! the key to new nodes.
//!
//! Layout:
//! - this file: the wire format, [`Sealer`], [`Opener`], [`Reject`], [`RejectCounters`].
//! - [`keys`]: [`ClusterKey`], the cluster's key ring (current, and during a rotation the
//!   next or previous key; clones share it), node keys and `join-token --rotate`'s offers.
//! - [`token`]: [`JoinToken`] and its text form.
//! - [`frame`]: [`FrameKey`], sealed request/response frames for the agents' peer RPC
//!   over TCP (same key and cipher, bound to one exchange instead of a replay window).
//! - `replay`: the per-peer sliding counter window and the bounded peer table.
//!
//! # Wire format (version 1)
//!
//! ```text
//!  offset  size  field            encoding
//!       0     1  version          1
//!       1    16  sender NodeId    raw bytes
//!      17     8  boot epoch       u64, big-endian
//!      25     8  counter          u64, big-endian, 1, 2, 3, ... per (sender, epoch)
//!      33    24  nonce            random
//!      57     n  ciphertext       XChaCha20 of the plaintext
//!  57 + n    16  tag              Poly1305
//! ```
//!
//! The header is in the clear because the receiver needs it before it can decrypt:
//! the version to know the layout, the sender, epoch and counter for replay checks,
//! the nonce for the cipher. It says nothing about the cluster's contents: node IDs
//! are random and name no host or address; every object name and address is inside
//! the ciphertext. The associated data is `cluster_id || header`, so any change to the
//! header, and any datagram from another cluster, fails authentication.
//!
//! Nonces are random 24-byte values rather than counters: all nodes share one key,
//! and 192 random bits never collide in practice, so nodes need no coordination.
//!
//! [`SEAL_OVERHEAD`] is 73 bytes. [`max_plaintext`] gives the largest payload that keeps
//! a sealed datagram within the underlay MTU over IPv4, so it is never fragmented.
//!
//! # Replay protection
//!
//! Each node seals with a boot epoch that must be higher on every restart (the agent's
//! persisted boot count, or its start time in nanoseconds) and a counter that starts at
//! 1 for each epoch. The receiver keeps, per sender, the latest epoch and a
//! [`REPLAY_WINDOW`]-counter sliding window (as in IPsec and WireGuard): a higher epoch
//! replaces the window at once, so a restarted node is heard immediately; a lower epoch
//! is [`Reject::StaleEpoch`]; within the epoch each counter is accepted once, in any
//! order, as long as it is no more than `REPLAY_WINDOW - 1` behind the highest seen.
//! Replay state is only touched after authentication, so forged datagrams cannot move
//! it. At most [`DEFAULT_MAX_PEERS`] senders are tracked; the least
//! recently heard one is forgotten first, after which its earlier datagrams could pass
//! once more. The receiver also forgets everything when it restarts. Both are safe
//! because the replicated state is ordered by hybrid logical clocks: an old, authentic
//! message cannot overwrite newer state.
//!
//! Every rejected datagram is dropped and counted in [`RejectCounters`]; none panics or
//! changes any state.

use std::fmt;

use chacha20poly1305::{AeadInPlace, Tag, XNonce};

use crate::NodeId;

pub mod frame;
pub mod keys;
mod replay;
pub mod token;

pub use frame::{Direction, FrameKey, FrameReject, RequestId, MAX_FRAME};
pub use keys::{ClusterKey, NodeSecret, Rotation};
pub use replay::REPLAY_WINDOW;
pub use token::{JoinToken, ParseJoinTokenError};

/// The wire format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

const NODE_AT: usize = 1;
const EPOCH_AT: usize = NODE_AT + 16;
const COUNTER_AT: usize = EPOCH_AT + 8;
const NONCE_AT: usize = COUNTER_AT + 8;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = NONCE_AT + 24;
/// Bytes of the Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// How much longer a sealed datagram is than its plaintext.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const _: () = assert!(HEADER_LEN == 57 && SEAL_OVERHEAD == 73);

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

/// How many senders an [`Opener`] tracks unless told otherwise: far more nodes than a
/// cluster has, at about 200 bytes each (some 13 MB when full).
pub const DEFAULT_MAX_PEERS: usize = 65_536;

/// The largest plaintext whose sealed datagram, with IPv4 (no options) and UDP headers,
/// fits in `underlay_mtu`; 0 if none does. Callers size their payloads with it so gossip
/// is never IP-fragmented. (An IPv6 underlay needs 20 bytes more headroom.)
pub fn max_plaintext(underlay_mtu: u32) -> usize {
    usize::try_from(underlay_mtu)
        .unwrap_or(usize::MAX)
        .saturating_sub(IPV4_HEADER_LEN + UDP_HEADER_LEN + SEAL_OVERHEAD)
}

/// `cluster_id || header`: what the tag covers besides the ciphertext.
fn associated_data(cluster_id: &[u8; 16], header: &[u8]) -> [u8; 16 + HEADER_LEN] {
    let mut aad = [0u8; 16 + HEADER_LEN];
    aad[..16].copy_from_slice(cluster_id);
    aad[16..].copy_from_slice(header);
    aad
}

/// Seals the datagrams one node sends during one boot epoch.
pub struct Sealer {
    /// The ring: sealing uses its current key, so a rotation applies at once.
    key: ClusterKey,
    cluster_id: [u8; 16],
    node: NodeId,
    boot_epoch: u64,
    /// The counter the next datagram carries. Starts at 1, since receivers treat 0 as
    /// already seen. At a million datagrams a second, 2^64 lasts over half a million
    /// years, so it is never exhausted.
    next_counter: u64,
}

impl Sealer {
    /// `boot_epoch` must be higher than the one this node used before its restart, or
    /// peers that remember the old epoch will drop everything it sends.
    pub fn new(key: &ClusterKey, cluster_id: [u8; 16], node: NodeId, boot_epoch: u64) -> Sealer {
        Sealer {
            key: key.clone(),
            cluster_id,
            node,
            boot_epoch,
            next_counter: 1,
        }
    }

    /// Encrypts and authenticates `plaintext` into a datagram [`SEAL_OVERHEAD`] bytes
    /// longer. Keep `plaintext` within [`max_plaintext`] to avoid fragmentation.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let counter = self.next_counter;
        self.next_counter += 1;
        let nonce: [u8; 24] = rand::random();

        let mut datagram = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        datagram.push(FORMAT_VERSION);
        datagram.extend_from_slice(&self.node.0);
        datagram.extend_from_slice(&self.boot_epoch.to_be_bytes());
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.extend_from_slice(&nonce);
        datagram.extend_from_slice(plaintext);

        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let aad = associated_data(&self.cluster_id, header);
        let tag = self
            .key
            .sealing_cipher()
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, body)
            // The only failure is a message over 256 GiB, far beyond any datagram.
            .expect("XChaCha20-Poly1305 refuses only messages over 256 GiB");
        datagram.extend_from_slice(&tag);
        datagram
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn boot_epoch(&self) -> u64 {
        self.boot_epoch
    }
}

/// Leaves out the key.
impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("node", &self.node)
            .field("boot_epoch", &self.boot_epoch)
            .field("next_counter", &self.next_counter)
            .finish_non_exhaustive()
    }
}

/// An authentic, fresh datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub from: NodeId,
    pub boot_epoch: u64,
    pub plaintext: Vec<u8>,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("datagram too short to be sealed")]
    Truncated,
    #[error("datagram has an unknown format version")]
    BadVersion,
    #[error("datagram failed authentication (wrong key, other cluster, or altered)")]
    Forged,
    #[error("datagram was already received or is too old to tell")]
    Replayed,
    #[error("datagram is from an earlier boot of its sender")]
    StaleEpoch,
    #[error("datagram is our own, reflected back")]
    FromSelf,
    #[error("datagram claims a boot epoch further ahead of our clock than the allowed drift")]
    EpochAhead,
}

impl Reject {
    /// Every variant, in the order [`RejectCounters::iter`] reports them.
    pub const ALL: [Reject; 7] = [
        Reject::Truncated,
        Reject::BadVersion,
        Reject::Forged,
        Reject::Replayed,
        Reject::StaleEpoch,
        Reject::FromSelf,
        Reject::EpochAhead,
    ];

    /// A stable snake_case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::BadVersion => "bad_version",
            Reject::Forged => "forged",
            Reject::Replayed => "replayed",
            Reject::StaleEpoch => "stale_epoch",
            Reject::FromSelf => "from_self",
            Reject::EpochAhead => "epoch_ahead",
        }
    }
}

/// Dropped datagrams by reason, since the [`Opener`] was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounters {
    pub truncated: u64,
    pub bad_version: u64,
    pub forged: u64,
    pub replayed: u64,
    pub stale_epoch: u64,
    pub from_self: u64,
    pub epoch_ahead: u64,
}

impl RejectCounters {
    pub fn get(&self, reason: Reject) -> u64 {
        match reason {
            Reject::Truncated => self.truncated,
            Reject::BadVersion => self.bad_version,
            Reject::Forged => self.forged,
            Reject::Replayed => self.replayed,
            Reject::StaleEpoch => self.stale_epoch,
            Reject::FromSelf => self.from_self,
            Reject::EpochAhead => self.epoch_ahead,
        }
    }

    fn count(&mut self, reason: Reject) {
        let counter = match reason {
            Reject::Truncated => &mut self.truncated,
            Reject::BadVersion => &mut self.bad_version,
            Reject::Forged => &mut self.forged,
            Reject::Replayed => &mut self.replayed,
            Reject::StaleEpoch => &mut self.stale_epoch,
            Reject::FromSelf => &mut self.from_self,
            Reject::EpochAhead => &mut self.epoch_ahead,
        };
        *counter = counter.saturating_add(1);
    }

    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }

    /// `(reason, count)` for every reason, zeros included, named as
    /// [`Reject::name`] does: one labelled Prometheus counter per pair.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reject::ALL.into_iter().map(|r| (r.name(), self.get(r)))
    }
}

/// Opens the datagrams a node receives and keeps the replay state of its peers.
pub struct Opener {
    /// The ring: the current key, and during a rotation the next or previous one.
    key: ClusterKey,
    cluster_id: [u8; 16],
    local: NodeId,
    peers: replay::PeerTable,
    counters: RejectCounters,
}

impl Opener {
    /// `local` is this node's own ID, so reflected datagrams are recognised.
    pub fn new(key: &ClusterKey, cluster_id: [u8; 16], local: NodeId) -> Opener {
        Opener {
            key: key.clone(),
            cluster_id,
            local,
            peers: replay::PeerTable::new(DEFAULT_MAX_PEERS),
            counters: RejectCounters::default(),
        }
    }

    /// Authenticates, decrypts and replay-checks one datagram. A rejected datagram is
    /// counted and changes nothing else.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Opened, Reject> {
        let result = self.try_open(datagram);
        if let Err(reason) = result {
            self.counters.count(reason);
            // Trace level: a flood of junk must not become a flood of log lines; the
            // counters are what an operator watches.
            tracing::trace!(
                reason = reason.name(),
                len = datagram.len(),
                "dropped gossip datagram"
            );
        }
        result
    }

    fn try_open(&mut self, datagram: &[u8]) -> Result<Opened, Reject> {
        // The version comes first: a later version may have a different header length.
        match datagram.first() {
            None => return Err(Reject::Truncated),
            Some(&FORMAT_VERSION) => {}
            Some(_) => return Err(Reject::BadVersion),
        }
        if datagram.len() < SEAL_OVERHEAD {
            return Err(Reject::Truncated);
        }
        let (header, body) = datagram.split_at(HEADER_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let from = NodeId(header[NODE_AT..EPOCH_AT].try_into().expect("16 bytes"));
        let boot_epoch =
            u64::from_be_bytes(header[EPOCH_AT..COUNTER_AT].try_into().expect("8 bytes"));
        let counter = u64::from_be_bytes(header[COUNTER_AT..NONCE_AT].try_into().expect("8 bytes"));

        // Authenticate before anything else is believed or recorded: the header fields
        // above are only trusted once the tag checks out.
        let aad = associated_data(&self.cluster_id, header);
        let mut plaintext = ciphertext.to_vec();
        self.key
            .open_with(|cipher| {
                // A failed check leaves the buffer as it was; copied again to be sure.
                plaintext.copy_from_slice(ciphertext);
                cipher
                    .decrypt_in_place_detached(
                        XNonce::from_slice(&header[NONCE_AT..]),
                        &aad,
                        &mut plaintext,
                        Tag::from_slice(tag),
                    )
                    .ok()
            })
            .ok_or(Reject::Forged)?;

        if from == self.local {
            return Err(Reject::FromSelf);
        }
        self.peers.record(from, boot_epoch, counter)?;
        Ok(Opened {
            from,
            boot_epoch,
            plaintext,
        })
    }

    pub fn counters(&self) -> &RejectCounters {
        &self.counters
    }

    /// This node's wall clock: boot epochs further ahead of it than the allowed drift are
    /// refused ([`Reject::EpochAhead`], see `replay.rs`).
    pub fn set_wall_ms(&mut self, wall_ms: u64) {
        self.peers.set_now_ms(wall_ms);
    }

    /// How many senders' replay state is held.
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }
}

/// Leaves out the key.
impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("local", &self.local)
            .field("tracked_peers", &self.peers.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: [u8; 16] = [7; 16];

    /// Reproducible pseudo-random numbers (splitmix64), so a failure can be replayed.
    struct TestRng(u64);

    impl TestRng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    struct Pair {
        key: ClusterKey,
        sealer: Sealer,
        opener: Opener,
    }

    fn pair() -> Pair {
        let key = ClusterKey::generate();
        Pair {
            sealer: Sealer::new(&key, CLUSTER, NodeId::random(), 10),
            opener: Opener::new(&key, CLUSTER, NodeId::random()),
            key,
        }
    }

    fn assert_only(counters: &RejectCounters, reason: Reject, n: u64) {
        assert_eq!(counters.get(reason), n, "{reason:?} in {counters:?}");
        assert_eq!(counters.total(), n, "other counters moved: {counters:?}");
    }

    #[test]
    fn round_trip() {
        let mut p = pair();
        for message in [&b""[..], b"x", &[0xab; 1000]] {
            let datagram = p.sealer.seal(message);
            assert_eq!(datagram.len(), message.len() + SEAL_OVERHEAD);
            let opened = p.opener.open(&datagram).unwrap();
            assert_eq!(opened.from, p.sealer.node());
            assert_eq!(opened.boot_epoch, 10);
            assert_eq!(opened.plaintext, message);
        }
        assert_eq!(p.opener.counters().total(), 0);
        assert_eq!(p.opener.tracked_peers(), 1);
    }

    #[test]
    fn wrong_key_is_forged() {
        let mut p = pair();
        let mut stranger = Opener::new(&ClusterKey::generate(), CLUSTER, NodeId::random());
        let datagram = p.sealer.seal(b"hello");
        assert_eq!(stranger.open(&datagram), Err(Reject::Forged));
        assert_only(stranger.counters(), Reject::Forged, 1);
        assert_eq!(stranger.tracked_peers(), 0);
        // The same datagram is fine with the right key, so the key was the difference.
        assert!(p.opener.open(&datagram).is_ok());
    }

    #[test]
    fn other_cluster_is_forged() {
        let mut p = pair();
        let mut other = Opener::new(&p.key, [8; 16], NodeId::random());
        let datagram = p.sealer.seal(b"hello");
        assert_eq!(other.open(&datagram), Err(Reject::Forged));
        assert_only(other.counters(), Reject::Forged, 1);
        assert!(p.opener.open(&datagram).is_ok());
    }

    #[test]
    fn own_datagrams_are_recognised() {
        let key = ClusterKey::generate();
        let me = NodeId::random();
        let mut sealer = Sealer::new(&key, CLUSTER, me, 1);
        let mut opener = Opener::new(&key, CLUSTER, me);
        assert_eq!(opener.open(&sealer.seal(b"echo")), Err(Reject::FromSelf));
        assert_only(opener.counters(), Reject::FromSelf, 1);
        assert_eq!(opener.tracked_peers(), 0);
    }

    #[test]
    fn every_flipped_bit_is_rejected_and_changes_nothing() {
        let mut p = pair();
        p.opener.open(&p.sealer.seal(b"first")).unwrap();
        let datagram = p.sealer.seal(b"second, to be tampered with");
        let mut expected = RejectCounters::default();
        for bit in 0..datagram.len() * 8 {
            let mut tampered = datagram.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let reason = if bit < 8 {
                Reject::BadVersion
            } else {
                Reject::Forged
            };
            assert_eq!(p.opener.open(&tampered), Err(reason), "bit {bit}");
            expected.count(reason);
        }
        assert_eq!(*p.opener.counters(), expected);
        // Had any tampered copy been accepted, or moved the epoch or window, the
        // original would now be a replay or a stale epoch.
        assert_eq!(
            p.opener.open(&datagram).unwrap().plaintext,
            b"second, to be tampered with"
        );
        assert_eq!(p.opener.tracked_peers(), 1);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut p = pair();
        let datagram = p.sealer.seal(b"some payload");
        for len in 0..datagram.len() {
            let expected = if len < SEAL_OVERHEAD {
                Reject::Truncated
            } else {
                // Long enough to parse; the tag is then taken from the wrong place.
                Reject::Forged
            };
            assert_eq!(
                p.opener.open(&datagram[..len]),
                Err(expected),
                "length {len}"
            );
        }
        assert_eq!(p.opener.counters().truncated, SEAL_OVERHEAD as u64);
        assert_eq!(
            p.opener.counters().forged,
            (datagram.len() - SEAL_OVERHEAD) as u64
        );
        assert_eq!(p.opener.counters().total(), datagram.len() as u64);
        assert!(p.opener.open(&datagram).is_ok());
    }

    #[test]
    fn replays_are_rejected() {
        let mut p = pair();
        let datagram = p.sealer.seal(b"once");
        p.opener.open(&datagram).unwrap();
        assert_eq!(p.opener.open(&datagram), Err(Reject::Replayed));
        assert_eq!(p.opener.open(&datagram), Err(Reject::Replayed));
        assert_only(p.opener.counters(), Reject::Replayed, 2);
    }

    #[test]
    fn reordering_within_the_window_is_accepted_once() {
        let mut p = pair();
        let mut datagrams: Vec<_> = (0..300)
            .map(|i| p.sealer.seal(format!("{i}").as_bytes()))
            .collect();
        let mut rng = TestRng(1);
        for i in (1..datagrams.len()).rev() {
            datagrams.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for datagram in &datagrams {
            p.opener
                .open(datagram)
                .expect("reordered datagram accepted");
        }
        for datagram in &datagrams {
            assert_eq!(p.opener.open(datagram), Err(Reject::Replayed));
        }
        assert_only(p.opener.counters(), Reject::Replayed, 300);
    }

    #[test]
    fn datagrams_older_than_the_window_are_rejected() {
        let mut p = pair();
        let late = p.sealer.seal(b"delayed too long");
        let just_in_time = p.sealer.seal(b"delayed just enough");
        for _ in 0..REPLAY_WINDOW - 1 {
            p.opener.open(&p.sealer.seal(b"on time")).unwrap();
        }
        // Highest is now REPLAY_WINDOW + 1: counter 2 is REPLAY_WINDOW - 1 behind it,
        // counter 1 a full window behind.
        assert!(p.opener.open(&just_in_time).is_ok());
        assert_eq!(p.opener.open(&late), Err(Reject::Replayed));
        assert_only(p.opener.counters(), Reject::Replayed, 1);
    }

    #[test]
    fn restarted_peer_is_accepted_and_its_old_epoch_is_not() {
        let mut p = pair();
        let node = p.sealer.node();
        for _ in 0..5 {
            p.opener.open(&p.sealer.seal(b"before restart")).unwrap();
        }
        let from_old_life = p.sealer.seal(b"sent before restart, arrives after");

        let mut restarted = Sealer::new(&p.key, CLUSTER, node, 11);
        let opened = p
            .opener
            .open(&restarted.seal(b"after restart"))
            .expect("new epoch accepted");
        assert_eq!((opened.from, opened.boot_epoch), (node, 11));

        // The previous epoch keeps its window (a forger could otherwise silence a node
        // with one higher epoch, see replay.rs): a datagram sent before the restart is
        // accepted once, never twice.
        assert!(p.opener.open(&from_old_life).is_ok());
        assert_eq!(p.opener.open(&from_old_life), Err(Reject::Replayed));
        assert!(p.opener.open(&restarted.seal(b"still fine")).is_ok());
        assert_only(p.opener.counters(), Reject::Replayed, 1);
        assert_eq!(p.opener.tracked_peers(), 1);
    }

    #[test]
    fn random_datagrams_are_all_rejected() {
        let mut p = pair();
        let mut rng = TestRng(2);
        for i in 0..10_000 {
            let len = (rng.next() % 1500) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Give half of them the right version byte, so they reach the cipher.
            if i % 2 == 0 && !junk.is_empty() {
                junk[0] = FORMAT_VERSION;
            }
            assert!(p.opener.open(&junk).is_err(), "junk datagram {i} accepted");
        }
        let counters = p.opener.counters();
        assert_eq!(counters.total(), 10_000);
        assert!(counters.forged > 4000, "{counters:?}");
        assert!(counters.bad_version > 4000, "{counters:?}");
        assert_eq!(
            counters.replayed + counters.stale_epoch + counters.from_self,
            0
        );
        assert_eq!(p.opener.tracked_peers(), 0);
        assert!(p.opener.open(&p.sealer.seal(b"real")).is_ok());
    }

    #[test]
    fn max_plaintext_fits_the_mtu() {
        let mut p = pair();
        let payload = vec![0u8; max_plaintext(1500)];
        let datagram = p.sealer.seal(&payload);
        assert!(datagram.len() <= 1500 - 20 - 8, "{} bytes", datagram.len());
        assert_eq!(datagram.len(), 1472, "the budget is used, not wasted");
        assert_eq!(max_plaintext(9000), 9000 - 28 - SEAL_OVERHEAD);
        assert_eq!(max_plaintext(60), 0);
        assert!(p.opener.open(&datagram).is_ok());
    }

    #[test]
    fn plaintext_never_appears_on_the_wire() {
        let mut p = pair();
        let secret = b"service=billing-api vip=10.0.3.7";
        let datagram = p.sealer.seal(secret);
        for piece in secret.windows(4) {
            assert!(
                !datagram.windows(4).any(|w| w == piece),
                "{:?} is visible",
                String::from_utf8_lossy(piece)
            );
        }
        assert!(
            !datagram.windows(32).any(|w| w == p.key.current_bytes()),
            "key on the wire"
        );
    }

    #[test]
    fn counters_are_named_for_export() {
        let mut p = pair();
        let datagram = p.sealer.seal(b"x");
        p.opener.open(&datagram).unwrap();
        let _ = p.opener.open(&datagram);
        let _ = p.opener.open(&[]);
        let _ = p.opener.open(&[9]);
        let exported: Vec<_> = p.opener.counters().iter().collect();
        assert_eq!(
            exported,
            [
                ("truncated", 1),
                ("bad_version", 1),
                ("forged", 0),
                ("replayed", 1),
                ("stale_epoch", 0),
                ("from_self", 0),
                ("epoch_ahead", 0),
            ]
        );
        assert_eq!(p.opener.counters().total(), 3);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ClusterKey::from_bytes([0x5a; 32]);
        // Fixed IDs, so a random one cannot happen to contain the digits looked for.
        let sealer = Sealer::new(&key, CLUSTER, NodeId([1; 16]), 1);
        let opener = Opener::new(&key, CLUSTER, NodeId([2; 16]));
        for shown in [
            format!("{key:?}"),
            format!("{sealer:?}"),
            format!("{opener:?}"),
        ] {
            assert!(!shown.contains("90"), "{shown}"); // 0x5a in decimal
            assert!(!shown.contains("5a5a"), "{shown}");
        }
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    }

    #[test]
    fn key_equality() {
        let key = ClusterKey::generate();
        assert_eq!(key, key.clone());
        assert_ne!(key, ClusterKey::generate());
        let mut bytes = key.current_bytes();
        bytes[31] ^= 1;
        assert_ne!(key, ClusterKey::from_bytes(bytes));
    }
}
