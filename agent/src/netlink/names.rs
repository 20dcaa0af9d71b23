//! Interface names: the kernel's rules, and deterministic names for endpoints' host-side
//! veths.

use super::{NetlinkError, Result};

/// The longest interface name Linux accepts, in bytes (`IFNAMSIZ` minus the NUL).
pub const IFNAMSIZ_MAX: usize = 15;

/// The longest prefix [`host_ifname`] keeps, so at least 8 hex digits of hash follow.
const MAX_HINT_LEN: usize = IFNAMSIZ_MAX - 8;

/// The prefix used when the hint has no usable character.
const DEFAULT_HINT: &str = "sk";

/// Fails unless `name` is a valid interface name: 1 to 15 bytes, no `/`, `:`, whitespace
/// or NUL, and not `.` or `..` (the kernel's `dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::InvalidIfname {
            name: name.to_owned(),
        })
    }
}

/// The host-side interface name of the endpoint `endpoint_id`: the hint (its ASCII
/// letters, digits, `-` and `_`, at most 7 of them; `sk` if none are left) followed by
/// hex digits of a hash of the ID up to 15 characters, e.g. `sk` + 13 hex digits.
/// Deterministic across runs, hosts and versions (FNV-1a with a fixed finalizer, never
/// std's `Hasher`), so a restarted agent finds the links an earlier run made by name.
///
/// Collisions: with `k` hex digits (13 for a 2-character hint, at least 8), `n` endpoints
/// on one host collide with probability about n² / 2^(4k+1): for 1,000 endpoints about
/// 1 in 9·10⁹ with 13 digits, and 1 in 8,600 with the minimum of 8. Two endpoints sharing
/// a name would fight over one veth, so reconcilers should check their desired names for
/// duplicates; keep the hint short.
pub fn host_ifname(prefix_hint: &str, endpoint_id: &str) -> String {
    let mut name: String = prefix_hint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_HINT_LEN)
        .collect();
    if name.is_empty() {
        name.push_str(DEFAULT_HINT);
    }
    let hex = format!("{:016x}", stable_hash(endpoint_id.as_bytes()));
    let digits = IFNAMSIZ_MAX - name.len();
    name.push_str(&hex[..digits]);
    name
}

/// FNV-1a 64, then murmur3's 64-bit finalizer so every output bit depends on every input
/// bit (plain FNV mixes the high bits poorly for short inputs). Fixed forever: names made
/// by earlier versions must be found again.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn host_ifnames_are_valid_deterministic_and_distinct() {
        let a = host_ifname("sk", "endpoint-1");
        assert_eq!(a.len(), IFNAMSIZ_MAX);
        assert!(a.starts_with("sk"));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        validate_ifname(&a).unwrap();
        assert_eq!(a, host_ifname("sk", "endpoint-1"));
        // Pinned: a change here renames every existing endpoint's veth.
        assert_eq!(host_ifname("sk", ""), "skefd01f60ba992");
        assert_eq!(host_ifname("sk", "endpoint-1"), "sk1683bf9ab5741");
        let names: HashSet<String> = (0..10_000)
            .map(|i| host_ifname("sk", &format!("ep-{i}")))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn hints_are_cleaned_and_shortened() {
        let long = host_ifname("sk-1234-56-h1-very-long", "x");
        assert_eq!(&long[..7], "sk-1234");
        assert_eq!(long.len(), IFNAMSIZ_MAX);
        let cleaned = host_ifname("s k/:é", "x");
        assert!(cleaned.starts_with("sk"), "{cleaned}");
        assert!(host_ifname("", "x").starts_with("sk"));
        assert!(host_ifname("/:", "x").starts_with("sk"));
        for hint in ["", "a", "sk", "toolonghint", "/:"] {
            validate_ifname(&host_ifname(hint, "id")).unwrap();
        }
    }

    #[test]
    fn ifname_rules_match_the_kernel() {
        for good in ["eth0", "sk0123456789abc", "a.b-c_d"] {
            validate_ifname(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "sk0123456789abcd",
            "tab\t",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
