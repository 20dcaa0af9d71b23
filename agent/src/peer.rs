//! Peer RPC between agents: one node asks another for what only that node has (its tasks'
//! log files), over TCP on the node's gossip address and port (7946/tcp beside the gossip's
//! 7946/udp, as Docker Swarm does).
//!
//! One exchange per connection: the client connects, sends one request frame, reads one
//! response frame, and both sides close. Every frame is a `u32` big-endian length (at most
//! [`MAX_FRAME`], checked before anything is allocated) followed by a frame sealed with the
//! cluster key ([`manager::secure::frame`]): XChaCha20-Poly1305 with a random nonce,
//! associated data binding the cluster ID, the direction and a random request ID. The
//! plaintext is a postcard-encoded [`PeerRequest`] or [`PeerResponse`].
//!
//! A frame that fails any check (too long, truncated, forged, the wrong direction or
//! request, or a payload that does not decode) closes the connection and is counted in
//! [`RejectedCounters`] (`skein_peer_rejected_total{reason=…}`); nothing panics. The server
//! bounds what a connection can hold, and authenticates before it holds anything scarce:
//! a new connection waits among at most [`MAX_PENDING`] unauthenticated ones, has
//! [`REQUEST_TIMEOUT`] to deliver a request of at most [`MAX_REQUEST_FRAME`] bytes (its
//! buffer grows only with the bytes that really arrive), and only an authentic request
//! takes one of the [`MAX_CONNECTIONS`] serving slots — so idle or junk connections cannot
//! lock members out of `service logs`. [`EXCHANGE_TIMEOUT`] bounds taking the answer. The client
//! gives up after [`CONNECT_TIMEOUT`] to connect and [`EXCHANGE_TIMEOUT`] for the rest, so
//! an unreachable node delays an answer by seconds, never hangs it.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use manager::{
    secure::{
        frame::MAX_FRAME_PLAINTEXT, Direction, FrameKey, FrameReject, JoinToken, RequestId,
        MAX_FRAME,
    },
    state::Stamp,
    NodeId,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::debug;

use crate::api::LogEntry;

/// How long a client waits for the TCP connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long either side waits for the rest of an exchange once connected.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Authenticated requests a server serves at once; more are closed.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Connections that have not delivered an authentic request yet; more are closed at accept.
pub(crate) const MAX_PENDING: usize = 1024;
/// How long a new connection has to deliver its request: a member sends it at once.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request frame (a request names a service and a few offsets per task).
pub(crate) const MAX_REQUEST_FRAME: usize = 64 * 1024;

/// What one agent asks another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// New log bytes of the answering node's tasks of `service` (the one created at
    /// `created`: not an earlier service of the same name), from the given byte offsets
    /// (per task ID; absent: from the start).
    Logs {
        service: String,
        created: Stamp,
        from: BTreeMap<String, u64>,
    },
    /// How many routing-mesh flows the answering node tracks (as their ingress node) to
    /// each backend of `service` created at `created`, for `service inspect`.
    MeshFlows { service: String, created: Stamp },
    /// `skein join-token --rotate` on node `from`: the next cluster key, sealed under the
    /// pairwise key of `from` and the answering node (`manager::secure::keys`).
    NextKey { from: NodeId, offer: Vec<u8> },
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    /// The node's tasks of the service, as the local `service logs` answers them.
    Logs(Vec<LogEntry>),
    /// Per backend (its overlay address), the flows tracked to it (not expired).
    MeshFlows(Vec<(Ipv4Addr, u64)>),
    /// The next key was opened and is accepted.
    KeyAccepted,
    /// The request was understood but could not be answered; one sentence.
    Error(String),
}

/// Answers peer requests; the daemon's implementation reads the task log files. Called on
/// a blocking thread, so it may do file I/O.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, request: PeerRequest) -> PeerResponse;
}

/// Why a frame or connection was refused, for `skein_peer_rejected_total{reason}`: the
/// frame layer's reasons, and `malformed` for an authentic frame whose payload does not
/// decode.
#[derive(Debug, Default)]
pub(crate) struct RejectedCounters {
    frame: [AtomicU64; FrameReject::ALL.len()],
    malformed: AtomicU64,
}

impl RejectedCounters {
    fn count(&self, reason: Rejected) {
        let counter = match reason {
            Rejected::Frame(r) => {
                let i = FrameReject::ALL
                    .iter()
                    .position(|x| *x == r)
                    .expect("every reason is in ALL");
                &self.frame[i]
            }
            Rejected::Malformed => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` for every reason, zeros included.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FrameReject::ALL
            .iter()
            .zip(self.frame.iter())
            .map(|(r, n)| (r.name(), n.load(Ordering::Relaxed)))
            .chain(std::iter::once((
                "malformed",
                self.malformed.load(Ordering::Relaxed),
            )))
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejected {
    Frame(FrameReject),
    Malformed,
}

/// Why a call failed; its `Display` is the reason the CLI shows next to the task.
#[derive(Debug)]
pub(crate) enum CallError {
    Connect(std::io::Error),
    ConnectTimeout,
    Timeout,
    Io(std::io::Error),
    Rejected(&'static str),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "unreachable ({e})"),
            CallError::ConnectTimeout => {
                write!(f, "unreachable (no connection within {CONNECT_TIMEOUT:?})")
            }
            CallError::Timeout => write!(f, "no answer within {EXCHANGE_TIMEOUT:?}"),
            CallError::Io(e) => write!(f, "the connection failed ({e})"),
            CallError::Rejected(reason) => write!(f, "its answer was refused ({reason})"),
        }
    }
}

/// The peer RPC endpoint of one agent: the cluster's frame key and the rejection counters,
/// shared by the server and the client.
pub(crate) struct Peers {
    key: FrameKey,
    rejected: RejectedCounters,
}

impl Peers {
    pub(crate) fn new(token: &JoinToken) -> Arc<Peers> {
        Arc::new(Peers {
            key: FrameKey::new(&token.key, token.cluster_id),
            rejected: RejectedCounters::default(),
        })
    }

    pub(crate) fn rejected(&self) -> &RejectedCounters {
        &self.rejected
    }

    /// Serves requests on `listener` until `shutdown` completes; then stops accepting and
    /// waits for the exchanges in progress (each bounded by [`EXCHANGE_TIMEOUT`]).
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        shutdown: impl Future,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let pending = Arc::new(Semaphore::new(MAX_PENDING));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        debug!(%error, "peer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(waiting) = pending.clone().try_acquire_owned() else {
                debug!(%peer, "too many unauthenticated peer connections; closing one");
                continue;
            };
            let this = self.clone();
            let handler = handler.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                let Some((id, request)) = this.read_request(&mut stream, peer).await else {
                    return;
                };
                drop(waiting);
                let Ok(_slot) = slots.try_acquire_owned() else {
                    debug!(%peer, "too many peer requests at once; closing one");
                    return;
                };
                this.answer(stream, peer, id, request, handler).await;
            });
        }
        drop(listener);
        // Every slot back: no exchange is in progress.
        let _ = pending.acquire_many(MAX_PENDING as u32).await;
        let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
    }

    /// One exchange on an accepted connection; returns when it is over or refused.
    #[cfg(test)]
    pub(crate) async fn serve_one<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        handler: Arc<dyn Handler>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some((id, request)) = self.read_request(&mut stream, peer).await {
            self.answer(stream, peer, id, request, handler).await;
        }
    }

    /// Reads and authenticates a connection's request, within [`REQUEST_TIMEOUT`];
    /// `None` (counted when the frame was refused) closes the connection.
    async fn read_request<S>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Option<(RequestId, PeerRequest)>
    where
        S: AsyncRead + Unpin,
    {
        let request =
            tokio::time::timeout(REQUEST_TIMEOUT, read_frame(stream, MAX_REQUEST_FRAME)).await;
        let frame = match request {
            Err(_) => {
                debug!(%peer, "peer request not received in time");
                return None;
            }
            Ok(Err(ReadError::Io(error))) => {
                debug!(%peer, %error, "peer connection failed");
                return None;
            }
            Ok(Err(ReadError::Rejected(reason))) => {
                self.reject(peer, reason);
                return None;
            }
            Ok(Ok(frame)) => frame,
        };
        let (id, plaintext) = match self.key.open_request(&frame) {
            Ok(opened) => opened,
            Err(reason) => {
                self.reject(peer, Rejected::Frame(reason));
                return None;
            }
        };
        match postcard::from_bytes(&plaintext) {
            Ok(request) => Some((id, request)),
            Err(_) => {
                self.reject(peer, Rejected::Malformed);
                None
            }
        }
    }

    /// Answers an authentic request.
    async fn answer<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        id: RequestId,
        request: PeerRequest,
        handler: Arc<dyn Handler>,
    ) where
        S: AsyncWrite + Unpin,
    {
        let response = tokio::task::spawn_blocking(move || handler.handle(request))
            .await
            .unwrap_or_else(|_| PeerResponse::Error("the agent failed to answer".to_owned()));
        let frame = match self.seal(Direction::Response, id, &response) {
            Some(frame) => frame,
            None => self
                .seal(
                    Direction::Response,
                    id,
                    &PeerResponse::Error("the answer is too large".to_owned()),
                )
                .expect("a short error fits in a frame"),
        };
        let sent = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            write_frame(&mut stream, &frame).await?;
            stream.shutdown().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            debug!(%peer, "peer answer not delivered");
        }
    }

    /// Asks the node at `addr` (its gossip address; the same port over TCP).
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        request: &PeerRequest,
    ) -> Result<PeerResponse, CallError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| CallError::ConnectTimeout)?
            .map_err(CallError::Connect)?;
        let _ = stream.set_nodelay(true);
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(stream, request))
            .await
            .map_err(|_| CallError::Timeout)?
    }

    /// Sends `request` on `stream` and reads its answer.
    pub(crate) async fn exchange<S>(
        &self,
        mut stream: S,
        request: &PeerRequest,
    ) -> Result<PeerResponse, CallError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = RequestId::random();
        let frame = self
            .seal(Direction::Request, id, request)
            .ok_or(CallError::Rejected("the request is too large"))?;
        write_frame(&mut stream, &frame)
            .await
            .map_err(CallError::Io)?;
        let frame = match read_frame(&mut stream, MAX_FRAME).await {
            Ok(frame) => frame,
            Err(ReadError::Io(error)) => return Err(CallError::Io(error)),
            Err(ReadError::Rejected(reason)) => {
                self.rejected.count(reason);
                return Err(CallError::Rejected(reason_name(reason)));
            }
        };
        let plaintext = self.key.open_response(id, &frame).map_err(|reason| {
            self.rejected.count(Rejected::Frame(reason));
            CallError::Rejected(reason.name())
        })?;
        postcard::from_bytes(&plaintext).map_err(|_| {
            self.rejected.count(Rejected::Malformed);
            CallError::Rejected("malformed")
        })
    }

    fn seal<T: Serialize>(
        &self,
        direction: Direction,
        id: RequestId,
        value: &T,
    ) -> Option<Vec<u8>> {
        let plaintext = postcard::to_allocvec(value).ok()?;
        if plaintext.len() > MAX_FRAME_PLAINTEXT {
            return None;
        }
        self.key.seal(direction, id, &plaintext).ok()
    }

    fn reject(&self, peer: SocketAddr, reason: Rejected) {
        self.rejected.count(reason);
        // Debug level: junk from the network must not flood the log; the counter is what
        // an operator watches.
        debug!(%peer, reason = reason_name(reason), "refused a peer request");
    }
}

fn reason_name(reason: Rejected) -> &'static str {
    match reason {
        Rejected::Frame(r) => r.name(),
        Rejected::Malformed => "malformed",
    }
}

enum ReadError {
    Io(std::io::Error),
    Rejected(Rejected),
}

/// Reads one length-prefixed frame of at most `max` bytes: the length is checked before
/// the frame is read, the buffer grows only with the bytes that arrive (a claimed length
/// allocates nothing), and a stream that ends inside a frame is a truncated frame.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(ReadError::Io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(ReadError::Rejected(Rejected::Frame(FrameReject::Oversized)));
    }
    let mut frame = Vec::with_capacity(len.min(4096));
    match (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await
    {
        Ok(n) if n == len => Ok(frame),
        Ok(_) => Err(ReadError::Rejected(Rejected::Frame(FrameReject::Truncated))),
        Err(e) => Err(ReadError::Io(e)),
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).expect("frames are at most MAX_FRAME");
    let mut bytes = Vec::with_capacity(4 + frame.len());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(frame);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use manager::{secure::ClusterKey, NodeId};
    use tokio::io::duplex;

    fn token() -> JoinToken {
        JoinToken {
            cluster_id: [3; 16],
            key: ClusterKey::generate(),
        }
    }

    struct Echo;

    impl Handler for Echo {
        fn handle(&self, request: PeerRequest) -> PeerResponse {
            let PeerRequest::Logs { service, from, .. } = request else {
                return PeerResponse::MeshFlows(vec![(Ipv4Addr::new(10, 0, 0, 1), 2)]);
            };
            PeerResponse::Logs(
                from.into_iter()
                    .map(|(id, start)| LogEntry {
                        task: service.clone(),
                        text: format!("from {start}\n"),
                        next: start + 7,
                        id,
                    })
                    .collect(),
            )
        }
    }

    /// Answers far more than a frame holds.
    struct Flood;

    impl Handler for Flood {
        fn handle(&self, _: PeerRequest) -> PeerResponse {
            PeerResponse::Logs(vec![LogEntry {
                task: "web.1".into(),
                id: "a".into(),
                text: "x".repeat(MAX_FRAME + 1),
                next: 0,
            }])
        }
    }

    fn request() -> PeerRequest {
        PeerRequest::Logs {
            service: "web".into(),
            created: Stamp {
                hlc: 42,
                writer: NodeId([9; 16]),
            },
            from: [("t1".to_owned(), 5), ("t2".to_owned(), 0)].into(),
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:7946".parse().unwrap()
    }

    /// A server side on one end of an in-memory pipe; returns the other end.
    fn server(peers: &Arc<Peers>, handler: Arc<dyn Handler>) -> tokio::io::DuplexStream {
        let (client, server) = duplex(4 * MAX_FRAME);
        let peers = peers.clone();
        tokio::spawn(async move { peers.serve_one(server, addr(), handler).await });
        client
    }

    #[tokio::test]
    async fn request_and_answer_round_trip() {
        let token = token();
        let (server_side, client_side) = (Peers::new(&token), Peers::new(&token));
        let stream = server(&server_side, Arc::new(Echo));
        let answer = client_side.exchange(stream, &request()).await.unwrap();
        let PeerResponse::Logs(entries) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].text, "from 5\n");
        assert_eq!(entries[0].next, 12);
        assert_eq!(entries[1].id, "t2");
        assert_eq!(server_side.rejected().total(), 0);
        assert_eq!(client_side.rejected().total(), 0);
    }

    #[tokio::test]
    async fn mesh_flow_counts_round_trip() {
        let token = token();
        let (server_side, client_side) = (Peers::new(&token), Peers::new(&token));
        let stream = server(&server_side, Arc::new(Echo));
        let request = PeerRequest::MeshFlows {
            service: "web".into(),
            created: Stamp {
                hlc: 1,
                writer: manager::NodeId([1; 16]),
            },
        };
        let answer = client_side.exchange(stream, &request).await.unwrap();
        assert_eq!(
            answer,
            PeerResponse::MeshFlows(vec![(Ipv4Addr::new(10, 0, 0, 1), 2)])
        );
    }

    #[tokio::test]
    async fn a_too_large_answer_becomes_an_error() {
        let token = token();
        let peers = Peers::new(&token);
        let stream = server(&peers, Arc::new(Flood));
        let answer = peers.exchange(stream, &request()).await.unwrap();
        assert_eq!(
            answer,
            PeerResponse::Error("the answer is too large".into())
        );
    }

    /// Sends raw bytes to a server and returns what it answered (nothing: closed).
    async fn raw(peers: &Arc<Peers>, bytes: &[u8]) -> Vec<u8> {
        let mut stream = server(peers, Arc::new(Echo));
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    }

    fn prefixed(frame: &[u8]) -> Vec<u8> {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        bytes
    }

    fn reason(peers: &Peers, name: &str) -> u64 {
        peers
            .rejected()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    #[tokio::test]
    async fn bad_frames_close_the_connection_and_are_counted() {
        let token = token();
        let peers = Peers::new(&token);
        let key = FrameKey::new(&token.key, token.cluster_id);
        let id = RequestId::random();
        let good = key
            .seal(
                Direction::Request,
                id,
                &postcard::to_allocvec(&request()).unwrap(),
            )
            .unwrap();

        // Wrong key.
        let stranger = FrameKey::new(&ClusterKey::generate(), token.cluster_id);
        let forged = stranger
            .seal(
                Direction::Request,
                id,
                &postcard::to_allocvec(&request()).unwrap(),
            )
            .unwrap();
        assert!(raw(&peers, &prefixed(&forged)).await.is_empty());
        assert_eq!(reason(&peers, "forged"), 1);

        // Tampered.
        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(raw(&peers, &prefixed(&tampered)).await.is_empty());
        assert_eq!(reason(&peers, "forged"), 2);

        // Truncated: the stream ends inside the frame; and a frame too short to be sealed.
        let mut cut = prefixed(&good);
        cut.truncate(cut.len() - 10);
        assert!(raw(&peers, &cut).await.is_empty());
        assert!(raw(&peers, &prefixed(&good[..20])).await.is_empty());
        assert_eq!(reason(&peers, "truncated"), 2);

        // Oversized: refused on the length alone, nothing more read.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(raw(&peers, &huge).await.is_empty());
        assert_eq!(reason(&peers, "oversized"), 1);

        // A response sent as a request.
        let response = key
            .seal(
                Direction::Response,
                id,
                &postcard::to_allocvec(&PeerResponse::Logs(vec![])).unwrap(),
            )
            .unwrap();
        assert!(raw(&peers, &prefixed(&response)).await.is_empty());
        assert_eq!(reason(&peers, "wrong_direction"), 1);

        // Authentic but not a request.
        let junk = key.seal(Direction::Request, id, &[0xff; 9]).unwrap();
        assert!(raw(&peers, &prefixed(&junk)).await.is_empty());
        assert_eq!(reason(&peers, "malformed"), 1);

        // Random bytes.
        assert!(raw(&peers, b"GET / HTTP/1.1\r\n\r\n").await.is_empty());
        assert_eq!(reason(&peers, "oversized"), 2);
        assert_eq!(peers.rejected().total(), 8);

        // And a good request still gets its answer.
        let answer = raw(&peers, &prefixed(&good)).await;
        let opened = key.open_response(id, &answer[4..]).unwrap();
        let response: PeerResponse = postcard::from_bytes(&opened).unwrap();
        assert!(matches!(response, PeerResponse::Logs(e) if e.len() == 2));
        assert_eq!(peers.rejected().total(), 8);
    }

    #[tokio::test]
    async fn the_client_refuses_answers_to_other_requests_or_with_another_key() {
        let token = token();
        let peers = Peers::new(&token);
        let key = FrameKey::new(&token.key, token.cluster_id);
        let answer = postcard::to_allocvec(&PeerResponse::Logs(vec![])).unwrap();
        let stale = key
            .seal(Direction::Response, RequestId::random(), &answer)
            .unwrap();
        let stranger = FrameKey::new(&ClusterKey::generate(), token.cluster_id)
            .seal(Direction::Response, RequestId::random(), &answer)
            .unwrap();
        for (frame, expected) in [(stale, "wrong_request"), (stranger, "forged")] {
            let (client, mut fake_server) = duplex(1 << 16);
            tokio::spawn(async move {
                // Read the request, answer with the canned frame.
                let _ = read_frame(&mut fake_server, MAX_REQUEST_FRAME).await;
                let _ = write_frame(&mut fake_server, &frame).await;
            });
            match peers.exchange(client, &request()).await {
                Err(CallError::Rejected(reason)) => assert_eq!(reason, expected),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(peers.rejected().total(), 2);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Real time (5 s): a paused clock would race the real connect.
        let token = token();
        let peers = Peers::new(&token);
        // Accepts but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(stream);
        });
        let error = peers.call(addr, &request()).await.unwrap_err();
        assert!(matches!(error, CallError::Timeout), "{error:?}");
        assert!(error.to_string().contains("no answer within"), "{error}");
        held.abort();
    }

    #[tokio::test]
    async fn calls_over_tcp_and_a_closed_port_is_unreachable() {
        let token = token();
        let peers = Peers::new(&token);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(peers.clone().serve(listener, Arc::new(Echo), stopped));
        let answer = peers.call(addr, &request()).await.unwrap();
        assert!(matches!(answer, PeerResponse::Logs(e) if e.len() == 2));
        // Shutdown drains: the server returns by itself and closes its port.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the peer server stops on shutdown")
            .unwrap();
        let error = peers.call(addr, &request()).await.unwrap_err();
        assert!(error.to_string().starts_with("unreachable"), "{error}");
    }
}
