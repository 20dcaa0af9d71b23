//! The client side shared by the command groups: one request to the local agent, and
//! printing its answer.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};

use super::output::{self, Format};
use crate::api::{self, Request, Response};

/// How long a client command waits for its agent: `network create` may wait for a
/// conflicting create elsewhere in the cluster to be resolved.
pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `--socket`, or the default for this network namespace.
pub(super) fn default_socket(socket: Option<PathBuf>) -> PathBuf {
    socket.unwrap_or_else(|| crate::config::default_paths().socket)
}

/// A single-threaded runtime for a client command.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Sends `request` to the agent on `socket`.
pub(super) async fn call(socket: &Path, request: &Request) -> Result<Response> {
    api::call(socket, request, CLIENT_TIMEOUT).await
}

/// Sends one request, prints the answer in `format`.
pub(super) fn request(socket: &Path, request: &Request, format: Format) -> Result<ExitCode> {
    print_response(runtime()?.block_on(call(socket, request))?, format)
}

/// Prints the agent's answer (lists in `format`) to stdout, or its error to stderr with a
/// failing exit status.
pub(super) fn print_response(response: Response, format: Format) -> Result<ExitCode> {
    match response {
        Response::Ok { body } => {
            let text = output::body(&body, format, output::now_ms());
            // `skein node ls | head -1` closes the pipe early; that is not an error.
            match std::io::stdout().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(e).context("writing to stdout")
                }
                _ => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}
