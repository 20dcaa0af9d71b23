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

#[derive(Debug)]
struct Peer {
    epoch: u64,
    window: ReplayWindow,
    /// Position in [`PeerTable::recency`].
    last_seen: u64,
}

/// Replay state for up to `max_peers` peers, forgetting the least recently heard one
/// when full.
///
/// Forgetting is the price of bounded memory: once a peer is evicted, datagrams it sent
/// earlier in its current epoch could be accepted once more, and so could an older
/// epoch. Only authenticated traffic creates entries, so only a cluster member can cause
/// eviction, and only by sending from more distinct node IDs than `max_peers` (about
/// 200 bytes each). The replicated state is ordered by hybrid logical clocks and
/// last-writer-wins, so a stale but authentic message cannot roll it back; replay
/// protection keeps the network from being used to amplify or loop such messages.
#[derive(Debug)]
pub(super) struct PeerTable {
    peers: HashMap<NodeId, Peer>,
    /// Peers by the tick they were last accepted at, oldest first.
    recency: BTreeMap<u64, NodeId>,
    tick: u64,
    max_peers: usize,
}

impl PeerTable {
    pub(super) fn new(max_peers: usize) -> PeerTable {
        PeerTable {
            peers: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            // A table that held nothing would accept every replay.
            max_peers: max_peers.max(1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Records an authenticated datagram from `node`, or says why it must be dropped.
    /// A rejected datagram changes nothing.
    pub(super) fn record(&mut self, node: NodeId, epoch: u64, counter: u64) -> Result<(), Reject> {
        self.tick += 1;
        let tick = self.tick;
        match self.peers.get_mut(&node) {
            Some(peer) => {
                if epoch < peer.epoch {
                    return Err(Reject::StaleEpoch);
                }
                if epoch > peer.epoch {
                    // The peer restarted: its counters begin again in the new epoch.
                    let mut window = ReplayWindow::new();
                    if !window.accept(counter) {
                        return Err(Reject::Replayed);
                    }
                    peer.epoch = epoch;
                    peer.window = window;
                } else if !peer.window.accept(counter) {
                    return Err(Reject::Replayed);
                }
                self.recency.remove(&peer.last_seen);
                peer.last_seen = tick;
                self.recency.insert(tick, node);
            }
            None => {
                let mut window = ReplayWindow::new();
                if !window.accept(counter) {
                    return Err(Reject::Replayed);
                }
                if self.peers.len() >= self.max_peers {
                    if let Some((_, oldest)) = self.recency.pop_first() {
                        self.peers.remove(&oldest);
                    }
                }
                self.peers.insert(
                    node,
                    Peer {
                        epoch,
                        window,
                        last_seen: tick,
                    },
                );
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
}
