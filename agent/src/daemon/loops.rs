//! The agent's background loops, and the one shutdown signal they all obey.
//!
//! [`Background`] owns every long-running task of the daemon. Shutdown is a drain, not an
//! abort: [`Background::drain`] raises the [`Shutdown`] signal, waits (bounded) for each
//! loop to return at a safe point, and logs — then aborts — only those that did not.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use manager::Manager;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, warn};

use crate::state_dir::StateDir;

/// The daemon's shutdown signal, as seen by one loop. Raised once, never lowered; a
/// dropped sender counts as raised.
#[derive(Clone, Debug)]
pub(super) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Completes once shutdown has been requested.
    pub(super) async fn requested(&mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }

    /// Runs `work` unless shutdown is requested first: `None` then, and `work` is dropped.
    pub(super) async fn unless_requested<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.requested() => None,
            value = work => Some(value),
        }
    }

    /// Waits `period` (a rate limit), then for the next view: `false` once shutdown is
    /// requested or the views end.
    async fn pause_then_next<T>(
        &mut self,
        period: Duration,
        views: &mut watch::Receiver<T>,
    ) -> bool {
        self.unless_requested(tokio::time::sleep(period))
            .await
            .is_some()
            && matches!(self.unless_requested(views.changed()).await, Some(Ok(())))
    }
}

/// The daemon's named background tasks and their shutdown signal.
pub(super) struct Background {
    signal: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    pub(super) fn new() -> Background {
        Background {
            signal: watch::Sender::new(false),
            tasks: Vec::new(),
        }
    }

    /// The shutdown signal, for a loop to watch.
    pub(super) fn shutdown(&self) -> Shutdown {
        Shutdown(self.signal.subscribe())
    }

    /// Spawns a loop that watches [`Background::shutdown`] itself and returns when it is
    /// raised.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Spawns a loop that knows no shutdown signal (the reconciler, the supervisor,
    /// `/metrics`): it runs until the signal is raised, then is dropped at its next
    /// await point.
    pub(super) fn spawn_until_shutdown(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let mut shutdown = self.shutdown();
        self.spawn(name, async move {
            shutdown.unless_requested(task).await;
        });
    }

    /// Raises the shutdown signal and waits up to `grace` in all for every task to
    /// return. Tasks still running then are logged and aborted; their names are returned.
    pub(super) async fn drain(self, grace: Duration) -> Vec<&'static str> {
        self.signal.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        let mut late = Vec::new();
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => debug!(task = name, "background task stopped"),
                Ok(Err(error)) => warn!(task = name, %error, "background task failed"),
                Err(_) => {
                    warn!(
                        task = name,
                        ?grace,
                        "background task did not stop in time; aborted"
                    );
                    task.abort();
                    late.push(name);
                }
            }
        }
        late
    }
}

/// Keeps the live peers in the state directory, so a restart can rejoin without `--join`.
pub(super) async fn remember_peers(manager: Manager, state: Arc<StateDir>, mut shutdown: Shutdown) {
    let mut views = manager.subscribe();
    let mut saved: Vec<SocketAddr> = Vec::new();
    loop {
        let mut peers: Vec<SocketAddr> = views
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.up && !n.is_self)
            .filter_map(|n| n.addr)
            .collect();
        peers.sort();
        if peers != saved && !peers.is_empty() {
            if let Err(error) = state.save_peers(&peers) {
                warn!(error = %format!("{error:#}"), "could not save the peers list");
            }
            saved = peers;
        }
        if !shutdown
            .pause_then_next(Duration::from_secs(5), &mut views)
            .await
        {
            return;
        }
    }
}

/// Saves the store to the state directory when it changes (at most once a second). The
/// final save at shutdown is the daemon's, after every loop has stopped.
pub(super) async fn save_store(manager: Manager, state: Arc<StateDir>, mut shutdown: Shutdown) {
    let mut views = manager.subscribe();
    let mut saved_version = None;
    loop {
        let version = views.borrow_and_update().store_version;
        if saved_version != Some(version) {
            match shutdown.unless_requested(manager.records()).await {
                None | Some(Err(_)) => return,
                Some(Ok(records)) => match state.save_records(&records) {
                    Ok(()) => saved_version = Some(version),
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "could not save the cluster state")
                    }
                },
            }
        }
        if !shutdown
            .pause_then_next(Duration::from_secs(1), &mut views)
            .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_loops_that_stop_and_aborts_those_that_do_not() {
        let mut background = Background::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut shutdown = background.shutdown();
        background.spawn("polite", async move {
            shutdown.requested().await;
            // Work after the signal (a last flush) is waited for.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = done_tx.send(());
        });
        background.spawn("stuck", std::future::pending());
        background.spawn_until_shutdown("unaware", std::future::pending());

        let started = tokio::time::Instant::now();
        let late = background.drain(Duration::from_secs(2)).await;
        assert_eq!(late, ["stuck"]);
        assert!(done_rx.await.is_ok(), "the polite loop finished its work");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "bounded by the grace: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_signal_counts_as_raised() {
        let background = Background::new();
        let mut shutdown = background.shutdown();
        drop(background);
        shutdown.requested().await;
        assert_eq!(shutdown.unless_requested(async { 1 }).await, None);
    }
}
