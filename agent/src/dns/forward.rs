//! Forwarding what is not Skein's to the upstream resolvers: the host's (its
//! `resolv.conf`'s nameservers) or `--dns-upstream`. Each upstream in turn, over UDP
//! (TCP when the answer is truncated), each within a timeout; at most [`MAX_IN_FLIGHT`]
//! forwarded queries at once (Docker's bound too); the caller answers SERVFAIL when every
//! upstream failed or the bound is reached.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use hickory_server::proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::Name,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
};

/// Forwarded queries in flight at most; more get SERVFAIL at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// How long one upstream gets to answer.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many upstreams are tried, as glibc does (`MAXNS`).
const MAX_UPSTREAMS: usize = 3;
/// The EDNS payload we offer upstream (the DNS flag day's safe size).
const EDNS_PAYLOAD: u16 = 1232;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolver is configured (--dns-upstream, or the host's /etc/resolv.conf)")]
    NoUpstream,
    #[error("{MAX_IN_FLIGHT} forwarded queries are already in flight")]
    Busy,
    #[error("no upstream answered: {last}")]
    Failed { last: String },
}

#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams: upstreams.into_iter().take(MAX_UPSTREAMS).collect(),
            timeout,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub(crate) fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Asks the upstreams `query` (recursion desired); the first answer wins, whatever
    /// its result code.
    pub(crate) async fn forward(&self, query: &Query) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Busy)?;
        let mut request = Message::new(random_id(), MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        request.set_edns(edns);
        let bytes = request.to_vec().map_err(|e| ForwardError::Failed {
            last: format!("encoding the query: {e}"),
        })?;
        let mut last = String::new();
        for upstream in &self.upstreams {
            match tokio::time::timeout(self.timeout, ask(*upstream, &bytes, &request)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => last = format!("{upstream}: {error}"),
                Err(_) => last = format!("{upstream}: no answer within {:?}", self.timeout),
            }
        }
        Err(ForwardError::Failed { last })
    }
}

/// One exchange with one upstream: UDP, then TCP if the answer was truncated.
async fn ask(upstream: SocketAddr, bytes: &[u8], request: &Message) -> io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buffer = vec![0; 4096];
    loop {
        // Connected: only the upstream's datagrams arrive; a stray one with another ID
        // (or that does not parse) is skipped, the timeout bounds the wait.
        let n = socket.recv(&mut buffer).await?;
        let Ok(answer) = Message::from_vec(&buffer[..n]) else {
            continue;
        };
        if !is_answer_to(&answer, request) {
            continue;
        }
        if answer.metadata.truncation {
            return ask_tcp(upstream, bytes, request).await;
        }
        return Ok(answer);
    }
}

async fn ask_tcp(upstream: SocketAddr, bytes: &[u8], request: &Message) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let length = u16::try_from(bytes.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut buffer = vec![0; usize::from(length)];
    stream.read_exact(&mut buffer).await?;
    let answer = Message::from_vec(&buffer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if !is_answer_to(&answer, request) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer is not for our query",
        ));
    }
    Ok(answer)
}

fn is_answer_to(answer: &Message, request: &Message) -> bool {
    answer.metadata.id == request.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == request.queries
}

fn random_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u16
}

/// The nameservers of a `resolv.conf` (port 53), in order; IPv6 ones too.
pub(crate) fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: std::net::IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The host's upstream resolvers: `/etc/resolv.conf`'s nameservers (none if unreadable).
pub(crate) fn host_upstreams(path: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|text| nameservers(&text))
        .unwrap_or_default()
}

/// A name for log lines.
pub(crate) fn describe(query: &Query) -> String {
    let name: &Name = query.name();
    format!("{name} {}", query.query_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\noptions ndots:0\nnameserver bogus\nnameserver 1.1.1.1 extra\n";
        assert_eq!(
            nameservers(text),
            [
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
            ]
        );
    }
}
