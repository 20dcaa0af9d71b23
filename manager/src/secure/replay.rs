//! Replay state: one sliding counter window per peer and boot epoch, in a table of
//! bounded size.
//!
//! Everything here runs only after a datagram has been authenticated, so a forger can
//! neither move a window nor push a peer out of the table.

use std::collections::{BTreeMap, HashMap};

use super::Reject;
use crate::NodeId;

/// How many counters behind the highest one seen are still accepted, as in IPsec and
/// WireGuard. Wide enough for the reordering a UDP burst meets on a real network; a
/// datagram delayed longer than that is dropped, which gossip tolerates because it
/// resends state anyway.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// The counters already accepted from one (node, boot epoch).
#[derive(Clone, Debug)]
pub(super) struct ReplayWindow {
    /// The highest counter accepted so far.
    highest: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when counter `highest - i` has been
    /// accepted.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// A window that has accepted nothing. Counter 0 is marked as seen: a [`Sealer`]
    /// starts at 1, so a 0 can only be a forgery or a bug.
    ///
    /// [`Sealer`]: super::Sealer
    pub(super) fn new() -> ReplayWindow {
        let mut seen = [0; WORDS];
        seen[0] = 1;
        ReplayWindow { highest: 0, seen }
    }

    /// Accepts `counter` if it has not been accepted before and is not too old to tell,
    /// recording it. A rejected counter leaves the window untouched.
    pub(super) fn accept(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            self.advance(counter - self.highest);
            self.highest = counter;
            self.seen[0] |= 1;
            return true;
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = ((age / 64) as usize, 1u64 << (age % 64));
        if self.seen[word] & mask != 0 {
            return false;
        }
        self.seen[word] |= mask;
        true
    }

    /// Ages every recorded counter by `by` positions (bit `i` moves to `i + by`),
    /// dropping those that fall out of the window.
    fn advance(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        // From the top down, so every source word (index <= i) is read before it is
        // overwritten.
        for i in (0..WORDS).rev() {
            let whole = i.checked_sub(words).map_or(0, |j| self.seen[j] << bits);
            let carried = match (bits, i.checked_sub(words + 1)) {
                (0, _) | (_, None) => 0,
                (_, Some(j)) => self.seen[j] >> (64 - bits),
            };
            self.seen[i] = whole | carried;
        }
    }
}

/// How far ahead of this node's wall clock a boot epoch may be, as for HLC stamps
/// ([`crate::hlc::DEFAULT_MAX_DRIFT_MS`]). A node's epoch is its start time in ms (or the
/// previous epoch + 1 when its clock went backwards), so an honest epoch is never far ahead;
/// a forged `u64::MAX` is.
pub(super) const MAX_EPOCH_AHEAD_MS: u64 = crate::hlc::DEFAULT_MAX_DRIFT_MS;

/// How many boot epochs of one sender keep a window at once.
///
/// The cluster key proves only that a member sealed a datagram, not which one: any member
/// can seal under another node's ID. With a single epoch per sender, one datagram claiming
/// a higher epoch replaced the window and every later datagram of the real node was
/// "stale" — the node was silenced for good. Keeping a few epochs, each with its window,
/// lets the real one go on being heard; a restarted node's new epoch is still accepted at
/// once (it is newer than every epoch not in the future). An epoch that accepted a datagram
/// within [`EPOCH_LIVE_MS`] is never pushed out by a new one: a flood of forged epochs
/// fills the free slots and is then refused, while the real sender keeps its own.
pub(super) const EPOCHS_PER_PEER: usize = 4;

/// How long an epoch that accepted a datagram stays safe from eviction. Long enough that a
/// member of a large cluster, which hears from a given peer only now and then, keeps it.
pub(super) const EPOCH_LIVE_MS: u64 = 60_000;

#[derive(Debug)]
struct EpochWindow {
    epoch: u64,
    window: ReplayWindow,
    /// The tick it last accepted a datagram at (least recently used goes first).
    used: u64,
    /// The wall clock (ms) then, if known.
    used_ms: Option<u64>,
}

#[derive(Debug)]
struct Peer {
    /// At most [`EPOCHS_PER_PEER`].
    epochs: Vec<EpochWindow>,
    /// Epochs at or below this were forgotten (evicted) and are refused.
    floor: u64,
    /// Position in [`PeerTable::recency`].
    last_seen: u64,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            epochs: Vec::new(),
            floor: 0,
            last_seen: 0,
        }
    }

    /// Accepts `(epoch, counter)` or says why not; a rejection changes nothing.
    fn accept(
        &mut self,
        epoch: u64,
        counter: u64,
        now_ms: Option<u64>,
        tick: u64,
    ) -> Result<(), Reject> {
        if let Some(held) = self.epochs.iter_mut().find(|e| e.epoch == epoch) {
            if !held.window.accept(counter) {
                return Err(Reject::Replayed);
            }
            held.used = tick;
            held.used_ms = now_ms;
            return Ok(());
        }
        // A new epoch must be newer than every epoch held that is not in the future (the
        // sender restarted) and than every forgotten one. Epochs ahead of the clock are left
        // out of the comparison: they can only be forged or skewed, and must not make a
        // real restart look stale.
        let in_future = |e: u64| now_ms.is_some_and(|now| e > now);
        let newest_past = self
            .epochs
            .iter()
            .map(|e| e.epoch)
            .filter(|&e| !in_future(e))
            .max()
            .unwrap_or(0);
        if epoch <= self.floor || epoch <= newest_past {
            return Err(Reject::StaleEpoch);
        }
        let mut window = ReplayWindow::new();
        if !window.accept(counter) {
            return Err(Reject::Replayed);
        }
        if self.epochs.len() >= EPOCHS_PER_PEER {
            // Forget an epoch from the future first (least recently used), else the least
            // recently used one — never one still live; only a forgotten past epoch raises
            // the floor, so forged future epochs can neither push out the real one nor lock
            // out later ones.
            let live = |e: &EpochWindow| match (now_ms, e.used_ms) {
                (Some(now), Some(used)) => now.saturating_sub(used) < EPOCH_LIVE_MS,
                _ => false,
            };
            let Some(victim) = self
                .epochs
                .iter()
                .enumerate()
                .filter(|(_, e)| !live(e))
                .min_by_key(|(_, e)| (!in_future(e.epoch), e.used))
                .map(|(i, _)| i)
            else {
                // Every slot is live: a flood of new epochs; the held ones stay.
                return Err(Reject::StaleEpoch);
            };
            let gone = self.epochs.swap_remove(victim);
            if !in_future(gone.epoch) {
                self.floor = self.floor.max(gone.epoch);
            }
        }
        self.epochs.push(EpochWindow {
            epoch,
            window,
            used: tick,
            used_ms: now_ms,
        });
        Ok(())
    }
}

/// Replay state for up to `max_peers` peers, forgetting the least recently heard one
/// when full.
///
/// Forgetting is the price of bounded memory: once a peer is evicted, datagrams it sent
/// earlier in its current epoch could be accepted once more, and so could an older
/// epoch. Only authenticated traffic creates entries, so only a cluster member can cause
/// eviction, and only by sending from more distinct node IDs than `max_peers` (about
/// 200 bytes each, up to [`EPOCHS_PER_PEER`] windows). The replicated state is ordered by
/// hybrid logical clocks and last-writer-wins, so a stale but authentic message cannot
/// roll it back; replay protection keeps the network from being used to amplify or loop
/// such messages.
#[derive(Debug)]
pub(super) struct PeerTable {
    peers: HashMap<NodeId, Peer>,
    /// Peers by the tick they were last accepted at, oldest first.
    recency: BTreeMap<u64, NodeId>,
    tick: u64,
    max_peers: usize,
    /// This node's wall clock (ms), once the caller has set it: bounds epochs.
    now_ms: Option<u64>,
}

impl PeerTable {
    pub(super) fn new(max_peers: usize) -> PeerTable {
        PeerTable {
            peers: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            // A table that held nothing would accept every replay.
            max_peers: max_peers.max(1),
            now_ms: None,
        }
    }

    /// Sets this node's wall clock, against which epochs are bounded.
    pub(super) fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = Some(now_ms);
    }

    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Records an authenticated datagram from `node`, or says why it must be dropped.
    /// A rejected datagram changes nothing.
    pub(super) fn record(&mut self, node: NodeId, epoch: u64, counter: u64) -> Result<(), Reject> {
        if self
            .now_ms
            .is_some_and(|now| epoch > now.saturating_add(MAX_EPOCH_AHEAD_MS))
        {
            return Err(Reject::EpochAhead);
        }
        self.tick += 1;
        let tick = self.tick;
        let now_ms = self.now_ms;
        match self.peers.get_mut(&node) {
            Some(peer) => {
                peer.accept(epoch, counter, now_ms, tick)?;
                self.recency.remove(&peer.last_seen);
                peer.last_seen = tick;
                self.recency.insert(tick, node);
            }
            None => {
                let mut peer = Peer::new();
                peer.accept(epoch, counter, now_ms, tick)?;
                peer.last_seen = tick;
                if self.peers.len() >= self.max_peers {
                    if let Some((_, oldest)) = self.recency.pop_first() {
                        self.peers.remove(&oldest);
                    }
                }
                self.peers.insert(node, peer);
                self.recency.insert(tick, node);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn window_edges_are_exact() {
        let mut w = ReplayWindow::new();
        assert!(!w.accept(0), "counter 0 is never valid");
        assert!(w.accept(5000));
        assert!(!w.accept(5000), "the highest counter twice");
        assert!(
            w.accept(5000 - (REPLAY_WINDOW - 1)),
            "the oldest counter still in the window"
        );
        assert!(!w.accept(5000 - (REPLAY_WINDOW - 1)), "accepted once only");
        assert!(!w.accept(5000 - REPLAY_WINDOW), "one step past the window");
        assert!(!w.accept(1), "far behind the window");
        assert!(w.accept(4999));
        // Advancing by exactly one word and by a word plus some bits keeps the marks.
        assert!(w.accept(5064));
        assert!(!w.accept(4999), "mark survives a whole-word shift");
        assert!(!w.accept(5000));
        assert!(w.accept(5064 + 70));
        assert!(!w.accept(4999), "mark survives a word-plus-bits shift");
        assert!(!w.accept(5064));
        assert!(w.accept(5001), "unseen and still inside the window");
    }

    #[test]
    fn window_matches_a_reference_model() {
        // The model remembers every accepted counter forever; the window must agree with
        // it on everything within REPLAY_WINDOW of the highest and reject the rest.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // splitmix64: reproducible, so a failure can be replayed.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut window = ReplayWindow::new();
        let mut accepted = HashSet::new();
        let mut highest = 0u64;
        for _ in 0..200_000 {
            let r = next();
            // Mostly near the top, with jumps ahead and some far-old counters.
            let counter = match r % 10 {
                0 => highest + 1 + (r >> 8) % 3000,
                1 => highest.saturating_sub((r >> 8) % 5000),
                _ => (highest + 20).saturating_sub((r >> 8) % 1100),
            };
            let expected = counter != 0
                && !accepted.contains(&counter)
                && (counter > highest || highest - counter < REPLAY_WINDOW);
            assert_eq!(
                window.accept(counter),
                expected,
                "counter {counter}, highest {highest}"
            );
            if expected {
                accepted.insert(counter);
                highest = highest.max(counter);
            }
        }
    }

    fn node(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    #[test]
    fn table_evicts_the_least_recently_heard_peer() {
        let mut table = PeerTable::new(2);
        table.record(node(1), 1, 1).unwrap();
        table.record(node(2), 1, 1).unwrap();
        // Node 1 is heard again, so node 2 becomes the oldest.
        table.record(node(1), 1, 2).unwrap();
        table.record(node(3), 1, 1).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.record(node(1), 1, 2),
            Err(Reject::Replayed),
            "node 1 kept"
        );
        assert_eq!(
            table.record(node(3), 1, 1),
            Err(Reject::Replayed),
            "node 3 kept"
        );
        // The documented cost: node 2 was forgotten, so its old counter passes again.
        assert_eq!(table.record(node(2), 1, 1), Ok(()));
        assert_eq!(table.len(), 2);
        assert_eq!(table.recency.len(), 2, "recency index tracks the table");
    }

    #[test]
    fn rejected_datagrams_change_nothing() {
        let mut table = PeerTable::new(8);
        table.record(node(1), 5, 10).unwrap();
        assert_eq!(table.record(node(1), 4, 99), Err(Reject::StaleEpoch));
        assert_eq!(table.record(node(1), 6, 0), Err(Reject::Replayed));
        // Neither moved the epoch: counter 11 of epoch 5 is still fresh.
        assert_eq!(table.record(node(1), 5, 11), Ok(()));
        assert_eq!(table.record(node(2), 1, 0), Err(Reject::Replayed));
        assert_eq!(table.len(), 1, "a rejected first datagram adds no peer");
    }

    #[test]
    fn epochs_are_bounded_by_the_clock() {
        let now = 1_767_225_600_000u64;
        let mut table = PeerTable::new(8);
        table.set_now_ms(now);
        table.record(node(1), now - 5000, 1).unwrap();
        assert_eq!(
            table.record(node(1), u64::MAX, 1),
            Err(Reject::EpochAhead),
            "a forged u64::MAX epoch"
        );
        assert_eq!(
            table.record(node(1), now + MAX_EPOCH_AHEAD_MS + 1, 1),
            Err(Reject::EpochAhead)
        );
        // Within the drift: accepted, but the real epoch is still heard.
        table.record(node(1), now + MAX_EPOCH_AHEAD_MS, 1).unwrap();
        assert_eq!(table.record(node(1), now - 5000, 2), Ok(()), "not silenced");
        assert_eq!(table.record(node(1), now - 5000, 2), Err(Reject::Replayed));
        // A restart (a new epoch from the clock) is heard at once, forged future or not.
        assert_eq!(table.record(node(1), now, 1), Ok(()));
        // An older boot stays refused.
        assert_eq!(
            table.record(node(1), now - 9000, 1),
            Err(Reject::StaleEpoch)
        );
    }

    #[test]
    fn forged_future_epochs_cannot_push_out_the_real_one() {
        let now = 1_000_000_000u64;
        let mut table = PeerTable::new(8);
        table.set_now_ms(now);
        table.record(node(1), now - 10, 1).unwrap();
        for i in 0..(10 * EPOCHS_PER_PEER as u64) {
            // Forged epochs fill the free slots, then are refused.
            let _ = table.record(node(1), now + 1 + i, 1);
        }
        assert_eq!(table.record(node(1), now - 10, 2), Ok(()), "still heard");
        // Forged past epochs (between the real one and now) cannot push it out either.
        for i in 0..(10 * EPOCHS_PER_PEER as u64) {
            let _ = table.record(node(1), now - 9 + i % 9, 1);
        }
        assert_eq!(table.record(node(1), now - 10, 3), Ok(()), "still heard");
        // A restart a while later is heard: the flood's epochs are no longer live.
        table.set_now_ms(now + EPOCH_LIVE_MS + 1);
        assert_eq!(
            table.record(node(1), now + EPOCH_LIVE_MS, 1),
            Ok(()),
            "restart heard"
        );
    }
}
