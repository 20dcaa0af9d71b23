//! What the agent reads about the host's interfaces: IPv4 addresses, MTU, MAC; and MAC
//! addresses as text. Plain libc and sysfs reads of the agent's own namespace; the
//! interfaces the agent creates and changes are `netlink`'s.

use std::{ffi::CStr, fs, io, net::Ipv4Addr};

/// The IPv4 addresses of `iface`, in the order the kernel lists them (the primary first).
pub(crate) fn ipv4_addrs(iface: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut addrs = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below; we only read it meanwhile.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        // SAFETY: ifa_addr is non-null; sa_family tells its real type.
        let family = unsafe { (*entry.ifa_addr).sa_family } as i32;
        if name.to_bytes() != iface.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        addrs.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}

/// The MTU of `iface` in this network namespace.
pub(crate) fn mtu(iface: &str) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable MTU {text:?}"),
        )
    })
}

/// The MAC address of `iface` in this network namespace.
pub(crate) fn mac(iface: &str) -> io::Result<[u8; 6]> {
    let text = fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    parse_mac(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable MAC address {text:?}"),
        )
    })
}

/// `aa:bb:cc:dd:ee:ff` (hex digits of either case) as bytes.
pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Bytes as `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("02:53:4b:00:00:01"),
            Some([0x02, 0x53, 0x4b, 0, 0, 1])
        );
        assert_eq!(
            parse_mac("02:53:4B:00:00:0A"),
            Some([0x02, 0x53, 0x4b, 0, 0, 0x0a])
        );
        assert_eq!(format_mac([0x02, 0x53, 0x4b, 0, 0, 1]), "02:53:4b:00:00:01");
        for bad in [
            "",
            "02:53",
            "02:53:4b:00:00:01:07",
            "zz:53:4b:00:00:01",
            "2:53:4b:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(mac("lo").unwrap(), [0; 6]);
    }

    #[test]
    fn loopback_has_127_0_0_1_and_an_mtu() {
        assert!(ipv4_addrs("lo").unwrap().contains(&Ipv4Addr::LOCALHOST));
        assert!(mtu("lo").unwrap() >= 1500);
        assert!(ipv4_addrs("nosuchif0").unwrap().is_empty());
        assert!(mtu("nosuchif0").is_err());
    }
}
