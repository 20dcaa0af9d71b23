//! Real requests over 127.0.0.1 (TCP and UDP on one ephemeral port), written and read as
//! raw bytes so the wire format itself is checked.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

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

async fn start(whoami: Whoami) -> Server {
    // The ephemeral TCP port may be taken for UDP; try a few.
    for _ in 0..20 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let Ok(udp) = UdpSocket::bind(addr).await else {
            continue;
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(whoami.run(listener, Some(udp), async {
            let _ = stopped.await;
        }));
        return Server { addr, _stop: stop };
    }
    panic!("no port free for both TCP and UDP");
}

async fn start_default() -> Server {
    start(Whoami::new(identity())).await
}

/// A response: status code, headers (lowercase names) and body.
#[derive(Debug)]
struct Response {
    status_line: String,
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

/// Reads one response (Content-Length framed) from `stream`, keeping extra bytes in `buf`.
async fn read_response(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Response {
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await;
    };
    let head = String::from_utf8(buf[..head_len].to_vec()).unwrap();
    let mut lines = head.trim_end().split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let code = status_line.split(' ').nth(1).unwrap().parse().unwrap();
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
        status_line,
        code,
        headers,
        body,
    }
}

async fn read_more(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = timeout(Duration::from_secs(5), stream.read(&mut chunk))
        .await
        .expect("the server answers")
        .unwrap();
    assert!(n > 0, "connection closed before a full response: {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

/// Asserts the server closes the connection without sending anything more.
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    // A reset (unread input at the close) is a close too; nothing more may arrive.
    assert!(rest.is_empty(), "{read:?} {rest:?}");
}

/// One request on a new connection, and its response.
async fn request(server: &Server, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream, &mut Vec::new()).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn answers_with_who_it_is_and_echoes_the_request() {
    let server = start_default().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /path?q=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: test\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
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
    let server = start_default().await;
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
    assert!(!head.contains("content-length: 0\r\n"), "{head}");
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
    let server = start_default().await;
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
        ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
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
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        ("GET / FTP/1.1\r\nHost: a\r\n\r\n", 400),
        (huge_header.as_str(), 431),
        (endless_head.as_str(), 431),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream, &mut Vec::new()).await;
        let what = &request[..request.len().min(60)];
        assert_eq!(response.code, code, "{what:?}");
        assert_eq!(response.header("connection"), Some("close"), "{what:?}");
        assert_closed(&mut stream).await;
    }
    // Non-UTF-8 bytes are echoed, not fatal.
    let response = request(&server, b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\xfe\r\n\r\n").await;
    assert_eq!(response.code, 200);
    assert!(
        response.body.ends_with("X: \u{fffd}\u{fffd}\n"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn chunked_bodies_are_read_and_discarded() {
    let server = start_default().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    // Twice on one connection: the first body is consumed whole, framing intact.
    for _ in 0..2 {
        stream
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let response = read_response(&mut stream, &mut buf).await;
        assert_eq!(response.code, 200);
        assert!(
            response.body.contains("\nPOST /echo HTTP/1.1\n"),
            "{}",
            response.body
        );
        assert!(response.body.contains("\nTransfer-Encoding: chunked\n"));
        assert!(!response.body.contains("hello"));
    }
    // `Expect: 100-continue` gets its 100 before the body is sent.
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        read_more(&mut stream, &mut buf).await;
    }
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{buf:?}");
    buf.drain(..25);
    stream.write_all(b"abc").await.unwrap();
    assert_eq!(read_response(&mut stream, &mut buf).await.code, 200);
}

#[tokio::test]
async fn upload_answers_length_and_sha256() {
    let server = start_default().await;
    // A known vector (FIPS 180-2 "abc"), Content-Length framed.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let response = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(response.code, 200);
    assert_eq!(
        response.body,
        format!(
            "Hostname: web.1.abc\nTask: web.1.abc\nService: web\nNode: node-a\n\
             IP: 10.0.0.2\nIP: 10.0.1.2\nRemoteAddr: {local}\nLength: 3\n\
             SHA256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        )
    );
    // An empty body.
    let response = request(
        &server,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(response
        .body
        .contains(&format!("Length: 0\nSHA256: {}\n", sha256_hex(b""))));
    // GET /upload is an ordinary echo.
    let response = request(&server, b"GET /upload HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        response.body.contains("\nGET /upload HTTP/1.1\n"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn a_large_chunked_upload_streams_through() {
    let server = start_default().await;
    // 8 MiB of varied bytes, in chunks of uneven sizes, written while the server reads.
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = sha256_hex(&data);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer
            .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let mut rest = &data[..];
        let mut size = 1;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
            writer.write_all(chunk).await.unwrap();
            writer.write_all(b"\r\n").await.unwrap();
            rest = after;
            size = size * 3 % 200_003 + 1;
        }
        writer.write_all(b"0\r\n\r\n").await.unwrap();
    };
    let mut buf = Vec::new();
    let ((), response) = timeout(Duration::from_secs(60), async {
        tokio::join!(send, read_response(&mut reader, &mut buf))
    })
    .await
    .expect("the upload is answered");
    assert_eq!(response.code, 200);
    assert!(
        response
            .body
            .ends_with(&format!("\nLength: {}\nSHA256: {expected}\n", data.len())),
        "{}",
        response.body
    );
}

/// Starts `whoami` with its own stop switch; returns the address, the switch and the
/// server's task (done when `run` returns).
async fn start_stoppable(
    whoami: Whoami,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(whoami.run(listener, None, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

#[tokio::test]
async fn on_shutdown_requests_in_flight_finish_and_keep_alive_connections_close() {
    let (addr, stop, server) = start_stoppable(Whoami::new(identity())).await;
    // A keep-alive connection, idle after its first answer.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle, &mut Vec::new()).await.code, 200);
    // A request in flight: half its body sent.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    // Let the server read that much before it is told to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();

    // The idle connection is closed cleanly (FIN, nothing sent), new ones are refused.
    assert_closed(&mut idle).await;
    let refused = timeout(Duration::from_secs(5), async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener is closed");
    // The request in flight gets its whole answer, and then the connection closes.
    busy.write_all(b"world").await.unwrap();
    let response = read_response(&mut busy, &mut Vec::new()).await;
    assert_eq!(response.code, 200);
    assert!(
        response.body.contains(&format!(
            "Length: 10\nSHA256: {}\n",
            sha256_hex(b"helloworld")
        )),
        "{}",
        response.body
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut busy).await;
    // And the server is done, well within its grace.
    timeout(Duration::from_secs(2), server)
        .await
        .expect("whoami returns once its connections are done")
        .unwrap();
}

#[tokio::test]
async fn on_shutdown_a_stalled_request_is_dropped_after_the_grace() {
    let whoami = Whoami::new(identity()).with_shutdown_grace(Duration::from_millis(300));
    let (addr, stop, server) = start_stoppable(whoami).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    timeout(Duration::from_secs(5), server)
        .await
        .expect("whoami returns after its grace")
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "{took:?}: the request had its grace"
    );
    assert_closed(&mut stalled).await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let server = start(Whoami::new(identity()).with_idle_timeout(Duration::from_millis(200))).await;
    // Idle before any request: closed without an answer.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_closed(&mut stream).await;
    // A head that never ends: closed.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    assert_closed(&mut stream).await;
    // Idle after a request: closed.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream, &mut Vec::new()).await.code, 200);
    assert_closed(&mut stream).await;
    // A body that stalls: closed.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn many_concurrent_connections() {
    let server = start_default().await;
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
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = start(Whoami::new(identity()).with_max_connections(1)).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut first, &mut Vec::new()).await.code, 200);
    // The second connection is accepted by the kernel but not served yet.
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    // The first one closes: its slot goes to the second.
    drop(first);
    assert_eq!(read_response(&mut second, &mut Vec::new()).await.code, 200);
}

#[tokio::test]
async fn udp_datagrams_are_answered_and_echoed() {
    let server = start_default().await;
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
fn cli_parses_whoami() {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from(["skein", "whoami"]).unwrap();
    let crate::cli::Command::Whoami(args) = cli.command else {
        panic!("not whoami");
    };
    assert_eq!((args.port, args.udp), (80, false));
    let cli =
        crate::cli::Cli::try_parse_from(["skein", "whoami", "--port", "8080", "--udp"]).unwrap();
    let crate::cli::Command::Whoami(args) = cli.command else {
        panic!("not whoami");
    };
    assert_eq!((args.port, args.udp), (8080, true));
}

#[test]
fn help_documents_the_upload_sink() {
    use clap::CommandFactory;
    let mut cli = crate::cli::Cli::command();
    let whoami = cli.find_subcommand_mut("whoami").expect("whoami");
    let help = whoami.render_long_help().to_string();
    assert!(help.contains("POST /upload"), "{help}");
}
