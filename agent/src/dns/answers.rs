//! Replies already encoded, per UDP listener and per generation of the records: a query
//! byte-identical (apart from its ID) to one answered before from the same records gets
//! the same reply bytes with its own ID, without being decoded, answered and encoded again.
//!
//! Why byte-identical: the reply of Skein's own names depends only on the query's bytes
//! (flags, question with its letter case, EDNS), the records and the listener's asker —
//! never on the source address — so equal bytes mean an equal reply, and nothing here
//! reads DNS. Every reply stored was built and encoded by the hickory handler from a query
//! hickory decoded; only answers from Skein's own records are stored (never forwarded
//! ones, never errors: a malformed query is decoded and counted every time). A query whose
//! answer is shuffled (`tasks.NAME`, dnsrr) is stored in [`ORDERS`] orders, each shuffled
//! by the handler, given in turn.
//!
//! Bounded: at most [`MAX_ENTRIES`] queries of at most [`MAX_QUERY`] bytes with replies of
//! at most [`MAX_REPLY`] bytes; everything is dropped when the records change (every view,
//! at least every 2 s), so the replies follow the view.

use std::{collections::HashMap, sync::Arc};

use hickory_server::proto::{op::ResponseCode, rr::RecordType};

use super::records::Records;

/// Orders stored of a shuffled answer.
pub(crate) const ORDERS: usize = 8;
/// Queries stored per listener and generation of the records.
const MAX_ENTRIES: usize = 256;
/// Longer queries are answered without being stored.
const MAX_QUERY: usize = 128;
/// Longer replies are not stored.
const MAX_REPLY: usize = 512;
/// Bytes of the DNS ID at the start of a message.
const ID_LEN: usize = 2;

/// The reply bytes of one query, in one or more orders.
struct Encoded {
    orders: Vec<Box<[u8]>>,
    /// Orders wanted; while fewer are stored the query is answered by the handler.
    wanted: usize,
    /// The order given next.
    next: usize,
    qtype: RecordType,
    rcode: ResponseCode,
}

/// The encoded replies of one listener.
#[derive(Default)]
pub(crate) struct AnswerCache {
    /// The records the stored replies came from.
    generation: Option<Arc<Records>>,
    /// Keyed by the query's bytes after its ID.
    entries: HashMap<Box<[u8]>, Encoded>,
}

/// What a stored reply answered, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) qtype: RecordType,
    pub(crate) rcode: ResponseCode,
}

impl AnswerCache {
    /// Drops every stored reply unless `records` are the ones they came from.
    pub(crate) fn follow(&mut self, records: &Arc<Records>) {
        if !self
            .generation
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, records))
        {
            self.entries.clear();
            self.generation = Some(records.clone());
        }
    }

    /// The stored reply to `query`, with `query`'s ID, appended to `out`; `None` if
    /// there is none (yet) for it.
    pub(crate) fn reply(&mut self, query: &[u8], out: &mut Vec<u8>) -> Option<Hit> {
        let entry = self.entries.get_mut(query.get(ID_LEN..)?)?;
        if entry.orders.len() < entry.wanted {
            return None;
        }
        let reply = &entry.orders[entry.next % entry.orders.len()];
        entry.next = entry.next.wrapping_add(1);
        let start = out.len();
        out.extend_from_slice(reply);
        out[start..start + ID_LEN].copy_from_slice(&query[..ID_LEN]);
        Some(Hit {
            qtype: entry.qtype,
            rcode: entry.rcode,
        })
    }

    /// Stores `reply` (one order of `orders`) as the answer to `query`. Queries or replies
    /// over the bounds, and any past [`MAX_ENTRIES`], are not stored.
    pub(crate) fn insert(&mut self, query: &[u8], reply: &[u8], orders: usize, hit: Hit) {
        if query.len() > MAX_QUERY || reply.len() > MAX_REPLY || reply.len() < ID_LEN {
            return;
        }
        let Some(key) = query.get(ID_LEN..) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.orders.len() < entry.wanted {
                entry.orders.push(reply.into());
            }
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            return;
        }
        self.entries.insert(
            key.into(),
            Encoded {
                orders: vec![reply.into()],
                wanted: orders.max(1),
                next: 0,
                qtype: hit.qtype,
                rcode: hit.rcode,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIT: Hit = Hit {
        qtype: RecordType::A,
        rcode: ResponseCode::NoError,
    };

    #[test]
    fn a_stored_reply_gets_the_query_id_and_equal_bytes_only() {
        let mut cache = AnswerCache::default();
        cache.follow(&Arc::new(Records::default()));
        let mut out = Vec::new();
        cache.insert(b"\x00\x01query", b"\x00\x01reply", 1, HIT);
        out.extend_from_slice(b"before");
        assert_eq!(cache.reply(b"\xab\xcdquery", &mut out), Some(HIT));
        assert_eq!(out, b"before\xab\xcdreply");
        assert_eq!(cache.reply(b"\xab\xcdQuery", &mut out), None, "other bytes");
        assert_eq!(cache.reply(b"\xab", &mut out), None, "too short");
    }

    #[test]
    fn shuffled_answers_are_given_in_every_stored_order() {
        let mut cache = AnswerCache::default();
        cache.follow(&Arc::new(Records::default()));
        let mut out = Vec::new();
        cache.insert(b"\x00\x00q", b"\x00\x00a", 2, HIT);
        assert_eq!(
            cache.reply(b"\x00\x00q", &mut out),
            None,
            "one of two orders"
        );
        cache.insert(b"\x00\x00q", b"\x00\x00b", 2, HIT);
        cache.insert(b"\x00\x00q", b"\x00\x00c", 2, HIT);
        let given: Vec<Vec<u8>> = (0..4)
            .map(|_| {
                out.clear();
                cache.reply(b"\x00\x00q", &mut out).unwrap();
                out.clone()
            })
            .collect();
        assert_eq!(
            given,
            [b"\x00\x00a", b"\x00\x00b", b"\x00\x00a", b"\x00\x00b"]
        );
    }

    #[test]
    fn new_records_drop_every_reply_and_the_bounds_hold() {
        let mut cache = AnswerCache::default();
        let first = Arc::new(Records::default());
        cache.follow(&first);
        let mut out = Vec::new();
        cache.insert(b"\x00\x00q", b"\x00\x00a", 1, HIT);
        cache.follow(&first);
        assert!(
            cache.reply(b"\x00\x00q", &mut out).is_some(),
            "same records"
        );
        cache.follow(&Arc::new(Records::default()));
        assert!(cache.reply(b"\x00\x00q", &mut out).is_none(), "new records");

        cache.insert(&[0; MAX_QUERY + 1], b"\x00\x00a", 1, HIT);
        cache.insert(b"\x00\x00q", &[0; MAX_REPLY + 1], 1, HIT);
        assert!(cache.entries.is_empty(), "over the bounds: not stored");
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert(format!("\0\0{i}").as_bytes(), b"\x00\x00a", 1, HIT);
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
    }
}
