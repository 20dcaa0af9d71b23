//! Just enough of the DNS wire format (RFC 1035) for the DNS benchmark and the
//! malformed-query test to talk to servers without a resolver library: encode a query,
//! read a response's header and its A/AAAA/SRV/PTR answers, check a message strictly, and
//! build malformed messages of every kind the server must survive (issue 13 part 5).
//!
//! Hand-written on purpose: a resolver library would refuse to *send* most of
//! [`Malformed`]'s messages, and the checks here must not share a parser with the server
//! under test.

use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Result};

/// `QTYPE` values the tests use.
pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
/// `RCODE`s.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// The longest name on the wire (RFC 1035 §2.3.4) and the longest label.
const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;

/// A standard query for `name` (dotted; a final dot is optional), recursion desired,
/// one question of class IN, no EDNS.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut msg = header(id, 0x0100, [1, 0, 0, 0]);
    push_name(&mut msg, name);
    msg.extend_from_slice(&qtype.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg
}

/// A message with a 2-byte big-endian length in front, as DNS over TCP frames it.
pub fn tcp_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        msg.extend_from_slice(&c.to_be_bytes());
    }
    msg
}

fn push_name(msg: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
}

/// One answer record a test cares about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    A(Ipv4Addr),
    Srv {
        port: u16,
        target: String,
    },
    Ptr(String),
    /// Any other type, by number.
    Other(u16),
}

/// A response as far as the tests read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// The QR bit: a response, not a query.
    pub is_response: bool,
    pub rcode: u8,
    pub truncated: bool,
    pub answers: Vec<Answer>,
    /// TTLs of the answer records, in order.
    pub ttls: Vec<u32>,
}

impl Response {
    /// The A records of the answer section, sorted.
    pub fn a_records(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .answers
            .iter()
            .filter_map(|a| match a {
                Answer::A(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }
}

/// Reads a response: header, skips the questions, reads the answer section. Strict: any
/// count, name or length that runs past the message is an error.
pub fn parse_response(msg: &[u8]) -> Result<Response> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let [qd, an, _ns, _ar] = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..qd {
        r.name()?;
        r.take(4)?;
    }
    let (mut answers, mut ttls) = (Vec::new(), Vec::new());
    for _ in 0..an {
        r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        ttls.push(u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")));
        let len = r.u16()? as usize;
        let start = r.pos;
        let data = r.take(len)?;
        answers.push(match rtype {
            TYPE_A => {
                ensure!(len == 4, "A record of {len} bytes");
                Answer::A(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
            }
            TYPE_SRV => {
                ensure!(len >= 7, "SRV record of {len} bytes");
                let port = u16::from_be_bytes([data[4], data[5]]);
                let mut at = Reader {
                    msg,
                    pos: start + 6,
                };
                Answer::Srv {
                    port,
                    target: at.name()?,
                }
            }
            TYPE_PTR => Answer::Ptr(Reader { msg, pos: start }.name()?),
            other => Answer::Other(other),
        });
    }
    Ok(Response {
        id,
        is_response: flags & 0x8000 != 0,
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        answers,
        ttls,
    })
}

/// Checks a message the way a strict server must before answering it: a full header,
/// every question, answer, authority and additional record present and within the
/// message, names within RFC 1035's limits, compression pointers only backwards (so no
/// loop), nothing left over. `Err` names the first fault.
pub fn check_message(msg: &[u8]) -> Result<()> {
    let mut r = Reader { msg, pos: 0 };
    r.take(4)?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..counts[0] {
        r.name()?;
        r.take(4)?;
    }
    for _ in 0..(counts[1] as u32 + counts[2] as u32 + counts[3] as u32) {
        r.name()?;
        r.take(8)?;
        let len = r.u16()? as usize;
        r.take(len)?;
    }
    ensure!(
        r.pos == msg.len(),
        "{} bytes after the last record",
        msg.len() - r.pos
    );
    Ok(())
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let Some(bytes) = self.msg.get(self.pos..self.pos + n) else {
            bail!(
                "message ends at {} reading {n} bytes at {}",
                self.msg.len(),
                self.pos
            )
        };
        self.pos += n;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    /// A name at the cursor, following compression pointers (only backwards, so every
    /// name ends); the cursor ends after the name's own bytes.
    fn name(&mut self) -> Result<String> {
        let mut labels: Vec<String> = Vec::new();
        let (mut at, mut wire_len, mut jumped) = (self.pos, 1usize, false);
        loop {
            let Some(&len) = self.msg.get(at) else {
                bail!("name runs past the message at {at}")
            };
            match len >> 6 {
                0 if len == 0 => {
                    if !jumped {
                        self.pos = at + 1;
                    }
                    return Ok(labels.join("."));
                }
                0 => {
                    let len = len as usize;
                    let Some(label) = self.msg.get(at + 1..at + 1 + len) else {
                        bail!("label of {len} bytes runs past the message at {at}")
                    };
                    wire_len += len + 1;
                    ensure!(wire_len <= MAX_NAME, "name longer than {MAX_NAME} bytes");
                    labels.push(String::from_utf8_lossy(label).into_owned());
                    at += 1 + len;
                }
                3 => {
                    let Some(&low) = self.msg.get(at + 1) else {
                        bail!("compression pointer cut at {at}")
                    };
                    let target = (((len & 0x3f) as usize) << 8) | low as usize;
                    ensure!(
                        target < at,
                        "compression pointer at {at} to {target}: not backwards"
                    );
                    if !jumped {
                        self.pos = at + 2;
                    }
                    jumped = true;
                    at = target;
                }
                _ => bail!("label type {:#04x} at {at}", len & 0xc0),
            }
        }
    }
}

/// The kinds of malformed message the server must refuse or drop (issue 13 part 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Random bytes, any length up to 1 KiB (made invalid if chance made them valid).
    RandomBytes,
    /// 0 to 11 bytes: not even a header.
    TruncatedHeader,
    /// A header claiming thousands of records with one question, or none, behind it.
    AbsurdCounts,
    /// A question name of more than 255 bytes (labels of 63).
    HugeName,
    /// A label length byte of 64..=127 (RFC 6891's reserved label types) in the question.
    BadLabelType,
    /// The question's name is a compression pointer to itself.
    SelfPointer,
    /// Two names pointing at each other (a loop across two records).
    PointerLoop,
    /// A compression pointer beyond the end of the message.
    PointerPastEnd,
    /// A valid question cut inside its name or its type/class.
    TruncatedQuestion,
}

impl Malformed {
    pub const ALL: [Malformed; 9] = [
        Malformed::RandomBytes,
        Malformed::TruncatedHeader,
        Malformed::AbsurdCounts,
        Malformed::HugeName,
        Malformed::BadLabelType,
        Malformed::SelfPointer,
        Malformed::PointerLoop,
        Malformed::PointerPastEnd,
        Malformed::TruncatedQuestion,
    ];

    /// One message of this kind; `seed` varies the bytes (same seed, same message).
    pub fn message(self, seed: u64) -> Vec<u8> {
        let mut rng = XorShift::new(seed);
        let id = rng.next_u64() as u16;
        match self {
            Malformed::RandomBytes => {
                let len = 1 + (rng.next_u64() % 1024) as usize;
                let mut msg: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                if check_message(&msg).is_ok() {
                    // A lucky draw (e.g. 12 bytes, all counts 0): claim a question that
                    // is not there.
                    msg.resize(msg.len().max(12), 0);
                    msg[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
                }
                msg
            }
            Malformed::TruncatedHeader => {
                let len = (rng.next_u64() % 12) as usize;
                query(id, "web", TYPE_A)[..len].to_vec()
            }
            Malformed::AbsurdCounts => {
                let mut msg = query(id, "web", TYPE_A);
                let which = 4 + 2 * (rng.next_u64() % 4) as usize;
                let count = 1000 + (rng.next_u64() % 64536) as u16;
                msg[which..which + 2].copy_from_slice(&count.max(2).to_be_bytes());
                if rng.next_u64().is_multiple_of(2) {
                    msg.truncate(12);
                }
                msg
            }
            Malformed::HugeName => {
                let mut msg = header(id, 0x0100, [1, 0, 0, 0]);
                let labels = 5 + (rng.next_u64() % 60) as usize;
                for i in 0..labels {
                    msg.push(MAX_LABEL as u8);
                    msg.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, MAX_LABEL));
                }
                msg.push(0);
                msg.extend_from_slice(&[0, 1, 0, 1]);
                msg
            }
            Malformed::BadLabelType => {
                let mut msg = header(id, 0x0100, [1, 0, 0, 0]);
                msg.push(0x40 | (rng.next_u64() % 0x40) as u8);
                msg.extend_from_slice(b"web\x00\x00\x01\x00\x01");
                msg
            }
            Malformed::SelfPointer => {
                let mut msg = header(id, 0x0100, [1, 0, 0, 0]);
                msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                msg
            }
            Malformed::PointerLoop => {
                // Question name at 12: "a" then a pointer to the answer's name at 23; the
                // answer's name: a pointer back to 12.
                let mut msg = header(id, 0x0100, [1, 1, 0, 0]);
                msg.extend_from_slice(&[1, b'a', 0xc0, 23, 0, 1, 0, 1]);
                msg.resize(23, 0);
                msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
                msg
            }
            Malformed::PointerPastEnd => {
                let mut msg = header(id, 0x0100, [1, 0, 0, 0]);
                let target = 0x100 + (rng.next_u64() % 0x3e00) as u16;
                msg.extend_from_slice(&(0xc000 | target).to_be_bytes());
                msg.extend_from_slice(&[0, 1, 0, 1]);
                msg
            }
            Malformed::TruncatedQuestion => {
                let msg = query(id, "tasks.web", TYPE_A);
                let cut = 13 + (rng.next_u64() as usize) % (msg.len() - 13);
                msg[..cut].to_vec()
            }
        }
    }
}

/// A small deterministic generator (xorshift64*): reproducible malformed messages without
/// a dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_well_formed_and_reads_back() {
        let q = query(7, "tasks.web", TYPE_A);
        check_message(&q).unwrap();
        assert_eq!(q[12..23], *b"\x05tasks\x03web\x00");
        let r = parse_response(&q).unwrap();
        assert_eq!((r.id, r.is_response, r.rcode), (7, false, 0));
        assert_eq!(tcp_frame(&q)[..2], (q.len() as u16).to_be_bytes());
    }

    #[test]
    fn reads_a_compressed_response() {
        // Question web A IN; two answers whose names point back to the question; an SRV.
        let mut msg = header(9, 0x8180, [1, 3, 0, 0]);
        push_name(&mut msg, "web");
        msg.extend_from_slice(&[0, 1, 0, 1]);
        for ip in [[10, 0, 0, 2], [10, 0, 0, 1]] {
            msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 2, 0, 4]);
            msg.extend_from_slice(&ip);
        }
        msg.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 2, 0, 8, 0, 0, 0, 0, 0, 80]);
        msg.extend_from_slice(&[0xc0, 12]);
        check_message(&msg).unwrap();
        let r = parse_response(&msg).unwrap();
        assert!(r.is_response);
        assert_eq!(
            r.a_records(),
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(
            r.answers[2],
            Answer::Srv {
                port: 80,
                target: "web".into()
            }
        );
        assert_eq!(r.ttls, vec![2, 2, 2]);
    }

    #[test]
    fn every_malformed_kind_fails_a_strict_check_for_many_seeds() {
        for kind in Malformed::ALL {
            for seed in 0..2000 {
                let msg = kind.message(seed);
                assert!(
                    check_message(&msg).is_err(),
                    "{kind:?} seed {seed} is a well-formed message: {msg:02x?}"
                );
                assert!(msg.len() <= 4200, "{kind:?} fits a datagram");
            }
            assert_eq!(kind.message(5), kind.message(5), "{kind:?} is reproducible");
        }
    }

    #[test]
    fn the_checker_rejects_each_fault_for_its_own_reason() {
        let reason = |m: Malformed| format!("{:#}", check_message(&m.message(1)).unwrap_err());
        assert!(reason(Malformed::SelfPointer).contains("not backwards"));
        assert!(reason(Malformed::PointerLoop).contains("not backwards"));
        assert!(reason(Malformed::PointerPastEnd).contains("not backwards"));
        assert!(reason(Malformed::HugeName).contains("longer than 255"));
        assert!(reason(Malformed::BadLabelType).contains("label type"));
        assert!(reason(Malformed::TruncatedHeader).contains("message ends"));
        // The reader must not loop on a loop: parse_response sees the same faults.
        assert!(parse_response(&Malformed::PointerLoop.message(3)).is_err());
    }
}
