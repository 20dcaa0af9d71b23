//! Interface names: the one rule for what a valid name is (the kernel's, used by the
//! netlink code and by every flag and config value that names an interface), and
//! deterministic names for endpoints' host-side veths.

use super::{NetlinkError, Result};

/// The longest interface name Linux accepts, in bytes (`IFNAMSIZ` minus the NUL).
pub const IFNAMSIZ_MAX: usize = 15;

/// The longest prefix [`host_ifname`] keeps, so at least 8 hex digits of hash follow.
const MAX_HINT_LEN: usize = IFNAMSIZ_MAX - 8;

/// The prefix used when the hint has no usable character.
const DEFAULT_HINT: &str = "sk";

/// Why a name is not a valid interface name. Displays as the reason alone, for callers to
/// prefix with the name and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IfnameError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {IFNAMSIZ_MAX} bytes")]
    TooLong,
    #[error("\".\" and \"..\" are not interface names")]
    Dot,
    #[error("it contains {0:?} (no '/', ':', '%', whitespace or control characters)")]
    Forbidden(char),
    #[error("it contains {0:?}, whose byte 0xA0 the kernel counts as a space")]
    SpaceByte(char),
}

/// The one interface-name rule. The kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace (the kernel's `isspace`, which also counts the byte
/// 0xA0, so a UTF-8 character containing that byte is refused too); and, on top, what
/// no existing interface can be called: no `%` (the kernel takes `eth%d` as a template
/// and picks a name itself, or refuses it) and no control characters (NUL included),
/// which `ip link` and logs would not show.
pub(crate) fn check_ifname(name: &str) -> Result<(), IfnameError> {
    if name.is_empty() {
        return Err(IfnameError::Empty);
    }
    if name.len() > IFNAMSIZ_MAX {
        return Err(IfnameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(IfnameError::Dot);
    }
    for c in name.chars() {
        if matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control() {
            return Err(IfnameError::Forbidden(c));
        }
        if c.encode_utf8(&mut [0; 4]).bytes().any(|b| b == 0xa0) {
            return Err(IfnameError::SpaceByte(c));
        }
    }
    Ok(())
}

/// [`check_ifname`] as a [`NetlinkError`] naming `name`.
pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    check_ifname(name).map_err(|reason| NetlinkError::InvalidIfname {
        name: name.to_owned(),
        reason,
    })
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
        // What `ip link add NAME type dummy` accepts, including the edges: 15 bytes,
        // dots other than "." and "..", and non-ASCII counted in bytes.
        for good in [
            "eth0",
            "sk0123456789abc",
            "a.b-c_d",
            "...",
            ".a",
            "a..",
            "v@lan#1+x=y",
            "é",
            "ééééééé",
        ] {
            assert_eq!(check_ifname(good), Ok(()), "{good:?}");
        }
        for (bad, why) in [
            ("", IfnameError::Empty),
            ("sk0123456789abcd", IfnameError::TooLong),
            // 8 two-byte characters: 8 characters but 16 bytes.
            ("éééééééé", IfnameError::TooLong),
            (".", IfnameError::Dot),
            ("..", IfnameError::Dot),
            ("a/b", IfnameError::Forbidden('/')),
            ("a:b", IfnameError::Forbidden(':')),
            ("eth%d", IfnameError::Forbidden('%')),
            ("a b", IfnameError::Forbidden(' ')),
            ("tab\t", IfnameError::Forbidden('\t')),
            ("nl\n", IfnameError::Forbidden('\n')),
            ("vt\u{b}", IfnameError::Forbidden('\u{b}')),
            ("ff\u{c}", IfnameError::Forbidden('\u{c}')),
            ("cr\r", IfnameError::Forbidden('\r')),
            ("nul\0", IfnameError::Forbidden('\0')),
            ("bell\u{7}", IfnameError::Forbidden('\u{7}')),
            ("nbsp\u{a0}", IfnameError::Forbidden('\u{a0}')),
            // U+00E0 is C3 A0 in UTF-8: the kernel's isspace(0xA0) refuses it.
            ("voilà", IfnameError::SpaceByte('à')),
        ] {
            assert_eq!(check_ifname(bad), Err(why), "{bad:?}");
            let error = validate_ifname(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
