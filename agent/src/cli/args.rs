//! Value parsers and flags shared by the command groups: every user-given value is parsed
//! here, once, into the type the agent's API carries.

use clap::Args;
use ipnet::Ipv4Net;

use super::output::Format;

#[derive(Args, Debug)]
pub(crate) struct FormatArg {
    /// How to print the list.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

/// A value parser refusing empty (or all-blank) strings.
pub(super) fn non_empty(what: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value| {
        if value.trim().is_empty() {
            Err(format!("{what} cannot be empty"))
        } else {
            Ok(value.to_owned())
        }
    }
}

/// An IPv4 network in CIDR notation with no host bits set.
pub(super) fn parse_subnet(value: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = value
        .parse()
        .map_err(|_| "not an IPv4 subnet; write it like 10.10.0.0/24".to_owned())?;
    if net.addr() != net.network() {
        return Err(format!("has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// A MAC address `aa:bb:cc:dd:ee:ff`.
pub(super) fn parse_mac(value: &str) -> Result<[u8; 6], String> {
    crate::netif::parse_mac(value)
        .ok_or_else(|| "not a MAC address; write it like 02:42:ac:11:00:02".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_macs() {
        assert_eq!(
            parse_subnet("10.1.0.0/16"),
            Ok("10.1.0.0/16".parse().unwrap())
        );
        assert!(parse_subnet("10.1.0.1/16")
            .unwrap_err()
            .contains("10.1.0.0/16"));
        assert!(parse_subnet("nope").is_err());
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Ok([0x02, 0x42, 0xac, 0x11, 0x00, 0x02])
        );
        assert!(parse_mac("02:42:ac:11:00").is_err());
        assert!(non_empty("a name")(" ").unwrap_err().contains("a name"));
    }
}
