//! Skein's side of `bench mesh`: its services, created through the CLI, and where their
//! tasks landed (the reference's side is `reference.rs`).

use anyhow::{Context, Result};
use xtask::{
    cluster::{netns_with_ip, running_tasks, skein_ok},
    testbed::{skein_binary, wait_until, Testbed},
};

use super::{Side, LIMIT, SKEIN_DOWNLOAD, SKEIN_HTTP, SKEIN_UDP};

/// Skein's side: its three services, created through the CLI on h1.
pub(super) fn side(bed: &Testbed, blob_dir: &std::path::Path) -> Result<Side> {
    let h1 = bed.host(0);
    let skein = skein_binary()?.display().to_string();
    let blob = blob_dir.display().to_string();
    for (name, replicas, publish, command) in [
        (
            "web",
            "3",
            format!("{SKEIN_HTTP}:80"),
            vec![skein.as_str(), "whoami", "--port", "80"],
        ),
        (
            "sink",
            "1",
            format!("{SKEIN_UDP}:9/udp"),
            vec![skein.as_str(), "whoami", "--udp", "--port", "9"],
        ),
        (
            "dl",
            "1",
            format!("{SKEIN_DOWNLOAD}:8000"),
            vec![
                "/usr/bin/python3",
                "-m",
                "http.server",
                "8000",
                "--directory",
                blob.as_str(),
            ],
        ),
    ] {
        let mut a = vec![
            "service",
            "create",
            name,
            "--replicas",
            replicas,
            "--publish",
            &publish,
            "--",
        ];
        a.extend(command);
        skein_ok(h1, &a)?;
    }
    let one = |service: &str| -> Result<(usize, String)> {
        let t = wait_until(&format!("{service}'s task running"), LIMIT, || {
            running_tasks(h1, service).into_iter().next()
        })?;
        let i = bed
            .hosts()
            .iter()
            .position(|h| h.netns() == t.host)
            .with_context(|| format!("{service}'s task is on {}, not a testbed host", t.host))?;
        Ok((i, netns_with_ip(bed.host(i), &t.ip)?))
    };
    let (sink_host, sink_ns) = one("sink")?;
    let (dl_host, dl_ns) = one("dl")?;
    Ok(Side {
        label: "Skein ",
        udp_ingress: (sink_host + 1) % 3,
        udp_port: SKEIN_UDP,
        udp_receiver: sink_ns,
        http_port: SKEIN_HTTP,
        download_ingress: (dl_host + 1) % 3,
        download_port: SKEIN_DOWNLOAD,
        download_backend: dl_ns,
    })
}
