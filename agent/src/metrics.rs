//! `/metrics` in the Prometheus text format: the dataplane's per-program, per-verdict
//! counters. A deliberately small HTTP/1.1 responder (one GET route, `Connection:
//! close`), bounded in what it reads and how long it waits, so a misbehaving client
//! can neither exhaust memory nor hold a task forever.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tracing::debug;

use dataplane_ebpf::counters::{Counter, Verdict};

use manager::{gossip::GossipCounters, secure::RejectCounters, Manager};

use crate::{
    dataplane::Counters,
    peer::{Peers, RejectedCounters},
};

/// Longest request head we read; `GET /metrics` needs far less.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Renders counter rows (program, verdict, value) in the Prometheus text format.
pub fn render(rows: &[(&'static str, Verdict, Counter)]) -> String {
    let mut out = String::new();
    let mut programs: Vec<&str> = rows.iter().map(|(p, _, _)| *p).collect();
    programs.dedup();
    for program in programs {
        for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
            let metric = format!("skein_{program}_{unit}_total");
            let _ = writeln!(
                out,
                "# HELP {metric} {help} handled by the {program} eBPF program, by verdict."
            );
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (_, verdict, counter) in rows.iter().filter(|(p, _, _)| *p == program) {
                let value = if unit == "packets" {
                    counter.packets
                } else {
                    counter.bytes
                };
                match verdict.reason() {
                    None => {
                        let _ = writeln!(out, "{metric}{{verdict=\"{}\"}} {value}", verdict.name());
                    }
                    Some(reason) => {
                        let _ = writeln!(
                            out,
                            "{metric}{{verdict=\"{}\",reason=\"{reason}\"}} {value}",
                            verdict.name()
                        );
                    }
                }
            }
        }
    }
    out
}

/// Renders the gossip layer's counters and the cluster's size as this node sees it.
pub fn render_gossip(
    counters: &GossipCounters,
    rejects: &RejectCounters,
    ready: usize,
    known: usize,
) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP skein_gossip_{name} {help}");
        let _ = writeln!(out, "# TYPE skein_gossip_{name} counter");
        let _ = writeln!(out, "skein_gossip_{name} {value}");
    };
    counter(
        "datagrams_in_total",
        "Gossip datagrams received.",
        counters.datagrams_in,
    );
    counter(
        "datagrams_out_total",
        "Gossip datagrams sent.",
        counters.datagrams_out,
    );
    counter(
        "bytes_in_total",
        "Gossip bytes received (sealed).",
        counters.bytes_in,
    );
    counter(
        "bytes_out_total",
        "Gossip bytes sent (sealed).",
        counters.bytes_out,
    );
    counter(
        "malformed_total",
        "Authenticated datagrams with a malformed payload.",
        counters.malformed,
    );
    counter(
        "swim_errors_total",
        "SWIM messages refused by the membership protocol.",
        counters.swim_errors,
    );
    counter(
        "records_applied_total",
        "State records that changed the local store.",
        counters.records_applied,
    );
    counter(
        "records_rejected_total",
        "State records refused as invalid.",
        counters.records_rejected,
    );
    let _ = writeln!(out, "# HELP skein_gossip_rejected_total Datagrams dropped before decryption or by replay protection, by reason.");
    let _ = writeln!(out, "# TYPE skein_gossip_rejected_total counter");
    for (reason, value) in rejects.iter() {
        let _ = writeln!(
            out,
            "skein_gossip_rejected_total{{reason=\"{reason}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP skein_cluster_nodes Nodes known to this node, by status."
    );
    let _ = writeln!(out, "# TYPE skein_cluster_nodes gauge");
    let _ = writeln!(out, "skein_cluster_nodes{{status=\"ready\"}} {ready}");
    let _ = writeln!(
        out,
        "skein_cluster_nodes{{status=\"down\"}} {}",
        known - ready
    );
    out
}

/// Renders the peer RPC's refused frames by reason.
pub(crate) fn render_peer(rejected: &RejectedCounters) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP skein_peer_rejected_total Peer RPC frames refused (connection closed), by reason."
    );
    let _ = writeln!(out, "# TYPE skein_peer_rejected_total counter");
    for (reason, value) in rejected.iter() {
        let _ = writeln!(
            out,
            "skein_peer_rejected_total{{reason=\"{reason}\"}} {value}"
        );
    }
    out
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    counters: Arc<Mutex<Counters>>,
    manager: Option<Manager>,
    peers: Option<Arc<Peers>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                debug!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let counters = counters.clone();
        let manager = manager.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            if let Err(error) =
                tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, counters, manager, peers))
                    .await
            {
                debug!(%peer, %error, "metrics request timed out");
            }
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    counters: Arc<Mutex<Counters>>,
    manager: Option<Manager>,
    peers: Option<Arc<Peers>>,
) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST_BYTES {
            let _ = write_response(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request too large\n",
            )
            .await;
            return;
        }
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, body) = match (method, target) {
        (b"GET", b"/metrics") => {
            let mut body = render(&counters.lock().await.read());
            if let Some(manager) = &manager {
                if let Ok((gossip, rejects)) = manager.counters().await {
                    let view = manager.view();
                    body += &render_gossip(&gossip, &rejects, view.ready_count(), view.nodes.len());
                }
            }
            if let Some(peers) = &peers {
                body += &render_peer(peers.rejected());
            }
            ("200 OK", body)
        }
        (b"GET", _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "only GET is supported\n".to_owned(),
        ),
    };
    let _ = write_response(&mut stream, status, &body).await;
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_family_per_program_and_unit() {
        let rows = [
            (
                "xdp_underlay",
                Verdict::PASS,
                Counter {
                    packets: 3,
                    bytes: 180,
                },
            ),
            ("xdp_underlay", Verdict::DROP, Counter::default()),
            (
                "tc_endpoint_ingress",
                Verdict::PASS,
                Counter {
                    packets: 1,
                    bytes: 60,
                },
            ),
        ];
        let text = render(&rows);
        assert!(text.contains("# TYPE skein_xdp_underlay_packets_total counter\n"));
        assert!(text.contains("skein_xdp_underlay_packets_total{verdict=\"pass\"} 3\n"));
        assert!(text.contains("skein_xdp_underlay_bytes_total{verdict=\"pass\"} 180\n"));
        assert!(text.contains("skein_xdp_underlay_packets_total{verdict=\"drop\"} 0\n"));
        assert!(text.contains("skein_tc_endpoint_ingress_bytes_total{verdict=\"pass\"} 60\n"));
        assert_eq!(text.matches("# TYPE").count(), 4);
    }

    #[test]
    fn renders_peer_rejections_by_reason() {
        let text = render_peer(&RejectedCounters::default());
        assert!(text.contains("# TYPE skein_peer_rejected_total counter\n"));
        for reason in [
            "forged",
            "oversized",
            "truncated",
            "wrong_direction",
            "malformed",
        ] {
            assert!(
                text.contains(&format!(
                    "skein_peer_rejected_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{text}"
            );
        }
    }
}
