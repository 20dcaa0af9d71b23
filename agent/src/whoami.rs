//! `skein whoami`: a diagnostic server to run as a service's task, like traefik/whoami.
//! It tells a client which task answered: hostname (the task ID), task, service, node,
//! the namespace's addresses and the client's address as the socket sees it, then echoes
//! the request.
//!
//! - HTTP/1.1 on TCP: any request gets `200 OK` and a `text/plain` body of lines
//!   `Hostname:`, `Task:`, `Service:`, `Node:`, one `IP:` per non-loopback IPv4 address,
//!   `RemoteAddr:`, then the request line and headers as received. Keep-alive and
//!   pipelining; `Connection: close` and HTTP/1.0 honoured; a request body
//!   (`Content-Length`) is read and discarded. Bounded: heads over [`MAX_HEAD`] get 431,
//!   bodies over [`MAX_BODY`] 413, malformed requests 400, chunked bodies 501, and
//!   connections idle for the idle timeout are closed; each error closes the connection.
//! - UDP (`--udp`), same port: each datagram is answered with the line
//!   `Hostname: H Task: T Node: N RemoteAddr: A`, `\n`, then the payload echoed.
//!
//! [`Whoami::run`] takes bound sockets and a shutdown future, so tests bind port 0.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::Args;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{timeout, timeout_at, Instant},
};
use tracing::{debug, info, warn};

/// The largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body accepted (and discarded); larger gets 413.
pub const MAX_BODY: u64 = 1024 * 1024;
/// How long a connection may take to send a whole request head (or stay idle between
/// requests), and to accept a response, before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest UDP reply (the IPv4 UDP payload limit); a longer echo is truncated.
const MAX_DATAGRAM: usize = 65_507;

/// `skein whoami`: answer HTTP (and UDP) with who this is.
#[derive(Args, Debug, Clone)]
pub struct WhoamiArgs {
    /// The TCP (and UDP) port to listen on, on all addresses.
    #[arg(long, default_value_t = 80, env = "SKEIN_WHOAMI_PORT")]
    pub port: u16,
    /// Also answer UDP datagrams on the same port.
    #[arg(long)]
    pub udp: bool,
}

/// Who answers: read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub task: String,
    pub service: String,
    pub node: String,
    /// The namespace's non-loopback IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
}

impl Identity {
    /// This process's: its hostname, `SKEIN_TASK`, `SKEIN_SERVICE`, `SKEIN_NODE` (`-`
    /// when unset) and its network namespace's addresses.
    pub fn from_env() -> Identity {
        let var = |name| std::env::var(name).unwrap_or_else(|_| "-".to_owned());
        Identity {
            hostname: hostname().unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the hostname");
                "-".to_owned()
            }),
            task: var("SKEIN_TASK"),
            service: var("SKEIN_SERVICE"),
            node: var("SKEIN_NODE"),
            ips: ipv4_addresses().unwrap_or_else(|e| {
                warn!(error = %e, "cannot list the interface addresses");
                Vec::new()
            }),
        }
    }
}

fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of the given length; gethostname NUL-terminates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The non-loopback IPv4 addresses of this network namespace, in interface order.
fn ipv4_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ips = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && ifa.ifa_flags & libc::IFF_LOOPBACK as u32 == 0 && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(ips)
}

/// Entry point of `skein whoami`: listens on the port on all addresses and serves until
/// SIGINT or SIGTERM. A current-thread runtime: one core is plenty.
pub fn main(args: &WhoamiArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let port = args.port;
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .with_context(|| format!("listening on TCP port {port}"))?;
        let udp = if args.udp {
            Some(
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .with_context(|| format!("binding UDP port {port}"))?,
            )
        } else {
            None
        };
        let whoami = Whoami::new(Identity::from_env());
        info!(
            port,
            udp = args.udp,
            hostname = whoami.identity.hostname,
            "whoami listening"
        );
        whoami.run(listener, udp, shutdown_signal()).await;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            warn!(%error, "cannot handle SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The server: who it is and how long connections may idle.
#[derive(Debug, Clone)]
pub struct Whoami {
    identity: Identity,
    idle_timeout: Duration,
    /// The body lines that never change, from `Hostname:` to the last `IP:`.
    prefix: String,
}

impl Whoami {
    pub fn new(identity: Identity) -> Whoami {
        let mut prefix = format!(
            "Hostname: {}\nTask: {}\nService: {}\nNode: {}\n",
            identity.hostname, identity.task, identity.service, identity.node
        );
        for ip in &identity.ips {
            prefix.push_str(&format!("IP: {ip}\n"));
        }
        Whoami {
            identity,
            idle_timeout: IDLE_TIMEOUT,
            prefix,
        }
    }

    /// Replaces [`IDLE_TIMEOUT`].
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Whoami {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Serves HTTP on `listener` (and UDP on `udp`) until `shutdown` resolves; open
    /// connections are dropped then.
    pub async fn run(
        self,
        listener: TcpListener,
        udp: Option<UdpSocket>,
        shutdown: impl Future<Output = ()>,
    ) {
        let this = Arc::new(self);
        let udp_loop = {
            let this = this.clone();
            async move {
                match udp {
                    Some(socket) => this.serve_udp(socket).await,
                    None => std::future::pending().await,
                }
            }
        };
        // Connections are spawned into a JoinSet so they end with the server.
        let mut connections = tokio::task::JoinSet::new();
        let accept_loop = async {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let this = this.clone();
                        connections
                            .spawn(async move { this.serve_connection(stream, remote).await });
                        // Collect finished connections so the set stays small.
                        while connections.try_join_next().is_some() {}
                    }
                    Err(error) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::select! {
            () = accept_loop => {}
            () = udp_loop => {}
            () = shutdown => info!("whoami shutting down"),
        }
        connections.abort_all();
    }

    async fn serve_udp(&self, socket: UdpSocket) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(error) => {
                    // E.g. ECONNREFUSED from an earlier reply's ICMP error: per datagram.
                    debug!(%error, "udp receive failed");
                    continue;
                }
            };
            let mut reply = format!(
                "Hostname: {} Task: {} Node: {} RemoteAddr: {peer}\n",
                self.identity.hostname, self.identity.task, self.identity.node
            )
            .into_bytes();
            let room = MAX_DATAGRAM.saturating_sub(reply.len());
            reply.extend_from_slice(&buf[..len.min(room)]);
            if let Err(error) = socket.send_to(&reply, peer).await {
                debug!(%error, %peer, "udp reply failed");
            }
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream, remote: SocketAddr) {
        let _ = stream.set_nodelay(true);
        if let Err(error) = self.converse(&mut stream, remote).await {
            debug!(%error, %remote, "connection ended");
        }
    }

    /// Answers requests on one connection until it closes, idles out, asks to close or
    /// sends something unacceptable.
    async fn converse(&self, stream: &mut TcpStream, remote: SocketAddr) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        loop {
            // The whole head must arrive within the idle timeout (no slowloris).
            let deadline = Instant::now() + self.idle_timeout;
            let mut scanned = 0;
            let head_len = loop {
                if skip_leading_empty_lines(&mut buf) {
                    scanned = 0;
                }
                if let Some(len) = head_end(&buf, &mut scanned) {
                    break len;
                }
                if buf.len() > MAX_HEAD {
                    return reject(stream, Reject::HeadTooLarge).await;
                }
                if buf.capacity() - buf.len() < 2048 {
                    buf.reserve(4096);
                }
                match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) if buf.is_empty() => return Ok(()),
                    Err(_) => return reject(stream, Reject::Timeout).await,
                }
            };
            if head_len > MAX_HEAD {
                return reject(stream, Reject::HeadTooLarge).await;
            }
            let head = match parse_head(&buf[..head_len]) {
                Ok(head) => head,
                Err(why) => return reject(stream, why).await,
            };
            let body = self.body(&head, remote);
            let mut response = Vec::with_capacity(body.len() + 160);
            write_head(
                &mut response,
                200,
                "OK",
                body.len(),
                !head.keep_alive,
                head.http10 && head.keep_alive,
            );
            if head.method != b"HEAD" {
                response.extend_from_slice(body.as_bytes());
            }
            let (keep_alive, expect_continue) = (head.keep_alive, head.expect_continue);
            let content_length = head.content_length;
            drop(head);

            // The body: what already arrived, then the rest, read and dropped (after a
            // `100 Continue` if the client waits for one).
            let in_buf = (buf.len() - head_len).min(content_length as usize);
            buf.drain(..head_len + in_buf);
            let remaining = content_length - in_buf as u64;
            if remaining > 0 {
                if expect_continue {
                    self.write(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                self.discard(stream, remaining).await?;
            }
            self.write(stream, &response).await?;
            if !keep_alive {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Writes all of `bytes` within the idle timeout.
    async fn write(&self, stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        timeout(self.idle_timeout, stream.write_all(bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read"))?
    }

    /// Reads and drops `remaining` body bytes.
    async fn discard(&self, stream: &mut TcpStream, mut remaining: u64) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        while remaining > 0 {
            let want = scratch.len().min(remaining as usize);
            let n = timeout(self.idle_timeout, stream.read(&mut scratch[..want]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "body timed out"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                ));
            }
            remaining -= n as u64;
        }
        Ok(())
    }

    fn body(&self, head: &Head, remote: SocketAddr) -> String {
        let mut body = String::with_capacity(self.prefix.len() + 256);
        body.push_str(&self.prefix);
        body.push_str(&format!("RemoteAddr: {remote}\n"));
        for line in &head.lines {
            body.push_str(&String::from_utf8_lossy(line));
            body.push('\n');
        }
        body
    }
}

/// Why a request is refused; the connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    BadRequest,
    HeadTooLarge,
    BodyTooLarge,
    Timeout,
    ChunkedBody,
    Version,
}

impl Reject {
    fn status(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest => (400, "Bad Request"),
            Reject::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Reject::BodyTooLarge => (413, "Content Too Large"),
            Reject::Timeout => (408, "Request Timeout"),
            Reject::ChunkedBody => (501, "Not Implemented"),
            Reject::Version => (505, "HTTP Version Not Supported"),
        }
    }
}

/// Answers with the error and closes. Unread input is drained briefly first, so the
/// close does not become a reset that destroys the answer before the client reads it.
async fn reject(stream: &mut TcpStream, why: Reject) -> io::Result<()> {
    let (code, reason) = why.status();
    let body = format!("{code} {reason}\n");
    let mut response = Vec::with_capacity(160);
    write_head(&mut response, code, reason, body.len(), true, false);
    response.extend_from_slice(body.as_bytes());
    debug!(code, "rejecting a request");
    timeout(Duration::from_secs(5), stream.write_all(&response))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))??;
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = timeout(Duration::from_millis(500), async {
        let mut total = 0;
        while total < 256 * 1024 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    Ok(())
}

fn write_head(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    content_length: usize,
    close: bool,
    keep_alive_header: bool,
) {
    let connection = if close {
        "Connection: close\r\n"
    } else if keep_alive_header {
        "Connection: keep-alive\r\n"
    } else {
        ""
    };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {content_length}\r\nDate: {}\r\n{connection}\r\n",
            http_date(SystemTime::now())
        )
        .as_bytes(),
    );
}

/// Empty lines before a request line are ignored (RFC 9112 §2.2). Returns whether any
/// were dropped.
fn skip_leading_empty_lines(buf: &mut Vec<u8>) -> bool {
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    // Keep a lone trailing '\r': it may start "\r\n".
    let skip = if skip == buf.len() && buf.last() == Some(&b'\r') {
        skip - 1
    } else {
        skip
    };
    if skip > 0 {
        buf.drain(..skip);
    }
    skip > 0
}

/// The length of the head (through its blank line) if `buf` holds all of it. Lines end
/// in CRLF or a bare LF. `scanned` remembers how far earlier calls looked.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let from = scanned.saturating_sub(2);
    for i in from..buf.len() {
        if buf[i] != b'\n' {
            continue;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => return Some(i + 2),
            Some([b'\r', b'\n', ..]) => return Some(i + 3),
            _ => {}
        }
    }
    *scanned = buf.len();
    None
}

/// A parsed request head.
#[derive(Debug)]
struct Head<'a> {
    method: &'a [u8],
    http10: bool,
    /// The request line and header lines as received, without line ends.
    lines: Vec<&'a [u8]>,
    content_length: u64,
    keep_alive: bool,
    expect_continue: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Printable bytes and tabs (and obs-text, 0x80 and up); no other control characters.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn parse_head(head: &[u8]) -> Result<Head<'_>, Reject> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or(Reject::BadRequest)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::BadRequest);
    }
    if target.is_empty() || !target.iter().all(|&b| b > 0x20 && b != 0x7f) {
        return Err(Reject::BadRequest);
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(Reject::Version)
        }
        _ => return Err(Reject::BadRequest),
    };

    let mut head = Head {
        method,
        http10,
        lines: vec![request_line],
        content_length: 0,
        keep_alive: !http10,
        expect_continue: false,
    };
    let mut hosts = 0;
    let mut content_length = None;
    let (mut close, mut keep_alive) = (false, false);
    for line in lines {
        if line.is_empty() {
            break;
        }
        // Leading whitespace is obsolete line folding: refused (RFC 9112 §5.2).
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Reject::BadRequest)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Reject::BadRequest);
        }
        if !value.iter().all(|&b| is_field_byte(b)) {
            return Err(Reject::BadRequest);
        }
        let value = value.trim_ascii();
        head.lines.push(line);
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|l| l != length) {
                return Err(Reject::BadRequest);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Reject::ChunkedBody);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2).
    if (!http10 && hosts != 1) || hosts > 1 {
        return Err(Reject::BadRequest);
    }
    head.content_length = content_length.unwrap_or(0);
    if head.content_length > MAX_BODY {
        return Err(Reject::BodyTooLarge);
    }
    head.keep_alive = !close && (!http10 || keep_alive);
    head.expect_continue &= !http10;
    Ok(head)
}

fn parse_content_length(value: &[u8]) -> Result<u64, Reject> {
    // Digits only: no sign, no blanks, no list.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(Reject::BadRequest)
}

/// An IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            hostname: "web.1.abc".into(),
            task: "web.1.abc".into(),
            service: "web".into(),
            node: "node-a".into(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 1, 2)],
        }
    }

    /// A server on 127.0.0.1 (TCP and UDP on one ephemeral port), stopped on drop.
    struct Server {
        addr: SocketAddr,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn start(idle_timeout: Duration) -> Server {
        // The ephemeral TCP port may be taken for UDP; try a few.
        for _ in 0..20 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let Ok(udp) = UdpSocket::bind(addr).await else {
                continue;
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let whoami = Whoami::new(identity()).with_idle_timeout(idle_timeout);
            tokio::spawn(whoami.run(listener, Some(udp), async {
                let _ = stopped.await;
            }));
            return Server { addr, _stop: stop };
        }
        panic!("no port free for both TCP and UDP");
    }

    /// A response: status code, headers (lowercase names) and body.
    #[derive(Debug)]
    struct Response {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Reads one response (Content-Length framed) from `stream`, keeping extra bytes
    /// in `buf`.
    async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read_more(stream, buf).await;
        };
        let head = String::from_utf8(buf[..head_len].to_vec()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status = lines.next().unwrap();
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(status.starts_with("HTTP/1.1 "), "{status}");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("Content-Length is set")
            .1
            .parse()
            .unwrap();
        while buf.len() < head_len + len {
            read_more(stream, buf).await;
        }
        let body = String::from_utf8(buf[head_len..head_len + len].to_vec()).unwrap();
        buf.drain(..head_len + len);
        Response {
            code,
            headers,
            body,
        }
    }

    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "connection closed before a full response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }

    /// Asserts the server closes the connection (EOF) without sending anything more.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut rest = Vec::new();
        let n = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection");
        assert!(n.is_ok() && rest.is_empty(), "{n:?} {rest:?}");
    }

    #[tokio::test]
    async fn answers_with_who_it_is_and_echoes_the_request() {
        let server = start(IDLE_TIMEOUT).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET /path?q=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: test\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream, &mut Vec::new()).await;
        assert_eq!(response.code, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(response.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert_eq!(response.header("connection"), None, "keep-alive is implied");
        assert_eq!(
            response.body,
            format!(
                "Hostname: web.1.abc\nTask: web.1.abc\nService: web\nNode: node-a\n\
                 IP: 10.0.0.2\nIP: 10.0.1.2\nRemoteAddr: {local}\n\
                 GET /path?q=1 HTTP/1.1\nHost: example\nUser-Agent: test\n"
            )
        );
    }

    #[tokio::test]
    async fn keeps_connections_alive_pipelines_and_honours_close() {
        let server = start(IDLE_TIMEOUT).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = Vec::new();
        stream
            .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let first = read_response(&mut stream, &mut buf).await;
        assert!(
            first.body.contains("\nGET /one HTTP/1.1\n"),
            "{}",
            first.body
        );
        // A body is read and discarded; two pipelined requests in one write; bare LFs.
        stream
            .write_all(
                b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                  HEAD /three HTTP/1.1\nHost: a\n\n",
            )
            .await
            .unwrap();
        let second = read_response(&mut stream, &mut buf).await;
        assert!(
            second.body.contains("\nPOST /two HTTP/1.1\n"),
            "{}",
            second.body
        );
        assert!(!second.body.contains("hello"));
        // HEAD: the length of the body it would have had, and no body.
        let head = timeout(Duration::from_secs(5), async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8(std::mem::take(&mut buf)).unwrap()
        })
        .await
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        stream
            .write_all(b"GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let last = read_response(&mut stream, &mut buf).await;
        assert_eq!(last.code, 200);
        assert_eq!(last.header("connection"), Some("close"));
        assert_closed(&mut stream).await;

        // HTTP/1.0 closes unless asked to keep alive.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut stream, &mut Vec::new()).await.code, 200);
        assert_closed(&mut stream).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..2 {
            stream
                .write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .await
                .unwrap();
            let response = read_response(&mut stream, &mut buf).await;
            assert_eq!(response.header("connection"), Some("keep-alive"));
        }
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_and_a_close() {
        let server = start(IDLE_TIMEOUT).await;
        let huge_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "x".repeat(MAX_HEAD)
        );
        let endless_head = format!("GET / HTTP/1.1\r\nX: {}", "x".repeat(3 * MAX_HEAD));
        for (request, code) in [
            ("GARBAGE\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / FTP/1.1\r\nHost: a\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",
                413,
            ),
            (huge_header.as_str(), 431),
            (endless_head.as_str(), 431),
        ] {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let response = read_response(&mut stream, &mut Vec::new()).await;
            assert_eq!(
                response.code,
                code,
                "{:?}",
                &request[..request.len().min(60)]
            );
            assert_eq!(response.header("connection"), Some("close"));
            assert_closed(&mut stream).await;
        }
        // Non-UTF-8 bytes are echoed, not fatal.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\xfe\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let response = read_response(&mut stream, &mut buf).await;
        assert_eq!(response.code, 200);
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let server = start(Duration::from_millis(200)).await;
        // Idle before any request: closed without an answer.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert_closed(&mut stream).await;
        // A head that never ends: 408.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let response = read_response(&mut stream, &mut Vec::new()).await;
        assert_eq!(response.code, 408);
        assert_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn many_concurrent_connections() {
        let server = start(IDLE_TIMEOUT).await;
        let addr = server.addr;
        let clients: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.unwrap();
                    let mut buf = Vec::new();
                    for _ in 0..3 {
                        stream
                            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                            .await
                            .unwrap();
                        assert_eq!(read_response(&mut stream, &mut buf).await.code, 200);
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
    }

    #[tokio::test]
    async fn udp_datagrams_are_answered_and_echoed() {
        let server = start(IDLE_TIMEOUT).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = client.local_addr().unwrap();
        client
            .send_to(b"ping\nwith lines", server.addr)
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        assert_eq!(from, server.addr);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "Hostname: web.1.abc Task: web.1.abc Node: node-a RemoteAddr: {local}\n\
                 ping\nwith lines"
            )
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn identity_from_the_environment_lists_no_loopback() {
        let identity = Identity::from_env();
        assert!(!identity.hostname.is_empty());
        assert!(identity.ips.iter().all(|ip| !ip.is_loopback()));
    }

    #[test]
    fn cli_parses_whoami() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["skein", "whoami"]).unwrap();
        let crate::cli::Command::Whoami(args) = cli.command else {
            panic!("not whoami");
        };
        assert_eq!((args.port, args.udp), (80, false));
        let cli = crate::cli::Cli::try_parse_from(["skein", "whoami", "--port", "8080", "--udp"])
            .unwrap();
        let crate::cli::Command::Whoami(args) = cli.command else {
            panic!("not whoami");
        };
        assert_eq!((args.port, args.udp), (8080, true));
    }
}
