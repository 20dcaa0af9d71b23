//! (c) of `bench mesh`: a backend's host killed, and the time until every request to every
//! surviving node succeeds again (Skein only: the reference has no control plane).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xtask::{
    cluster::{kill_host, revive_host, running_tasks},
    testbed::{wait_until, Host, Process, Testbed},
};

use super::{reference, LIMIT, SKEIN_HTTP};

/// Kills host `victim` (agent and tasks), waits until 6 requests in a row (3 to each
/// surviving node) all succeed, then restarts its agent and waits for one task per host.
pub(super) fn host_death(
    bed: &Testbed,
    agents: &mut [Process],
    victim: usize,
    token: &str,
) -> Result<Duration> {
    let h1 = bed.host(0);
    wait_until("web: one running task per host", LIMIT, || {
        let r = running_tasks(h1, "web");
        r.len() == 3
            && bed
                .hosts()
                .iter()
                .all(|h| r.iter().any(|t| t.host == h.netns()))
    })?;
    let survivors: Vec<&Host> = bed
        .hosts()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, h)| h)
        .collect();
    kill_host(bed.host(victim), &mut agents[victim])?;
    let start = Instant::now();
    let mut recovered = None;
    while start.elapsed() < LIMIT {
        let all_ok = survivors.iter().all(|h| {
            (0..3).all(|_| {
                reference::curl_ok(bed, &format!("http://{}:{SKEIN_HTTP}/", h.underlay_ip()), 1)
            })
        });
        if all_ok {
            recovered = Some(start.elapsed());
            break;
        }
    }
    let recovered = recovered.with_context(|| {
        format!(
            "requests still failing {LIMIT:?} after h{} died",
            victim + 1
        )
    })?;
    let seed = h1.underlay_ip().to_string();
    revive_host(bed.host(victim))?;
    agents[victim] = bed
        .host(victim)
        .start_agent(&["--join", &seed, "--token", token])?;
    Ok(recovered)
}
