//! What the BPF_PROG_TEST_RUN tests share (`prog_test_run.rs`, `mesh_tc.rs`): running a
//! program on a frame and checking how it was counted.

use std::os::fd::{AsFd, BorrowedFd};

use agent::dataplane::Counters;
use aya::{programs::SchedClassifier, Ebpf};
use dataplane_ebpf::counters::Verdict;
use dataplane_ebpf_test_run::test_run;

/// Runs `program` on `frame` and checks the action and that the packet was counted
/// exactly once, in `verdict`'s slot. Returns the frame as the program left it.
pub(crate) fn expect(
    counters: &Counters,
    program: &'static str,
    fd: BorrowedFd<'_>,
    what: &str,
    frame: &[u8],
    action: u32,
    verdict: Verdict,
) -> Vec<u8> {
    let read = |v: Verdict| {
        counters
            .read()
            .into_iter()
            .filter(|(p, w, _)| *p == program && *w == v)
            .map(|(_, _, c)| c.packets)
            .sum::<u64>()
    };
    let total = || Verdict::ALL.iter().map(|&v| read(v)).sum::<u64>();
    let (slot_before, total_before) = (read(verdict), total());
    let out = test_run(fd, frame, 1).unwrap_or_else(|e| panic!("{program} on {what}: {e}"));
    assert_eq!(out.retval, action, "{program} action for {what}");
    assert_eq!(
        (read(verdict) - slot_before, total() - total_before),
        (1, 1),
        "{program} counts {what} once, as {}/{:?}",
        verdict.name(),
        verdict.reason()
    );
    out.data_out
}

pub(crate) fn classifier_fd<'a>(ebpf: &'a mut Ebpf, name: &str) -> BorrowedFd<'a> {
    let tc: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("program")
        .try_into()
        .expect("classifier");
    tc.fd().expect("loaded").as_fd()
}
