//! Issue 13 part 5, acceptance: 10,000 malformed queries over UDP and TCP leave the agent's
//! DNS server answering correctly, with `/metrics` counting them, its process alive and its
//! memory and file descriptors bounded. Privileged: one agent in a 1-host netns testbed;
//! every query goes to 127.0.0.1:5353 (`--dns-addr`'s default) inside the host, and the
//! agent's upstream is a closed port on that loopback (nothing leaves the testbed).
//!
//! The messages come from `xtask::dns_wire::Malformed` (each kind checked malformed by
//! a strict reader in its unit tests): 8,000 UDP datagrams cycling every kind; 1,000 TCP
//! connections each carrying one framed malformed message; 1,000 TCP connections with bad
//! length prefixes (0, longer than what follows, one byte of it); then 64 slowloris
//! connections feeding a query one byte every 250 ms while a client must still get correct
//! answers over UDP and TCP. At the end the test checks its own probe: a stopped
//! (SIGSTOP) and then a killed server must make it fail.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use xtask::{
    cluster::{create_service, running_tasks, start_cluster_with, whoami},
    dns_wire::{
        parse_response, query, tcp_frame, Malformed, Response, RCODE_NOERROR, RCODE_NXDOMAIN,
        TYPE_A,
    },
    scrape::scrape,
    testbed::{wait_until, Host, InNetns, Testbed, TestbedConfig},
};

const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 5353);
const UDP_MESSAGES: u64 = 8_000;
const TCP_FRAMED: u64 = 1_000;
const TCP_BAD_PREFIX: u64 = 1_000;
const SLOW_CONNECTIONS: usize = 64;
/// How much the agent's resident memory may grow over the whole flood.
const RSS_GROWTH_LIMIT_KB: u64 = 48 * 1024;

/// Correct questions and what their answers must be: `tasks.web` = the running tasks of
/// `service ps`, `web` = one VIP, `nosuch` = NXDOMAIN; over UDP and TCP.
struct Probe {
    udp: UdpSocket,
    tasks: Vec<Ipv4Addr>,
    next_id: u16,
}

impl Probe {
    /// Made inside the host's namespace (the caller has entered it).
    fn new(tasks: Vec<Ipv4Addr>) -> Probe {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        Probe {
            udp,
            tasks,
            next_id: 1,
        }
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn udp_ask(&mut self, name: &str) -> Result<Response, String> {
        let id = self.id();
        self.udp
            .send_to(&query(id, name, TYPE_A), DNS)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 4096];
        // Answers to earlier probes (a stalled server catching up) are skipped by ID.
        for _ in 0..16 {
            let n = self
                .udp
                .recv(&mut buf)
                .map_err(|e| format!("no UDP answer for {name}: {e}"))?;
            let r = parse_response(&buf[..n]).map_err(|e| format!("{name}: {e:#}"))?;
            if r.id == id {
                return Ok(r);
            }
        }
        Err(format!("no UDP answer with our ID for {name}"))
    }

    fn tcp_ask(&mut self, name: &str) -> Result<Response, String> {
        let id = self.id();
        let mut s = TcpStream::connect_timeout(&DNS, Duration::from_secs(1))
            .map_err(|e| format!("TCP connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(&tcp_frame(&query(id, name, TYPE_A)))
            .map_err(|e| format!("TCP write: {e}"))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)
            .map_err(|e| format!("no TCP answer for {name}: {e}"))?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg)
            .map_err(|e| format!("TCP answer for {name} cut: {e}"))?;
        let r = parse_response(&msg).map_err(|e| format!("{name}: {e:#}"))?;
        if r.id != id {
            return Err(format!("TCP answer for {name} with ID {} not {id}", r.id));
        }
        Ok(r)
    }

    /// Every correct question answered correctly, or the first difference.
    fn check(&mut self) -> Result<(), String> {
        for tcp in [false, true] {
            let ask = |p: &mut Probe, name: &str| {
                if tcp {
                    p.tcp_ask(name)
                } else {
                    p.udp_ask(name)
                }
            };
            let via = if tcp { "TCP" } else { "UDP" };
            let tasks = ask(self, "tasks.web")?;
            if tasks.rcode != RCODE_NOERROR || tasks.a_records() != self.tasks {
                return Err(format!(
                    "{via} tasks.web: rcode {} {:?}, want {:?}",
                    tasks.rcode,
                    tasks.a_records(),
                    self.tasks
                ));
            }
            let vip = ask(self, "web")?;
            if vip.rcode != RCODE_NOERROR || vip.a_records().len() != 1 {
                return Err(format!("{via} web: {vip:?}"));
            }
            let none = ask(self, "nosuch")?;
            if none.rcode != RCODE_NXDOMAIN {
                return Err(format!("{via} nosuch: rcode {}", none.rcode));
            }
        }
        Ok(())
    }
}

/// `VmRSS` (kB) and open descriptors of `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    (rss, fds)
}

/// Malformed messages counted, plus those dropped unread over the server's bound on TCP
/// connections (`skein_dns_overloaded`): both are counted drops.
fn malformed_count(host: &Host) -> u64 {
    scrape(host)
        .expect("metrics")
        .iter()
        .filter(|(k, _)| {
            k.starts_with("skein_dns_malformed") || k.starts_with("skein_dns_overloaded")
        })
        .map(|(_, v)| v)
        .sum()
}

/// `RcvbufErrors` of UDP in the host (datagrams the kernel dropped for a full socket
/// buffer: they never reached the server, so it cannot count them).
fn udp_receive_buffer_errors(host: &Host) -> u64 {
    let snmp = host.run("cat", ["/proc/net/snmp"]).expect("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RcvbufErrors")
}

/// Replies to malformed messages, by response code (`qr0` counts non-responses).
type Replies = BTreeMap<String, u64>;

fn note_reply(replies: &mut Replies, bytes: &[u8]) {
    let key = match parse_response(bytes) {
        Ok(r) if !r.is_response => "qr0".to_owned(),
        Ok(r) => format!("rcode{}", r.rcode),
        Err(_) => "unreadable".to_owned(),
    };
    *replies.entry(key).or_default() += 1;
}

/// 8,000 malformed datagrams, paced so a debug-built server keeps up; every reply noted.
fn udp_flood(replies: &mut Replies) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let drain = |replies: &mut Replies, buf: &mut [u8]| {
        while let Ok(n) = sock.recv(buf) {
            note_reply(replies, &buf[..n]);
        }
    };
    for i in 0..UDP_MESSAGES {
        let kind = Malformed::ALL[i as usize % Malformed::ALL.len()];
        let msg = kind.message(i);
        // An empty datagram is legal to send; the kernel delivers it.
        let _ = sock.send_to(&msg, DNS);
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(3));
            drain(replies, &mut buf);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(replies, &mut buf);
}

/// One framed malformed message per connection, write side closed after it; replies
/// read in batches with a deadline per batch (a server that keeps quiet costs ≤ 1 s).
fn tcp_framed(replies: &mut Replies) -> u64 {
    let mut delivered = 0;
    for batch in 0..TCP_FRAMED / 100 {
        let mut open = Vec::new();
        for j in 0..100 {
            let i = batch * 100 + j;
            let msg = Malformed::ALL[i as usize % Malformed::ALL.len()].message(100_000 + i);
            let Ok(mut s) = TcpStream::connect_timeout(&DNS, Duration::from_secs(1)) else {
                continue;
            };
            if s.write_all(&tcp_frame(&msg)).is_ok() {
                delivered += 1;
            }
            let _ = s.shutdown(Shutdown::Write);
            open.push(s);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for mut s in open {
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut reply = Vec::new();
            let _ = (&mut s).take(70_000).read_to_end(&mut reply);
            if reply.len() > 2 {
                note_reply(replies, &reply[2..]);
            }
        }
    }
    delivered
}

/// Connections whose length prefix lies: 0, more than follows (then EOF), or cut.
fn tcp_bad_prefixes() {
    for batch in 0..TCP_BAD_PREFIX / 100 {
        let mut open = Vec::new();
        for j in 0..100u64 {
            let Ok(mut s) = TcpStream::connect_timeout(&DNS, Duration::from_secs(1)) else {
                continue;
            };
            let body = query((batch * 100 + j) as u16, "web", TYPE_A);
            let bytes: Vec<u8> = match j % 3 {
                0 => vec![0, 0],
                1 => [&[0xff, 0xff][..], &body].concat(),
                _ => vec![0x40],
            };
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Write);
            open.push(s);
        }
        std::thread::sleep(Duration::from_millis(20));
        drop(open);
    }
}

/// Connections that feed a query one byte every 250 ms for ~3 s, while `probe` must keep
/// getting correct answers.
fn slowloris(probe: &mut Probe) -> Result<(), String> {
    let frame = tcp_frame(&query(7, "tasks.web", TYPE_A));
    let mut slow: Vec<TcpStream> = (0..SLOW_CONNECTIONS)
        .filter_map(|_| TcpStream::connect_timeout(&DNS, Duration::from_secs(1)).ok())
        .collect();
    for byte in frame.iter().take(12) {
        for s in &mut slow {
            let _ = s.write_all(&[*byte]);
        }
        let tick = Instant::now();
        probe
            .check()
            .map_err(|e| format!("during slowloris: {e}"))?;
        std::thread::sleep(Duration::from_millis(250).saturating_sub(tick.elapsed()));
    }
    Ok(())
}

#[test]
fn ten_thousand_malformed_queries_leave_the_server_answering_and_counted() {
    let started = Instant::now();
    let bed = Testbed::new("dns-malformed", TestbedConfig::with_hosts(1)).expect("testbed");
    let (mut agents, _) = start_cluster_with(
        &bed,
        |_| vec!["--dns-upstream".into(), "127.0.0.1:5399".into()],
        &[],
    )
    .expect("agent");
    let h1 = bed.host(0);
    create_service(
        &bed,
        "web",
        &["--replicas", "2"],
        &whoami(&["--port", "80"]),
    );
    let mut tasks: Vec<Ipv4Addr> =
        wait_until("2 running tasks of web", Duration::from_secs(30), || {
            let t = running_tasks(h1, "web");
            (t.len() == 2).then_some(t)
        })
        .expect("web running")
        .iter()
        .map(|t| t.ip.parse().expect("task IP"))
        .collect();
    tasks.sort();
    let agent_pid = agents[0].pid();

    let inside = InNetns::enter(h1);
    let mut probe = Probe::new(tasks);
    wait_until("correct answers", Duration::from_secs(20), || probe.check())
        .expect("the server answers before the flood");
    let (rss_before, fds_before) = rss_and_fds(agent_pid);
    let malformed_before = malformed_count(h1);
    let overflow_before = udp_receive_buffer_errors(h1);

    let mut replies = Replies::new();
    let flood_start = Instant::now();
    udp_flood(&mut replies);
    probe.check().expect("correct answers after the UDP flood");
    let overflowed = udp_receive_buffer_errors(h1) - overflow_before;
    let framed = tcp_framed(&mut replies);
    tcp_bad_prefixes();
    probe.check().expect("correct answers after the TCP flood");
    slowloris(&mut probe).expect("correct answers while slow connections hang");
    probe.check().expect("correct answers after slowloris");
    let flood_took = flood_start.elapsed();

    assert!(
        agents[0].is_running(),
        "the agent survives:\n{}",
        agents[0].log()
    );
    let counted = malformed_count(h1) - malformed_before;
    for (name, value) in scrape(h1).expect("metrics").iter() {
        if name.starts_with("skein_dns_") {
            eprintln!("{name} {value}");
        }
    }
    let (rss_after, _) = rss_and_fds(agent_pid);
    eprintln!(
        "malformed: {UDP_MESSAGES} UDP ({overflowed} dropped by the kernel for a full buffer), \
         {framed} framed TCP, {TCP_BAD_PREFIX} bad TCP prefixes, {SLOW_CONNECTIONS} slowloris; \
         counted {counted}; replies {replies:?}; RSS {rss_before} → {rss_after} kB; fds before {fds_before}"
    );
    assert_eq!(
        replies.get("qr0"),
        None,
        "the server never sends a query back: {replies:?}"
    );
    assert_eq!(
        replies.get(&format!("rcode{RCODE_NOERROR}")),
        None,
        "no malformed message gets an answer: {replies:?}"
    );
    let reached = UDP_MESSAGES - overflowed + framed;
    assert!(
        counted >= reached,
        "every malformed message that reached the server is counted: {counted} < {reached} \
         ({} UDP reached it, {framed} framed over TCP)",
        UDP_MESSAGES - overflowed
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KB,
        "resident memory bounded: {rss_before} → {rss_after} kB"
    );
    // Every connection of ours is closed: the server's descriptors come back down.
    wait_until(
        "the agent's descriptors back down",
        Duration::from_secs(10),
        || {
            let (_, fds) = rss_and_fds(agent_pid);
            (fds <= fds_before + 4)
                .then_some(())
                .ok_or(format!("{fds} open, {fds_before} before"))
        },
    )
    .expect("no descriptor leak");
    eprintln!(
        "the flood took {flood_took:?}; the test so far {:?}",
        started.elapsed()
    );

    // The probe must be able to fail: a stopped server (a stall) and a dead one.
    // SAFETY: signals to the agent this test started.
    unsafe { libc::kill(agent_pid as i32, libc::SIGSTOP) };
    // A stop is asynchronous: wait until every thread of the agent is stopped.
    wait_until("every agent thread stopped", Duration::from_secs(5), || {
        let running: Vec<String> = std::fs::read_dir(format!("/proc/{agent_pid}/task"))
            .map_err(|e| e.to_string())?
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                let state = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .next()?
                    .to_owned();
                (state != "T" && state != "t").then_some(state)
            })
            .collect();
        running
            .is_empty()
            .then_some(())
            .ok_or(format!("threads not stopped yet: {running:?}"))
    })
    .expect("the agent stops");
    let stalled = probe.check();
    unsafe { libc::kill(agent_pid as i32, libc::SIGCONT) };
    assert!(stalled.is_err(), "the probe detects a stalled server");
    wait_until(
        "answers again after SIGCONT",
        Duration::from_secs(10),
        || probe.check(),
    )
    .expect("the server answers again");
    agents[0].kill9().expect("kill the agent");
    assert!(probe.check().is_err(), "the probe detects a dead server");
    drop(inside);
}
