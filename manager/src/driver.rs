//! Runs an [`Engine`] on a real UDP socket under tokio, and is the [`Manager`] handle the
//! agent uses: write entries, query, subscribe to consistent snapshots of the cluster.
//!
//! One task owns the engine; everything else talks to it through a command channel, so
//! the engine needs no locking discipline beyond its own, and snapshots are published
//! through a `watch` channel (readers always see a whole, consistent view).

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{debug, warn};

use crate::{
    gossip::{max_datagram, Engine, EngineConfig, GossipCounters, Output, Timer},
    secure::RejectCounters,
    socket_filter,
    state::{Kind, Scope, Stamp},
    view::ClusterView,
    NodeId,
};

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Builds a record's payload from its stamp (see [`Engine::write`]).
pub type ValueFn = Box<dyn FnOnce(Stamp) -> Option<Vec<u8>> + Send>;

enum Command {
    Write {
        scope: Scope,
        kind: Kind,
        name: String,
        value: ValueFn,
        reply: oneshot::Sender<Stamp>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    Counters {
        reply: oneshot::Sender<(GossipCounters, RejectCounters)>,
    },
    HeardFromCluster {
        reply: oneshot::Sender<bool>,
    },
    Records {
        reply: oneshot::Sender<Vec<crate::state::Record>>,
    },
}

/// Why the manager could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("the gossip task has stopped")]
    Stopped,
}

/// A handle on the running manager. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    node: NodeId,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<ClusterView>>,
}

impl Manager {
    /// Starts the engine on `socket` (already bound: callers choose the port, tests bind
    /// port 0) and announces to `seeds`.
    pub fn start(config: EngineConfig, socket: UdpSocket, seeds: Vec<SocketAddr>) -> Manager {
        let node = config.node;
        // Junk is dropped in the kernel where it can be told apart without the key; the
        // engine checks the same again, so a socket without the filter is only slower.
        if let Err(error) = socket_filter::attach(&socket, max_datagram(config.underlay_mtu)) {
            warn!(%error, "could not attach the gossip socket filter; junk is dropped later");
        }
        let (engine, initial) = Engine::new(config, wall_ms());
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::build(&engine)));
        let (commands_tx, commands_rx) = mpsc::channel(64);
        tokio::spawn(run(engine, initial, socket, seeds, commands_rx, view_tx));
        Manager {
            node,
            commands: commands_tx,
            view: view_rx,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The latest consistent snapshot.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Writes (or with `None`, deletes) a record in this node's name.
    pub async fn write(
        &self,
        scope: Scope,
        kind: Kind,
        name: String,
        value: Option<Vec<u8>>,
    ) -> Result<Stamp, ManagerError> {
        self.write_with(scope, kind, name, Box::new(move |_| value))
            .await
    }

    /// Writes a record whose payload depends on the write's stamp.
    pub async fn write_with(
        &self,
        scope: Scope,
        kind: Kind,
        name: String,
        value: ValueFn,
    ) -> Result<Stamp, ManagerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Write {
                scope,
                kind,
                name,
                value,
                reply,
            })
            .await
            .map_err(|_| ManagerError::Stopped)?;
        rx.await.map_err(|_| ManagerError::Stopped)
    }

    /// Announces departure to the cluster.
    pub async fn leave(&self) -> Result<(), ManagerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Leave { reply })
            .await
            .map_err(|_| ManagerError::Stopped)?;
        rx.await.map_err(|_| ManagerError::Stopped)
    }

    pub async fn counters(&self) -> Result<(GossipCounters, RejectCounters), ManagerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Counters { reply })
            .await
            .map_err(|_| ManagerError::Stopped)?;
        rx.await.map_err(|_| ManagerError::Stopped)
    }

    /// Every record of the store, tombstones included, to save across restarts (see
    /// [`crate::state::encode_snapshot`]).
    pub async fn records(&self) -> Result<Vec<crate::state::Record>, ManagerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Records { reply })
            .await
            .map_err(|_| ManagerError::Stopped)?;
        rx.await.map_err(|_| ManagerError::Stopped)
    }

    /// Whether an authenticated datagram from another node has arrived.
    pub async fn heard_from_cluster(&self) -> Result<bool, ManagerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::HeardFromCluster { reply })
            .await
            .map_err(|_| ManagerError::Stopped)?;
        rx.await.map_err(|_| ManagerError::Stopped)
    }
}

/// A scheduled engine timer.
struct Due {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// How often, at most, a new snapshot is published while changes stream in.
const VIEW_DEBOUNCE: Duration = Duration::from_millis(20);

/// Datagrams handled per wake-up at most, so timers and commands still get their turn
/// while a flood lasts.
const RECEIVE_BATCH: usize = 64;

async fn run(
    mut engine: Engine,
    initial: Vec<Output>,
    socket: UdpSocket,
    seeds: Vec<SocketAddr>,
    mut commands: mpsc::Receiver<Command>,
    view: watch::Sender<Arc<ClusterView>>,
) {
    let mut timers: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    let mut dirty = false;
    let mut last_publish = Instant::now();
    // The store and membership versions the published view was built from.
    let mut built_from = engine.change_marker();

    let mut handle =
        |outputs: Vec<Output>, timers: &mut BinaryHeap<Reverse<Due>>, socket: &UdpSocket| {
            for output in outputs {
                match output {
                    Output::Send { to, datagram } => {
                        // Non-blocking: a full socket buffer drops the datagram, as the
                        // network could; SWIM and anti-entropy recover.
                        if let Err(error) = socket.try_send_to(&datagram, to) {
                            debug!(%to, %error, "gossip send failed");
                        }
                    }
                    Output::Schedule { after, timer } => {
                        seq += 1;
                        timers.push(Reverse(Due {
                            at: Instant::now() + after,
                            seq,
                            timer,
                        }));
                    }
                }
            }
        };

    handle(initial, &mut timers, &socket);
    if !seeds.is_empty() {
        let outputs = engine.join(&seeds, wall_ms());
        handle(outputs, &mut timers, &socket);
    }

    loop {
        let next_timer = timers.peek().map(|Reverse(d)| d.at);
        let publish_at = dirty.then(|| last_publish + VIEW_DEBOUNCE);
        let wake = [next_timer, publish_at].into_iter().flatten().min();
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(first) => {
                    // Whatever else is already queued is read here too, up to a bound, so
                    // a flood (junk included) pays the loop's wake-up and timer set-up
                    // once per batch rather than once per datagram.
                    let mut next = Some(first);
                    let mut read = 0;
                    while let Some((len, from)) = next {
                        let outputs = engine.handle_datagram(from, &buf[..len], wall_ms());
                        handle(outputs, &mut timers, &socket);
                        read += 1;
                        next = if read < RECEIVE_BATCH {
                            // WouldBlock ends the batch; other errors are seen next time.
                            socket.try_recv_from(&mut buf).ok()
                        } else {
                            None
                        };
                    }
                    // Only a change of the store or the membership is worth a new view:
                    // junk (dropped before or at decryption) costs no rebuild.
                    dirty |= engine.change_marker() != built_from;
                }
                Err(error) => {
                    // e.g. ICMP port unreachable reported on a later receive: not fatal.
                    debug!(%error, "gossip receive failed");
                }
            },
            command = commands.recv() => match command {
                Some(Command::Write { scope, kind, name, value, reply }) => {
                    let (stamp, outputs) = engine.write(scope, kind, name, value, wall_ms());
                    handle(outputs, &mut timers, &socket);
                    // Writers read their own writes: publish before answering.
                    let _ = view.send(Arc::new(ClusterView::build(&engine)));
                    built_from = engine.change_marker();
                    last_publish = Instant::now();
                    dirty = false;
                    let _ = reply.send(stamp);
                }
                Some(Command::Leave { reply }) => {
                    let outputs = engine.leave(wall_ms());
                    handle(outputs, &mut timers, &socket);
                    let _ = reply.send(());
                }
                Some(Command::Counters { reply }) => {
                    let mut counters = engine.counters();
                    if let Ok(drops) = socket_filter::kernel_drops(&socket) {
                        counters.kernel_dropped = u64::from(drops);
                    }
                    let _ = reply.send((counters, *engine.reject_counters()));
                }
                Some(Command::HeardFromCluster { reply }) => {
                    let _ = reply.send(engine.heard_from_cluster());
                }
                Some(Command::Records { reply }) => {
                    let _ = reply.send(engine.records());
                }
                None => return,
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                while let Some(Reverse(due)) = timers.peek() {
                    if due.at > now {
                        break;
                    }
                    let Reverse(due) = timers.pop().expect("peeked");
                    let outputs = engine.handle_timer(due.timer, wall_ms());
                    handle(outputs, &mut timers, &socket);
                    dirty |= engine.change_marker() != built_from;
                }
            }
        }
        if dirty && last_publish.elapsed() >= VIEW_DEBOUNCE {
            let snapshot = ClusterView::build(&engine);
            built_from = engine.change_marker();
            if view.borrow().differs_from(&snapshot) && view.send(Arc::new(snapshot)).is_err() {
                warn!("nobody watches the cluster view any more");
            }
            last_publish = Instant::now();
            dirty = false;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
