//! Typed access to the overlay's pinned maps, for the reconciler (which converges them
//! to the cluster's state) and for `skein debug maps` ([`OverlayMaps::dump`]).
//!
//! Opened from the pins, so the holder does not borrow the [`super::Dataplane`], and
//! whatever it writes is what the running programs read at once. Every `put_*` inserts
//! or replaces; every `remove_*` is idempotent and says whether there was an entry.

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError},
    sys::SyscallError,
};
use dataplane_ebpf::{
    names,
    overlay::{
        EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, UnderlayValue, VtepKey,
        VtepValue,
    },
};

use crate::netif::format_mac;

use super::{DataplaneError, PinDirs};

/// The overlay's maps: endpoints, ports, networks, subnets, external VTEPs, underlay.
pub struct OverlayMaps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    ports: HashMap<MapData, u32, PortValue>,
    networks: HashMap<MapData, u32, NetworkValue>,
    subnets: LpmTrie<MapData, [u8; 4], u32>,
    vteps: LpmTrie<MapData, [u8; 8], VtepValue>,
    underlay: Array<MapData, UnderlayValue>,
}

fn open_pin(pins: &PinDirs, name: &'static str) -> Result<Map, DataplaneError> {
    let path = pins.maps().join(name);
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Pin {
        what: "opening a pinned overlay map",
        path: path.clone(),
        source: Box::new(e),
    })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::Map {
        map: name,
        what: "opening",
        source,
    })
}

/// Converts `Map` into the typed wrapper, or names the map whose type or sizes differ.
fn typed<T: TryFrom<Map, Error = MapError>>(
    pins: &PinDirs,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(open_pin(pins, name)?).map_err(|source| DataplaneError::Map {
        map: name,
        what: "opening",
        source,
    })
}

/// `Ok(false)` for "there was no such entry", so removals are idempotent.
fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, DataplaneError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) => Err(DataplaneError::Map {
            map,
            what: "removing from",
            source,
        }),
    }
}

fn written(map: &'static str, result: Result<(), MapError>) -> Result<(), DataplaneError> {
    result.map_err(|source| DataplaneError::Map {
        map,
        what: "writing",
        source,
    })
}

fn listed<K, V>(
    map: &'static str,
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
) -> Result<Vec<(K, V)>, DataplaneError> {
    entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| DataplaneError::Map {
            map,
            what: "reading",
            source,
        })
}

impl OverlayMaps {
    /// Opens the pinned maps (a loaded [`super::Dataplane`] or [`super::load`] pins them).
    pub fn open(pins: &PinDirs) -> Result<OverlayMaps, DataplaneError> {
        Ok(OverlayMaps {
            endpoints: typed(pins, names::OVERLAY_ENDPOINTS)?,
            ports: typed(pins, names::OVERLAY_PORTS)?,
            networks: typed(pins, names::OVERLAY_NETWORKS)?,
            subnets: typed(pins, names::OVERLAY_SUBNETS)?,
            vteps: typed(pins, names::OVERLAY_VTEPS)?,
            underlay: typed(pins, names::OVERLAY_UNDERLAY)?,
        })
    }

    /// Every endpoint of the cluster, local (`ifindex != 0`) and remote.
    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, EndpointValue)>, DataplaneError> {
        listed(names::OVERLAY_ENDPOINTS, self.endpoints.iter())
    }

    pub fn put_endpoint(
        &mut self,
        key: EndpointKey,
        value: EndpointValue,
    ) -> Result<(), DataplaneError> {
        written(
            names::OVERLAY_ENDPOINTS,
            self.endpoints.insert(key, value, 0),
        )
    }

    pub fn remove_endpoint(&mut self, key: EndpointKey) -> Result<bool, DataplaneError> {
        removed(names::OVERLAY_ENDPOINTS, self.endpoints.remove(&key))
    }

    /// Local endpoints by the ifindex of their host-side veth.
    pub fn ports(&self) -> Result<Vec<(u32, PortValue)>, DataplaneError> {
        listed(names::OVERLAY_PORTS, self.ports.iter())
    }

    pub fn put_port(&mut self, ifindex: u32, value: PortValue) -> Result<(), DataplaneError> {
        written(names::OVERLAY_PORTS, self.ports.insert(ifindex, value, 0))
    }

    pub fn remove_port(&mut self, ifindex: u32) -> Result<bool, DataplaneError> {
        removed(names::OVERLAY_PORTS, self.ports.remove(&ifindex))
    }

    /// Networks by VNI.
    pub fn networks(&self) -> Result<Vec<(u32, NetworkValue)>, DataplaneError> {
        listed(names::OVERLAY_NETWORKS, self.networks.iter())
    }

    pub fn put_network(&mut self, vni: u32, value: NetworkValue) -> Result<(), DataplaneError> {
        written(names::OVERLAY_NETWORKS, self.networks.insert(vni, value, 0))
    }

    pub fn remove_network(&mut self, vni: u32) -> Result<bool, DataplaneError> {
        removed(names::OVERLAY_NETWORKS, self.networks.remove(&vni))
    }

    /// Every network's subnet → its VNI (for isolation).
    pub fn subnets(&self) -> Result<Vec<(SubnetKey, u32)>, DataplaneError> {
        Ok(listed(names::OVERLAY_SUBNETS, self.subnets.iter())?
            .into_iter()
            .map(|(key, vni)| {
                (
                    SubnetKey {
                        prefix_len: key.prefix_len(),
                        ip: key.data(),
                    },
                    vni,
                )
            })
            .collect())
    }

    pub fn put_subnet(&mut self, key: SubnetKey, vni: u32) -> Result<(), DataplaneError> {
        written(
            names::OVERLAY_SUBNETS,
            self.subnets
                .insert(&Key::new(key.prefix_len, key.ip), vni, 0),
        )
    }

    pub fn remove_subnet(&mut self, key: SubnetKey) -> Result<bool, DataplaneError> {
        removed(
            names::OVERLAY_SUBNETS,
            self.subnets.remove(&Key::new(key.prefix_len, key.ip)),
        )
    }

    /// External VTEPs by (VNI, prefix).
    pub fn vteps(&self) -> Result<Vec<(VtepKey, VtepValue)>, DataplaneError> {
        Ok(listed(names::OVERLAY_VTEPS, self.vteps.iter())?
            .into_iter()
            .map(|(key, value)| {
                let data = key.data();
                (
                    VtepKey {
                        prefix_len: key.prefix_len(),
                        vni_be: [data[0], data[1], data[2], data[3]],
                        ip: [data[4], data[5], data[6], data[7]],
                    },
                    value,
                )
            })
            .collect())
    }

    pub fn put_vtep(&mut self, key: VtepKey, value: VtepValue) -> Result<(), DataplaneError> {
        written(
            names::OVERLAY_VTEPS,
            self.vteps
                .insert(&Key::new(key.prefix_len, key.data()), value, 0),
        )
    }

    pub fn remove_vtep(&mut self, key: VtepKey) -> Result<bool, DataplaneError> {
        removed(
            names::OVERLAY_VTEPS,
            self.vteps.remove(&Key::new(key.prefix_len, key.data())),
        )
    }

    /// This host's underlay as the programs see it (all zero until the agent starts).
    pub fn underlay(&self) -> Result<UnderlayValue, DataplaneError> {
        self.underlay
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                map: names::OVERLAY_UNDERLAY,
                what: "reading",
                source,
            })
    }

    pub fn set_underlay(&mut self, value: UnderlayValue) -> Result<(), DataplaneError> {
        written(names::OVERLAY_UNDERLAY, self.underlay.set(0, value, 0))
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

fn section<T>(
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
