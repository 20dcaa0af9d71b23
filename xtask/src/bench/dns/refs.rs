//! The reference servers of `bench dns`, serving exactly the records Skein answered: dnsmasq
//! (a hosts file, as Docker-less setups use it) and Knot DNS (an authoritative root zone,
//! the fast end). Both listen only on the host's loopback and never forward (dnsmasq:
//! `--no-resolv`, no `server=`; Knot is authoritative only).

use std::{fmt::Write as _, fs, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result};
use xtask::testbed::{wait_until, Host, Process};

/// The CPU every server under test is confined to (dnsperf gets the other).
pub(super) const SERVER_CPU: &str = "1";
pub(super) const DNSMASQ_PORT: u16 = 5354;
pub(super) const KNOT_PORT: u16 = 5355;

/// A name and its A records, as Skein answers them.
pub(super) type Records = [(String, Vec<Ipv4Addr>)];

/// dnsmasq's hosts file: one line per address (dnsmasq answers every line of a name).
pub(super) fn hosts_file(records: &Records) -> String {
    let mut out = String::new();
    for (name, ips) in records {
        for ip in ips {
            let _ = writeln!(out, "{ip} {name}");
        }
    }
    out
}

/// Knot's zone: the root zone (Skein's names are single-label or `tasks.NAME`), SOA and NS
/// at the apex, every record with `ttl` seconds.
pub(super) fn root_zone(records: &Records, ttl: u32) -> String {
    let mut out = format!(
        "$ORIGIN .\n$TTL {ttl}\n@ SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 {ttl}\n\
         @ NS ns.invalid.\n"
    );
    for (name, ips) in records {
        for ip in ips {
            let _ = writeln!(out, "{name}. A {ip}");
        }
    }
    out
}

fn knot_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{KNOT_PORT}\n    \
         udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         log:\n  - target: stderr\n    any: warning\n\
         database:\n    storage: \"{d}/db\"\n\
         zone:\n  - domain: .\n    file: \"{d}/root.zone\"\n    storage: \"{d}\"\n"
    )
}

/// Starts dnsmasq in `host` on 127.0.0.1:[`DNSMASQ_PORT`], confined to [`SERVER_CPU`],
/// answering `records` with `ttl`, cache off (hosts answers never go through it anyway).
pub(super) fn start_dnsmasq(host: &Host, records: &Records, ttl: u32) -> Result<Process> {
    let hosts = host.dir().join("dnsmasq.hosts");
    fs::write(&hosts, hosts_file(records)).context("writing dnsmasq's hosts file")?;
    let mut cmd = host.command("taskset");
    cmd.args(["-c", SERVER_CPU, "dnsmasq", "--keep-in-foreground"])
        .args(["--no-resolv", "--no-hosts", "--no-poll", "--user=root"])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={DNSMASQ_PORT}"))
        .arg(format!("--local-ttl={ttl}"))
        .args(["--cache-size=0", "--pid-file=", "--dns-forward-max=1000"]);
    let process = host.spawn(cmd, "dnsmasq")?;
    wait_answers(host, DNSMASQ_PORT, &records[0])?;
    Ok(process)
}

/// Starts knotd in `host` on 127.0.0.1:[`KNOT_PORT`] (one UDP worker), confined to
/// [`SERVER_CPU`].
pub(super) fn start_knot(host: &Host, records: &Records, ttl: u32) -> Result<Process> {
    let dir = host.dir().join("knot");
    fs::create_dir_all(&dir).context("creating Knot's directory")?;
    fs::write(dir.join("root.zone"), root_zone(records, ttl)).context("writing the zone")?;
    let conf = dir.join("knot.conf");
    fs::write(&conf, knot_conf(&dir)).context("writing knot.conf")?;
    let mut cmd = host.command("taskset");
    cmd.args(["-c", SERVER_CPU, "knotd", "-c"]).arg(&conf);
    let process = host.spawn(cmd, "knotd")?;
    wait_answers(host, KNOT_PORT, &records[0])?;
    Ok(process)
}

/// Waits until the server on `port` answers `record`'s name with its addresses.
pub(super) fn wait_answers(host: &Host, port: u16, record: &(String, Vec<Ipv4Addr>)) -> Result<()> {
    let mut want = record.1.clone();
    want.sort();
    wait_until(
        &format!("{} answered {want:?} on port {port}", record.0),
        Duration::from_secs(20),
        || match super::resolve(host, port, &record.0) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(anyhow::anyhow!("answered {got:?}")),
            Err(e) => Err(e),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(String, Vec<Ipv4Addr>)> {
        vec![
            ("web".into(), vec![Ipv4Addr::new(10, 0, 0, 5)]),
            (
                "tasks.web".into(),
                vec![Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 8)],
            ),
        ]
    }

    #[test]
    fn both_references_hold_every_address_of_every_name() {
        assert_eq!(
            hosts_file(&records()),
            "10.0.0.5 web\n10.0.0.7 tasks.web\n10.0.0.8 tasks.web\n"
        );
        let zone = root_zone(&records(), 2);
        assert!(zone.starts_with("$ORIGIN .\n$TTL 2\n@ SOA "));
        assert!(zone.ends_with("web. A 10.0.0.5\ntasks.web. A 10.0.0.7\ntasks.web. A 10.0.0.8\n"));
        let conf = knot_conf(Path::new("/r/h1/knot"));
        assert!(
            conf.contains("listen: 127.0.0.1@5355\n")
                && conf.contains("file: \"/r/h1/knot/root.zone\"")
        );
    }
}
