//! Errors of the dataplane's map synchronisation, counted per map and reason, with the
//! last message per map. The reconciler records them; `/metrics` serves the counts as
//! `skein_dataplane_sync_errors_total{map,reason}` and `skein debug maps` prints the last
//! message of every map that did not converge on its latest pass.

use std::{collections::BTreeMap, sync::Mutex};

/// Why a map did not converge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncErrorReason {
    /// The map is at its capacity: an entry could not be added.
    Full,
    /// Writing (adding or updating) an entry failed for another reason.
    Write,
    /// Removing an entry failed.
    Remove,
    /// The map's current entries could not be read.
    Read,
}

impl SyncErrorReason {
    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Write => "write",
            Self::Remove => "remove",
            Self::Read => "read",
        }
    }
}

#[derive(Default)]
struct Inner {
    totals: BTreeMap<(&'static str, SyncErrorReason), u64>,
    /// Per map, the last error of its latest pass; absent once a pass converged.
    last: BTreeMap<&'static str, String>,
}

/// Shared by the reconciler (writer) and the metrics and debug output (readers).
#[derive(Default)]
pub struct MapSyncErrors {
    inner: Mutex<Inner>,
}

impl MapSyncErrors {
    /// Counts one error of `map` and keeps `message` as its latest.
    pub fn record(&self, map: &'static str, reason: SyncErrorReason, message: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.totals.entry((map, reason)).or_default() += 1;
        inner.last.insert(map, message);
    }

    /// `map` converged on this pass: its latest error is cleared (the counts stay).
    pub fn converged(&self, map: &'static str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last.remove(map);
    }

    /// Every (map, reason, count) ever recorded, in a stable order.
    pub fn totals(&self) -> Vec<(&'static str, SyncErrorReason, u64)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.totals.iter().map(|(&(m, r), &n)| (m, r, n)).collect()
    }

    /// The maps that did not converge on their latest pass, with the last error.
    pub fn unconverged(&self) -> Vec<(&'static str, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last.iter().map(|(&m, e)| (m, e.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_and_convergence_clears_only_the_message() {
        let errors = MapSyncErrors::default();
        errors.record("OVERLAY_ENDPOINTS", SyncErrorReason::Full, "full".into());
        errors.record(
            "OVERLAY_ENDPOINTS",
            SyncErrorReason::Full,
            "still full".into(),
        );
        errors.record("OVERLAY_PORTS", SyncErrorReason::Remove, "gone".into());
        assert_eq!(
            errors.totals(),
            vec![
                ("OVERLAY_ENDPOINTS", SyncErrorReason::Full, 2),
                ("OVERLAY_PORTS", SyncErrorReason::Remove, 1)
            ]
        );
        errors.converged("OVERLAY_PORTS");
        assert_eq!(
            errors.unconverged(),
            vec![("OVERLAY_ENDPOINTS", "still full".to_string())]
        );
        assert_eq!(errors.totals().len(), 2);
    }
}
