//! `/metrics` in the OpenMetrics text format (prometheus-client), served by the bounded
//! hyper server ([`crate::http_server`]): the dataplane's per-program, per-verdict counters,
//! the map-sync errors, the gossip layer's counters and the cluster's size, the peer RPC's
//! refused frames. Every value is read at scrape time from where it lives (the eBPF
//! counter maps, the manager, the peer RPC, [`MapSyncErrors`]) into a [`Snapshot`], which a
//! prometheus-client [`Collector`] writes out.

use std::{fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE},
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Mutex};

use dataplane_ebpf::counters::{Counter, Verdict};
use manager::Manager;

use crate::{
    dataplane::Counters,
    http_server::{self, Limits},
    peer::Peers,
    reconcile::{MapSyncErrors, SyncErrorReason},
};

/// What a scraper may hold: Prometheus keeps one connection per target.
const LIMITS: Limits = Limits {
    max_connections: 16,
    idle_timeout: Duration::from_secs(5),
    max_head: 8 * 1024,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the values come from; each is read at scrape time.
struct Sources {
    counters: Arc<Mutex<Counters>>,
    manager: Option<Manager>,
    peers: Option<Arc<Peers>>,
    sync_errors: Arc<MapSyncErrors>,
}

/// Serves `GET /metrics` on `listener` until the future is dropped (other paths get 404,
/// other methods 405).
pub(crate) async fn serve(
    listener: TcpListener,
    counters: Arc<Mutex<Counters>>,
    manager: Option<Manager>,
    peers: Option<Arc<Peers>>,
    sync_errors: Arc<MapSyncErrors>,
) {
    let sources = Arc::new(Sources {
        counters,
        manager,
        peers,
        sync_errors,
    });
    http_server::serve(listener, LIMITS, |_remote: SocketAddr| {
        let sources = sources.clone();
        service_fn(move |request| {
            let sources = sources.clone();
            async move { Ok::<_, std::convert::Infallible>(sources.answer(&request).await) }
        })
    })
    .await;
}

impl Sources {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        respond(request, || async { render(self.snapshot().await) }).await
    }

    async fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            programs: self.counters.lock().await.read(),
            sync_errors: self.sync_errors.totals(),
            ..Snapshot::default()
        };
        if let Some(manager) = &self.manager {
            if let Ok((gossip, rejects)) = manager.counters().await {
                let view = manager.view();
                snapshot.gossip = Some(Gossip {
                    counters: vec![
                        (
                            "datagrams_in",
                            "Gossip datagrams received.",
                            gossip.datagrams_in,
                        ),
                        (
                            "datagrams_out",
                            "Gossip datagrams sent.",
                            gossip.datagrams_out,
                        ),
                        (
                            "bytes_in",
                            "Gossip bytes received (sealed).",
                            gossip.bytes_in,
                        ),
                        ("bytes_out", "Gossip bytes sent (sealed).", gossip.bytes_out),
                        (
                            "malformed",
                            "Authenticated datagrams with a malformed payload.",
                            gossip.malformed,
                        ),
                        (
                            "swim_errors",
                            "SWIM messages refused by the membership protocol.",
                            gossip.swim_errors,
                        ),
                        (
                            "records_applied",
                            "State records that changed the local store.",
                            gossip.records_applied,
                        ),
                        (
                            "records_rejected",
                            "State records refused as invalid.",
                            gossip.records_rejected,
                        ),
                    ],
                    rejected: rejects.iter().collect(),
                    ready: view.ready_count(),
                    known: view.nodes.len(),
                });
            }
        }
        if let Some(peers) = &self.peers {
            snapshot.peer_rejected = Some(peers.rejected().iter().collect());
        }
        snapshot
    }
}

/// The routes: `GET /metrics` answers the exposition `metrics` renders, other paths 404,
/// other methods 405.
async fn respond<F: Future<Output = String>>(
    request: &Request<Incoming>,
    metrics: impl FnOnce() -> F,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics().await),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET is supported\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every value `/metrics` shows, read at one scrape.
#[derive(Debug, Default)]
struct Snapshot {
    /// (program, verdict, counter) of every eBPF program.
    programs: Vec<(&'static str, Verdict, Counter)>,
    /// The map-sync errors by map and reason.
    sync_errors: Vec<(&'static str, SyncErrorReason, u64)>,
    /// The gossip layer, when the agent runs one.
    gossip: Option<Gossip>,
    /// The peer RPC's refused frames by reason, when the agent serves it.
    peer_rejected: Option<Vec<(&'static str, u64)>>,
}

#[derive(Debug, Default)]
struct Gossip {
    /// (name after `skein_gossip_`, help, value) of the unlabelled counters.
    counters: Vec<(&'static str, &'static str, u64)>,
    /// Datagrams refused before decryption or by replay protection, by reason.
    rejected: Vec<(&'static str, u64)>,
    ready: usize,
    known: usize,
}

/// The exposition of one scrape.
fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    // Writing into a String cannot fail; a collector error would leave a partial text.
    if let Err(fmt::Error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!("encoding /metrics failed");
    }
    out
}

/// A counter family: one sample per label set. `name` is without `_total`, which the
/// encoder appends to each sample.
fn counter_family<'l>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut programs: Vec<&str> = self.programs.iter().map(|(p, _, _)| *p).collect();
        programs.dedup();
        for program in programs {
            for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
                let samples = self.programs.iter().filter(|(p, _, _)| *p == program).map(
                    |(_, verdict, counter)| {
                        let mut labels = vec![("verdict", verdict.name())];
                        labels.extend(verdict.reason().map(|reason| ("reason", reason)));
                        let value = if unit == "packets" {
                            counter.packets
                        } else {
                            counter.bytes
                        };
                        (labels, value)
                    },
                );
                counter_family(
                    &mut encoder,
                    &format!("skein_{program}_{unit}"),
                    &format!("{help} handled by the {program} eBPF program, by verdict."),
                    samples,
                )?;
            }
        }
        counter_family(
            &mut encoder,
            "skein_dataplane_sync_errors",
            "Errors syncing the agent's desired state into a pinned map (the map did not \
             converge on that pass), by map and reason.",
            self.sync_errors
                .iter()
                .map(|&(map, reason, n)| (vec![("map", map), ("reason", reason.label())], n)),
        )?;
        if let Some(gossip) = &self.gossip {
            for &(name, help, value) in &gossip.counters {
                let name = format!("skein_gossip_{name}");
                let metric = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(metric)?;
            }
            counter_family(
                &mut encoder,
                "skein_gossip_rejected",
                "Datagrams dropped before decryption or by replay protection, by reason.",
                gossip
                    .rejected
                    .iter()
                    .map(|&(reason, n)| (vec![("reason", reason)], n)),
            )?;
            let mut nodes = encoder.encode_descriptor(
                "skein_cluster_nodes",
                "Nodes known to this node, by status.",
                None,
                MetricType::Gauge,
            )?;
            let down = gossip.known.saturating_sub(gossip.ready);
            for (status, value) in [("ready", gossip.ready), ("down", down)] {
                let labels = [("status", status)];
                ConstGauge::new(value as i64).encode(nodes.encode_family(&labels)?)?;
            }
        }
        if let Some(rejected) = &self.peer_rejected {
            counter_family(
                &mut encoder,
                "skein_peer_rejected",
                "Peer RPC frames refused (connection closed), by reason.",
                rejected
                    .iter()
                    .map(|&(reason, n)| (vec![("reason", reason)], n)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    fn rows() -> Vec<(&'static str, Verdict, Counter)> {
        vec![
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
        ]
    }

    /// The samples of a text, keyed by `name{labels}` as xtask's scraper reads them.
    fn samples(text: &str) -> BTreeMap<&str, u64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (key, value) = l.rsplit_once(' ').unwrap();
                (key, value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn renders_one_family_per_program_and_unit() {
        let text = render(Snapshot {
            programs: rows(),
            ..Snapshot::default()
        });
        assert!(
            text.contains("# TYPE skein_xdp_underlay_packets counter\n"),
            "{text}"
        );
        let samples = samples(&text);
        assert_eq!(
            samples["skein_xdp_underlay_packets_total{verdict=\"pass\"}"],
            3
        );
        assert_eq!(
            samples["skein_xdp_underlay_bytes_total{verdict=\"pass\"}"],
            180
        );
        assert_eq!(
            samples["skein_xdp_underlay_packets_total{verdict=\"drop\"}"],
            0
        );
        assert_eq!(
            samples["skein_tc_endpoint_ingress_bytes_total{verdict=\"pass\"}"],
            60
        );
        // The sync-error family is always declared, with no sample until an error.
        assert_eq!(text.matches("# TYPE").count(), 5);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn renders_a_verdicts_reason_as_a_second_label() {
        let text = render(Snapshot {
            programs: vec![(
                "tc_endpoint_ingress",
                Verdict::ENCAP,
                Counter {
                    packets: 7,
                    bytes: 700,
                },
            )],
            ..Snapshot::default()
        });
        assert_eq!(
            samples(&text)
                ["skein_tc_endpoint_ingress_packets_total{verdict=\"redirect\",reason=\"encap\"}"],
            7,
            "{text}"
        );
    }

    #[test]
    fn renders_map_sync_errors_by_map_and_reason() {
        let errors = MapSyncErrors::default();
        for _ in 0..3 {
            errors.record("OVERLAY_ENDPOINTS", SyncErrorReason::Full, "full".into());
        }
        errors.record("OVERLAY_PORTS", SyncErrorReason::Remove, "gone".into());
        let text = render(Snapshot {
            sync_errors: errors.totals(),
            ..Snapshot::default()
        });
        assert!(
            text.contains("# TYPE skein_dataplane_sync_errors counter\n"),
            "{text}"
        );
        let samples = samples(&text);
        assert_eq!(
            samples["skein_dataplane_sync_errors_total{map=\"OVERLAY_ENDPOINTS\",reason=\"full\"}"],
            3
        );
        assert_eq!(
            samples["skein_dataplane_sync_errors_total{map=\"OVERLAY_PORTS\",reason=\"remove\"}"],
            1
        );
    }

    #[test]
    fn renders_gossip_cluster_size_and_peer_rejections() {
        let text = render(Snapshot {
            gossip: Some(Gossip {
                counters: vec![("datagrams_in", "Gossip datagrams received.", 42)],
                rejected: vec![("forged", 2), ("replayed", 0)],
                ready: 2,
                known: 3,
            }),
            peer_rejected: Some(crate::peer::RejectedCounters::default().iter().collect()),
            ..Snapshot::default()
        });
        assert!(
            text.contains("# TYPE skein_cluster_nodes gauge\n"),
            "{text}"
        );
        let samples = samples(&text);
        assert_eq!(samples["skein_gossip_datagrams_in_total"], 42);
        assert_eq!(samples["skein_gossip_rejected_total{reason=\"forged\"}"], 2);
        assert_eq!(
            samples["skein_gossip_rejected_total{reason=\"replayed\"}"],
            0
        );
        assert_eq!(samples["skein_cluster_nodes{status=\"ready\"}"], 2);
        assert_eq!(samples["skein_cluster_nodes{status=\"down\"}"], 1);
        for reason in [
            "forged",
            "oversized",
            "truncated",
            "wrong_direction",
            "malformed",
        ] {
            let key = format!("skein_peer_rejected_total{{reason=\"{reason}\"}}");
            assert_eq!(samples.get(key.as_str()), Some(&0), "{text}");
        }
    }

    /// One request on a new connection; the whole answer, read until the server closes.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .expect("the server answers and closes")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_the_exposition_and_refuses_other_requests() {
        // The routes over real HTTP, with a fixed exposition: the dataplane needs root.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(http_server::serve(listener, LIMITS, |_| {
            service_fn(|request| async move {
                let exposition = || async { "x_total 1\n# EOF\n".to_owned() };
                Ok::<_, std::convert::Infallible>(respond(&request, exposition).await)
            })
        }));
        let close = "HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let answer = exchange(addr, &format!("GET /metrics {close}")).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!("content-type: {OPENMETRICS}\r\n")),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\nx_total 1\n# EOF\n"), "{answer}");
        let answer = exchange(addr, &format!("GET /nope {close}")).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert!(answer.ends_with("not found: try /metrics\n"), "{answer}");
        let answer = exchange(addr, &format!("POST /metrics {close}")).await;
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
        server.abort();
    }
}
