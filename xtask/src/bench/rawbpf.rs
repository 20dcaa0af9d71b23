//! The few raw `bpf()` calls the benches' own tiny XDP programs need (hand-assembled, so
//! they need no eBPF toolchain and no object file): load a program, attach it to an
//! interface with a `bpf_link` that goes away with its file descriptor.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `bpf_redirect(ifindex, flags)`.
const HELPER_REDIRECT: i32 = 23;

/// One `struct bpf_insn`, little-endian: code, dst | src << 4, off (i16), imm (i32).
pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The leading fields of `union bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised `repr(C)` prefix of `union bpf_attr` of the given
    // size; every pointer inside it points at memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads an XDP program of `insns` named `name` (at most 15 bytes).
pub(crate) fn load_xdp(insns: &[u64], name: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: u32::try_from(insns.len())?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("BPF_PROG_LOAD of {name}"))?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The program `return bpf_redirect(ifindex, 0)`: every frame out of interface `ifindex`.
pub(crate) fn redirect_program(ifindex: u32) -> Vec<u64> {
    vec![
        insn(0xb7, 1, 0, 0, ifindex as i32),  // r1 = ifindex
        insn(0xb7, 2, 0, 0, 0),               // r2 = 0
        insn(0x85, 0, 0, 0, HELPER_REDIRECT), // call bpf_redirect
        insn(0x95, 0, 0, 0, 0),               // exit (r0 = XDP_REDIRECT)
    ]
}

/// Attaches XDP program `prog` to interface `ifindex` of the calling thread's network
/// namespace (native mode where the driver has it); detached when the returned link's file
/// descriptor is closed.
pub(crate) fn attach_xdp(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("BPF_LINK_CREATE of an XDP link on ifindex {ifindex}"))?;
    // SAFETY: a successful BPF_LINK_CREATE returns a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
