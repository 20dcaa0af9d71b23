//! The programs' aya-log records, copied into `tracing` as they arrive.

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// The programs' log ring buffer, readable from the async runtime.
pub(crate) struct EbpfLogs(AsyncFd<EbpfLogger<&'static dyn log::Log>>);

impl EbpfLogs {
    /// Registers the logger's ring buffer with the runtime (call it inside one).
    pub(super) fn new(logger: EbpfLogger<&'static dyn log::Log>) -> std::io::Result<EbpfLogs> {
        // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, for as
        // long as it lives inside the AsyncFd.
        Ok(EbpfLogs(unsafe { AsyncFd::register(logger) }?))
    }

    /// Copies records into `tracing` until the ring buffer fails; cancel it by dropping.
    pub(crate) async fn forward(mut self) {
        while let Ok(mut guard) = self.0.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}
