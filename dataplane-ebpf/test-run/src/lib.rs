//! `BPF_PROG_TEST_RUN`: runs a loaded eBPF program on a frame without going through an
//! interface. aya 0.14 does not expose it, so this is the raw `bpf()` syscall, written once
//! for its two users:
//! - the privileged tests (`xtask/tests/prog_test_run.rs`), which run the dataplane's
//!   programs on crafted frames and check the verdict and the rewritten frame: [`test_run`];
//! - the overlay benchmark's packet generator (`xtask/src/bench/pktgen.rs`), which feeds
//!   frames into a real interface as if it had received them, in live-frames mode
//!   (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux ≥ 5.18): [`xdp_live_frames`].

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

/// What a plain test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (e.g. `XDP_PASS`).
    pub retval: u32,
    /// The frame after the program ran (it may have rewritten it).
    pub data_out: Vec<u8>,
    /// Average run time in nanoseconds over `repeat` runs.
    pub duration_ns: u32,
}

/// Room for programs that grow the frame: VXLAN encapsulation adds 50 bytes.
const DATA_OUT_HEADROOM: usize = 256;

/// Runs `prog` (any program type the kernel can test-run: XDP, TC, ...) on `frame`,
/// `repeat` times (at least once), and returns the last run's verdict and frame.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    let mut data_out = vec![0u8; frame.len() + DATA_OUT_HEADROOM];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len_u32(frame.len())?,
        data_size_out: len_u32(data_out.len())?,
        data_in: frame.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    bpf_prog_test_run(&mut attr)?;
    data_out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        retval: attr.retval,
        data_out,
        duration_ns: attr.duration,
    })
}

/// How [`xdp_live_frames`] feeds frames into an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveFrames {
    /// The interface the frames arrive on, looked up in the calling thread's network
    /// namespace. What the program returns is then carried out for real: `XDP_TX` sends
    /// the frame back out of this interface, `XDP_REDIRECT` redirects it, `XDP_PASS`
    /// hands it to the stack.
    pub ingress_ifindex: u32,
    /// Copies of the frame to run (at least 1).
    pub repeat: u32,
    /// Frames the kernel processes per batch (1..=256; 0 means its default, 64).
    pub batch_size: u32,
}

/// Runs the XDP program `prog` on `repeat` copies of `frame` in live-frames mode: as if
/// the interface had received them, with the verdicts carried out. Nothing comes back but
/// success: the kernel reports no output frame or return value in this mode.
pub fn xdp_live_frames(prog: BorrowedFd<'_>, frame: &[u8], live: &LiveFrames) -> io::Result<()> {
    let mut ctx = XdpMd {
        data_end: len_u32(frame.len())?,
        ingress_ifindex: live.ingress_ifindex,
        ..Default::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len_u32(frame.len())?,
        data_in: frame.as_ptr() as u64,
        repeat: live.repeat.max(1),
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: &mut ctx as *mut XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: live.batch_size,
        ..Default::default()
    };
    bpf_prog_test_run(&mut attr)
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
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

/// `struct xdp_md` as `ctx_in` of a live-frames run: only `data_end` (the frame's length)
/// and `ingress_ifindex` are set.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf_prog_test_run(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: `attr` is an initialised `repr(C)` `bpf_attr.test` of the given size; every
    // pointer in it points at memory (with its size) that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{mem::offset_of, os::fd::AsFd};

    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_uapi() {
        // Offsets of `bpf_attr.test` and `struct xdp_md` in include/uapi/linux/bpf.h.
        assert_eq!(offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(offset_of!(TestRunAttr, ctx_size_in), 40);
        assert_eq!(offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(offset_of!(TestRunAttr, flags), 64);
        assert_eq!(offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(size_of::<TestRunAttr>(), 80);
        assert_eq!(offset_of!(XdpMd, ingress_ifindex), 12);
        assert_eq!(size_of::<XdpMd>(), 24);
    }

    #[test]
    fn a_descriptor_that_is_no_program_is_refused() {
        let not_a_program = std::fs::File::open("/dev/null").unwrap();
        let fd = not_a_program.as_fd();
        assert!(test_run(fd, &[0u8; 64], 1).is_err());
        let live = LiveFrames {
            ingress_ifindex: 1,
            repeat: 1,
            batch_size: 0,
        };
        assert!(xdp_live_frames(fd, &[0u8; 64], &live).is_err());
    }
}
