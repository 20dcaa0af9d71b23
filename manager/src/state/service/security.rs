//! `--cap-add`, `--cap-drop` and `--allow-new-privileges`: what a service's tasks may do
//! as root, stored with the service (one field, [`Security`]) so every node confines its
//! tasks alike.
//!
//! Tasks start from Docker's default capability set ([`DEFAULT_CAPS`]), not from every
//! capability: enough for ordinary root daemons (bind low ports, change owners, switch
//! users, send raw ICMP) and nothing that reaches the host (no `NET_ADMIN`, `SYS_ADMIN`,
//! `BPF`, `SYS_PTRACE`, `SYS_MODULE`). The rule is Docker's: `ALL` in `--cap-add` means
//! every capability but the dropped ones; `ALL` in `--cap-drop` means only the added
//! ones; otherwise the defaults minus the dropped plus the added. One capability in both
//! lists is refused rather than guessed.

use serde::{Deserialize, Serialize};

use super::ServiceSpecError;

/// Linux capability names (without `CAP_`), indexed by their number (`linux/capability.h`,
/// up to `CHECKPOINT_RESTORE` = 40, Linux 5.9). A kernel that knows fewer simply never
/// grants the missing ones.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What a service's tasks may do beyond an ordinary confined root: capabilities added to
/// or dropped from [`DEFAULT_CAPS`] (names normalized: upper case, no `CAP_` prefix, or
/// `ALL`), and whether setuid binaries and file capabilities may raise privileges
/// (`no_new_privs` is set unless `new_privileges`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub new_privileges: bool,
}

/// The capability number of `name` (`NET_ADMIN`, `cap_net_admin`), or `None`.
fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .map(|n| n as u32)
}

/// Normalizes a `--cap-add`/`--cap-drop` value: `cap_net_admin` → `NET_ADMIN`, `all` →
/// `ALL`; an unknown name is refused naming it.
pub fn parse_capability(name: &str) -> Result<String, ServiceSpecError> {
    if name.eq_ignore_ascii_case("ALL") {
        return Ok("ALL".to_owned());
    }
    match cap_number(name) {
        Some(n) => Ok(CAPABILITIES[n as usize].to_owned()),
        None => Err(ServiceSpecError::UnknownCapability {
            name: name.to_owned(),
        }),
    }
}

fn mask_of<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    names
        .into_iter()
        .filter_map(cap_number)
        .fold(0, |mask, n| mask | 1 << n)
}

impl Security {
    /// Checks every name is a capability (or `ALL`) and none is both added and dropped.
    pub fn validate(&self) -> Result<(), ServiceSpecError> {
        for name in self.cap_add.iter().chain(&self.cap_drop) {
            parse_capability(name)?;
        }
        if let Some(both) = self
            .cap_add
            .iter()
            .find(|a| self.cap_drop.iter().any(|d| d.eq_ignore_ascii_case(a)))
        {
            return Err(ServiceSpecError::CapabilityAddedAndDropped { name: both.clone() });
        }
        Ok(())
    }

    /// The tasks' capabilities as a bit mask (bit N = capability N), by Docker's rule.
    pub fn capabilities(&self) -> u64 {
        let is_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        let every = mask_of(CAPABILITIES);
        let added = mask_of(self.cap_add.iter().map(String::as_str));
        let dropped = mask_of(self.cap_drop.iter().map(String::as_str));
        if is_all(&self.cap_add) {
            every & !dropped
        } else if is_all(&self.cap_drop) {
            added
        } else {
            (mask_of(DEFAULT_CAPS) & !dropped) | added
        }
    }
}

/// The names of the capabilities in `mask`, in number order.
pub fn capability_names(mask: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(n, _)| mask & (1 << n) != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(add: &[&str], drop: &[&str]) -> Security {
        Security {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            new_privileges: false,
        }
    }

    #[test]
    fn capability_numbers_follow_the_kernel() {
        assert_eq!(cap_number("CHOWN"), Some(0));
        assert_eq!(cap_number("cap_net_admin"), Some(12));
        assert_eq!(cap_number("SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("BPF"), Some(39));
        assert_eq!(cap_number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("NET_WIZARD"), None);
    }

    #[test]
    fn the_default_is_dockers_set() {
        let caps = Security::default().capabilities();
        let mut names = capability_names(caps);
        names.sort_unstable();
        let mut docker = DEFAULT_CAPS.to_vec();
        docker.sort_unstable();
        assert_eq!(names, docker);
        for absent in ["NET_ADMIN", "SYS_ADMIN", "BPF", "SYS_PTRACE", "SYS_MODULE"] {
            assert_eq!(caps & 1 << cap_number(absent).unwrap(), 0, "{absent}");
        }
    }

    #[test]
    fn adds_and_drops_follow_dockers_rule() {
        let net_admin = 1 << 12;
        let net_raw = 1 << 13;
        let caps = security(&["NET_ADMIN"], &["NET_RAW"]).capabilities();
        assert_eq!(caps & net_admin, net_admin);
        assert_eq!(caps & net_raw, 0);
        assert_eq!(
            security(&["ALL"], &["NET_RAW"]).capabilities(),
            ((1u64 << 41) - 1) & !net_raw
        );
        assert_eq!(security(&["NET_ADMIN"], &["ALL"]).capabilities(), net_admin);
        assert_eq!(security(&[], &["all"]).capabilities(), 0);
    }

    #[test]
    fn bad_names_and_contradictions_are_refused() {
        assert_eq!(parse_capability("cap_net_admin").unwrap(), "NET_ADMIN");
        assert_eq!(parse_capability("all").unwrap(), "ALL");
        let e = parse_capability("NET_WIZARD").unwrap_err().to_string();
        assert!(e.contains("\"NET_WIZARD\""), "{e}");
        assert!(security(&["NET_ADMIN"], &[]).validate().is_ok());
        assert!(security(&["NET_WIZARD"], &[]).validate().is_err());
        let e = security(&["NET_RAW"], &["net_raw"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("NET_RAW") && e.contains("both"), "{e}");
    }
}
