//! The hickory `RequestHandler`: one per listening socket pair (the host's `--dns-addr`,
//! and each endpoint namespace's `127.0.0.11:53`), so it knows who asks — the operator
//! (every network) or that namespace's endpoints (their networks only). The answer itself
//! is [`Core::answer`], which `skein debug dns` calls too.

use std::{borrow::Cow, sync::Arc};

use hickory_server::{
    net::runtime::Time,
    proto::{
        op::{
            Edns, Header, HeaderCounts, LowerQuery, Message, MessageType, Metadata, OpCode,
            ResponseCode,
        },
        rr::Record,
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tracing::debug;

use super::{
    forward::{describe, ForwardError},
    records::{Records, Resolution, Scope},
    Core,
};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    /// The operator on the host: every network.
    Host,
    /// The endpoints of this namespace (as their records name it); `networks`: what
    /// they were on when the sockets opened, until a view knows the namespace.
    Netns {
        netns: String,
        networks: Vec<String>,
    },
}

/// What a query gets, before it is put on the wire.
#[derive(Debug)]
pub(crate) enum Answer<'a> {
    /// Skein's own name: NOERROR (answers, or none: NODATA) or NXDOMAIN.
    Local {
        rcode: ResponseCode,
        answers: Cow<'a, [Record]>,
        additionals: &'a [Record],
    },
    /// The upstream's answer, as it gave it.
    Forwarded(Message),
    /// Forwarding failed: SERVFAIL.
    Failed(ForwardError),
}

impl Answer<'_> {
    pub(crate) fn rcode(&self) -> ResponseCode {
        match self {
            Answer::Local { rcode, .. } => *rcode,
            Answer::Forwarded(message) => message.metadata.response_code,
            Answer::Failed(_) => ResponseCode::ServFail,
        }
    }
}

impl Core {
    /// The networks `asker` sees in `records`.
    pub(crate) fn scope(records: &Records, asker: &Asker) -> Scope {
        match asker {
            Asker::Host => Scope::All,
            Asker::Netns { netns, networks } => records
                .scope_of(netns)
                .unwrap_or_else(|| Scope::Networks(networks.clone())),
        }
    }

    /// The answer to `query` for a client that sees `scope`: from `records`, or forwarded.
    pub(crate) async fn answer<'a>(
        &self,
        records: &'a Records,
        scope: &Scope,
        query: &LowerQuery,
    ) -> Answer<'a> {
        let local = |rcode, answers, additionals| Answer::Local {
            rcode,
            answers,
            additionals,
        };
        match records.resolve(scope, query.name(), query.query_type()) {
            Resolution::Answer {
                answers,
                additionals,
            } => local(ResponseCode::NoError, answers, additionals),
            Resolution::NoData => local(ResponseCode::NoError, Cow::Borrowed(&[]), &[]),
            Resolution::NxDomain => local(ResponseCode::NXDomain, Cow::Borrowed(&[]), &[]),
            Resolution::Forward => {
                self.counters.forwarded();
                match self.forwarder.forward(query.original()).await {
                    Ok(message) => Answer::Forwarded(message),
                    Err(error) => {
                        self.counters.upstream_failed();
                        debug!(query = %describe(query.original()), %error, "forwarding failed");
                        Answer::Failed(error)
                    }
                }
            }
        }
    }
}

/// Answers the DNS requests of one socket pair.
pub(crate) struct DnsHandler {
    pub(crate) core: Arc<Core>,
    pub(crate) asker: Asker,
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let counters = &self.core.counters;
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns
        });
        let query = match request.request_info() {
            Ok(info) if request.metadata.message_type == MessageType::Query => info.query,
            _ => {
                // Not exactly one question, or not a query: hickory already answered
                // FORMERR to what it could not parse at all; this is the rest.
                counters.malformed();
                return send_empty(request, edns.as_ref(), ResponseCode::FormErr, response).await;
            }
        };
        let qtype = query.query_type();
        if request.metadata.op_code != OpCode::Query {
            counters.answered(qtype, ResponseCode::NotImp);
            return send_empty(request, edns.as_ref(), ResponseCode::NotImp, response).await;
        }
        let records = self.core.records();
        let scope = Core::scope(&records, &self.asker);
        let answer = self.core.answer(&records, &scope, query).await;
        counters.answered(qtype, answer.rcode());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        metadata.response_code = answer.rcode();
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let sent = match &answer {
            Answer::Local {
                answers,
                additionals,
                ..
            } => {
                metadata.authoritative = true;
                let reply = builder.build(
                    metadata,
                    answers.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                    additionals.iter(),
                );
                send(response, reply).await
            }
            Answer::Forwarded(message) => {
                let reply = builder.build(
                    metadata,
                    message.answers.iter(),
                    message.authorities.iter(),
                    std::iter::empty(),
                    message.additionals.iter(),
                );
                send(response, reply).await
            }
            Answer::Failed(_) => {
                let reply = builder.build_no_records(metadata);
                send(response, reply).await
            }
        };
        sent.unwrap_or_else(|| failed(request))
    }
}

async fn send<'a, R: ResponseHandler>(
    mut response: R,
    reply: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> Option<ResponseInfo> {
    match response.send_response(reply).await {
        Ok(info) => Some(info),
        Err(error) => {
            debug!(%error, "could not send a DNS answer");
            None
        }
    }
}

async fn send_empty<R: ResponseHandler>(
    request: &Request,
    edns: Option<&Edns>,
    rcode: ResponseCode,
    response: R,
) -> ResponseInfo {
    let reply =
        MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, rcode);
    send(response, reply)
        .await
        .unwrap_or_else(|| failed(request))
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
