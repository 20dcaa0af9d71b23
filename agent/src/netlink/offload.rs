//! Offload features of a link (GRO, TSO), through the `SIOCETHTOOL` ioctl on a socket of
//! the calling thread's network namespace (what `ethtool -K` does with its legacy
//! commands; netlink has no such request in rtnetlink).
//!
//! Why the overlay sets them on endpoint veths: a decapsulated single segment is sent
//! out of the host-side veth into the endpoint's `eth0`. A veth with GRO on receives
//! through NAPI and merges consecutive TCP segments of a flow — as the kernel's VXLAN
//! device does in its GRO cells — but only for packets its peer sent without TSO
//! (`veth_skb_is_eligible_for_gro`): so GRO on the endpoint side, TSO off on the host side.

use std::{ffi::CString, io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use super::{NetlinkError, Result};

/// `ETHTOOL_*` legacy feature commands (include/uapi/linux/ethtool.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Feature {
    /// Generic receive offload.
    Gro,
    /// TCP segmentation offload (all TSO kinds).
    Tso,
}

impl Feature {
    const fn commands(self) -> (u32, u32) {
        match self {
            // ETHTOOL_GGRO, ETHTOOL_SGRO
            Feature::Gro => (0x2b, 0x2c),
            // ETHTOOL_GTSO, ETHTOOL_STSO
            Feature::Tso => (0x1e, 0x1f),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Feature::Gro => "gro",
            Feature::Tso => "tso",
        }
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with `ifr_data`: the name, then a pointer (padded to the union's 24).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool(socket: &OwnedFd, ifname: &str, value: &mut EthtoolValue) -> io::Result<()> {
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    for (dst, &src) in req.name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data points at a live `ethtool_value`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `feature` of `ifname` (in the calling thread's namespace) to `on`; returns whether
/// it changed anything. Idempotent: reads first.
pub(super) fn ensure_feature(ifname: &str, feature: Feature, on: bool) -> Result<bool> {
    let what = || format!("setting {} {} on {ifname}", feature.name(), on_off(on));
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetlinkError::last_os(what()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (get, set) = feature.commands();
    let mut value = EthtoolValue { cmd: get, data: 0 };
    ethtool(&socket, ifname, &mut value).map_err(NetlinkError::io(what()))?;
    if (value.data != 0) == on {
        return Ok(false);
    }
    let mut value = EthtoolValue {
        cmd: set,
        data: u32::from(on),
    };
    ethtool(&socket, ifname, &mut value).map_err(NetlinkError::io(what()))?;
    Ok(true)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}
