//! The join token: everything a new node needs to talk to the cluster, as one string
//! an operator can paste.
//!
//! `SKEIN-1-<base64url, no padding, of cluster_id (16) || key (32) || crc32 (4, big-endian)>`
//!
//! The CRC-32 (IEEE) over the first 48 bytes catches typos and truncation: it detects
//! every error burst of up to 32 bits, and one wrong character changes at most 6
//! adjacent bits. It is not a security measure; the key itself is.

use std::{fmt, str::FromStr};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use super::ClusterKey;

const PREFIX: &str = "SKEIN-";
const VERSION: u32 = 1;
const PAYLOAD_LEN: usize = 16 + 32 + 4;

/// What a node needs to join a cluster: the cluster's identity and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Random, fixed for the cluster's life. Authenticated with every datagram, so
    /// clusters never accept each other's traffic.
    pub cluster_id: [u8; 16],
    /// The key every datagram is sealed with.
    pub key: ClusterKey,
}

impl JoinToken {
    /// A token for a new cluster: fresh ID, fresh key.
    pub fn generate() -> JoinToken {
        JoinToken {
            cluster_id: rand::random(),
            key: ClusterKey::generate(),
        }
    }

    fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..16].copy_from_slice(&self.cluster_id);
        payload[16..48].copy_from_slice(&self.key.current_bytes());
        let checksum = crc32(&payload[..48]);
        payload[48..].copy_from_slice(&checksum.to_be_bytes());
        payload
    }
}

/// The text form. It contains the key: print it only where the operator asked for it.
impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{VERSION}-{}",
            URL_SAFE_NO_PAD.encode(self.payload())
        )
    }
}

/// Why a string is not a join token. No message repeats any part of the input, which
/// would leak key material into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseJoinTokenError {
    #[error("the join token is malformed: it should begin with SKEIN-{VERSION}-")]
    Prefix,
    #[error(
        "the join token is malformed: it is a SKEIN-{version} token and this agent reads \
         only SKEIN-{VERSION} tokens; upgrade the agent"
    )]
    Version { version: u32 },
    #[error(
        "the join token is malformed: after the prefix it is not base64url (A-Z a-z 0-9 - _), \
         or characters are missing; copy the whole token again"
    )]
    Encoding,
    #[error(
        "the join token is malformed: it holds {bytes} bytes instead of {PAYLOAD_LEN}; \
         copy the whole token again"
    )]
    Length { bytes: usize },
    #[error(
        "the join token is malformed: its checksum does not match, so it was mistyped; \
         copy it again from the node that issued it"
    )]
    Checksum,
}

impl FromStr for JoinToken {
    type Err = ParseJoinTokenError;

    fn from_str(s: &str) -> Result<JoinToken, ParseJoinTokenError> {
        // Pasted tokens often carry a trailing newline.
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(ParseJoinTokenError::Prefix)?;
        let (version, body) = rest.split_once('-').ok_or(ParseJoinTokenError::Prefix)?;
        // Only a short all-digit version is echoed: anything else could be key material.
        let version: u32 = match version.parse() {
            Ok(v) if version.len() <= 4 && version.bytes().all(|b| b.is_ascii_digit()) => v,
            _ => return Err(ParseJoinTokenError::Prefix),
        };
        if version != VERSION {
            return Err(ParseJoinTokenError::Version { version });
        }
        // The decoder's own error names the offending character, which may be part of
        // the key, so it is not kept as a source.
        let payload = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| ParseJoinTokenError::Encoding)?;
        if payload.len() != PAYLOAD_LEN {
            return Err(ParseJoinTokenError::Length {
                bytes: payload.len(),
            });
        }
        let checksum = u32::from_be_bytes(payload[48..].try_into().expect("4 bytes"));
        if crc32(&payload[..48]) != checksum {
            return Err(ParseJoinTokenError::Checksum);
        }
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&payload[..16]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&payload[16..48]);
        Ok(JoinToken {
            cluster_id,
            key: ClusterKey::from_bytes(key),
        })
    }
}

/// CRC-32 as in Ethernet and zlib (reflected, polynomial 0xEDB88320). Bitwise rather
/// than table-driven: it runs once per token parse.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trips_through_text() {
        let token = JoinToken::generate();
        let text = token.to_string();
        assert!(text.starts_with("SKEIN-1-"), "{text}");
        assert_eq!(text.len(), "SKEIN-1-".len() + 70);
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_eq!(
            format!("  {text}\n").parse::<JoinToken>().unwrap(),
            token,
            "surrounding whitespace from a paste is ignored"
        );
        assert_ne!(JoinToken::generate(), token);
    }

    /// Every single-character typo anywhere in the token is caught.
    #[test]
    fn detects_every_single_character_change() {
        let token = JoinToken::generate();
        let text = token.to_string();
        for (position, original) in text.bytes().enumerate() {
            for &replacement in ALPHABET.iter().chain(b"+/=. ") {
                if replacement == original {
                    continue;
                }
                let mut typo = text.clone().into_bytes();
                typo[position] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                assert!(
                    typo.parse::<JoinToken>().is_err(),
                    "{typo} (position {position}) parsed"
                );
            }
        }
    }

    #[test]
    fn errors_never_repeat_the_token() {
        let token = JoinToken::generate();
        let text = token.to_string();
        let body = &text["SKEIN-1-".len()..];
        let key_hex: String = token
            .key
            .current_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut flipped = text.clone().into_bytes();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let cases = [
            (
                String::from_utf8(flipped).unwrap(),
                ParseJoinTokenError::Checksum,
            ),
            // 64 characters are exactly 48 bytes; other cuts can leave stray bits and
            // then read as Encoding.
            (
                text[..text.len() - 6].to_owned(),
                ParseJoinTokenError::Length { bytes: 48 },
            ),
            (format!("{text}!"), ParseJoinTokenError::Encoding),
            (
                format!("SKEIN-2-{body}"),
                ParseJoinTokenError::Version { version: 2 },
            ),
            (format!("SKEIN-{body}"), ParseJoinTokenError::Prefix),
            (format!("SKEIN-{body}-x"), ParseJoinTokenError::Prefix),
            (body.to_owned(), ParseJoinTokenError::Prefix),
            (String::new(), ParseJoinTokenError::Prefix),
        ];
        for (input, expected) in cases {
            let err = input.parse::<JoinToken>().unwrap_err();
            assert_eq!(err, expected, "input {input:?}");
            let message = err.to_string();
            assert!(
                message.starts_with("the join token is malformed: "),
                "{message}"
            );
            assert!(!message.ends_with('.'), "{message}");
            for window in body.as_bytes().windows(6) {
                let piece = std::str::from_utf8(window).unwrap();
                assert!(!message.contains(piece), "{message} repeats {piece}");
            }
            assert!(!message.contains(&key_hex[..8]), "{message}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let token = JoinToken::generate();
        let shown = format!("{token:?}");
        let body = &token.to_string()["SKEIN-1-".len()..];
        assert!(!shown.contains(&body[22..30]), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", token.key.current_bytes())),
            "{shown}"
        );
        assert!(shown.contains("ClusterKey(..)"), "{shown}");
    }
}
