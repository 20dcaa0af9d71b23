//! The agent's side of the local API: accepts connections on the Unix socket, reads one
//! JSON [`Request`] per line, answers each with one JSON [`Response`] line.
//!
//! Whatever a client sends, the server answers or closes that one connection; it never
//! stops serving the others and never panics. A line longer than [`MAX_REQUEST_BYTES`]
//! gets an error and a close (the rest of it is not read); a connection that sends no
//! complete line for [`IDLE_TIMEOUT`] is closed.

use std::{
    fs::{self, DirBuilder},
    future::Future,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        },
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinSet,
};
use tracing::{debug, warn};

use super::{Backend, Request, Response};

/// Longest request line accepted, without its newline.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A connection that sends no complete request for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown, how long requests being handled may take to finish and be answered
/// (e.g. the answer to `skein agent leave`, which triggers the shutdown).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    #[error("another agent is already listening on {}; stop it first, or give this one its own --socket", .path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; remove it, or choose another --socket", .path.display())]
    NotASocket { path: PathBuf },
    #[error("could not create the socket directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not check whether an agent is listening on {}", .path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not remove the stale socket {}", .path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not listen on {}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates the API socket at `path`, readable and writable by root only (0600), in a
/// directory created 0700 if missing. A socket file left by a dead agent is replaced;
/// one a live agent answers on is not.
///
/// Must be called from within a Tokio runtime (like [`UnixListener::bind`]).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BindError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    remove_if_stale(path)?;
    let listener = bind_root_only(path).map_err(|source| match source.kind() {
        // Another agent bound it between our check and our bind.
        io::ErrorKind::AddrInUse => BindError::InUse {
            path: path.to_owned(),
        },
        _ => BindError::Bind {
            path: path.to_owned(),
            source,
        },
    })?;
    UnixListener::from_std(listener).map_err(|source| BindError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Binds and listens on `path` with the socket file created 0600.
///
/// The socket must never be reachable with looser permissions, not even between bind()
/// and a chmod(): a connection made in that moment would keep root's API after the
/// chmod. Linux creates the file with the mode of the socket's inode (less the umask),
/// so the mode is set on the socket before bind(). The chmod afterwards only makes sure.
fn bind_root_only(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: all-zero bytes are a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // sun_path must hold the path and a terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be shorter than {} bytes",
                addr.sun_path.len()
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor
    // that nothing else owns, so `OwnedFd` may own (and close) it.
    let fd = match unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
    {
        fd if fd >= 0 => unsafe { OwnedFd::from_raw_fd(fd) },
        _ => return Err(io::Error::last_os_error()),
    };
    // SAFETY: `fd` is open for the duration of each call; bind() reads `addr`, a valid
    // sockaddr_un, for the length passed.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) })?;
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    check(unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) })?;
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes `path` if it is a socket nobody listens on.
fn remove_if_stale(path: &Path) -> Result<(), BindError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Probe {
                path: path.to_owned(),
                source,
            })
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BindError::RemoveStale {
                path: path.to_owned(),
                source: e,
            }),
            _ => {
                debug!(path = %path.display(), "removed a stale API socket");
                Ok(())
            }
        },
        Err(source) => Err(BindError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Serves the API on `listener` until `shutdown` completes, each connection on its own
/// task. Then it stops accepting, closes idle connections, gives requests in progress
/// a few seconds to be answered, and removes the socket file.
pub(crate) async fn serve(
    listener: UnixListener,
    backend: Arc<dyn Backend>,
    shutdown: impl Future,
) {
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, backend.clone(), stopped.clone()));
                }
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %error, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    warn!(error = %error, "an API connection task failed");
                }
            }
        }
    }

    // Removed while still listening: until the listener closes, no other agent can
    // take the path (bind() refuses a live socket), so this never removes theirs.
    if let Some(path) = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(Path::to_owned))
    {
        let _ = fs::remove_file(path);
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "API requests still running at shutdown were abandoned"
        );
        connections.shutdown().await;
    }
}

/// How reading one request line ended.
enum Line {
    /// A line (or the unterminated rest at EOF) is in the buffer.
    Complete,
    Eof,
    TooLong,
}

/// Reads up to and including the next newline into `buf`, never more than
/// `MAX_REQUEST_BYTES` plus the newline.
async fn read_line(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let read = reader.take(limit).read_until(b'\n', buf).await?;
    Ok(match read {
        0 => Line::Eof,
        _ if buf.last() == Some(&b'\n') => Line::Complete,
        _ if buf.len() > MAX_REQUEST_BYTES => Line::TooLong,
        // The client closed after a last line without a newline.
        _ => Line::Complete,
    })
}

async fn serve_connection(
    stream: UnixStream,
    backend: Arc<dyn Backend>,
    mut stopped: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, &mut line)) => read,
        };
        let response = match read {
            Err(_) => {
                debug!("closing an idle API connection");
                return;
            }
            Ok(Err(error)) => {
                debug!(error = %error, "reading an API request failed");
                return;
            }
            Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => {
                let response = Response::Error {
                    message: format!(
                        "request longer than {MAX_REQUEST_BYTES} bytes; the connection is closed"
                    ),
                };
                let _ = write_response(&mut write, &response).await;
                return;
            }
            Ok(Ok(Line::Complete)) => {
                let request = line.trim_ascii();
                if request.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Request>(request) {
                    Ok(request) => handle(&backend, request).await,
                    Err(error) => Response::Error {
                        message: format!("malformed request: {error}"),
                    },
                }
            }
        };
        if let Err(error) = write_response(&mut write, &response).await {
            debug!(error = %error, "writing an API response failed");
            return;
        }
    }
}

/// Runs the backend on its own task: a panic there becomes an error answer instead of
/// a silently dropped connection, and a client hanging up does not cancel a request
/// half-way.
async fn handle(backend: &Arc<dyn Backend>, request: Request) -> Response {
    debug!(?request, "API request");
    let backend = Arc::clone(backend);
    match tokio::spawn(async move { backend.handle(request).await }).await {
        Ok(response) => response,
        Err(error) => {
            warn!(error = %error, "handling an API request failed");
            Response::Error {
                message: "the agent failed while handling this request; see the agent's log".into(),
            }
        }
    }
}

async fn write_response(
    write: &mut (impl AsyncWriteExt + Unpin),
    response: &Response,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    // A client that stops reading must not hold its connection task forever.
    tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::oneshot;

    use super::*;
    use crate::api::{call, Body, NodeRow};

    /// A unique directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "skein-{what}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn node() -> NodeRow {
        NodeRow {
            id: "3f2a".repeat(8),
            hostname: "h1".into(),
            address: "10.0.0.1:7946".into(),
            status: "ready".into(),
            is_self: true,
            started_at_ms: 1,
            availability: Default::default(),
        }
    }

    struct Fake;

    impl Backend for Fake {
        fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
            Box::pin(async move {
                match request {
                    Request::NodeLs => Response::Ok {
                        body: Body::Nodes(vec![node()]),
                    },
                    Request::NodeRm { id } => Response::Error {
                        message: format!("no node {id}"),
                    },
                    Request::Leave => panic!("the fake backend panics on leave"),
                    _ => Response::Ok {
                        body: Body::Done("done".into()),
                    },
                }
            })
        }
    }

    /// A server on a fresh socket; dropping the sender stops it.
    struct Server {
        _dir: TempDir,
        path: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start() -> Server {
            let dir = TempDir::new("api");
            let path = dir.0.join("run").join("skein.sock");
            let listener = bind(&path).expect("binding a fresh socket");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, Arc::new(Fake), stopped));
            Server {
                _dir: dir,
                path,
                stop: Some(stop),
                task,
            }
        }

        async fn stop(mut self) {
            drop(self.stop.take());
            tokio::time::timeout(Duration::from_secs(10), &mut self.task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve does not panic");
            assert!(
                !self.path.exists(),
                "the socket file is removed on shutdown"
            );
        }
    }

    struct Raw {
        reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        writer: tokio::net::unix::OwnedWriteHalf,
    }

    impl Raw {
        async fn connect(path: &Path) -> Raw {
            let (read, writer) = UnixStream::connect(path).await.unwrap().into_split();
            Raw {
                reader: BufReader::new(read),
                writer,
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).await.unwrap();
        }

        /// The next response, or `None` at EOF.
        async fn recv(&mut self) -> Option<Response> {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("the server answers in time")
                .unwrap();
            (n > 0).then(|| serde_json::from_str(&line).expect("a response line is JSON"))
        }
    }

    #[tokio::test]
    async fn round_trip_through_the_client() {
        let server = Server::start().await;
        let response = call(&server.path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            response,
            Response::Ok {
                body: Body::Nodes(vec![node()])
            }
        );
        let response = call(
            &server.path,
            &Request::NodeRm { id: "ab".into() },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            response,
            Response::Error {
                message: "no node ab".into()
            }
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn socket_is_root_only() {
        let server = Server::start().await;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&server.path), 0o600);
        assert_eq!(mode(server.path.parent().unwrap()), 0o700);
        server.stop().await;
    }

    #[tokio::test]
    async fn several_requests_per_connection_and_malformed_lines() {
        let server = Server::start().await;
        let mut raw = Raw::connect(&server.path).await;
        raw.send(b"{\"op\":\"node_ls\"}\n\n{\"op\":\"network_ls\"}\n")
            .await;
        assert!(matches!(
            raw.recv().await,
            Some(Response::Ok {
                body: Body::Nodes(_)
            })
        ));
        assert!(matches!(
            raw.recv().await,
            Some(Response::Ok {
                body: Body::Done(_)
            })
        ));

        for malformed in [&b"not json\n"[..], b"{\"op\":\"reboot\"}\n", b"\xff\xfe\n"] {
            raw.send(malformed).await;
            match raw.recv().await {
                Some(Response::Error { message }) => {
                    assert!(message.starts_with("malformed request: "), "{message}")
                }
                other => panic!("{malformed:?} answered with {other:?}"),
            }
        }
        raw.send(b"{\"op\":\"node_ls\"}\n").await;
        assert!(
            matches!(raw.recv().await, Some(Response::Ok { .. })),
            "the connection stays usable after malformed lines"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_line_is_refused_and_closed() {
        let server = Server::start().await;
        let mut raw = Raw::connect(&server.path).await;
        let mut line = vec![b' '; MAX_REQUEST_BYTES + 10];
        line.push(b'\n');
        // The server stops reading mid-line, so this write may fail; the answer is
        // still there to read.
        let _ = raw.writer.write_all(&line).await;
        match raw.recv().await {
            Some(Response::Error { message }) => assert!(message.contains("65536"), "{message}"),
            other => panic!("oversized line answered with {other:?}"),
        }
        assert_eq!(raw.recv().await, None, "then the connection is closed");

        // Exactly at the limit is fine.
        let mut raw = Raw::connect(&server.path).await;
        let mut line = b"{\"op\":\"node_ls\"}".to_vec();
        line.resize(MAX_REQUEST_BYTES, b' ');
        line.push(b'\n');
        raw.send(&line).await;
        assert!(matches!(raw.recv().await, Some(Response::Ok { .. })));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_backend_answers_an_error_and_serving_goes_on() {
        let server = Server::start().await;
        let response = call(&server.path, &Request::Leave, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            matches!(&response, Response::Error { message } if message.contains("agent's log")),
            "{response:?}"
        );
        call(&server.path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap();
        server.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let server = Server::start().await;
        let mut raw = Raw::connect(&server.path).await;
        raw.send(b"{\"op\":").await;
        // With the clock paused, time jumps ahead to the next timer: the server's idle
        // timeout if it has one, else this test's limit.
        let started = tokio::time::Instant::now();
        let mut rest = String::new();
        let n = tokio::time::timeout(IDLE_TIMEOUT * 2, raw.reader.read_line(&mut rest))
            .await
            .expect("the server closes an idle connection")
            .unwrap();
        assert_eq!(n, 0, "closed without an answer, got {rest:?}");
        assert!(started.elapsed() >= IDLE_TIMEOUT, "closed too early");
        server.stop().await;
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = TempDir::new("api-stale");
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("skein.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dead agent's socket file stays behind");
        let listener = bind(&path).expect("a stale socket is replaced");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(Fake), stopped));
        call(&path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap();
        drop(stop);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn live_socket_is_refused() {
        let server = Server::start().await;
        let error = bind(&server.path).unwrap_err().to_string();
        assert!(
            error.contains("another agent is already listening on")
                && error.contains(&*server.path.to_string_lossy()),
            "{error}"
        );
        // And the live agent keeps serving.
        call(&server.path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = TempDir::new("api-file");
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("skein.sock");
        fs::write(&path, b"precious").unwrap();
        let error = bind(&path).unwrap_err().to_string();
        assert!(error.contains("is not a socket"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }
}
