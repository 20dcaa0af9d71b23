//! Typed access to the overlay's pinned maps, for the reconciler (which converges them
//! to the cluster's state) and for `skein debug maps` ([`OverlayMaps::dump`]).
//!
//! Opened from the pins, so the holder does not borrow the [`super::Dataplane`], and
//! whatever it writes is what the running programs read at once. Every `put_*` inserts
//! or replaces; every `remove_*` is idempotent and says whether there was an entry (the
//! `put_*`/`remove_*` methods are the privileged tests' way in; the reconciler goes
//! through the [`MapHandle`]s).

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::maps::{Array, MapData, MapError};
use dataplane_ebpf::{
    guard::{GuardedHostKey, GuardedHostValue, GuardedPort, GuardedPortValue},
    maps,
    overlay::{
        EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, UnderlayValue, VtepKey,
        VtepValue,
    },
};

use crate::netif::format_mac;

use super::{
    maps::{open_pin, typed, HashHandle, LpmHandle, MapHandle},
    DataplaneError, PinDirs,
};

/// The overlay's maps: endpoints, ports, networks, subnets, external VTEPs, underlay, and
/// the guard's cluster hosts and ports.
/// Each synced map is a [`MapHandle`] over its ABI types, so the reconciler converges
/// every one of them through the same sync.
pub struct OverlayMaps {
    pub(crate) endpoints: HashHandle<EndpointKey, EndpointValue>,
    pub(crate) ports: HashHandle<u32, PortValue>,
    pub(crate) networks: HashHandle<u32, NetworkValue>,
    pub(crate) subnets: LpmHandle<SubnetKey, u32>,
    pub(crate) vteps: LpmHandle<VtepKey, VtepValue>,
    pub(crate) guarded_hosts: HashHandle<GuardedHostKey, GuardedHostValue>,
    pub(crate) guarded_ports: HashHandle<GuardedPort, GuardedPortValue>,
    underlay: Array<MapData, UnderlayValue>,
}

impl OverlayMaps {
    /// Opens the pinned maps (a loaded [`super::Dataplane`] or [`super::load`] pins them).
    pub fn open(pins: &PinDirs) -> Result<OverlayMaps, DataplaneError> {
        Ok(OverlayMaps {
            endpoints: HashHandle::open(pins, &maps::OVERLAY_ENDPOINTS)?,
            ports: HashHandle::open(pins, &maps::OVERLAY_PORTS)?,
            networks: HashHandle::open(pins, &maps::OVERLAY_NETWORKS)?,
            subnets: LpmHandle::open(pins, &maps::OVERLAY_SUBNETS)?,
            vteps: LpmHandle::open(pins, &maps::OVERLAY_VTEPS)?,
            guarded_hosts: HashHandle::open(pins, &maps::GUARDED_HOSTS)?,
            guarded_ports: HashHandle::open(pins, &maps::GUARDED_PORTS)?,
            underlay: typed(
                &maps::OVERLAY_UNDERLAY,
                open_pin(pins, &maps::OVERLAY_UNDERLAY)?.0,
            )?,
        })
    }

    /// Every endpoint of the cluster, local (`ifindex != 0`) and remote.
    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, EndpointValue)>, DataplaneError> {
        self.endpoints.entries()
    }

    pub fn put_endpoint(
        &mut self,
        key: EndpointKey,
        value: EndpointValue,
    ) -> Result<(), DataplaneError> {
        self.endpoints.put(key, value)
    }

    pub fn remove_endpoint(&mut self, key: EndpointKey) -> Result<bool, DataplaneError> {
        self.endpoints.remove(key)
    }

    /// Local endpoints by the ifindex of their host-side veth.
    pub fn ports(&self) -> Result<Vec<(u32, PortValue)>, DataplaneError> {
        self.ports.entries()
    }

    pub fn put_port(&mut self, ifindex: u32, value: PortValue) -> Result<(), DataplaneError> {
        self.ports.put(ifindex, value)
    }

    pub fn remove_port(&mut self, ifindex: u32) -> Result<bool, DataplaneError> {
        self.ports.remove(ifindex)
    }

    /// Networks by VNI.
    pub fn networks(&self) -> Result<Vec<(u32, NetworkValue)>, DataplaneError> {
        self.networks.entries()
    }

    pub fn put_network(&mut self, vni: u32, value: NetworkValue) -> Result<(), DataplaneError> {
        self.networks.put(vni, value)
    }

    /// Every network's subnet → its VNI (for isolation).
    pub fn subnets(&self) -> Result<Vec<(SubnetKey, u32)>, DataplaneError> {
        self.subnets.entries()
    }

    pub fn put_subnet(&mut self, key: SubnetKey, vni: u32) -> Result<(), DataplaneError> {
        self.subnets.put(key, vni)
    }

    /// External VTEPs by (VNI, prefix).
    pub fn vteps(&self) -> Result<Vec<(VtepKey, VtepValue)>, DataplaneError> {
        self.vteps.entries()
    }

    pub fn put_vtep(&mut self, key: VtepKey, value: VtepValue) -> Result<(), DataplaneError> {
        self.vteps.put(key, value)
    }

    /// The cluster hosts' addresses the guard protects.
    pub fn guarded_hosts(&self) -> Result<Vec<(GuardedHostKey, GuardedHostValue)>, DataplaneError> {
        self.guarded_hosts.entries()
    }

    pub fn put_guarded_host(&mut self, ip: GuardedHostKey) -> Result<(), DataplaneError> {
        self.guarded_hosts.put(ip, 0)
    }

    /// The cluster's own ports the guard protects.
    pub fn guarded_ports(&self) -> Result<Vec<(GuardedPort, GuardedPortValue)>, DataplaneError> {
        self.guarded_ports.entries()
    }

    pub fn put_guarded_port(&mut self, port: GuardedPort) -> Result<(), DataplaneError> {
        self.guarded_ports.put(port, 0)
    }

    /// This host's underlay as the programs see it (all zero until the agent starts).
    pub fn underlay(&self) -> Result<UnderlayValue, DataplaneError> {
        self.underlay
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                map: maps::OVERLAY_UNDERLAY.name,
                what: "reading",
                source,
            })
    }

    pub fn set_underlay(&mut self, value: UnderlayValue) -> Result<(), DataplaneError> {
        self.underlay
            .set(0, value, 0)
            .map_err(|source: MapError| DataplaneError::Map {
                map: maps::OVERLAY_UNDERLAY.name,
                what: "writing",
                source,
            })
    }

    /// Every map's entries, one per line, sorted, for `skein debug maps`. A map that
    /// cannot be read says so in place of its entries.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        match self.underlay() {
            Ok(u) => {
                let _ = writeln!(
                    out,
                    "underlay: ifindex {} ip {} mac {}",
                    u.ifindex,
                    Ipv4Addr::from(u.ip),
                    format_mac(u.mac)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "underlay: unreadable: {}", chain(&e));
            }
        }
        section(&mut out, "networks", self.networks(), |(vni, n)| {
            format!(
                "vni {vni} subnet {}/{} gateway {}",
                Ipv4Addr::from(n.subnet),
                n.prefix_len,
                Ipv4Addr::from(n.gateway)
            )
        });
        section(&mut out, "subnets", self.subnets(), |(k, vni)| {
            format!("{}/{} -> vni {vni}", Ipv4Addr::from(k.ip), k.prefix_len)
        });
        section(&mut out, "ports", self.ports(), |(ifindex, p)| {
            format!(
                "ifindex {ifindex} -> vni {} ip {}",
                p.vni,
                Ipv4Addr::from(p.ip)
            )
        });
        section(&mut out, "endpoints", self.endpoints(), |(k, v)| {
            let place = if v.ifindex != 0 {
                format!("local ifindex {}", v.ifindex)
            } else {
                format!("remote host {}", Ipv4Addr::from(v.host_ip))
            };
            format!("vni {} ip {} -> {place}", k.vni, Ipv4Addr::from(k.ip))
        });
        section(
            &mut out,
            "guarded hosts",
            self.guarded_hosts(),
            |(ip, _)| Ipv4Addr::from(*ip).to_string(),
        );
        section(&mut out, "guarded ports", self.guarded_ports(), |(p, _)| {
            let protocol = match p.protocol {
                dataplane_ebpf::guard::IPPROTO_TCP => "tcp",
                dataplane_ebpf::guard::IPPROTO_UDP => "udp",
                _ => "other",
            };
            format!("{}/{protocol}", p.port())
        });
        section(&mut out, "vteps", self.vteps(), |(k, v)| {
            format!(
                "vni {} {}/{} -> vtep {} mac {}",
                k.vni(),
                Ipv4Addr::from(k.ip),
                k.ip_prefix_len(),
                Ipv4Addr::from(v.underlay_ip),
                format_mac(v.mac)
            )
        });
        out
    }
}

pub(super) fn section<T>(
    out: &mut String,
    title: &str,
    entries: Result<Vec<T>, DataplaneError>,
    line: impl Fn(&T) -> String,
) {
    match entries {
        Ok(entries) => {
            let _ = writeln!(out, "{title} ({}):", entries.len());
            let mut lines: Vec<String> = entries.iter().map(line).collect();
            lines.sort();
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "{title}: unreadable: {}", chain(&e));
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += ": ";
        text += &s.to_string();
        source = s.source();
    }
    text
}
