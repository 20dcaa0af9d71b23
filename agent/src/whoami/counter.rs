//! `skein whoami --counter`: the seeds' tutorial service (`subicura/counter`). Every HTTP
//! request counts one hit for this task's hostname in a Redis hash and is answered with
//! every task's count, one `<hostname> > <count>` line each, in the order Redis keeps them
//! (first hit first), then `RemoteAddr:` (the client as this task saw it, which the
//! routing mesh keeps).
//!
//! Redis is found by name (`--redis-host`, `REDIS_HOST` as in the tutorial), through the
//! task's resolver — service discovery DNS. The Redis client is blocking, so each hit runs
//! on tokio's blocking pool; one connection is kept and re-opened after an error.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

/// The Redis hash holding one field per hostname.
const HITS_KEY: &str = "hits";
/// Connect, read and write timeout towards Redis: a request never waits longer for it.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Counts hits in Redis.
#[derive(Clone)]
pub(crate) struct Counter {
    client: redis::Client,
    connection: Arc<Mutex<Option<redis::Connection>>>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("redis", self.client.get_connection_info())
            .finish_non_exhaustive()
    }
}

impl Counter {
    /// A counter for Redis at `host` (`NAME` or `NAME:PORT`, port 6379 by default). Nothing
    /// is resolved or connected until the first hit, so the service may start before Redis.
    pub(crate) fn new(host: &str) -> anyhow::Result<Counter> {
        let url = if host.contains(':') {
            format!("redis://{host}/")
        } else {
            format!("redis://{host}:6379/")
        };
        let client =
            redis::Client::open(url.as_str()).with_context(|| format!("redis host {host:?}"))?;
        Ok(Counter {
            client,
            connection: Arc::new(Mutex::new(None)),
        })
    }

    /// Counts one hit for `hostname` and returns the body: every hostname's count, then
    /// `RemoteAddr: {remote}`.
    pub(crate) async fn hit(&self, hostname: &str, remote: &str) -> anyhow::Result<String> {
        let this = self.clone();
        let hostname = hostname.to_owned();
        let counts = tokio::task::spawn_blocking(move || this.hit_blocking(&hostname))
            .await
            .context("the Redis call panicked")??;
        Ok(render(&counts, remote))
    }

    fn hit_blocking(&self, hostname: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            let connection = self
                .client
                .get_connection_with_timeout(REDIS_TIMEOUT)
                .context("connecting to redis")?;
            connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
            connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
            *slot = Some(connection);
        }
        let Some(connection) = slot.as_mut() else {
            unreachable!("set above");
        };
        let result: redis::RedisResult<(Vec<(String, i64)>,)> = redis::pipe()
            .atomic()
            .cmd("HINCRBY")
            .arg(HITS_KEY)
            .arg(hostname)
            .arg(1)
            .ignore()
            .cmd("HGETALL")
            .arg(HITS_KEY)
            .query(connection);
        match result {
            Ok((counts,)) => Ok(counts),
            Err(error) => {
                // The next hit reconnects (Redis restarted or moved).
                *slot = None;
                Err(error).context("counting the hit in redis")
            }
        }
    }
}

/// One `<hostname> > <count>` line per task, then the client's address.
fn render(counts: &[(String, i64)], remote: &str) -> String {
    let mut text = String::new();
    for (hostname, count) in counts {
        let _ = writeln!(text, "{hostname} > {count}");
    }
    let _ = writeln!(text, "RemoteAddr: {remote}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_lists_every_count_then_the_client() {
        let counts = [("task-a".to_owned(), 2), ("task-b".to_owned(), 1)];
        assert_eq!(
            render(&counts, "10.0.0.9:41000"),
            "task-a > 2\ntask-b > 1\nRemoteAddr: 10.0.0.9:41000\n"
        );
    }

    #[test]
    fn hosts_without_a_port_get_redis_port() {
        let counter = Counter::new("redis").expect("valid");
        let info = format!("{:?}", counter.client.get_connection_info());
        assert!(info.contains("6379"), "{info}");
        assert!(Counter::new("redis:7000").is_ok());
    }
}
