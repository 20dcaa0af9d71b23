//! The routing mesh's settings: its conntrack idle timeouts (`--mesh-*-timeout`, or the
//! `[mesh]` table of the config file), each with its default and why.
//!
//! The timeouts are what the XDP conntrack (`MESH_FLOWS`) lets a flow sit idle before its
//! entry is considered gone (`dataplane_ebpf::mesh::expired`): a TCP segment for an expired
//! flow gets a reset (never a silent hang), a SYN or UDP datagram opens a new flow. The
//! agent writes them into `MESH_CONFIG` in nanoseconds and sweeps expired entries.

use std::time::Duration;

use dataplane_ebpf::mesh::MeshConfig;

/// Established TCP: above the kernel's keepalive horizon (`tcp_keepalive_time` 7200 s +
/// `tcp_keepalive_probes` 9 × `tcp_keepalive_intvl` 75 s = 7875 s), so a connection kept
/// alive by default keepalives never expires under it. Cilium's default too; Swarm's IPVS
/// default of 900 s kills idle connections (moby#31208).
pub(crate) const DEFAULT_ESTABLISHED: Duration = Duration::from_secs(8000);
/// A handshake not completed: a client's SYN retries (1 + 2 + 4 + 8 + 16 s by default)
/// fit in a minute; a half-open entry should not outlive that by much (SYN floods).
pub(crate) const DEFAULT_SYN: Duration = Duration::from_secs(60);
/// After FIN both ways or a RST: long enough for the last ACK and a retransmitted FIN
/// to cross, short enough that the port pair is soon reusable for a new flow.
pub(crate) const DEFAULT_CLOSING: Duration = Duration::from_secs(10);
/// UDP has no end: a flow lives while datagrams flow. 60 s is the common choice (Linux
/// conntrack's `nf_conntrack_udp_timeout_stream` is 120 s, unreplied 30 s; Cilium 60 s)
/// and covers request/response protocols with quiet pauses such as DNS or QUIC keepalives
/// (QUIC's default idle timeout is 30 s).
pub(crate) const DEFAULT_UDP: Duration = Duration::from_secs(60);

/// The mesh conntrack's idle timeouts, resolved and checked ([`MeshTimeouts::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MeshTimeouts {
    pub(crate) established: Duration,
    pub(crate) syn: Duration,
    pub(crate) closing: Duration,
    pub(crate) udp: Duration,
}

impl Default for MeshTimeouts {
    fn default() -> MeshTimeouts {
        MeshTimeouts {
            established: DEFAULT_ESTABLISHED,
            syn: DEFAULT_SYN,
            closing: DEFAULT_CLOSING,
            udp: DEFAULT_UDP,
        }
    }
}

impl MeshTimeouts {
    /// Each is longer than zero (a zero timeout would expire every flow at its next
    /// packet); an established flow lives at least as long as one still opening or
    /// closing (otherwise completing the handshake would shorten a flow's life, and a
    /// closing flow would outlive an open one). The message names the flags.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("--mesh-established-timeout", self.established),
            ("--mesh-syn-timeout", self.syn),
            ("--mesh-closing-timeout", self.closing),
            ("--mesh-udp-timeout", self.udp),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        if self.established < self.syn {
            return Err(format!(
                "--mesh-established-timeout ({:?}) is shorter than --mesh-syn-timeout ({:?}); an established flow must live at least as long as one being opened",
                self.established, self.syn
            ));
        }
        if self.established < self.closing {
            return Err(format!(
                "--mesh-established-timeout ({:?}) is shorter than --mesh-closing-timeout ({:?}); a closing flow must not outlive an open one",
                self.established, self.closing
            ));
        }
        Ok(())
    }

    /// `config` with these timeouts in nanoseconds (saturating: every duration the
    /// grammar accepts fits, it tops out at `i64::MAX` ns).
    pub(crate) fn apply(&self, config: MeshConfig) -> MeshConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        MeshConfig {
            syn_timeout_ns: ns(self.syn),
            established_timeout_ns: ns(self.established),
            closing_timeout_ns: ns(self.closing),
            udp_timeout_ns: ns(self.udp),
            ..config
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_above_the_keepalive_horizon() {
        let defaults = MeshTimeouts::default();
        defaults.check().unwrap();
        // tcp_keepalive_time + tcp_keepalive_probes × tcp_keepalive_intvl.
        assert!(defaults.established > Duration::from_secs(7200 + 9 * 75));
        let config = defaults.apply(MeshConfig {
            ingress_vni: 7,
            mss: 1410,
            ..MeshConfig::default()
        });
        assert_eq!(config.established_timeout_ns, 8_000_000_000_000);
        assert_eq!(config.syn_timeout_ns, 60_000_000_000);
        assert_eq!(config.closing_timeout_ns, 10_000_000_000);
        assert_eq!(config.udp_timeout_ns, 60_000_000_000);
        assert_eq!((config.ingress_vni, config.mss), (7, 1410), "kept");
    }

    #[test]
    fn zero_and_inverted_timeouts_are_refused() {
        let zero = MeshTimeouts {
            udp: Duration::ZERO,
            ..MeshTimeouts::default()
        };
        assert!(zero.check().unwrap_err().contains("--mesh-udp-timeout"));
        let short = MeshTimeouts {
            established: Duration::from_secs(30),
            ..MeshTimeouts::default()
        };
        let error = short.check().unwrap_err();
        assert!(error.contains("--mesh-syn-timeout"), "{error}");
        let closing = MeshTimeouts {
            established: Duration::from_secs(60),
            syn: Duration::from_secs(1),
            closing: Duration::from_secs(61),
            ..MeshTimeouts::default()
        };
        let error = closing.check().unwrap_err();
        assert!(error.contains("--mesh-closing-timeout"), "{error}");
        // Short ones for tests are fine as long as they are ordered.
        MeshTimeouts {
            established: Duration::from_secs(4),
            syn: Duration::from_secs(1),
            closing: Duration::from_secs(1),
            udp: Duration::from_secs(1),
        }
        .check()
        .unwrap();
    }
}
