//! The receive loops in front of the hickory [`RequestHandler`]: UDP datagrams (`udp`)
//! and TCP connections (here, read with hickory's own streams), each message decoded with
//! hickory's `Request::from_bytes`, and every readable query handed to [`DnsHandler`].
//!
//! Why not hickory's `Server`: it drops messages shorter than a header and answers
//! unreadable ones itself (FORMERR, even to a message marked as a response) before any
//! handler sees them, so malformed input could not be counted (issue 13 part 5), and it
//! bounds neither queries in flight nor TCP connections. Here a message that does not
//! decode, a response, and a broken TCP frame (zero length, cut short) are dropped and
//! counted as malformed; queries in flight and TCP connections are bounded (over the
//! bound: dropped and counted); a TCP client silent for [`TCP_TIMEOUT`] is disconnected
//! (slowloris).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::StreamExt;
use hickory_server::{
    net::{
        runtime::{iocompat::AsyncIoTokioAsStd, TokioTime},
        tcp::TcpStream,
        xfer::Protocol,
    },
    proto::op::MessageType,
    server::{Request, RequestHandler, ResponseHandle, TimeoutStream},
};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::Semaphore,
    task::JoinSet,
};
use tracing::debug;

use super::handler::DnsHandler;

/// How long a TCP client may stay silent before its connection is closed.
pub(crate) const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-connection buffer of TCP answers waiting to be written.
const TCP_RESPONSE_BUFFER: usize = 16;
/// TCP connections at once per listener.
const TCP_CONNECTIONS: usize = 256;

/// One socket pair being served; dropping it stops the loops and closes the sockets.
pub(crate) struct Listener {
    _tasks: JoinSet<()>,
}

impl Listener {
    /// Serves `udp` and `tcp` with `handler`. Must run inside the tokio runtime.
    pub(crate) fn start(handler: DnsHandler, udp: UdpSocket, tcp: TcpListener) -> Listener {
        let handler = Arc::new(handler);
        let mut tasks = JoinSet::new();
        tasks.spawn(super::udp::serve_udp(handler.clone(), udp));
        tasks.spawn(serve_tcp(handler, tcp));
        Listener { _tasks: tasks }
    }
}

/// A query to answer, or `None` (counted) for anything else.
pub(super) fn decode(
    handler: &DnsHandler,
    bytes: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Request> {
    match Request::from_bytes(bytes, src, protocol) {
        Ok(request) if request.metadata.message_type == MessageType::Query => Some(request),
        _ => {
            handler.core.counters.malformed();
            None
        }
    }
}

async fn serve_tcp(handler: Arc<DnsHandler>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    let mut clients = JoinSet::new();
    loop {
        let (socket, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "DNS: accepting on TCP");
                // EMFILE and the like: give the process a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while clients.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            handler.core.counters.overloaded();
            continue;
        };
        let handler = handler.clone();
        clients.spawn(async move {
            let (stream, sender) = TcpStream::from_stream_with_buffer_size(
                AsyncIoTokioAsStd(socket),
                src,
                TCP_RESPONSE_BUFFER,
            );
            let mut messages = TimeoutStream::new(stream, TCP_TIMEOUT);
            // One query at a time per connection: a client cannot make us hold more.
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    // Silent too long: an idle client, closed without counting.
                    Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break,
                    // A broken frame (zero length, cut short, closed mid-message):
                    // the connection ends, counted.
                    Err(_) => {
                        handler.core.counters.malformed();
                        break;
                    }
                };
                let (bytes, src) = message.into_parts();
                let Some(request) = decode(&handler, bytes, src, Protocol::Tcp) else {
                    continue;
                };
                let response = ResponseHandle::new(src, sender.clone(), Protocol::Tcp);
                handler
                    .handle_request::<_, TokioTime>(&request, response)
                    .await;
            }
            drop(permit);
        });
    }
}
