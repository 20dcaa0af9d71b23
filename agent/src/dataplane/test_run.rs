//! `BPF_PROG_TEST_RUN`: runs a loaded program on a frame without any interface, for
//! tests and micro-benchmarks. aya 0.14 does not expose it, so this is the raw syscall.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// What a test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (e.g. `XDP_PASS`).
    pub retval: u32,
    /// The frame after the program ran (it may have rewritten it).
    pub data_out: Vec<u8>,
    /// Average run time in nanoseconds over `repeat` runs.
    pub duration_ns: u32,
}

// `union bpf_attr` for BPF_PROG_TEST_RUN, from include/uapi/linux/bpf.h.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` on `frame` `repeat` times (at least once).
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    // Room for programs that grow the frame (encapsulation adds 50 bytes).
    let mut data_out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: data_out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    // SAFETY: `attr` points at buffers that outlive the call, with their sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    data_out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        retval: attr.retval,
        data_out,
        duration_ns: attr.duration,
    })
}
