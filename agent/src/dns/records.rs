//! The live cluster view as DNS record sets, built once per view ([`Records::build`]) so a
//! query is a hash lookup and a copy of records built in advance, never a walk of the view.
//!
//! The names (all absolute, case-insensitive):
//! - `NAME`: the service's VIP (`vip` endpoint mode), or every serving task's IP (`dnsrr`,
//!   shuffled per answer);
//! - `tasks.NAME`: every serving task's IP, shuffled per answer;
//! - `TASKID` and `NAME.LABEL.TASKID` (the task's endpoint name: LABEL is the slot counted
//!   from 1, the node's short ID for a global service, `attached` for `service attach`):
//!   that task's IP;
//! - `_PORT._PROTO.NAME` (SRV; PROTO `tcp` or `udp`): for a published port number, one
//!   record per node that opens it (`nodes.HOSTNAME`, port = the published port: every up
//!   node in ingress mode, the nodes holding a serving task in host mode); for a target
//!   port number, one record per serving task (`NAME.LABEL.TASKID`, port = the target
//!   port). Where both numbers are equal both sets are given. The targets' A records come
//!   in the additional section.
//! - `nodes.HOSTNAME`: an up node's underlay address (the SRV targets of published ports);
//! - PTR of a serving task's IP → `NAME.LABEL.TASKID`, of a VIP → `NAME`;
//! - `SHORT` for a stack's service `STACK_SHORT` on the stack's own network (`STACK_*`):
//!   what `NAME` answers, so a compose file's `REDIS_HOST=redis` works unchanged. Two
//!   stacks may both have a `redis`: short names are kept per network, and a service's
//!   own name wins over another's short name.
//!
//! "Serving" is the one rule load balancers and `service ps` use:
//! `view.tasks_of(service).serving()` (running, healthy, on an up node).
//!
//! Ownership: single-label names, `tasks.*`, `nodes.*` and reverse names inside an overlay
//! subnet are Skein's: answered, NODATA (the name exists, not the type) or NXDOMAIN, never
//! forwarded. Other names that match nothing are forwarded upstream.

use std::{borrow::Cow, cell::Cell, collections::HashMap, net::Ipv4Addr, sync::Arc};

use hickory_server::proto::rr::{
    rdata::{A, PTR, SRV},
    LowerName, Name, RData, Record, RecordType,
};
use ipnet::Ipv4Net;
use manager::{
    state::{EndpointMode, Mode, Protocol, PublishMode, Service, Task},
    view::ClusterView,
    NodeId,
};

/// The networks whose names a client may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The operator on the host (`--dns-addr`, `skein debug dns` without `--netns`).
    All,
    /// An endpoint's namespace: the networks of its endpoints on this node.
    Networks(Vec<String>),
}

impl Scope {
    fn sees(&self, network: Option<&str>) -> bool {
        match (self, network) {
            (Scope::All, _) | (_, None) => true,
            (Scope::Networks(networks), Some(network)) => networks.iter().any(|n| n == network),
        }
    }
}

/// What a query gets.
#[derive(Debug, PartialEq)]
pub(crate) enum Resolution<'a> {
    /// NOERROR with answers (and the SRV targets' addresses).
    Answer {
        answers: Cow<'a, [Record]>,
        additionals: &'a [Record],
    },
    /// NOERROR without answers: the name exists, not the type.
    NoData,
    NxDomain,
    /// Not Skein's: ask the upstream resolvers.
    Forward,
}

/// The records of one name.
#[derive(Debug, Default)]
struct Entry {
    /// The network the name belongs to; `None`: every client sees it (nodes).
    network: Option<Arc<str>>,
    a: Vec<Record>,
    srv: Vec<Record>,
    /// The A records of the SRV targets.
    additionals: Vec<Record>,
    ptr: Vec<Record>,
    /// Whether A answers are shuffled per query (several task IPs).
    shuffled: bool,
}

/// Every name of one view, ready to answer.
#[derive(Debug, Default)]
pub(crate) struct Records {
    names: HashMap<LowerName, Entry>,
    /// Stack services' short names, one entry per network that has the name.
    short_names: HashMap<LowerName, Vec<Entry>>,
    /// The overlay subnets: reverse names inside them are Skein's.
    subnets: Vec<Ipv4Net>,
    /// The networks of each of this node's endpoint namespaces (by the endpoint's
    /// `netns`, as recorded).
    scopes: HashMap<String, Vec<String>>,
}

/// A name from labels we made ourselves (service names, task IDs, hostnames are DNS
/// labels); `None` if one is not (then that name is simply not served).
fn name(text: &str) -> Option<Name> {
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn a_record(owner: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))
}

impl Records {
    /// The record sets of `view`, every answer with `ttl` seconds.
    pub(crate) fn build(view: &ClusterView, ttl: u32) -> Records {
        let mut records = Records {
            subnets: view.networks.valid.iter().map(|n| n.subnet).collect(),
            ..Records::default()
        };
        for endpoint in view.own_endpoints() {
            let networks = records.scopes.entry(endpoint.netns.clone()).or_default();
            if !networks.contains(&endpoint.network) {
                networks.push(endpoint.network.clone());
            }
        }
        let nodes = NodeNames::of(view, ttl);
        for (label, ip) in &nodes.up {
            if let Some(owner) = name(&format!("nodes.{label}.")) {
                let entry = records.entry(&owner, None);
                entry.a.push(a_record(&owner, ttl, *ip));
            }
        }
        for service in &view.services.valid {
            if view.network(&service.network).is_some() {
                records.add_service(view, service, &nodes, ttl);
            }
        }
        records
    }

    fn entry(&mut self, owner: &Name, network: Option<&Arc<str>>) -> &mut Entry {
        self.names
            .entry(LowerName::new(owner))
            .or_insert_with(|| Entry {
                network: network.cloned(),
                ..Entry::default()
            })
    }

    fn add_service(&mut self, view: &ClusterView, service: &Service, nodes: &NodeNames, ttl: u32) {
        let network: Arc<str> = Arc::from(service.network.as_str());
        let (Some(service_name), Some(tasks_name)) = (
            name(&format!("{}.", service.name)),
            name(&format!("tasks.{}.", service.name)),
        ) else {
            return;
        };
        let serving: Vec<(&NodeId, &Task, Name)> = view
            .tasks_of(service)
            .serving()
            .filter_map(|(node, task)| {
                Some((node, task, name(&task_name(view, node, task, service))?))
            })
            .collect();
        let task_ips: Vec<Record> = serving
            .iter()
            .map(|(_, task, _)| a_record(&tasks_name, ttl, task.ip))
            .collect();

        let entry = self.entry(&service_name, Some(&network));
        match (service.endpoint_mode, service.vip) {
            (EndpointMode::Vip, Some(vip)) => entry.a = vec![a_record(&service_name, ttl, vip)],
            _ => {
                entry.a = serving
                    .iter()
                    .map(|(_, task, _)| a_record(&service_name, ttl, task.ip))
                    .collect();
                entry.shuffled = true;
            }
        }
        let entry = self.entry(&tasks_name, Some(&network));
        entry.a = task_ips;
        entry.shuffled = true;

        for (_, task, full) in &serving {
            for owner in [Some(full.clone()), name(&format!("{}.", task.id))]
                .into_iter()
                .flatten()
            {
                let record = a_record(&owner, ttl, task.ip);
                self.entry(&owner, Some(&network)).a.push(record);
            }
            if let Some(reverse) = reverse_name(task.ip) {
                let ptr = Record::from_rdata(reverse.clone(), ttl, RData::PTR(PTR(full.clone())));
                self.entry(&reverse, Some(&network)).ptr.push(ptr);
            }
        }
        self.add_short_name(service, &network, &serving, ttl);
        if let (EndpointMode::Vip, Some(vip)) = (service.endpoint_mode, service.vip) {
            if let Some(reverse) = reverse_name(vip) {
                let ptr =
                    Record::from_rdata(reverse.clone(), ttl, RData::PTR(PTR(service_name.clone())));
                self.entry(&reverse, Some(&network)).ptr.push(ptr);
            }
        }

        for port in &service.ports {
            let proto = match port.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            // Published: the nodes that open it.
            if let Some(owner) = name(&format!("_{}._{proto}.{}.", port.published, service.name)) {
                let opening: Vec<&(String, Ipv4Addr)> = match service.publish_mode {
                    PublishMode::Ingress => nodes.up.iter().collect(),
                    PublishMode::Host => nodes
                        .up_by_id
                        .iter()
                        .filter(|(id, _)| serving.iter().any(|(node, _, _)| *node == id))
                        .map(|(_, n)| n)
                        .collect(),
                };
                let entry = self.entry(&owner, Some(&network));
                for (label, ip) in opening {
                    if let Some(target) = name(&format!("nodes.{label}.")) {
                        let srv = SRV::new(0, 10, port.published, target.clone());
                        entry
                            .srv
                            .push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
                        entry.additionals.push(a_record(&target, ttl, *ip));
                    }
                }
            }
            // Target: every serving task.
            if let Some(owner) = name(&format!("_{}._{proto}.{}.", port.target, service.name)) {
                let entry = self.entry(&owner, Some(&network));
                for (_, task, full) in &serving {
                    let srv = SRV::new(0, 10, port.target, full.clone());
                    entry
                        .srv
                        .push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
                    entry.additionals.push(a_record(full, ttl, task.ip));
                }
            }
        }
    }

    /// `SHORT` for the stack service `STACK_SHORT` on its stack's own network.
    fn add_short_name(
        &mut self,
        service: &Service,
        network: &Arc<str>,
        serving: &[(&NodeId, &Task, Name)],
        ttl: u32,
    ) {
        let Some(member) = &service.stack else {
            return;
        };
        let own_network = network
            .strip_prefix(member.stack.as_str())
            .is_some_and(|rest| rest.starts_with('_'));
        let Some(short) = name(&format!("{}.", member.short_name)).filter(|_| own_network) else {
            return;
        };
        let (a, shuffled) = match (service.endpoint_mode, service.vip) {
            (EndpointMode::Vip, Some(vip)) => (vec![a_record(&short, ttl, vip)], false),
            _ => (
                serving
                    .iter()
                    .map(|(_, task, _)| a_record(&short, ttl, task.ip))
                    .collect(),
                true,
            ),
        };
        self.short_names
            .entry(LowerName::new(&short))
            .or_default()
            .push(Entry {
                network: Some(network.clone()),
                a,
                shuffled,
                ..Entry::default()
            });
    }

    /// The networks an endpoint namespace of this node sees (`netns` as its endpoints
    /// record it); `None` if no endpoint of this node is there.
    pub(crate) fn scope_of(&self, netns: &str) -> Option<Scope> {
        self.scopes.get(netns).map(|n| Scope::Networks(n.clone()))
    }

    /// The namespaces of this node's endpoints.
    pub(crate) fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.scopes.keys().map(String::as_str)
    }

    /// What a query for `qname`/`qtype` gets from a client that sees `scope`.
    pub(crate) fn resolve(
        &self,
        scope: &Scope,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Resolution<'_> {
        let visible = |e: &&Entry| scope.sees(e.network.as_deref());
        let Some(entry) = self.names.get(qname).filter(visible).or_else(|| {
            self.short_names
                .get(qname)
                .and_then(|entries| entries.iter().find(visible))
        }) else {
            return if self.is_ours(qname) {
                Resolution::NxDomain
            } else {
                Resolution::Forward
            };
        };
        let (answers, additionals): (&[Record], &[Record]) = match qtype {
            RecordType::A => (&entry.a, &[]),
            RecordType::SRV => (&entry.srv, &entry.additionals),
            RecordType::PTR => (&entry.ptr, &[]),
            _ => (&[], &[]),
        };
        if answers.is_empty() {
            return Resolution::NoData;
        }
        let answers = if entry.shuffled && qtype == RecordType::A && answers.len() > 1 {
            let mut owned = answers.to_vec();
            shuffle(&mut owned);
            Cow::Owned(owned)
        } else {
            Cow::Borrowed(answers)
        };
        Resolution::Answer {
            answers,
            additionals,
        }
    }

    /// Whether answers to `qname`/`qtype` come in a varying order (several task IPs,
    /// shuffled per answer).
    pub(crate) fn shuffles(&self, qname: &LowerName, qtype: RecordType) -> bool {
        qtype == RecordType::A
            && self
                .names
                .get(qname)
                .is_some_and(|entry| entry.shuffled && entry.a.len() > 1)
    }

    /// Whether a name that matches nothing is still Skein's to answer (NXDOMAIN).
    fn is_ours(&self, qname: &LowerName) -> bool {
        let labels = qname.num_labels();
        if labels <= 1 {
            return true;
        }
        let first = qname.iter().next().unwrap_or_default();
        if labels == 2 && (first == b"tasks" || first == b"nodes") {
            return true;
        }
        match qname.parse_arpa_name() {
            Ok(ipnet::IpNet::V4(net)) => self
                .subnets
                .iter()
                .any(|subnet| subnet.contains(&net.addr())),
            _ => false,
        }
    }
}

/// The up nodes' names for SRV targets: their hostname when every up node has a distinct
/// one that is a DNS label, else their short IDs.
struct NodeNames {
    up: Vec<(String, Ipv4Addr)>,
    up_by_id: Vec<(NodeId, (String, Ipv4Addr))>,
}

impl NodeNames {
    fn of(view: &ClusterView, _ttl: u32) -> NodeNames {
        let up_by_id: Vec<(NodeId, (String, Ipv4Addr))> = view
            .nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| {
                let info = n.info.as_ref()?;
                Some((n.id, (info.hostname.to_ascii_lowercase(), info.underlay_ip)))
            })
            .collect();
        NodeNames {
            up: up_by_id.iter().map(|(_, n)| n.clone()).collect(),
            up_by_id,
        }
    }
}

/// A task's name: its endpoint's, `NAME.LABEL.TASKID` (see the module doc), absolute.
pub(crate) fn task_name(
    view: &ClusterView,
    node: &NodeId,
    task: &Task,
    service: &Service,
) -> String {
    let label = if task.attached {
        "attached".to_owned()
    } else {
        match service.mode {
            Mode::Replicated { .. } => (task.slot + 1).to_string(),
            Mode::Global => {
                let _ = view;
                node.short()
            }
        }
    };
    format!("{}.{label}.{}.", service.name, task.id)
}

/// `d.c.b.a.in-addr.arpa.` of `ip`.
fn reverse_name(ip: Ipv4Addr) -> Option<Name> {
    let [a, b, c, d] = ip.octets();
    name(&format!("{d}.{c}.{b}.{a}.in-addr.arpa."))
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::thread::current().id()) | 1
    });
}

/// Fisher-Yates with a per-thread xorshift: answers only need to differ in order, not
/// to be unpredictable.
fn shuffle(records: &mut [Record]) {
    RANDOM.with(|state| {
        let mut x = state.get();
        for i in (1..records.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            records.swap(i, (x % (i as u64 + 1)) as usize);
        }
        state.set(x);
    });
}
