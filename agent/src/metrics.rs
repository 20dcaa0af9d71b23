//! `/metrics` in the OpenMetrics text format (prometheus-client), served by the bounded
//! hyper server ([`crate::http_server`]): the dataplane's per-program, per-verdict counters,
//! the map-sync errors, the gossip layer's counters and the cluster's size, the peer RPC's
//! refused frames, the routing mesh's per-service and per-backend statistics and its
//! conntrack. Every value is read at scrape time from where it lives (the eBPF counter
//! maps, the manager, the peer RPC, [`MapSyncErrors`], the mesh's maps) into a
//! [`Snapshot`], which a prometheus-client [`Collector`] writes out — except the
//! conntrack's entry count, a walk of up to 262,144 keys, done at most once per
//! [`PRESENT_MAX_AGE`] (see [`MeshSource`]). `skein_build_info` names the running
//! binary (version, git commit, eBPF object hash; [`BuildInfo`]).

use std::{
    fmt,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

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
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Mutex};

use dataplane_ebpf::counters::{Counter, Verdict};
use manager::Manager;

use crate::{
    build_info::BuildInfo,
    dataplane::{Counters, MeshMaps},
    dns::{DnsCounters, DnsCounts},
    http_server::{self, Limits},
    peer::Peers,
    reconcile::{MapSyncErrors, MeshStatus, SyncErrorReason},
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
    mesh: Option<Mutex<MeshSource>>,
    dns: Option<Arc<DnsCounters>>,
}

/// How stale the conntrack's entry count (and so the eviction count derived from it) may
/// be: counting walks every key of `MESH_FLOWS` (a syscall per entry, up to 262,144: some
/// tenths of a second when full), too much for every scrape.
pub(crate) const PRESENT_MAX_AGE: Duration = Duration::from_secs(10);

/// The mesh's maps as `/metrics` reads them, with the conntrack figures of the last walk.
pub(crate) struct MeshSource {
    maps: MeshMaps,
    status: Arc<MeshStatus>,
    /// When the conntrack was last counted, and what it gave.
    conntrack: Option<(Instant, Conntrack)>,
}

impl MeshSource {
    pub(crate) fn new(maps: MeshMaps, status: Arc<MeshStatus>) -> MeshSource {
        MeshSource {
            maps,
            status,
            conntrack: None,
        }
    }

    /// Entries present and evictions: `inserted − deleted − swept − present`, where the
    /// programs count what they insert and delete (`MESH_CT_EVENTS`), the agent what it
    /// sweeps, and present is a walk of the keys; all read together, at most once per
    /// [`PRESENT_MAX_AGE`]. Never decreases (a counter), whatever the races between the
    /// reads.
    fn conntrack(&mut self) -> Option<Conntrack> {
        let fresh = self
            .conntrack
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PRESENT_MAX_AGE);
        if !fresh {
            let present = self.maps.count_flows().ok()?;
            let (inserted, deleted) = self.maps.ct_events().ok()?;
            let evictions = inserted
                .saturating_sub(deleted)
                .saturating_sub(self.status.flows_swept())
                .saturating_sub(present);
            let last = self.conntrack.as_ref().map_or(0, |(_, c)| c.evictions);
            self.conntrack = Some((
                Instant::now(),
                Conntrack {
                    present,
                    evictions: evictions.max(last),
                    flows_swept: 0,
                    replies_swept: 0,
                },
            ));
        }
        self.conntrack.as_ref().map(|(_, c)| Conntrack {
            flows_swept: self.status.flows_swept(),
            replies_swept: self.status.replies_swept(),
            ..*c
        })
    }

    fn read(&mut self) -> Mesh {
        let slots = self.status.slots();
        let rows = self
            .maps
            .stats()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, stats)| {
                let (service, _) = slots.get(&key.slot)?;
                let backend =
                    (key.backend_ip != [0; 4]).then(|| Ipv4Addr::from(key.backend_ip).to_string());
                Some(MeshRow {
                    service: service.clone(),
                    backend,
                    new_flows: stats.new_flows,
                    packets: stats.packets,
                    bytes: stats.bytes,
                })
            })
            .collect();
        Mesh {
            rows,
            conntrack: self.conntrack(),
        }
    }
}

/// Serves `GET /metrics` on `listener` until the future is dropped (other paths get 404,
/// other methods 405).
pub(crate) async fn serve(
    listener: TcpListener,
    counters: Arc<Mutex<Counters>>,
    manager: Option<Manager>,
    peers: Option<Arc<Peers>>,
    sync_errors: Arc<MapSyncErrors>,
    mesh: Option<MeshSource>,
    dns: Option<Arc<DnsCounters>>,
) {
    let sources = Arc::new(Sources {
        counters,
        manager,
        peers,
        sync_errors,
        mesh: mesh.map(Mutex::new),
        dns,
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
            build: Some(BuildInfo::current().clone()),
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
                    // Refusals after decryption share the datagram reasons' metric, so one
                    // counter shows everything a sender could not get in.
                    rejected: rejects
                        .iter()
                        .chain([
                            ("invalid_record", gossip.records_invalid),
                            ("unknown_kinds_over_limit", gossip.unknown_over_limit),
                            ("oversized", gossip.oversized),
                            // The socket filter's drops, with those of a full buffer.
                            ("dropped_by_kernel", gossip.kernel_dropped),
                            ("sync_from_unknown", gossip.sync_from_unknown),
                        ])
                        .collect(),
                    ready: view.ready_count(),
                    known: view.nodes.len(),
                });
            }
        }
        if let Some(peers) = &self.peers {
            snapshot.peer_rejected = Some(peers.rejected().iter().collect());
        }
        if let Some(mesh) = &self.mesh {
            snapshot.mesh = Some(mesh.lock().await.read());
        }
        snapshot.dns = self.dns.as_ref().map(|dns| dns.read());
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
    /// The running binary.
    build: Option<BuildInfo>,
    /// (program, verdict, counter) of every eBPF program.
    programs: Vec<(&'static str, Verdict, Counter)>,
    /// The map-sync errors by map and reason.
    sync_errors: Vec<(&'static str, SyncErrorReason, u64)>,
    /// The gossip layer, when the agent runs one.
    gossip: Option<Gossip>,
    /// The peer RPC's refused frames by reason, when the agent serves it.
    peer_rejected: Option<Vec<(&'static str, u64)>>,
    /// The routing mesh, when the agent runs one.
    mesh: Option<Mesh>,
    /// The DNS server's counters, when the agent runs one.
    dns: Option<DnsCounts>,
}

#[derive(Debug, Default)]
struct Mesh {
    rows: Vec<MeshRow>,
    /// `None` when the conntrack could not be read.
    conntrack: Option<Conntrack>,
}

/// One `MESH_STATS` row, summed over CPUs, labelled.
#[derive(Debug)]
struct MeshRow {
    service: String,
    /// `None`: the service's own row (refused new flows, dropped packets).
    backend: Option<String>,
    new_flows: u64,
    packets: u64,
    bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Conntrack {
    present: u64,
    evictions: u64,
    flows_swept: u64,
    replies_swept: u64,
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
        if let Some(build) = &self.build {
            // An OpenMetrics info: the sample is `skein_build_info{...} 1`.
            Info::new(build.labels()).encode(encoder.encode_descriptor(
                "skein_build",
                "The running agent's version, git commit and eBPF object SHA-256.",
                None,
                MetricType::Info,
            )?)?;
        }
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
        if let Some(mesh) = &self.mesh {
            encode_mesh(mesh, &mut encoder)?;
        }
        if let Some(dns) = &self.dns {
            encode_dns(dns, &mut encoder)?;
        }
        Ok(())
    }
}

fn encode_dns(dns: &DnsCounts, encoder: &mut DescriptorEncoder) -> fmt::Result {
    counter_family(
        encoder,
        "skein_dns_queries",
        "DNS queries answered (host listener and every endpoint namespace), by query type \
         and result code.",
        dns.queries
            .iter()
            .map(|&(qtype, rcode, n)| (vec![("type", qtype), ("rcode", rcode)], n)),
    )?;
    for (name, help, value) in [
        (
            "skein_dns_forwarded",
            "DNS queries for names that are not Skein's, forwarded upstream.",
            dns.forwarded,
        ),
        (
            "skein_dns_upstream_failures",
            "Forwarded DNS queries no upstream answered (timeout, error, too many in \
             flight): answered SERVFAIL.",
            dns.upstream_failures,
        ),
        (
            "skein_dns_malformed",
            "DNS messages refused as malformed: unreadable or a response (dropped), or \
             not exactly one question or not a query (FORMERR).",
            dns.malformed,
        ),
        (
            "skein_dns_overloaded",
            "DNS queries and TCP connections dropped over the bound on those in progress.",
            dns.overloaded,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)?;
    }
    Ok(())
}

fn encode_mesh(mesh: &Mesh, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let backends = || mesh.rows.iter().filter(|r| r.backend.is_some());
    let services = || mesh.rows.iter().filter(|r| r.backend.is_none());
    fn labels(r: &MeshRow) -> Vec<(&'static str, &str)> {
        let mut labels = vec![("service", r.service.as_str())];
        labels.extend(r.backend.as_deref().map(|b| ("backend", b)));
        labels
    }
    // The encoder borrows label values for the family's lifetime: collect first.
    let rows: Vec<(Vec<(&'static str, &str)>, &MeshRow)> =
        backends().map(|r| (labels(r), r)).collect();
    for (name, help, value) in [
        (
            "skein_mesh_new_flows",
            "New flows the routing mesh balanced to the backend, by service and backend.",
            (|r: &MeshRow| r.new_flows) as fn(&MeshRow) -> u64,
        ),
        (
            "skein_mesh_packets",
            "Packets the routing mesh forwarded to and from the backend (both directions).",
            |r: &MeshRow| r.packets,
        ),
        (
            "skein_mesh_bytes",
            "Bytes the routing mesh forwarded to and from the backend (both directions).",
            |r: &MeshRow| r.bytes,
        ),
    ] {
        counter_family(
            encoder,
            name,
            help,
            rows.iter().map(|(l, r)| (l.clone(), value(r))),
        )?;
    }
    let rows: Vec<(Vec<(&'static str, &str)>, &MeshRow)> =
        services().map(|r| (labels(r), r)).collect();
    counter_family(
        encoder,
        "skein_mesh_refused_flows",
        "New flows refused because the service had no serving task (TCP reset, ICMP port \
         unreachable), by service.",
        rows.iter().map(|(l, r)| (l.clone(), r.new_flows)),
    )?;
    counter_family(
        encoder,
        "skein_mesh_dropped_packets",
        "Packets to the service's published ports dropped or refused before reaching a \
         backend, by service (the reasons: the per-verdict program counters).",
        rows.iter().map(|(l, r)| (l.clone(), r.packets)),
    )?;
    counter_family(
        encoder,
        "skein_mesh_dropped_bytes",
        "Bytes of those packets, by service.",
        rows.iter().map(|(l, r)| (l.clone(), r.bytes)),
    )?;
    if let Some(ct) = mesh.conntrack {
        let gauge = encoder.encode_descriptor(
            "skein_mesh_conntrack_entries",
            "Flows in this node's mesh conntrack (counted at most every 10 s).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(ct.present).unwrap_or(i64::MAX)).encode(gauge)?;
        let evictions = encoder.encode_descriptor(
            "skein_mesh_conntrack_evictions",
            "Conntrack entries the kernel evicted under pressure (LRU): inserted − deleted \
             by the programs − swept by the agent − present (updated at most every 10 s).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(ct.evictions).encode(evictions)?;
        counter_family(
            encoder,
            "skein_mesh_conntrack_swept",
            "Expired or stale conntrack entries the agent deleted, by map.",
            [
                (vec![("map", "flows")], ct.flows_swept),
                (vec![("map", "replies")], ct.replies_swept),
            ],
        )?;
    }
    Ok(())
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
    fn renders_the_build_as_one_info_sample() {
        let build = BuildInfo {
            version: "0.1.0".into(),
            commit: "0123456789ab".into(),
            ebpf_sha256: "cd".repeat(32),
        };
        let text = render(Snapshot {
            build: Some(build),
            ..Snapshot::default()
        });
        assert!(text.contains("# TYPE skein_build info\n"), "{text}");
        let samples = samples(&text);
        let key = format!(
            "skein_build_info{{version=\"0.1.0\",commit=\"0123456789ab\",ebpf_sha256=\"{}\"}}",
            "cd".repeat(32)
        );
        assert_eq!(samples[key.as_str()], 1, "{text}");
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

    #[test]
    fn renders_mesh_statistics_per_service_and_backend_and_the_conntrack() {
        let row = |backend: Option<&str>, n: u64| MeshRow {
            service: "web".into(),
            backend: backend.map(Into::into),
            new_flows: n,
            packets: 10 * n,
            bytes: 100 * n,
        };
        let text = render(Snapshot {
            mesh: Some(Mesh {
                rows: vec![row(Some("10.10.0.2"), 3), row(None, 2)],
                conntrack: Some(Conntrack {
                    present: 5,
                    evictions: 1,
                    flows_swept: 4,
                    replies_swept: 6,
                }),
            }),
            ..Snapshot::default()
        });
        let samples = samples(&text);
        let backend = "{service=\"web\",backend=\"10.10.0.2\"}";
        assert_eq!(
            samples[format!("skein_mesh_new_flows_total{backend}").as_str()],
            3
        );
        assert_eq!(
            samples[format!("skein_mesh_packets_total{backend}").as_str()],
            30
        );
        assert_eq!(
            samples[format!("skein_mesh_bytes_total{backend}").as_str()],
            300
        );
        assert_eq!(
            samples["skein_mesh_refused_flows_total{service=\"web\"}"],
            2
        );
        assert_eq!(
            samples["skein_mesh_dropped_packets_total{service=\"web\"}"],
            20
        );
        assert_eq!(
            samples["skein_mesh_dropped_bytes_total{service=\"web\"}"],
            200
        );
        assert_eq!(samples["skein_mesh_conntrack_entries"], 5);
        assert_eq!(samples["skein_mesh_conntrack_evictions_total"], 1);
        assert_eq!(
            samples["skein_mesh_conntrack_swept_total{map=\"flows\"}"],
            4
        );
        assert_eq!(
            samples["skein_mesh_conntrack_swept_total{map=\"replies\"}"],
            6
        );
    }

    #[test]
    fn the_mesh_verdicts_are_exported_with_their_reasons() {
        // Counters::read walks Verdict::ALL, so every mesh verdict gets its sample.
        let text = render(Snapshot {
            programs: Verdict::ALL
                .iter()
                .map(|v| ("xdp_underlay", *v, Counter::default()))
                .collect(),
            ..Snapshot::default()
        });
        for reason in [
            "mesh_new_flow",
            "mesh_flow",
            "mesh_reply",
            "mesh_deliver",
            "mesh_no_backend",
            "mesh_reset",
            "mesh_frag_needed",
            "mesh_refused",
            "mesh_invalid",
        ] {
            assert!(
                text.contains(&format!("reason=\"{reason}\"")),
                "{reason} missing"
            );
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
