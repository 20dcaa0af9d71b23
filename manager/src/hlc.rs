//! The hybrid logical clock that orders every write in the replicated store.
//!
//! A timestamp is one `u64`: the upper 48 bits are wall-clock milliseconds since the Unix
//! epoch (enough until the year 10889), the lower 16 bits a logical counter. Comparing two
//! timestamps as integers therefore compares wall time first and the counter second, which
//! keeps last-writer-wins close to what an operator expects ("the later command wins") while
//! still being a strict order on one node even when its wall clock stalls or steps back.
//!
//! The clock never reads the system time itself: callers pass `wall_ms` in, so simulated
//! clusters control time completely.

/// Bits of a timestamp given to the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// The largest wall-clock value (in ms) a timestamp can carry.
pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// How far ahead of our own wall clock a peer's timestamp may be before we refuse to follow
/// it. Without a bound, one peer with a clock set years ahead would drag every clock in the
/// cluster with it, and nothing written afterwards with an honest clock could ever win.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60 * 60 * 1000;

/// The wall-clock part of a timestamp, in ms since the Unix epoch.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The logical-counter part of a timestamp.
pub fn logical(ts: u64) -> u16 {
    // Truncation is the point: the counter is the low 16 bits.
    ts as u16
}

/// Builds a timestamp from its two parts; a wall time beyond [`MAX_PHYSICAL_MS`] saturates.
pub fn compose(physical_ms: u64, logical: u16) -> u64 {
    (physical_ms.min(MAX_PHYSICAL_MS) << LOGICAL_BITS) | u64::from(logical)
}

/// Why a remote timestamp was not observed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// The remote clock is further ahead of ours than we are willing to follow.
    #[error(
        "remote timestamp is {ahead_ms} ms ahead of the local clock (limit {limit_ms} ms); \
         check the peer's system clock"
    )]
    TooFarAhead {
        /// How far the remote wall time is ahead of ours.
        ahead_ms: u64,
        /// The configured limit.
        limit_ms: u64,
    },
}

/// A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
#[derive(Debug, Clone)]
pub struct Hlc {
    /// The last timestamp issued or observed; every later `now` is strictly greater.
    last: u64,
    max_drift_ms: u64,
}

impl Default for Hlc {
    fn default() -> Self {
        Self::new()
    }
}

impl Hlc {
    /// A clock that has issued nothing yet, following peers at most
    /// [`DEFAULT_MAX_DRIFT_MS`] ahead.
    pub fn new() -> Hlc {
        Hlc::with_max_drift(DEFAULT_MAX_DRIFT_MS)
    }

    /// A clock that refuses remote timestamps more than `max_drift_ms` ahead of wall time.
    pub fn with_max_drift(max_drift_ms: u64) -> Hlc {
        Hlc {
            last: 0,
            max_drift_ms,
        }
    }

    /// The last timestamp issued or observed (0 for a fresh clock).
    ///
    /// An agent can persist this and feed it back through [`Hlc::observe`] after a restart,
    /// so a node whose wall clock stepped back across the reboot still writes stamps newer
    /// than its previous life's.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A fresh timestamp, strictly greater than every one issued or observed before.
    ///
    /// When the wall clock has not moved past the last timestamp (same millisecond, a stall,
    /// or a step backwards) the logical counter advances instead. If 65536 timestamps are
    /// taken within one millisecond the counter carries into the physical part: the clock
    /// runs a millisecond fast rather than ever repeating itself.
    pub fn now(&mut self, wall_ms: u64) -> u64 {
        let wall = compose(wall_ms, 0);
        self.last = if wall > self.last {
            wall
        } else {
            // Saturation would only happen at the year 10889; staying put there is the
            // least bad option and cannot be reached in practice.
            self.last.saturating_add(1)
        };
        self.last
    }

    /// Takes a timestamp seen on a message from a peer into account, so that every later
    /// [`Hlc::now`] is greater than it (causality: a write made after reading a peer's write
    /// wins over it).
    ///
    /// A timestamp more than the drift limit ahead of `wall_ms` is refused and leaves the
    /// clock unchanged; the caller decides what to do with the message that carried it.
    pub fn observe(&mut self, remote: u64, wall_ms: u64) -> Result<(), HlcError> {
        let remote_ms = physical_ms(remote);
        let ahead_ms = remote_ms.saturating_sub(wall_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(HlcError::TooFarAhead {
                ahead_ms,
                limit_ms: self.max_drift_ms,
            });
        }
        self.last = self.last.max(remote);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn parts_round_trip() {
        let ts = compose(T0, 7);
        assert_eq!(physical_ms(ts), T0);
        assert_eq!(logical(ts), 7);
        assert_eq!(physical_ms(compose(u64::MAX, 0)), MAX_PHYSICAL_MS);
    }

    #[test]
    fn follows_the_wall_clock_when_it_advances() {
        let mut hlc = Hlc::new();
        assert_eq!(hlc.now(T0), compose(T0, 0));
        assert_eq!(hlc.now(T0 + 5), compose(T0 + 5, 0));
    }

    #[test]
    fn strictly_increasing_when_the_wall_clock_stalls_or_steps_back() {
        let mut hlc = Hlc::new();
        let mut prev = hlc.now(T0);
        for wall in [T0, T0, T0 - 1000, 0, T0 - 1, T0 + 1, T0 + 1, 5] {
            let ts = hlc.now(wall);
            assert!(ts > prev, "{ts:#x} after {prev:#x} at wall {wall}");
            prev = ts;
        }
        // After the step back the physical part stays at the high-water mark.
        assert_eq!(physical_ms(prev), T0 + 1);
    }

    #[test]
    fn counter_overflow_carries_instead_of_repeating() {
        let mut hlc = Hlc::new();
        let mut prev = hlc.now(T0);
        for _ in 0..70_000 {
            let ts = hlc.now(T0);
            assert!(ts > prev);
            prev = ts;
        }
        assert_eq!(
            physical_ms(prev),
            T0 + 1,
            "70000 ticks in one ms carry once"
        );
    }

    #[test]
    fn after_observing_now_is_greater_than_remote() {
        let mut hlc = Hlc::new();
        hlc.now(T0);
        let remote = compose(T0 + 30_000, 42);
        hlc.observe(remote, T0).unwrap();
        let ts = hlc.now(T0);
        assert!(ts > remote);
        assert_eq!(ts, remote + 1);
    }

    #[test]
    fn observing_the_past_changes_nothing() {
        let mut hlc = Hlc::new();
        let mine = hlc.now(T0);
        hlc.observe(compose(T0 - 10, 3), T0).unwrap();
        assert_eq!(hlc.last(), mine);
        assert_eq!(hlc.now(T0 + 1), compose(T0 + 1, 0));
    }

    #[test]
    fn refuses_timestamps_too_far_ahead() {
        let mut hlc = Hlc::with_max_drift(1000);
        let before = hlc.now(T0);
        let err = hlc.observe(compose(T0 + 1001, 0), T0).unwrap_err();
        assert_eq!(
            err,
            HlcError::TooFarAhead {
                ahead_ms: 1001,
                limit_ms: 1000
            }
        );
        assert_eq!(
            hlc.last(),
            before,
            "a refused timestamp must not move the clock"
        );
        assert_eq!(physical_ms(hlc.now(T0 + 1)), T0 + 1);
        // Exactly at the limit is still followed.
        hlc.observe(compose(T0 + 1000, 0), T0).unwrap();
        assert!(hlc.now(T0) > compose(T0 + 1000, 0));
    }

    #[test]
    fn default_limit_is_an_hour() {
        let mut hlc = Hlc::new();
        assert!(hlc.observe(compose(T0 + 3_599_000, 0), T0).is_ok());
        assert!(hlc.observe(compose(T0 + 3_601_000, 0), T0).is_err());
    }
}
