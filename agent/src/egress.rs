//! Egress: endpoints reach the host's networks and beyond through their host, source-NATed
//! to the host's address (as Docker's gateway bridge does). The endpoint program hands such
//! traffic to the host stack (`to_host`); the host routes it and an nftables masquerade
//! rule rewrites the source, and conntrack the replies. Traffic between overlay subnets
//! never gets here (the datapath keeps it on the overlay or drops it).
//!
//! The table is this agent's alone (`ip skein`, in its network namespace) and replaced
//! atomically in one `nft -f` transaction, so re-applying is idempotent.

use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

const TABLE: &str = "skein";

/// The nftables script that makes the masquerade rule for `subnets`.
fn ruleset(subnets: &[Ipv4Net]) -> String {
    let mut script =
        format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    script.push_str("  set overlay {\n    type ipv4_addr\n    flags interval\n");
    if !subnets.is_empty() {
        let elements: Vec<String> = subnets.iter().map(Ipv4Net::to_string).collect();
        script.push_str(&format!("    elements = {{ {} }}\n", elements.join(", ")));
    }
    script.push_str("  }\n");
    script.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    script.push_str("    ip saddr @overlay ip daddr != @overlay masquerade\n  }\n}\n");
    script
}

/// Installs (or replaces) the masquerade rule for `subnets` and turns on IPv4 forwarding.
pub(crate) fn apply(subnets: &[Ipv4Net]) -> Result<()> {
    fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("enabling IPv4 forwarding for egress")?;
    nft(&ruleset(subnets))
}

/// Removes the table (`agent leave` / `cleanup`); absent is fine.
pub(crate) fn remove() -> Result<()> {
    nft(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables for endpoint egress)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_replaces_the_table_and_lists_the_subnets() {
        let script = ruleset(&[
            "10.10.0.0/24".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
        ]);
        assert!(script.starts_with("table ip skein {}\ndelete table ip skein\n"));
        assert!(script.contains("elements = { 10.10.0.0/24, 10.20.0.0/16 }"));
        assert!(script.contains("ip saddr @overlay ip daddr != @overlay masquerade"));
        assert!(
            !ruleset(&[]).contains("elements"),
            "an empty set has no elements line"
        );
    }
}
