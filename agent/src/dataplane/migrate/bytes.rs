//! A map's entries as bytes, whatever its key and value types: the bpf(2) element
//! commands, which aya offers only over compile-time types. A migration knows the sizes
//! of an old layout only at run time (from the ABI's history), so it copies bytes.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use dataplane_ebpf::maps::MapKind;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Insert or replace.
pub(super) const ANY: u64 = 0;
/// Insert only if absent.
pub(super) const NO_EXIST: u64 = 1;
/// Replace only if present.
pub(super) const EXIST: u64 = 2;

/// `union bpf_attr` as the element commands read it.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

/// `union bpf_attr` as `BPF_MAP_CREATE` reads it (the fields up to the name; the rest
/// zero).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    _rest: [u64; 8],
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, valid and
    // exclusively borrowed for the call; the kernel reads (and for some commands writes)
    // at most `size_of::<A>()` bytes of it, and the key/value pointers in it point to
    // buffers of the map's sizes that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A as *mut libc::c_void,
            size_of::<A>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A map opened by its file descriptor, with the key and value sizes the caller knows it
/// has. Per-CPU maps are not handled (their values are per CPU; they are only ever
/// recreated).
pub(super) struct RawMap<'a> {
    fd: BorrowedFd<'a>,
    key_size: usize,
    value_size: usize,
}

impl<'a> RawMap<'a> {
    pub(super) fn new(fd: BorrowedFd<'a>, key_size: u32, value_size: u32) -> RawMap<'a> {
        RawMap {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
        }
    }

    fn attr(&self, key: &[u8], value: *const u8, flags: u64) -> ElemAttr {
        ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value_or_next_key: value as u64,
            flags,
        }
    }

    /// Every key, walked with `GET_NEXT_KEY`. A key deleted under the walk restarts it
    /// from the first (the programs may be writing), so the walk is bounded by twice the
    /// map's `capacity`.
    pub(super) fn keys(&self, capacity: u32) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut next = vec![0u8; self.key_size];
        while keys.len() < 2 * capacity as usize {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                _pad: 0,
                // A null key asks for the first one.
                key: keys.last().map_or(0, |key| key.as_ptr() as u64),
                value_or_next_key: next.as_mut_ptr() as u64,
                flags: 0,
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => keys.push(next.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The value under `key`, or `None`.
    pub(super) fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if key.len() != self.key_size {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut value = vec![0u8; self.value_size];
        let mut attr = self.attr(key, value.as_mut_ptr(), 0);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `key` with `flags` ([`ANY`], [`NO_EXIST`], [`EXIST`]);
    /// `Ok(false)` when the flag's condition did not hold.
    pub(super) fn put(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<bool> {
        if key.len() != self.key_size || value.len() != self.value_size {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut attr = self.attr(key, value.as_ptr(), flags);
        match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Creates an unpinned map of `kind` with these sizes (the migration test's stand-in for
/// a previous binary's map).
pub(super) fn create(
    kind: MapKind,
    name: &str,
    key_size: u32,
    value_size: u32,
    capacity: u32,
) -> io::Result<OwnedFd> {
    let (map_type, map_flags) = match kind {
        MapKind::Hash => (1, 0),
        MapKind::Array => (2, 0),
        MapKind::PerCpuHash => (5, 0),
        MapKind::PerCpuArray => (6, 0),
        MapKind::LruHash => (9, 0),
        // The kernel requires BPF_F_NO_PREALLOC for LPM tries.
        MapKind::LpmTrie => (11, 1),
    };
    let mut attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries: capacity,
        map_flags,
        ..CreateAttr::default()
    };
    let len = name.len().min(attr.map_name.len() - 1);
    attr.map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
