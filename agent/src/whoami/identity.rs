//! Who answers: the hostname (the task ID), the task, service and node Skein set in the
//! environment, and the network namespace's addresses; read once at start.

use std::{io, net::Ipv4Addr};

use tracing::warn;

/// Who answers: read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) hostname: String,
    pub(crate) task: String,
    pub(crate) service: String,
    pub(crate) node: String,
    /// The namespace's non-loopback IPv4 addresses.
    pub(crate) ips: Vec<Ipv4Addr>,
}

impl Identity {
    /// This process's: its hostname, `SKEIN_TASK`, `SKEIN_SERVICE`, `SKEIN_NODE` (`-`
    /// when unset) and its network namespace's addresses.
    pub(crate) fn from_env() -> Identity {
        let var = |name| std::env::var(name).unwrap_or_else(|_| "-".to_owned());
        Identity {
            hostname: hostname().unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the hostname");
                "-".to_owned()
            }),
            task: var("SKEIN_TASK"),
            service: var("SKEIN_SERVICE"),
            node: var("SKEIN_NODE"),
            ips: ipv4_addresses().unwrap_or_else(|e| {
                warn!(error = %e, "cannot list the interface addresses");
                Vec::new()
            }),
        }
    }
}

fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of the given length; gethostname NUL-terminates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The non-loopback IPv4 addresses of this network namespace, in interface order.
fn ipv4_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ips = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && ifa.ifa_flags & libc::IFF_LOOPBACK as u32 == 0 && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_the_environment_lists_no_loopback() {
        let identity = Identity::from_env();
        assert!(!identity.hostname.is_empty());
        assert!(identity.ips.iter().all(|ip| !ip.is_loopback()));
    }
}
