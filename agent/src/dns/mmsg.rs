//! Datagrams in batches: one `recvmmsg(2)` reads up to [`BATCH`] queries and one
//! `sendmmsg(2)` sends their replies, instead of two system calls per query.
//!
//! The buffers are per thread ([`with_batch`]): the UDP loop uses them only between two
//! awaits, so one set serves every listener on a thread (a namespace's listener costs no
//! batch memory of its own).

use std::{
    cell::RefCell,
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, RawFd},
};

/// Datagrams read (and replies sent) per system call.
pub(super) const BATCH: usize = 32;
/// The largest datagram read whole; a longer one is cut ([`Received::truncated`]).
pub(super) const MAX_DATAGRAM: usize = 4096;

/// One datagram read.
pub(super) struct Received<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) src: SocketAddr,
    /// Longer than [`MAX_DATAGRAM`]: `bytes` is its start only.
    pub(super) truncated: bool,
}

/// The datagrams of one batch.
pub(super) struct Inbox {
    datagrams: Vec<u8>,
    lengths: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    truncated: [bool; BATCH],
    received: usize,
}

/// The replies of one batch: their bytes one after another, and (end offset, destination).
pub(super) struct Outbox {
    replies: Vec<u8>,
    reply_ends: Vec<(usize, SocketAddr)>,
}

thread_local! {
    static BATCH_BUFFERS: RefCell<Option<Box<(Inbox, Outbox)>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's batch buffers (allocated on first use), empty. Not
/// reentrant: `f` must not await (it cannot: it is not async) nor call this again.
pub(super) fn with_batch<T>(f: impl FnOnce(&mut Inbox, &mut Outbox) -> T) -> T {
    BATCH_BUFFERS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let buffers = slot.get_or_insert_with(|| {
            Box::new((
                Inbox {
                    datagrams: vec![0; BATCH * MAX_DATAGRAM],
                    lengths: [0; BATCH],
                    sources: [None; BATCH],
                    truncated: [false; BATCH],
                    received: 0,
                },
                Outbox {
                    replies: Vec::with_capacity(BATCH * 512),
                    reply_ends: Vec::with_capacity(BATCH),
                },
            ))
        });
        let (inbox, outbox) = &mut **buffers;
        inbox.received = 0;
        outbox.replies.clear();
        outbox.reply_ends.clear();
        f(inbox, outbox)
    })
}

impl Inbox {
    /// Reads up to [`BATCH`] datagrams without waiting; `WouldBlock` if there is none.
    pub(super) fn receive(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let mut addresses: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        let mut vectors: Vec<libc::iovec> = self
            .datagrams
            .chunks_exact_mut(MAX_DATAGRAM)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for ((header, vector), address) in headers
            .iter_mut()
            .zip(vectors.iter_mut())
            .zip(addresses.iter_mut())
        {
            header.msg_hdr.msg_name = (address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = vector;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer of the length it gives and at an
        // address buffer of its stated size; the kernel writes within them only.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
        let read = headers.iter().zip(&addresses).take(count);
        for (i, (header, address)) in read.enumerate() {
            self.lengths[i] = (header.msg_len as usize).min(MAX_DATAGRAM);
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.sources[i] = socket_addr(address);
        }
        self.received = count;
        Ok(count)
    }

    /// The `i`th datagram of the last [`Inbox::receive`]; `None` past them, or if its
    /// source address was not IP.
    pub(super) fn datagram(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.received {
            return None;
        }
        let start = i * MAX_DATAGRAM;
        Some(Received {
            bytes: &self.datagrams[start..start + self.lengths[i]],
            src: self.sources[i]?,
            truncated: self.truncated[i],
        })
    }
}

impl Outbox {
    /// The buffer for the next reply: append it, then [`Outbox::add_reply`].
    pub(super) fn reply_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.replies
    }

    /// The bytes written to [`Outbox::reply_buffer`] since the last reply go to `dst`.
    pub(super) fn add_reply(&mut self, dst: SocketAddr) {
        self.reply_ends.push((self.replies.len(), dst));
    }

    /// Sends the replies added, in as few calls as it takes; returns the ones the socket
    /// would not take now (`WouldBlock`), to be sent once it is writable.
    pub(super) fn send(&mut self, socket: &impl AsRawFd) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut sent = 0;
        while sent < self.reply_ends.len() {
            match self.send_from(socket.as_raw_fd(), sent) {
                Ok(count) => sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // A reply that cannot go (e.g. an address gone): skip it.
                Err(error) => {
                    tracing::debug!(%error, "could not send a DNS answer");
                    sent += 1;
                }
            }
        }
        (sent..self.reply_ends.len())
            .map(|i| (self.reply(i).to_vec(), self.reply_ends[i].1))
            .collect()
    }

    fn reply(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.reply_ends[i - 1].0 };
        &self.replies[start..self.reply_ends[i].0]
    }

    /// One `sendmmsg` of the replies from `first` on (at most [`BATCH`]).
    fn send_from(&self, fd: RawFd, first: usize) -> io::Result<usize> {
        let count = (self.reply_ends.len() - first).min(BATCH);
        let mut addresses: Vec<(libc::sockaddr_storage, libc::socklen_t)> = (first..first + count)
            .map(|i| raw_addr(self.reply_ends[i].1))
            .collect();
        let mut vectors: Vec<libc::iovec> = (first..first + count)
            .map(|i| {
                let reply = self.reply(i);
                libc::iovec {
                    iov_base: reply.as_ptr().cast_mut().cast(),
                    iov_len: reply.len(),
                }
            })
            .collect();
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for ((header, vector), (address, length)) in headers
            .iter_mut()
            .zip(vectors.iter_mut())
            .zip(addresses.iter_mut())
        {
            header.msg_hdr.msg_name = (address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = *length;
            header.msg_hdr.msg_iov = vector;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live reply and address of the lengths given;
        // the kernel only reads them (and writes `msg_len`).
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }
}

fn socket_addr(raw: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(raw.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 =
                unsafe { &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 =
                unsafe { &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn raw_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut raw: libc::sockaddr_storage = unsafe { zeroed() };
    let length = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let out = unsafe {
                &mut *(&mut raw as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = v4.port().to_be();
            out.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let out = unsafe {
                &mut *(&mut raw as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = v6.port().to_be();
            out.sin6_addr.s6_addr = v6.ip().octets();
            out.sin6_flowinfo = v6.flowinfo();
            out.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (raw, length as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip() {
        for addr in ["127.0.0.11:53", "[::1]:5353", "10.1.2.3:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (raw, _) = raw_addr(addr);
            assert_eq!(socket_addr(&raw), Some(addr));
        }
    }

    #[test]
    fn a_batch_is_read_and_answered_in_one_call_each() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for i in 0..5u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        client
            .send_to(&[9; MAX_DATAGRAM + 1], server.local_addr().unwrap())
            .unwrap();
        with_batch(|inbox, outbox| {
            assert_eq!(inbox.receive(&server).unwrap(), 6);
            for i in 0..5 {
                let datagram = inbox.datagram(i).unwrap();
                assert_eq!(
                    (datagram.bytes, datagram.truncated),
                    (&[i as u8; 3][..], false)
                );
                assert_eq!(datagram.src, client.local_addr().unwrap());
                outbox.reply_buffer().extend_from_slice(&[i as u8 + 100; 2]);
                outbox.add_reply(datagram.src);
            }
            assert!(inbox.datagram(5).unwrap().truncated);
            assert!(inbox.datagram(6).is_none());
            assert!(outbox.send(&server).is_empty());
            let err = inbox.receive(&server).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        });
        let mut buffer = [0; 16];
        for i in 0..5u8 {
            let n = client.recv(&mut buffer).unwrap();
            assert_eq!(&buffer[..n], &[i + 100; 2]);
        }
    }
}
