//! The gossip socket's classic BPF filter: the kernel drops a datagram that cannot be a
//! member's — not of this format version, shorter than a sealed datagram, or longer than
//! any member sends — before the agent is woken and before anything is copied, so a junk
//! flood costs the agent nothing for the datagrams it can tell apart without the key. The
//! rest still meet [`crate::secure::Opener`], which checks the same and authenticates.
//!
//! What the filter drops the kernel counts as the socket's drops (together with
//! datagrams dropped because the receive buffer was full), read with `SO_MEMINFO`.

use std::{io, mem, os::fd::AsRawFd};

use crate::secure::{FORMAT_VERSION, SEAL_OVERHEAD};

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h), written out: BPF_LD, BPF_W,
// BPF_K are 0.
const LD_W_LEN: u16 = 0x80; // BPF_LD | BPF_W | BPF_LEN: A = the datagram's length
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS: A = the byte at k
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// A UDP socket's filter sees the datagram from its UDP header on: the payload starts
/// 8 bytes in, and the length counts the header.
const UDP_HEADER: u32 = 8;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program: accept (whole datagram) only what could be a sealed datagram of at most
/// `max_datagram` bytes. Jump offsets count from the next instruction.
pub(crate) fn program(max_datagram: usize) -> [libc::sock_filter; 7] {
    let max = u32::try_from(max_datagram).unwrap_or(u32::MAX - UDP_HEADER);
    [
        op(LD_W_LEN, 0, 0, 0),
        op(JGT_K, 4, 0, UDP_HEADER + max), // too long: drop
        op(JGE_K, 0, 3, UDP_HEADER + SEAL_OVERHEAD as u32), // too short: drop
        op(LD_B_ABS, 0, 0, UDP_HEADER),    // the format version byte
        op(JEQ_K, 0, 1, u32::from(FORMAT_VERSION)), // another version: drop
        op(RET_K, 0, 0, u32::MAX),         // accept
        op(RET_K, 0, 0, 0),                // drop
    ]
}

/// Attaches [`program`] to `socket`.
pub fn attach(socket: &impl AsRawFd, max_datagram: usize) -> io::Result<()> {
    let mut filter = program(max_datagram);
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filter`, which outlives the call; the kernel copies it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams the kernel dropped for `socket`: refused by the filter, or arrived while the
/// receive buffer was full. The kernel's counter is 32 bits and wraps.
pub fn kernel_drops(socket: &impl AsRawFd) -> io::Result<u32> {
    // SK_MEMINFO_VARS is 9 today (the drops counter is the last); later kernels may add
    // more, which the kernel truncates to the length given.
    let mut meminfo = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `meminfo` and sets `len`.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let at = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (at + 1) * mem::size_of::<u32>() {
        return Err(io::Error::other("SO_MEMINFO without the drops counter"));
    }
    Ok(meminfo[at])
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Duration};

    use super::*;

    /// Real sockets on loopback: what the filter lets through and what the kernel counts.
    #[test]
    fn the_kernel_drops_what_cannot_be_a_members_datagram_and_counts_it() {
        let max = 1_000;
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        attach(&receiver, max).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let sealed_like = |len: usize| {
            let mut d = vec![0xa5; len];
            d[0] = FORMAT_VERSION;
            d
        };
        let mut wrong_version = sealed_like(200);
        wrong_version[0] = FORMAT_VERSION + 1;
        let junk = [
            wrong_version,
            sealed_like(max + 1),
            sealed_like(SEAL_OVERHEAD - 1),
            Vec::new(),
            sealed_like(60_000),
        ];
        let kept = [
            sealed_like(SEAL_OVERHEAD),
            sealed_like(max),
            sealed_like(300),
        ];
        let before = kernel_drops(&receiver).unwrap();
        for datagram in junk.iter().chain(&kept) {
            sender.send_to(datagram, to).unwrap();
        }
        let mut buf = vec![0; 65_536];
        for want in &kept {
            let (len, _) = receiver.recv_from(&mut buf).expect("a kept datagram");
            assert_eq!(&buf[..len], &want[..], "whole and in order");
        }
        assert!(receiver.recv_from(&mut buf).is_err(), "only those");
        assert_eq!(kernel_drops(&receiver).unwrap() - before, junk.len() as u32);
    }
}
