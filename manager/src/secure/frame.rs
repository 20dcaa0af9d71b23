//! Sealed frames for the agents' peer RPC over TCP: requests and responses between two
//! nodes of a cluster, encrypted and authenticated with the cluster key like gossip
//! datagrams, but bound to one exchange instead of checked against a replay window.
//!
//! # Wire format (version 1)
//!
//! On the stream every frame is preceded by its length, a `u32`, big-endian, at most
//! [`MAX_FRAME`]; a reader checks it before allocating. The frame itself:
//!
//! ```text
//!  offset  size  field            encoding
//!       0     1  version          1
//!       1     1  direction        1 request, 2 response
//!       2    16  request ID       random per request; its response repeats it
//!      18    24  nonce            random
//!      42     n  ciphertext       XChaCha20 of the plaintext
//!  42 + n    16  tag              Poly1305
//! ```
//!
//! The associated data is `"skein-peer-1" || cluster_id || header`: the label keeps a
//! frame from ever passing for a gossip datagram (or one of another protocol sharing the
//! key), the cluster ID keeps clusters apart, and the header binds the direction and the
//! request ID. So a response cannot be replayed as a request (or a request reflected
//! as a response), and a response to one request is refused by a client waiting for
//! another, even on the same connection.
//!
//! A replayed *request* is accepted again: requests are idempotent reads, and the answer
//! is sealed with the cluster key, so an eavesdropper who replays one learns nothing but
//! the answer's length. Requests that change state would need a freshness check (a
//! timestamp or a server challenge) first.
//!
//! [`FRAME_OVERHEAD`] is 58 bytes.

use std::fmt;

use chacha20poly1305::{AeadInPlace, Tag, XNonce};

use super::ClusterKey;

/// The frame format this code writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const FRAME_HEADER_LEN: usize = 42;
/// How much longer a sealed frame is than its plaintext.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + super::TAG_LEN;
/// The longest sealed frame (without its length prefix) anyone sends or accepts.
pub const MAX_FRAME: usize = 1024 * 1024;
/// The longest plaintext that fits in a [`MAX_FRAME`] frame.
pub const MAX_FRAME_PLAINTEXT: usize = MAX_FRAME - FRAME_OVERHEAD;
const _: () = assert!(FRAME_OVERHEAD == 58);

/// Domain separation from every other use of the cluster key.
const LABEL: &[u8; 12] = b"skein-peer-1";
const DIRECTION_AT: usize = 1;
const REQUEST_AT: usize = 2;
const NONCE_AT: usize = REQUEST_AT + 16;
const _: () = assert!(NONCE_AT + 24 == FRAME_HEADER_LEN);

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::Request => 1,
            Direction::Response => 2,
        }
    }
}

/// Random, fresh for every request; names the exchange a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameReject {
    #[error("frame too short to be sealed")]
    Truncated,
    #[error("frame longer than the {MAX_FRAME}-byte limit")]
    Oversized,
    #[error("frame has an unknown format version")]
    BadVersion,
    #[error("frame failed authentication (wrong key, other cluster, or altered)")]
    Forged,
    #[error("frame travels the wrong way (a response sent as a request, or the reverse)")]
    WrongDirection,
    #[error("response belongs to another request")]
    WrongRequest,
}

impl FrameReject {
    /// Every variant, in a fixed order for export.
    pub const ALL: [FrameReject; 6] = [
        FrameReject::Truncated,
        FrameReject::Oversized,
        FrameReject::BadVersion,
        FrameReject::Forged,
        FrameReject::WrongDirection,
        FrameReject::WrongRequest,
    ];

    /// A stable snake_case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            FrameReject::Truncated => "truncated",
            FrameReject::Oversized => "oversized",
            FrameReject::BadVersion => "bad_version",
            FrameReject::Forged => "forged",
            FrameReject::WrongDirection => "wrong_direction",
            FrameReject::WrongRequest => "wrong_request",
        }
    }
}

/// Seals and opens peer frames of one cluster. Holds no per-peer state, so one is shared
/// by every connection.
#[derive(Clone)]
pub struct FrameKey {
    /// The ring: frames are sealed with its current key and opened with any key it
    /// accepts, so peer RPC follows a rotation like gossip.
    key: ClusterKey,
    cluster_id: [u8; 16],
}

impl FrameKey {
    pub fn new(key: &ClusterKey, cluster_id: [u8; 16]) -> FrameKey {
        FrameKey {
            key: key.clone(),
            cluster_id,
        }
    }

    /// Encrypts and authenticates `plaintext` into a frame [`FRAME_OVERHEAD`] bytes
    /// longer, or [`FrameReject::Oversized`] if that would exceed [`MAX_FRAME`].
    pub fn seal(
        &self,
        direction: Direction,
        request: RequestId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, FrameReject> {
        if plaintext.len() > MAX_FRAME_PLAINTEXT {
            return Err(FrameReject::Oversized);
        }
        let nonce: [u8; 24] = rand::random();
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + plaintext.len());
        frame.push(FRAME_VERSION);
        frame.push(direction.byte());
        frame.extend_from_slice(&request.0);
        frame.extend_from_slice(&nonce);
        frame.extend_from_slice(plaintext);

        let (header, body) = frame.split_at_mut(FRAME_HEADER_LEN);
        let aad = self.associated_data(header);
        let tag = self
            .key
            .sealing_cipher()
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, body)
            .expect("XChaCha20-Poly1305 refuses only messages over 256 GiB");
        frame.extend_from_slice(&tag);
        Ok(frame)
    }

    /// Opens a frame a server received: it must be an authentic request. Returns its ID
    /// (to answer with) and its plaintext.
    pub fn open_request(&self, frame: &[u8]) -> Result<(RequestId, Vec<u8>), FrameReject> {
        self.open(frame, Direction::Request)
    }

    /// Opens a frame a client received: it must be an authentic response to `request`.
    pub fn open_response(&self, request: RequestId, frame: &[u8]) -> Result<Vec<u8>, FrameReject> {
        let (id, plaintext) = self.open(frame, Direction::Response)?;
        if id != request {
            return Err(FrameReject::WrongRequest);
        }
        Ok(plaintext)
    }

    fn open(&self, frame: &[u8], expected: Direction) -> Result<(RequestId, Vec<u8>), FrameReject> {
        if frame.len() > MAX_FRAME {
            return Err(FrameReject::Oversized);
        }
        match frame.first() {
            None => return Err(FrameReject::Truncated),
            Some(&FRAME_VERSION) => {}
            Some(_) => return Err(FrameReject::BadVersion),
        }
        if frame.len() < FRAME_OVERHEAD {
            return Err(FrameReject::Truncated);
        }
        let (header, body) = frame.split_at(FRAME_HEADER_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - super::TAG_LEN);
        // Authenticate before believing any header field.
        let aad = self.associated_data(header);
        let mut plaintext = ciphertext.to_vec();
        self.key
            .open_with(|cipher| {
                plaintext.copy_from_slice(ciphertext);
                cipher
                    .decrypt_in_place_detached(
                        XNonce::from_slice(&header[NONCE_AT..]),
                        &aad,
                        &mut plaintext,
                        Tag::from_slice(tag),
                    )
                    .ok()
            })
            .ok_or(FrameReject::Forged)?;
        if header[DIRECTION_AT] != expected.byte() {
            return Err(FrameReject::WrongDirection);
        }
        let id = RequestId(header[REQUEST_AT..NONCE_AT].try_into().expect("16 bytes"));
        Ok((id, plaintext))
    }

    fn associated_data(&self, header: &[u8]) -> [u8; 12 + 16 + FRAME_HEADER_LEN] {
        let mut aad = [0u8; 12 + 16 + FRAME_HEADER_LEN];
        aad[..12].copy_from_slice(LABEL);
        aad[12..28].copy_from_slice(&self.cluster_id);
        aad[28..].copy_from_slice(header);
        aad
    }
}

/// Leaves out the key.
impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameKey").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{secure::Sealer, NodeId};

    const CLUSTER: [u8; 16] = [7; 16];

    fn key() -> (ClusterKey, FrameKey) {
        let key = ClusterKey::generate();
        let frames = FrameKey::new(&key, CLUSTER);
        (key, frames)
    }

    #[test]
    fn round_trip_both_ways() {
        let (_, k) = key();
        for message in [&b""[..], b"x", &[0xab; 70_000]] {
            let id = RequestId::random();
            let frame = k.seal(Direction::Request, id, message).unwrap();
            assert_eq!(frame.len(), message.len() + FRAME_OVERHEAD);
            assert_eq!(k.open_request(&frame).unwrap(), (id, message.to_vec()));
            let answer = k.seal(Direction::Response, id, message).unwrap();
            assert_eq!(k.open_response(id, &answer).unwrap(), message);
        }
    }

    #[test]
    fn the_largest_plaintext_fits_and_one_more_byte_does_not() {
        let (_, k) = key();
        let id = RequestId::random();
        let frame = k
            .seal(Direction::Response, id, &vec![1; MAX_FRAME_PLAINTEXT])
            .unwrap();
        assert_eq!(frame.len(), MAX_FRAME);
        assert!(k.open_response(id, &frame).is_ok());
        assert_eq!(
            k.seal(Direction::Response, id, &vec![1; MAX_FRAME_PLAINTEXT + 1]),
            Err(FrameReject::Oversized)
        );
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(k.open_response(id, &long), Err(FrameReject::Oversized));
    }

    #[test]
    fn wrong_key_or_cluster_is_forged() {
        let (key, k) = key();
        let id = RequestId::random();
        let frame = k.seal(Direction::Request, id, b"logs of web").unwrap();
        let stranger = FrameKey::new(&ClusterKey::generate(), CLUSTER);
        assert_eq!(stranger.open_request(&frame), Err(FrameReject::Forged));
        let other_cluster = FrameKey::new(&key, [8; 16]);
        assert_eq!(other_cluster.open_request(&frame), Err(FrameReject::Forged));
        assert!(k.open_request(&frame).is_ok());
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let (_, k) = key();
        let id = RequestId::random();
        let frame = k
            .seal(Direction::Request, id, b"to be tampered with")
            .unwrap();
        for bit in 0..frame.len() * 8 {
            let mut tampered = frame.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let expected = if bit < 8 {
                FrameReject::BadVersion
            } else {
                FrameReject::Forged
            };
            assert_eq!(k.open_request(&tampered), Err(expected), "bit {bit}");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (_, k) = key();
        let id = RequestId::random();
        let frame = k.seal(Direction::Response, id, b"some payload").unwrap();
        for len in 0..frame.len() {
            let expected = if len < FRAME_OVERHEAD {
                FrameReject::Truncated
            } else {
                FrameReject::Forged
            };
            assert_eq!(
                k.open_response(id, &frame[..len]),
                Err(expected),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_response_is_not_a_request_nor_the_reverse() {
        let (_, k) = key();
        let id = RequestId::random();
        let response = k.seal(Direction::Response, id, b"answer").unwrap();
        assert_eq!(k.open_request(&response), Err(FrameReject::WrongDirection));
        let request = k.seal(Direction::Request, id, b"question").unwrap();
        assert_eq!(
            k.open_response(id, &request),
            Err(FrameReject::WrongDirection)
        );
        // Rewriting the direction byte breaks the tag instead.
        let mut relabelled = response.clone();
        relabelled[DIRECTION_AT] = Direction::Request.byte();
        assert_eq!(k.open_request(&relabelled), Err(FrameReject::Forged));
    }

    #[test]
    fn a_response_answers_only_its_own_request() {
        let (_, k) = key();
        let (first, second) = (RequestId::random(), RequestId::random());
        let answer = k.seal(Direction::Response, first, b"for first").unwrap();
        assert_eq!(
            k.open_response(second, &answer),
            Err(FrameReject::WrongRequest)
        );
        // Claiming the other ID in the header breaks the tag.
        let mut relabelled = answer.clone();
        relabelled[REQUEST_AT..NONCE_AT].copy_from_slice(&second.0);
        assert_eq!(
            k.open_response(second, &relabelled),
            Err(FrameReject::Forged)
        );
        assert!(k.open_response(first, &answer).is_ok());
    }

    #[test]
    fn a_gossip_datagram_is_not_a_frame() {
        let (key, k) = key();
        let mut sealer = Sealer::new(&key, CLUSTER, NodeId::random(), 1);
        let datagram = sealer.seal(&[0; 100]);
        assert_eq!(k.open_request(&datagram), Err(FrameReject::Forged));
    }

    #[test]
    fn random_frames_are_rejected() {
        let (_, k) = key();
        let mut state = 3u64;
        for i in 0..5000 {
            let len = (i * 7) % 600;
            let mut junk: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 33) as u8
                })
                .collect();
            if i % 2 == 0 && !junk.is_empty() {
                junk[0] = FRAME_VERSION;
            }
            assert!(k.open_request(&junk).is_err(), "junk frame {i} accepted");
        }
    }

    #[test]
    fn plaintext_and_key_never_appear_on_the_wire() {
        let (key, k) = key();
        let secret = b"web.1 | GET /billing?customer=42";
        let frame = k
            .seal(Direction::Response, RequestId::random(), secret)
            .unwrap();
        for piece in secret.windows(4) {
            assert!(!frame.windows(4).any(|w| w == piece));
        }
        assert!(!frame.windows(32).any(|w| w == key.current_bytes()));
        assert_eq!(format!("{k:?}"), "FrameKey { .. }");
    }

    #[test]
    fn reasons_have_distinct_names() {
        let names: std::collections::BTreeSet<_> =
            FrameReject::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), FrameReject::ALL.len());
    }
}
