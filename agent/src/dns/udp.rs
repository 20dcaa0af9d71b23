//! The UDP receive loop: every datagram is answered in the loop itself — no task spawned,
//! no channel to a socket task — unless it must be forwarded.
//!
//! Per wake-up the loop reads a batch of datagrams with one system call and sends their
//! replies with one (`mmsg`); per datagram: a reply already encoded for these bytes ([`AnswerCache`]) is
//! sent with the query's ID; otherwise hickory decodes it (unreadable messages and
//! responses: dropped and counted, as in `listen`) and the hickory [`RequestHandler`]
//! answers it, polled once in place: Skein's own names never wait, so the handler has
//! sent its reply (through [`UdpReply`], encoded by hickory) when that poll returns, and
//! the reply is stored for the next equal query. A query that waits (forwarded upstream)
//! becomes a task of its own, at most [`UDP_IN_FLIGHT`] at once (over: dropped, counted).
//!
//! Measured by `cargo xtask bench dns` (see /work/notes/dnsfast.md): the task per query and
//! the channel to hickory's socket task cost more than answering.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures::FutureExt;
use hickory_server::{
    net::{runtime::TokioTime, xfer::Protocol, NetError},
    proto::{
        op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
        rr::Record,
        serialize::binary::{BinEncodable, BinEncoder},
    },
    server::{RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tokio::{io::Interest, net::UdpSocket, sync::Semaphore, task::JoinSet};
use tracing::debug;

use super::{
    answers::{AnswerCache, Hit, ORDERS},
    handler::DnsHandler,
    listen::decode,
    mmsg::{with_batch, Received},
};

/// UDP queries waiting on upstreams at once per listener.
const UDP_IN_FLIGHT: usize = 2048;
/// A reply's size limit without EDNS (RFC 1035 4.2.1).
const PLAIN_UDP_SIZE: u16 = 512;

pub(super) async fn serve_udp(handler: Arc<DnsHandler>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(UDP_IN_FLIGHT));
    let mut forwarding = JoinSet::new();
    let mut cache = AnswerCache::default();
    loop {
        if let Err(error) = socket.readable().await {
            debug!(%error, "DNS: waiting on UDP");
            return;
        }
        while forwarding.try_join_next().is_some() {}
        cache.follow(&handler.core.records());
        // One batch, answered without awaiting (the buffers are the thread's); what the
        // socket would not take now is sent after.
        let unsent = with_batch(|inbox, outbox| {
            let received = socket.try_io(Interest::READABLE, || inbox.receive(&*socket));
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Vec::new(),
                Err(error) => {
                    debug!(%error, "DNS: receiving on UDP");
                    return Vec::new();
                }
            };
            for datagram in (0..count).filter_map(|i| inbox.datagram(i)) {
                let Received {
                    bytes: query,
                    src,
                    truncated,
                } = datagram;
                if truncated {
                    handler.core.counters.malformed();
                    continue;
                }
                if let Some(hit) = cache.reply(query, outbox.reply_buffer()) {
                    handler.core.counters.answered(hit.qtype, hit.rcode);
                    outbox.add_reply(src);
                    continue;
                }
                let Some(waiting) = answer(&handler, &socket, &mut cache, query, src) else {
                    continue;
                };
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        forwarding.spawn(async move {
                            waiting.await;
                            drop(permit);
                        });
                    }
                    // Dropping the query's future ends its forwarding.
                    Err(_) => handler.core.counters.overloaded(),
                }
            }
            outbox.send(&*socket)
        });
        for (reply, dst) in unsent {
            send(&socket, &reply, dst).await;
        }
    }
}

/// A handler's answer still waiting (on an upstream).
type Waiting = std::pin::Pin<Box<dyn std::future::Future<Output = ResponseInfo> + Send>>;

/// Decodes `query` and has the handler answer it; a reply from Skein's own records is
/// stored in `cache`. Returns the answer if it has to wait.
fn answer(
    handler: &Arc<DnsHandler>,
    socket: &Arc<UdpSocket>,
    cache: &mut AnswerCache,
    query: &[u8],
    src: SocketAddr,
) -> Option<Waiting> {
    let request = decode(handler, query.to_vec(), src, Protocol::Udp)?;
    let max_size = request.edns.as_ref().map_or(PLAIN_UDP_SIZE, |edns| {
        edns.max_payload().max(PLAIN_UDP_SIZE)
    });
    let info = request.request_info().ok();
    let orders = info
        .as_ref()
        .filter(|info| {
            handler
                .core
                .records()
                .shuffles(info.query.name(), info.query.query_type())
        })
        .map_or(1, |_| ORDERS);
    let qtype = info.map(|info| info.query.query_type());
    let reply = UdpReply {
        socket: socket.clone(),
        dst: src,
        max_size,
        sent: Arc::default(),
    };
    let sent = reply.sent.clone();
    let answering_handler = handler.clone();
    let mut answering: Waiting = Box::pin(async move {
        answering_handler
            .handle_request::<_, TokioTime>(&request, reply)
            .await
    });
    let info = match answering.as_mut().now_or_never() {
        Some(info) => info,
        None => return Some(answering),
    };
    // The handler marks exactly the answers from Skein's own records authoritative
    // (handler.rs): those, and only those, may be given again for equal bytes.
    if let (true, Some(qtype), Some(bytes)) = (
        info.authoritative,
        qtype,
        sent.lock().expect("dns reply lock").take(),
    ) {
        let hit = Hit {
            qtype,
            rcode: info.response_code,
        };
        cache.insert(query, &bytes, orders, hit);
    }
    None
}

/// Sends `reply` to `dst`; waits only if the socket's buffer is full.
async fn send(socket: &UdpSocket, reply: &[u8], dst: SocketAddr) {
    let result = match socket.try_send_to(reply, dst) {
        Err(error) if error.kind() == ErrorKind::WouldBlock => socket.send_to(reply, dst).await,
        other => other,
    };
    if let Err(error) = result {
        debug!(%error, %dst, "could not send a DNS answer");
    }
}

/// The handler's way to answer one UDP query: encodes with hickory and sends, keeping the
/// bytes sent for the answer cache.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    /// The query's EDNS payload size (at least 512), or 512 without EDNS.
    max_size: u16,
    sent: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(usize::from(PLAIN_UDP_SIZE));
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max_size);
        // As hickory's own ResponseHandle: an answer that cannot be encoded becomes
        // SERVFAIL.
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "could not encode a DNS answer; SERVFAIL");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut BinEncoder::new(&mut bytes))?;
                ResponseInfo::from(header)
            }
        };
        send(&self.socket, &bytes, self.dst).await;
        *self.sent.lock().expect("dns reply lock") = Some(bytes);
        Ok(info)
    }
}
