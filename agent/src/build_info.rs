//! What this binary is: the crate version, the git commit it was built from (recorded
//! by `build.rs`) and the SHA-256 of the eBPF object it embeds. `skein version` prints
//! them and `/metrics` exports them as `skein_build_info`, so an operator can tell which
//! programs a node runs without trusting the version number alone (a rebuilt object
//! with the same version has another hash).

use std::sync::OnceLock;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The three values, as printed and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct BuildInfo {
    pub(crate) version: String,
    /// `git rev-parse --short=12 HEAD`, `-dirty` if the tree had changes; `unknown`
    /// when built without git.
    pub(crate) commit: String,
    /// Lowercase hex, 64 digits, of [`crate::dataplane::OBJECT`].
    pub(crate) ebpf_sha256: String,
}

impl BuildInfo {
    /// This binary's build information. The hash is computed once per process (the
    /// object is a few MiB; hashing it takes milliseconds).
    pub(crate) fn current() -> &'static BuildInfo {
        static CURRENT: OnceLock<BuildInfo> = OnceLock::new();
        CURRENT.get_or_init(|| BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: env!("SKEIN_GIT_COMMIT").to_owned(),
            ebpf_sha256: sha256_hex(crate::dataplane::OBJECT),
        })
    }

    /// The Prometheus labels, in the order `/metrics` writes them.
    pub(crate) fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("version", &self.version),
            ("commit", &self.commit),
            ("ebpf_sha256", &self.ebpf_sha256),
        ]
    }
}

/// SHA-256 of `bytes` as 64 lowercase hex digits (as `sha256sum` prints it).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex_as_sha256sum_prints_it() {
        // `printf abc | sha256sum`
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_current_build_names_its_commit_and_hashes_the_embedded_object() {
        let info = BuildInfo::current();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.ebpf_sha256, sha256_hex(crate::dataplane::OBJECT));
        assert_eq!(info.ebpf_sha256.len(), 64);
        let commit = info.commit.trim_end_matches("-dirty");
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{}",
            info.commit
        );
    }
}
