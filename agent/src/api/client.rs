//! The CLI's side of the local API: one request, one response, over the agent's socket.

use std::{io, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{Request, Response};

/// Longest response accepted: `node ls` of a few hundred nodes is well under 1 MiB.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Sends `request` to the agent listening on `path` and returns its answer, waiting at
/// most `timeout` for the whole exchange. Errors are one sentence for the user.
pub(crate) async fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    tokio::time::timeout(timeout, exchange(path, request))
        .await
        .map_err(|_| {
            anyhow!(
                "the agent on {} did not answer within {timeout:?}; see its log",
                path.display()
            )
        })?
}

async fn exchange(path: &Path, request: &Request) -> Result<Response> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no agent is listening on {} (start one with `skein agent`, or pass --socket / SKEIN_SOCKET)",
                path.display()
            )
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "permission denied on {}: the agent's socket is root-only, so run this as root",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to the agent on {}", path.display()))
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).context("encoding the request")?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .with_context(|| format!("sending the request to the agent on {}", path.display()))?;

    let mut answer = Vec::new();
    BufReader::new(read)
        .take(MAX_RESPONSE_BYTES)
        .read_until(b'\n', &mut answer)
        .await
        .with_context(|| format!("reading the agent's answer on {}", path.display()))?;
    if answer.is_empty() {
        bail!(
            "the agent on {} closed the connection without answering; see its log",
            path.display()
        );
    }
    serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the agent on {} answered something this `skein` cannot read; are the CLI and the agent the same version?",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_agent_is_one_clear_sentence() {
        let path = std::env::temp_dir().join(format!("skein-no-agent-{}.sock", std::process::id()));
        let error = call(&path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "no agent is listening on {} (start one with `skein agent`, or pass --socket / SKEIN_SOCKET)",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn a_dead_agents_socket_is_no_agent() {
        let path =
            std::env::temp_dir().join(format!("skein-dead-agent-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let error = call(&path, &Request::NodeLs, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(error.starts_with("no agent is listening on"), "{error}");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        let path =
            std::env::temp_dir().join(format!("skein-silent-agent-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // Accepts (the kernel's backlog does) but never answers.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let error = call(&path, &Request::NodeLs, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        assert!(error.contains("did not answer within 200ms"), "{error}");
    }
}
