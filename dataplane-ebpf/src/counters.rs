//! Per-verdict packet and byte counters.
//!
//! Each program owns a per-CPU array of [`Counter`]s indexed by [`Verdict`]; per-CPU so
//! the hot path needs no atomics, summed by the agent when it serves `/metrics`.

/// One slot of a counters map: packets and bytes (whole frame, all fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, two `u64`s, no padding (asserted above); every bit pattern is valid.
unsafe impl aya::Pod for Counter {}

impl Counter {
    /// Counts one packet of `bytes` bytes; wraps rather than traps, as counters do.
    #[inline(always)]
    pub fn record(&mut self, bytes: u64) {
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(bytes);
    }

    /// Sums the per-CPU copies of one slot.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counter>) -> Counter {
        per_cpu
            .into_iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            })
    }
}

/// What a program did with a packet: the index of its counter slot.
///
/// A `u32` newtype rather than an `enum`, because it indexes a map and crosses the
/// kernel/user boundary as a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict(pub u32);

impl Verdict {
    /// Handed on unchanged (to the host stack, or to the next tc program).
    pub const PASS: Verdict = Verdict(0);
    /// Dropped on purpose.
    pub const DROP: Verdict = Verdict(1);
    /// Redirected to another interface.
    pub const REDIRECT: Verdict = Verdict(2);
    /// Sent back out of the interface it arrived on.
    pub const TX: Verdict = Verdict(3);
    /// The program could not process the packet (a bug or a helper failure); dropped.
    pub const ERROR: Verdict = Verdict(4);

    /// Every verdict, in slot order.
    pub const ALL: [Verdict; 5] = [
        Verdict::PASS,
        Verdict::DROP,
        Verdict::REDIRECT,
        Verdict::TX,
        Verdict::ERROR,
    ];

    /// The `verdict` label of this slot in `/metrics`.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "pass",
            1 => "drop",
            2 => "redirect",
            3 => "tx",
            4 => "error",
            _ => "unknown",
        }
    }

    /// The map index of this verdict's slot.
    pub const fn slot(self) -> u32 {
        self.0
    }
}

/// Number of slots in every counters map. Larger than [`Verdict::ALL`] so later
/// verdicts (drop reasons, encap/decap) can be added without resizing pinned maps.
pub const COUNTER_SLOTS: u32 = 32;

const _: () = assert!(Verdict::ALL.len() as u32 <= COUNTER_SLOTS);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn verdict_slots_are_dense_and_named_uniquely() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.slot(), i as u32);
            assert_ne!(v.name(), "unknown");
            for w in &Verdict::ALL[..i] {
                assert_ne!(v.name(), w.name());
            }
        }
        assert_eq!(Verdict(COUNTER_SLOTS).name(), "unknown");
    }

    #[test]
    fn counter_layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::align_of::<Counter>(), 8);
        assert_eq!(core::mem::offset_of!(Counter, packets), 0);
        assert_eq!(core::mem::offset_of!(Counter, bytes), 8);
    }

    #[test]
    fn record_and_sum() {
        let mut a = Counter::default();
        a.record(100);
        a.record(60);
        let b = Counter {
            packets: u64::MAX,
            bytes: 1,
        };
        assert_eq!(
            a,
            Counter {
                packets: 2,
                bytes: 160
            }
        );
        assert_eq!(
            Counter::sum([&a, &b]),
            Counter {
                packets: 1,
                bytes: 161
            }
        );
    }
}
