//! What the agent keeps across restarts, in `--state-dir` (mode 0700): its node ID (so a
//! restarted node comes back as itself), its boot epoch (increasing on every start, for
//! replay protection), the cluster's join token (0600, rewritten when the key rotates),
//! its node key (0600: the X25519 secret a key rotation seals the new key to), and the
//! last known peers (to rejoin without `--join`).

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use manager::{
    secure::{JoinToken, NodeSecret},
    state::{decode_snapshot, encode_snapshot, Record},
    NodeId,
};

pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating, 0700) the state directory.
    pub(crate) fn open(dir: &Path) -> Result<StateDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// This node's ID, created on first start.
    pub(crate) fn node_id(&self) -> Result<NodeId> {
        let path = self.dir.join("node-id");
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().with_context(|| {
                format!(
                    "{} is corrupt; remove it to get a new node ID",
                    path.display()
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = NodeId::random();
                write_atomically(&path, id.to_string().as_bytes(), 0o600)?;
                Ok(id)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// This node's static X25519 secret, created on first start. Its public half goes in
    /// the node record; key rotations send this node the new cluster key sealed to it.
    pub(crate) fn node_secret(&self) -> Result<NodeSecret> {
        let path = self.dir.join("node-key");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = decode_hex32(text.trim()).with_context(|| {
                    format!(
                        "{} is corrupt; remove it to get a new node key (then restart the agent)",
                        path.display()
                    )
                })?;
                Ok(NodeSecret::from_bytes(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = NodeSecret::generate();
                let hex: String = secret
                    .to_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                write_atomically(&path, hex.as_bytes(), 0o600)?;
                Ok(secret)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// A boot epoch greater than every previous one: the wall clock in ms, or the last
    /// epoch + 1 if the clock went backwards.
    pub(crate) fn next_boot_epoch(&self, wall_ms: u64) -> Result<u64> {
        let path = self.dir.join("boot-epoch");
        let previous = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let epoch = wall_ms.max(previous + 1);
        write_atomically(&path, epoch.to_string().as_bytes(), 0o600)?;
        Ok(epoch)
    }

    /// The cluster this node belongs to, if any.
    pub(crate) fn token(&self) -> Result<Option<JoinToken>> {
        let path = self.dir.join("join-token");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().parse().with_context(|| {
                format!(
                    "{} is corrupt; remove the state directory to start afresh",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub(crate) fn save_token(&self, token: &JoinToken) -> Result<()> {
        write_atomically(
            &self.dir.join("join-token"),
            token.to_string().as_bytes(),
            0o600,
        )
    }

    /// The cluster state this node saved last (empty if none).
    pub(crate) fn records(&self) -> Vec<Record> {
        fs::read(self.dir.join("store"))
            .map(|bytes| decode_snapshot(&bytes))
            .unwrap_or_default()
    }

    /// Saves the cluster state, so a restart (even of every node at once) keeps it.
    pub(crate) fn save_records(&self, records: &[Record]) -> Result<()> {
        write_atomically(&self.dir.join("store"), &encode_snapshot(records), 0o600)
    }

    /// Forgets the cluster (after `skein agent leave`): the next start needs `--init` or
    /// `--join` again. The node ID stays.
    pub(crate) fn forget_cluster(&self) -> Result<()> {
        for file in ["join-token", "peers", "store"] {
            match fs::remove_file(self.dir.join(file)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("removing {file} from {}", self.dir.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Peers seen alive last time, to rejoin through after a restart.
    pub(crate) fn peers(&self) -> Vec<SocketAddr> {
        fs::read_to_string(self.dir.join("peers"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub(crate) fn save_peers(&self, peers: &[SocketAddr]) -> Result<()> {
        let text: String = peers.iter().map(|p| format!("{p}\n")).collect();
        write_atomically(&self.dir.join("peers"), text.as_bytes(), 0o600)
    }
}

/// 64 hex digits as 32 bytes; no message repeats the input (it is a secret).
fn decode_hex32(text: &str) -> Result<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected 64 hex digits");
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digits");
    }
    Ok(bytes)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Which cluster to be in, from the flags and what the state directory remembers.
pub(crate) enum Membership {
    /// `--init` on a fresh node: a new cluster.
    Create(JoinToken),
    /// Join (or rejoin) through these seeds.
    Join {
        token: JoinToken,
        seeds: Vec<String>,
        /// No cluster saved yet: the join must prove the token and the seeds (a restarted
        /// member keeps running even if the peers it knew are down too).
        first: bool,
    },
    /// A restarted node: the saved cluster, through the peers it last saw (maybe none:
    /// it then waits to be contacted).
    Rejoin {
        token: JoinToken,
        peers: Vec<SocketAddr>,
    },
}

/// Decides the membership; refuses to silently move a node between clusters.
pub(crate) fn membership(
    state: &StateDir,
    init: bool,
    join: &[String],
    token: Option<&str>,
) -> Result<Membership> {
    let saved = state.token()?;
    let given = match token {
        Some(text) => Some(text.parse::<JoinToken>().context("--token")?),
        None => None,
    };
    // The same cluster with another key: the token was rotated while this node was
    // away. The given one must prove itself by a join (`first`), then replaces the saved.
    let mut rotated = false;
    if let (Some(saved), Some(given)) = (&saved, &given) {
        if saved.cluster_id != given.cluster_id {
            bail!(
                "this node already belongs to another cluster (its state is in {}); remove that directory to join a new one",
                state.path().display()
            );
        }
        rotated = saved.key != given.key;
    }
    if init {
        return Ok(match saved {
            // A restart with the same flags: the cluster already exists.
            Some(token) => Membership::Rejoin {
                token,
                peers: state.peers(),
            },
            None => Membership::Create(JoinToken::generate()),
        });
    }
    if !join.is_empty() {
        let first = saved.is_none() || rotated;
        let token = given.or(saved).context(
            "--join needs the cluster's --token (print it with `skein join-token` on a member)",
        )?;
        return Ok(Membership::Join {
            token,
            seeds: join.to_vec(),
            first,
        });
    }
    match saved {
        Some(token) => Ok(Membership::Rejoin {
            token,
            peers: state.peers(),
        }),
        None => bail!(
            "this node belongs to no cluster yet: start it with --init to create one, or with --join ADDR --token TOKEN to join one"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state(name: &str) -> StateDir {
        let dir =
            std::env::temp_dir().join(format!("skein-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        StateDir::open(&dir).unwrap()
    }

    #[test]
    fn the_node_key_is_made_once_and_kept_private() {
        let state = temp_state("key");
        let first = state.node_secret().unwrap();
        let again = state.node_secret().unwrap();
        assert_eq!(first.public(), again.public());
        let path = state.path().join("node-key");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(state.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::write(&path, "not hex").unwrap();
        let error = format!("{:#}", state.node_secret().unwrap_err());
        assert!(
            error.contains("corrupt") && !error.contains("not hex"),
            "{error}"
        );
        fs::remove_dir_all(state.path()).unwrap();
    }

    #[test]
    fn a_rotated_token_of_the_same_cluster_is_taken_and_must_prove_itself() {
        let state = temp_state("rotated");
        let saved = JoinToken::generate();
        state.save_token(&saved).unwrap();
        let rotated = JoinToken {
            cluster_id: saved.cluster_id,
            key: manager::secure::ClusterKey::generate(),
        };
        let join = ["10.0.0.1:7946".to_owned()];
        match membership(&state, false, &join, Some(&rotated.to_string())).unwrap() {
            Membership::Join { token, first, .. } => {
                assert_eq!(token, rotated);
                assert!(
                    first,
                    "a new key must be proven by a join before it is saved"
                );
            }
            _ => panic!("not a join"),
        }
        // The same token as saved: a plain restart through --join, nothing to prove.
        match membership(&state, false, &join, Some(&saved.to_string())).unwrap() {
            Membership::Join { first, .. } => assert!(!first),
            _ => panic!("not a join"),
        }
        let other = JoinToken::generate().to_string();
        let error = format!(
            "{:#}",
            membership(&state, false, &join, Some(&other))
                .err()
                .unwrap()
        );
        assert!(error.contains("another cluster"), "{error}");
        fs::remove_dir_all(state.path()).unwrap();
    }
}
