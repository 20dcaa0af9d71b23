//! The fixed hash behind bucket assignment and digests.
//!
//! Every node must compute the same bucket and the same digest for the same record, across
//! processes, architectures and compiler versions. std's `DefaultHasher` is randomly seeded
//! per process and its algorithm may change between Rust releases, and `Hash` impls add
//! type-specific framing; so this is FNV-1a over an explicit byte encoding, followed by a
//! MurmurHash3 finalizer because plain FNV-1a mixes its high bits poorly and bucket choice
//! uses the low ones. It is not collision resistant against a malicious peer — peers already
//! hold the cluster key, and the worst a collision does is hide a difference from one
//! anti-entropy round.

use super::record::{Record, RecordKey, Scope, Stamp};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Fnv1a {
        Fnv1a(FNV_OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Feeds a key with explicit framing (tags and a length prefix), so no two keys produce the
/// same byte stream.
fn write_key(h: &mut Fnv1a, key: &RecordKey) {
    match key.scope {
        Scope::Node(node) => {
            h.write(&[0]);
            h.write(&node.0);
        }
        Scope::Cluster => h.write(&[1]),
    }
    h.write(&[key.kind.code()]);
    h.write_u64(key.name.len() as u64);
    h.write(key.name.as_bytes());
}

/// The rendezvous weight of running `slot` of the service `(name, created)` on `node`: the
/// same on every node, process and architecture.
pub(crate) fn placement_weight(service: &str, created: Stamp, slot: u32, node: &[u8; 16]) -> u64 {
    let mut h = Fnv1a::new();
    h.write_u64(service.len() as u64);
    h.write(service.as_bytes());
    h.write_u64(created.hlc);
    h.write(&created.writer.0);
    h.write(&slot.to_le_bytes());
    h.write(node);
    h.finish()
}

/// A stable hash of a key; decides its bucket.
pub(super) fn key_hash(key: &RecordKey) -> u64 {
    let mut h = Fnv1a::new();
    write_key(&mut h, key);
    h.finish()
}

/// A stable hash of a whole record. The value is included, not just key and stamp, so that
/// two records with the same stamp but different payloads (a writer that reused a stamp, e.g.
/// after losing its clock state) show up as a digest difference and get reconciled.
pub(super) fn record_hash(record: &Record) -> u64 {
    let mut h = Fnv1a::new();
    write_key(&mut h, &record.key);
    let Stamp { hlc, writer } = record.stamp;
    h.write_u64(hlc);
    h.write(&writer.0);
    match &record.value {
        None => h.write(&[0]),
        Some(value) => {
            h.write(&[1]);
            h.write_u64(value.len() as u64);
            h.write(value);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{state::Kind, NodeId};

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors, checked before the finalizer.
        let raw = |bytes: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(bytes);
            h.0
        };
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn key_hash_is_pinned() {
        // Pinned so an accidental change of the encoding, which would split a mixed-version
        // cluster into nodes whose digests never agree, fails here first.
        let key = RecordKey::cluster(Kind::Network, "web");
        assert_eq!(key_hash(&key), key_hash(&key.clone()));
        assert_eq!(
            key_hash(&key),
            0xb346_886f_fe8c_132b,
            "{:#x}",
            key_hash(&key)
        );
    }

    #[test]
    fn framing_separates_similar_keys() {
        let n = NodeId([0; 16]);
        let a = RecordKey::node(n, Kind::Endpoint, "ab");
        let b = RecordKey::node(n, Kind::Endpoint, "a");
        let c = RecordKey::cluster(Kind::Endpoint, "ab");
        assert_ne!(key_hash(&a), key_hash(&b));
        assert_ne!(key_hash(&a), key_hash(&c));
    }
}
