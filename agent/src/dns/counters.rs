//! The DNS server's counters for `/metrics`: queries by type and result code, forwarded
//! queries, upstream failures, malformed requests. Plain atomics: the query path only adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hickory_server::proto::{op::ResponseCode, rr::RecordType};

/// The query types counted on their own; the rest is `other`.
const TYPES: [&str; 5] = ["A", "AAAA", "SRV", "PTR", "other"];
/// The result codes counted on their own; the rest is `other`.
const RCODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "SERVFAIL", "FORMERR", "NOTIMP", "REFUSED", "other",
];

fn type_index(qtype: RecordType) -> usize {
    match qtype {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::PTR => 3,
        _ => 4,
    }
}

fn rcode_index(rcode: ResponseCode) -> usize {
    match rcode {
        ResponseCode::NoError => 0,
        ResponseCode::NXDomain => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::FormErr => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

/// A result code as DNS tools print it (`NOERROR`, `NXDOMAIN`, ...).
pub(crate) fn rcode_name(rcode: ResponseCode) -> String {
    match rcode_index(rcode) {
        6 => format!("RCODE{}", u16::from(rcode)),
        i => RCODES[i].to_owned(),
    }
}

#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    queries: [[AtomicU64; RCODES.len()]; TYPES.len()],
    forwarded: AtomicU64,
    upstream_failures: AtomicU64,
    malformed: AtomicU64,
    overloaded: AtomicU64,
}

/// The counters read at one scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct DnsCounts {
    /// (type, rcode, count) for every pair counted at least once.
    pub(crate) queries: Vec<(&'static str, &'static str, u64)>,
    pub(crate) forwarded: u64,
    pub(crate) upstream_failures: u64,
    pub(crate) malformed: u64,
    pub(crate) overloaded: u64,
}

impl DnsCounters {
    pub(crate) fn answered(&self, qtype: RecordType, rcode: ResponseCode) {
        self.queries[type_index(qtype)][rcode_index(rcode)].fetch_add(1, Relaxed);
    }

    pub(crate) fn forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }

    pub(crate) fn upstream_failed(&self) {
        self.upstream_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }

    pub(crate) fn overloaded(&self) {
        self.overloaded.fetch_add(1, Relaxed);
    }

    pub(crate) fn read(&self) -> DnsCounts {
        let mut queries = Vec::new();
        for (t, row) in self.queries.iter().enumerate() {
            for (r, count) in row.iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    queries.push((TYPES[t], RCODES[r], count));
                }
            }
        }
        DnsCounts {
            queries,
            forwarded: self.forwarded.load(Relaxed),
            upstream_failures: self.upstream_failures.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            overloaded: self.overloaded.load(Relaxed),
        }
    }
}
