//! Running the calling thread inside a host's network namespace, for tests that use the
//! kernel directly (BPF_PROG_TEST_RUN presents packets on the thread's namespace's `lo`
//! and its FIB answers the programs' lookups).

use std::{fs::File, os::fd::AsRawFd};

use super::Host;

/// Moves this thread into a host's network namespace until dropped.
pub struct InNetns {
    original: File,
}

impl InNetns {
    /// Enters `host`'s namespace; panics (a test helper) if it cannot.
    pub fn enter(host: &Host) -> InNetns {
        let original = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{}", host.netns())).expect("host netns");
        // SAFETY: setns on a namespace fd we own; it affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        InNetns { original }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: as above, back to where this thread was.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
