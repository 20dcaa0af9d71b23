//! Defaults that depend on where the agent runs: paths scoped to the named network
//! namespace the process runs in, so several agents (one per host namespace) run side by
//! side and `ip netns exec H skein node ls` reaches H's agent with no flags; and the
//! hostname.

use std::path::PathBuf;

use crate::netlink::current_netns_name;

/// Where an agent's socket, state and pins go by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DefaultPaths {
    pub(crate) socket: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) bpf_dir: PathBuf,
}

impl DefaultPaths {
    /// The defaults in the root network namespace (`None`) or in the named one.
    pub(crate) fn for_netns(netns: Option<&str>) -> DefaultPaths {
        let (run, state, bpf) = (
            PathBuf::from("/run/skein"),
            PathBuf::from("/var/lib/skein"),
            PathBuf::from("/sys/fs/bpf/skein"),
        );
        match netns {
            None => DefaultPaths {
                socket: run.join("skein.sock"),
                state_dir: state,
                bpf_dir: bpf,
            },
            Some(name) => DefaultPaths {
                socket: run.join(name).join("skein.sock"),
                state_dir: state.join(name),
                bpf_dir: bpf.join(name),
            },
        }
    }
}

/// The defaults for this process: scoped to its named network namespace, if any.
pub(crate) fn default_paths() -> DefaultPaths {
    DefaultPaths::for_netns(current_netns_name().as_deref())
}

/// What [`merge`](super::merge) falls back on where nothing was given and no constant
/// will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Defaults {
    pub(crate) paths: DefaultPaths,
    /// `None` if the host's name could not be read.
    pub(crate) hostname: Option<String>,
}

impl Defaults {
    /// This process's defaults: inside a named network namespace, paths under its name
    /// and the name as hostname (every namespace shares the machine's hostname, so
    /// agents side by side would otherwise all be called the same).
    pub(crate) fn of_this_process() -> Defaults {
        let netns = current_netns_name();
        Defaults {
            paths: DefaultPaths::for_netns(netns.as_deref()),
            hostname: netns.or_else(system_hostname),
        }
    }
}

/// The system hostname (of this UTS namespace).
fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // POSIX leaves truncated names unterminated; then the whole buffer is the name.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{merge, AgentSettings};

    #[test]
    fn netns_defaults_are_scoped_by_name() {
        let paths = DefaultPaths::for_netns(Some("h2"));
        assert_eq!(paths.socket, PathBuf::from("/run/skein/h2/skein.sock"));
        assert_eq!(paths.state_dir, PathBuf::from("/var/lib/skein/h2"));
        assert_eq!(paths.bpf_dir, PathBuf::from("/sys/fs/bpf/skein/h2"));
        let defaults = Defaults {
            paths,
            hostname: Some("h2".into()),
        };
        let given = AgentSettings {
            underlay_iface: Some("eth0".into()),
            ..AgentSettings::default()
        };
        let config = merge(&given, &AgentSettings::default(), &defaults).unwrap();
        assert_eq!(config.socket, PathBuf::from("/run/skein/h2/skein.sock"));
        assert_eq!(config.hostname, "h2");

        let no_name = Defaults {
            hostname: None,
            ..defaults
        };
        let error = merge(&given, &AgentSettings::default(), &no_name)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--hostname"), "{error}");
    }

    #[test]
    fn tests_run_in_the_root_netns() {
        assert_eq!(default_paths(), DefaultPaths::for_netns(None));
    }

    #[test]
    fn this_host_has_a_name() {
        assert!(system_hostname().is_some_and(|name| !name.is_empty()));
    }
}
