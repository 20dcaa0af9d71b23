//! Reads an agent's `/metrics` from inside its host, for the demo and the tests.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::testbed::Host;

/// The agent's default metrics address; it is per network namespace, so every host's
/// agent can use it.
pub const METRICS_URL: &str = "http://127.0.0.1:9946/metrics";

/// Every sample of the agent's `/metrics`, keyed by `name{labels}`.
pub fn scrape(host: &Host) -> Result<BTreeMap<String, u64>> {
    let text = host
        .run("curl", ["-sf", "--max-time", "5", METRICS_URL])
        .with_context(|| format!("scraping {METRICS_URL} on {}", host.name()))?;
    parse(&text)
}

/// Parses the Prometheus text format as the agent writes it (integer samples).
pub fn parse(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (key, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("metrics line without a value: {line:?}"))?;
        let value = value
            .parse()
            .with_context(|| format!("metrics value is not an integer: {line:?}"))?;
        samples.insert(key.to_owned(), value);
    }
    Ok(samples)
}

/// The `pass` packets counted by the underlay XDP program.
pub const XDP_PASS_PACKETS: &str = "skein_xdp_underlay_packets_total{verdict=\"pass\"}";
/// The `pass` bytes counted by the underlay XDP program.
pub const XDP_PASS_BYTES: &str = "skein_xdp_underlay_bytes_total{verdict=\"pass\"}";
/// Packets from an endpoint veth without its port entry, dropped (fail closed).
pub const TC_NO_PORT_PACKETS: &str =
    "skein_tc_endpoint_ingress_packets_total{verdict=\"drop\",reason=\"no_port\"}";

/// The routing mesh's per-verdict packet counters (`dataplane_ebpf::counters`, slots 20..),
/// as the `verdict` label of `/metrics`.
pub const MESH_VERDICTS: &[&str] = &[
    "mesh_new_flow",
    "mesh_flow",
    "mesh_reply",
    "mesh_deliver",
    "mesh_no_backend",
    "mesh_reset",
    "mesh_frag_needed",
    "mesh_refused",
    "mesh_invalid",
];

/// Packets counted with `verdict="<verdict>"` by any program (`skein_*_packets_total`):
/// which program counts a mesh verdict (the XDP or a TC one) does not matter to a test.
pub fn verdict_packets(samples: &BTreeMap<String, u64>, verdict: &str) -> u64 {
    // A verdict (`verdict="drop"`) or a reason (`reason="mesh_reset"`): no reason is named
    // like a verdict.
    let (label, reason) = (
        format!("verdict=\"{verdict}\""),
        format!("reason=\"{verdict}\""),
    );
    samples
        .iter()
        .filter(|(key, _)| {
            key.split_once('{').is_some_and(|(name, labels)| {
                name.starts_with("skein_")
                    && name.ends_with("_packets_total")
                    && labels
                        .trim_end_matches('}')
                        .split(',')
                        .any(|l| l == label || l == reason)
            })
        })
        .map(|(_, v)| v)
        .sum()
}

/// One sample, or an error naming it.
pub fn sample(samples: &BTreeMap<String, u64>, key: &str) -> Result<u64> {
    samples
        .get(key)
        .copied()
        .with_context(|| format!("/metrics has no sample {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_rejects_garbage() {
        let text = "# HELP x y\n# TYPE x counter\nx{verdict=\"pass\"} 12\nx{verdict=\"drop\"} 0\n";
        let samples = parse(text).unwrap();
        assert_eq!(sample(&samples, "x{verdict=\"pass\"}").unwrap(), 12);
        assert_eq!(samples.len(), 2);
        assert!(parse("x{a=\"b\"} twelve\n").is_err());
        assert!(parse("novalue\n").is_err());
        assert!(sample(&samples, "missing").is_err());
    }

    #[test]
    fn verdict_packets_sums_every_program_and_nothing_else() {
        let text = "skein_xdp_underlay_packets_total{verdict=\"mesh_invalid\"} 3\n\
                    skein_tc_underlay_ingress_packets_total{verdict=\"mesh_invalid\",reason=\"x\"} 4\n\
                    skein_xdp_underlay_bytes_total{verdict=\"mesh_invalid\"} 900\n\
                    skein_xdp_underlay_packets_total{verdict=\"mesh_invalid_other\"} 7\n\
                    skein_xdp_underlay_packets_total{verdict=\"mesh_reset\"} 1\n";
        let samples = parse(text).unwrap();
        assert_eq!(verdict_packets(&samples, "mesh_invalid"), 7);
        assert_eq!(verdict_packets(&samples, "mesh_reset"), 1);
        assert_eq!(verdict_packets(&samples, "mesh_no_backend"), 0);
    }
}
