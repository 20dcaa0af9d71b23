//! What travels inside a sealed gossip datagram (see [`crate::secure`] for the envelope).
//!
//! One tag byte, then:
//! - `SWIM`: a foca message, as foca encoded it (membership, failure detection, and the
//!   piggybacked state broadcasts);
//! - `DIGEST`: anti-entropy round start: the sender's per-bucket state digest;
//! - `WANT`: the buckets whose digests differ, asking the initiator for its records;
//! - `RECORDS`: encoded state records, each prefixed by its u16 length.
//!
//! Parsing is strict and bounded: anything malformed is an error, never a panic.

use crate::state::BUCKETS;

const SWIM: u8 = 1;
const DIGEST: u8 = 2;
const WANT: u8 = 3;
const RECORDS: u8 = 4;

/// A decoded datagram payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Swim(&'a [u8]),
    Digest(Box<[u64; BUCKETS]>),
    Want(Vec<usize>),
    Records(Vec<&'a [u8]>),
}

/// Why a payload could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty payload")]
    Empty,
    #[error("unknown payload tag {0}")]
    UnknownTag(u8),
    #[error("payload of tag {tag} has bad length {len}")]
    BadLength { tag: u8, len: usize },
    #[error("bucket index {0} out of range")]
    BadBucket(usize),
}

pub fn swim(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(SWIM);
    out.extend_from_slice(message);
    out
}

pub fn digest(digest: &[u64; BUCKETS]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * BUCKETS);
    out.push(DIGEST);
    for bucket in digest {
        out.extend_from_slice(&bucket.to_le_bytes());
    }
    out
}

pub fn want(buckets: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + buckets.len());
    out.push(WANT);
    out.extend(buckets.iter().map(|&b| b as u8));
    out
}

/// Packs encoded records into as few `RECORDS` payloads as fit `max_len` bytes each.
/// A record too large for any payload is skipped (the store never makes one).
pub fn records<'a>(encoded: impl IntoIterator<Item = &'a [u8]>, max_len: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current = vec![RECORDS];
    for record in encoded {
        let needed = 2 + record.len();
        if 1 + needed > max_len || record.len() > u16::MAX as usize {
            continue;
        }
        if current.len() + needed > max_len {
            out.push(std::mem::replace(&mut current, vec![RECORDS]));
        }
        current.extend_from_slice(&(record.len() as u16).to_le_bytes());
        current.extend_from_slice(record);
    }
    if current.len() > 1 {
        out.push(current);
    }
    out
}

pub fn parse(payload: &[u8]) -> Result<Payload<'_>, WireError> {
    let (&tag, body) = payload.split_first().ok_or(WireError::Empty)?;
    let bad_length = || WireError::BadLength {
        tag,
        len: body.len(),
    };
    match tag {
        SWIM => Ok(Payload::Swim(body)),
        DIGEST => {
            if body.len() != 8 * BUCKETS {
                return Err(bad_length());
            }
            let mut digest = Box::new([0u64; BUCKETS]);
            for (bucket, chunk) in digest.iter_mut().zip(body.chunks_exact(8)) {
                *bucket = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            }
            Ok(Payload::Digest(digest))
        }
        WANT => {
            if body.is_empty() || body.len() > BUCKETS {
                return Err(bad_length());
            }
            let buckets: Vec<usize> = body.iter().map(|&b| b as usize).collect();
            if let Some(&bad) = buckets.iter().find(|&&b| b >= BUCKETS) {
                return Err(WireError::BadBucket(bad));
            }
            Ok(Payload::Want(buckets))
        }
        RECORDS => {
            let mut rest = body;
            let mut records = Vec::new();
            while !rest.is_empty() {
                if rest.len() < 2 {
                    return Err(bad_length());
                }
                let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
                if len == 0 || rest.len() < 2 + len {
                    return Err(bad_length());
                }
                records.push(&rest[2..2 + len]);
                rest = &rest[2 + len..];
            }
            if records.is_empty() {
                return Err(bad_length());
            }
            Ok(Payload::Records(records))
        }
        other => Err(WireError::UnknownTag(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse(&swim(b"abc")).unwrap(), Payload::Swim(b"abc"));
        let mut d = [0u64; BUCKETS];
        d[3] = 42;
        d[BUCKETS - 1] = u64::MAX;
        assert_eq!(parse(&digest(&d)).unwrap(), Payload::Digest(Box::new(d)));
        assert_eq!(parse(&want(&[1, 5])).unwrap(), Payload::Want(vec![1, 5]));
        let recs: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 40]).collect();
        let packed = records(recs.iter().map(Vec::as_slice), 300);
        assert!(packed.len() > 1 && packed.iter().all(|p| p.len() <= 300));
        let mut seen = Vec::new();
        for p in &packed {
            let Payload::Records(r) = parse(p).unwrap() else {
                panic!()
            };
            seen.extend(r.into_iter().map(<[u8]>::to_vec));
        }
        assert_eq!(seen, recs);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(parse(&[]), Err(WireError::Empty));
        assert_eq!(parse(&[9]), Err(WireError::UnknownTag(9)));
        assert!(parse(&[DIGEST, 1, 2]).is_err());
        assert!(parse(&[WANT]).is_err());
        assert_eq!(parse(&[WANT, 200]), Err(WireError::BadBucket(200)));
        assert!(parse(&[RECORDS]).is_err());
        assert!(parse(&[RECORDS, 5, 0, 1]).is_err());
        assert!(parse(&[RECORDS, 0, 0]).is_err());
        // Nothing panics on arbitrary input.
        let mut x = 1u32;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse(&buf);
        }
    }
}
