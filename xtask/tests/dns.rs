//! Service discovery DNS end to end (issue 13), on one shared three-host testbed driven
//! through the `skein` CLI, with `dig` run inside tasks (`ip netns exec`) against
//! 127.0.0.11 and on the hosts against `--dns-addr`:
//! - from a task on every host: `web` is its VIP, `tasks.web` exactly the running tasks of
//!   `service ps`, a `dnsrr` service its task IPs, a task ID and `web.SLOT.ID` that task,
//!   SRV the published port (every node) and the target port (every task), PTR of a task IP
//!   its name, `nosuch` NXDOMAIN, AAAA of `web` NODATA, a service of another network not
//!   visible (while the host's listener sees it), an upstream name through the
//!   test's own upstream (dnsmasq in the client namespace) and SERVFAIL once it stops;
//! - a service started with `-e REDIS_HOST=redis` reaches `redis` by name (the task's
//!   `resolv.conf` points at 127.0.0.11);
//! - after `service scale`, `service rm`, a failing health check, a host's death and return,
//!   and an agent restart: once a node's `service ps` shows the new state, that node's
//!   answers equal it;
//! - sockets follow endpoints (`endpoint create|attach|rm`), `skein debug dns` answers as
//!   the server does, and `/metrics` counts queries, forwards and upstream failures.
//!
//! Network rule: the agents forward only to the test's dnsmasq (`--dns-upstream`), never
//! to the machine's resolvers. Needs root, `dig` and `dnsmasq`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::{
    cluster::{
        create_endpoint, create_service, in_netns, kill_host, revive_host, running_tasks, skein,
        skein_ok, start_cluster_with, wait_node_down, whoami, TaskInfo, DEADLINE,
    },
    scrape::scrape,
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

/// The name the test's upstream answers, and its address.
const UPSTREAM_NAME: &str = "upstream.skein-test";
const UPSTREAM_ANSWER: &str = "10.99.0.1";

/// One `dig` answer: its status and the answer section's data (`rdata`, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dig {
    status: String,
    answers: Vec<String>,
}

impl Dig {
    fn set(&self) -> BTreeSet<String> {
        self.answers.iter().cloned().collect()
    }
}

/// `dig @SERVER -p PORT NAME TYPE` inside `ns` (a namespace name): status and answers.
fn dig_in(ns: &str, server: &str, port: u16, name: &str, qtype: &str, tcp: bool) -> Dig {
    let port = port.to_string();
    let at = format!("@{server}");
    let mut args = vec![
        "dig",
        &at,
        "-p",
        &port,
        name,
        qtype,
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
    ];
    if tcp {
        args.push("+tcp");
    }
    let out = in_netns(ns, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| format!("no answer: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
        .collect();
    Dig { status, answers }
}

/// Asks the resolver of a task or endpoint namespace (127.0.0.11:53), over UDP.
fn ask_ns(ns: &str, name: &str, qtype: &str) -> Dig {
    dig_in(ns, "127.0.0.11", 53, name, qtype, false)
}

/// Asks `host`'s `--dns-addr` (the default, 127.0.0.1:5353): the operator's view.
fn ask_host(host: &Host, name: &str, qtype: &str) -> Dig {
    dig_in(host.netns(), "127.0.0.1", 5353, name, qtype, false)
}

fn ok(answers: &[&str]) -> Dig {
    Dig {
        status: "NOERROR".into(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
    }
}

fn status(status: &str) -> Dig {
    Dig {
        status: status.into(),
        answers: vec![],
    }
}

/// The namespace of `task` on its host (the endpoint with its address).
fn task_netns(bed: &Testbed, task: &TaskInfo) -> String {
    let host = host_named(bed, &task.host);
    let endpoints: Vec<Value> =
        serde_json::from_str(&skein_ok(host, &["endpoint", "ls", "--format", "json"]).unwrap())
            .unwrap();
    endpoints
        .iter()
        .find(|e| e["ip"] == task.ip.as_str())
        .and_then(|e| e["netns"].as_str())
        .unwrap_or_else(|| panic!("no endpoint for task {task:?}"))
        .to_owned()
}

fn host_named<'a>(bed: &'a Testbed, name: &str) -> &'a Host {
    bed.hosts()
        .iter()
        .find(|h| h.netns() == name || h.name() == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

fn wait_running(bed: &Testbed, hosts: &[&Host], service: &str, n: usize) -> Vec<TaskInfo> {
    for host in hosts {
        wait_until(
            &format!("{n} running {service} tasks on {}", host.name()),
            DEADLINE,
            || running_tasks(host, service).len() == n,
        )
        .unwrap();
    }
    running_tasks(bed.host(0), service)
}

/// Waits until `host`'s answer for `tasks.NAME` equals its own `service ps` (running
/// tasks) and that set satisfies `want`; the answer is read between two readings of
/// `service ps` that agree, and must follow within 1 s of `service ps` (the DNS records
/// are rebuilt from the same view, on the same change).
fn answers_follow_ps(host: &Host, service: &str, want: impl Fn(&BTreeSet<String>) -> bool) {
    let started = Instant::now();
    let mut since: Option<(BTreeSet<String>, Instant)> = None;
    loop {
        let ps: BTreeSet<String> = running_tasks(host, service)
            .into_iter()
            .map(|t| t.ip)
            .collect();
        let dns = ask_host(host, &format!("tasks.{service}"), "A");
        let ps_after: BTreeSet<String> = running_tasks(host, service)
            .into_iter()
            .map(|t| t.ip)
            .collect();
        if ps == ps_after && want(&ps) {
            if dns.set() == ps && dns.status == "NOERROR" {
                return;
            }
            match &since {
                Some((seen, at)) if *seen == ps => assert!(
                    at.elapsed() < Duration::from_secs(1),
                    "{}: service ps shows {ps:?} for {:?} but tasks.{service} answers {dns:?}",
                    host.name(),
                    at.elapsed()
                ),
                _ => since = Some((ps, Instant::now())),
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{}: service ps of {service} never reached the wanted state (last answer {dns:?})",
            host.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dnsmasq in the client namespace: the test's upstream resolver, answering one name.
fn start_upstream(bed: &Testbed) -> Process {
    let client = bed.client();
    let mut cmd = client.command("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        &format!("--listen-address={CLIENT_UNDERLAY_IP}"),
        &format!("--address=/{UPSTREAM_NAME}/{UPSTREAM_ANSWER}"),
    ]);
    client.spawn(cmd, "dnsmasq").unwrap()
}

fn metric(samples: &std::collections::BTreeMap<String, u64>, key: &str) -> u64 {
    samples.get(key).copied().unwrap_or(0)
}

#[test]
fn service_names_follow_the_live_view() {
    let started = Instant::now();
    let stage = |what: &str| eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let bed = Testbed::new("dns", TestbedConfig::with_hosts(3)).expect("testbed");
    let upstream = start_upstream(&bed);
    let upstream_arg = format!("--dns-upstream={CLIENT_UNDERLAY_IP}");
    let extra = |_: &Host| vec![upstream_arg.clone(), "--dns-ttl=1s".to_owned()];
    let (mut agents, token) = start_cluster_with(&bed, extra, &[]).expect("cluster");
    let hosts: Vec<&Host> = bed.hosts().iter().collect();
    let (h1, h2, h3) = (bed.host(0), bed.host(1), bed.host(2));

    stage("cluster up");
    let health_dir = bed.shared_dir().join("health");
    std::fs::create_dir_all(&health_dir).unwrap();
    let web_cmd = whoami(&["--port", "80"]);
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &web_cmd,
    );
    create_service(
        &bed,
        "rr",
        &["--replicas", "2", "--endpoint-mode", "dnsrr"],
        &web_cmd,
    );
    let redis_cmd = whoami(&["--port", "6379"]);
    create_service(&bed, "redis", &["--replicas", "1"], &redis_cmd);
    let counter_cmd: Vec<String> = [
        "sh",
        "-c",
        "while true; do curl -s --max-time 2 http://$REDIS_HOST:6379/; sleep 0.5; done",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    create_service(
        &bed,
        "counter",
        &["--replicas", "1", "-e", "REDIS_HOST=redis"],
        &counter_cmd,
    );
    let health = format!("test -e {}/ok-$SKEIN_TASK", health_dir.display());
    // Healthy while its flag file exists.
    let hc_cmd: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "touch {}/ok-$SKEIN_TASK; exec sleep 3600",
            health_dir.display()
        ),
    ];
    create_service(
        &bed,
        "hc",
        &[
            "--replicas",
            "2",
            "--health-cmd",
            &health,
            "--health-interval",
            "500ms",
        ],
        &hc_cmd,
    );
    skein_ok(h1, &["network", "create", "other"]).unwrap();
    create_service(
        &bed,
        "secret",
        &["--replicas", "1", "--network", "other"],
        &["sleep".to_owned(), "3600".to_owned()],
    );
    let web = wait_running(&bed, &hosts, "web", 3);
    let rr = wait_running(&bed, &hosts, "rr", 2);
    wait_running(&bed, &hosts, "hc", 2);
    let secret = wait_running(&bed, &hosts, "secret", 1);
    let vip = serde_json::from_str::<Value>(&skein_ok(h1, &["service", "inspect", "web"]).unwrap())
        .unwrap()["vip"]
        .as_str()
        .expect("web has a VIP")
        .to_owned();
    let web_ips: BTreeSet<String> = web.iter().map(|t| t.ip.clone()).collect();
    let rr_ips: BTreeSet<String> = rr.iter().map(|t| t.ip.clone()).collect();

    stage("services running");
    // From a web task on every host (one per host: 3 replicas on 3 hosts).
    for task in &web {
        let ns = task_netns(&bed, task);
        let at = format!("web task on {}", task.host);
        let answered = wait_until(&format!("DNS in {at}"), DEADLINE, || {
            let dig = ask_ns(&ns, "web", "A");
            (dig == ok(&[&vip])).then_some(()).ok_or(format!("{dig:?}"))
        });
        if let Err(error) = answered {
            let host = host_named(&bed, &task.host);
            let log = std::fs::read_to_string(host.dir().join("agent.log")).unwrap_or_default();
            let dns: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("DNS") || l.contains("dns"))
                .collect();
            let ss = in_netns(&ns, &["ss", "-lnptu"]).unwrap();
            let addr = in_netns(&ns, &["ip", "addr"]).unwrap();
            let tcp = dig_in(&ns, "127.0.0.11", 53, "web", "A", true);
            panic!(
                "{error:#}\n{}\n{}\n{}\ntcp: {tcp:?}",
                dns.join("\n"),
                String::from_utf8_lossy(&ss.stdout),
                String::from_utf8_lossy(&addr.stdout)
            );
        }
        assert_eq!(
            ask_ns(&ns, "tasks.web", "A").set(),
            web_ips,
            "{at}: tasks.web"
        );
        assert_eq!(ask_ns(&ns, "rr", "A").set(), rr_ips, "{at}: dnsrr name");
        assert_eq!(ask_ns(&ns, "tasks.rr", "A").set(), rr_ips, "{at}: tasks.rr");
        let other = &web[(web.iter().position(|t| t == task).unwrap() + 1) % web.len()];
        assert_eq!(
            ask_ns(&ns, &other.id, "A"),
            ok(&[&other.ip]),
            "{at}: task ID"
        );
        let slot = other.name.rsplit('.').next().unwrap();
        let full = format!("web.{slot}.{}", other.id);
        assert_eq!(ask_ns(&ns, &full, "A"), ok(&[&other.ip]), "{at}: {full}");
        let reverse: String = other.ip.split('.').rev().collect::<Vec<_>>().join(".");
        assert_eq!(
            ask_ns(&ns, &format!("{reverse}.in-addr.arpa"), "PTR"),
            ok(&[&format!("{full}.")]),
            "{at}: PTR of a task IP"
        );
        let published = ask_ns(&ns, "_8080._tcp.web", "SRV");
        let want: BTreeSet<String> = hosts
            .iter()
            .map(|h| format!("0 10 8080 nodes.{}.", h.netns()))
            .collect();
        assert_eq!(published.set(), want, "{at}: SRV of the published port");
        let target = ask_ns(&ns, "_80._tcp.web", "SRV");
        assert_eq!(
            target.answers.len(),
            3,
            "{at}: SRV of the target port: {target:?}"
        );
        assert!(
            target.answers.iter().all(|a| a.starts_with("0 10 80 web.")),
            "{target:?}"
        );
        assert_eq!(
            ask_ns(&ns, "nosuch", "A"),
            status("NXDOMAIN"),
            "{at}: nosuch"
        );
        assert_eq!(ask_ns(&ns, "tasks.nosuch", "A"), status("NXDOMAIN"), "{at}");
        assert_eq!(
            ask_ns(&ns, "web", "AAAA"),
            status("NOERROR"),
            "{at}: NODATA"
        );
        assert_eq!(
            ask_ns(&ns, "secret", "A"),
            status("NXDOMAIN"),
            "{at}: other network"
        );
        assert_eq!(
            ask_ns(&ns, &secret[0].id, "A"),
            status("NXDOMAIN"),
            "{at}: another network's task"
        );
        assert_eq!(
            ask_ns(&ns, UPSTREAM_NAME, "A"),
            ok(&[UPSTREAM_ANSWER]),
            "{at}: forwarded"
        );
        // TCP too.
        assert_eq!(
            dig_in(&ns, "127.0.0.11", 53, "web", "A", true),
            ok(&[&vip]),
            "{at}: over TCP"
        );
    }
    // The operator on the host sees every network; a task of `secret` sees its own.
    assert_eq!(ask_host(h2, "secret", "A").status, "NOERROR");
    assert_eq!(ask_host(h2, "tasks.secret", "A"), ok(&[&secret[0].ip]));
    let secret_ns = task_netns(&bed, &secret[0]);
    assert_eq!(
        ask_ns(&secret_ns, "tasks.secret", "A"),
        ok(&[&secret[0].ip])
    );
    assert_eq!(ask_ns(&secret_ns, "web", "A"), status("NXDOMAIN"));
    // `skein debug dns` answers as the server does.
    let web_ns = task_netns(&bed, &web[0]);
    let web_host = host_named(&bed, &web[0].host);
    let debug = skein_ok(web_host, &["debug", "dns", "web", "--netns", &web_ns]).unwrap();
    assert!(debug.contains("NOERROR") && debug.contains(&vip), "{debug}");
    let debug = skein_ok(web_host, &["debug", "dns", "secret", "--netns", &web_ns]).unwrap();
    assert!(debug.contains("NXDOMAIN"), "{debug}");

    stage("names checked from every host");
    // The counter service reaches redis by name, through its resolv.conf.
    wait_until("counter reaching redis by name", DEADLINE, || {
        skein_ok(h1, &["service", "logs", "counter"]).is_ok_and(|logs| logs.contains("Hostname:"))
    })
    .unwrap();

    stage("counter reached redis");
    // Scale: answers equal `service ps` on every node.
    skein_ok(h1, &["service", "scale", "web=2"]).unwrap();
    for host in &hosts {
        answers_follow_ps(host, "web", |ips| ips.len() == 2);
    }
    skein_ok(h1, &["service", "scale", "web=3"]).unwrap();
    for host in &hosts {
        answers_follow_ps(host, "web", |ips| ips.len() == 3);
    }
    // Remove: the names are gone (NXDOMAIN, never forwarded).
    skein_ok(h1, &["service", "rm", "rr"]).unwrap();
    for host in &hosts {
        wait_until(&format!("rr gone on {}", host.name()), DEADLINE, || {
            ask_host(host, "rr", "A") == status("NXDOMAIN")
                && ask_host(host, "tasks.rr", "A") == status("NXDOMAIN")
        })
        .unwrap();
    }
    // A failing health check: the task leaves the answers as `service ps` shows it.
    let hc = running_tasks(h1, "hc");
    std::fs::remove_file(health_dir.join(format!("ok-{}", hc[0].id))).unwrap();
    for host in &hosts {
        answers_follow_ps(host, "hc", |ips| !ips.contains(&hc[0].ip));
    }

    stage("scale, rm, health");
    // A host's death and return.
    kill_host(h3, &mut agents[2]).unwrap();
    wait_node_down(&[h1, h2], h3.netns(), DEADLINE).unwrap();
    for host in [h1, h2] {
        answers_follow_ps(host, "web", |ips| ips.len() == 3);
    }
    revive_host(h3).unwrap();
    let seed = h1.underlay_ip().to_string();
    let restart_args = [
        "--join",
        seed.as_str(),
        "--token",
        token.as_str(),
        upstream_arg.as_str(),
        "--dns-ttl=1s",
    ];
    agents[2] = h3.start_agent(&restart_args).unwrap();
    for host in &hosts {
        answers_follow_ps(host, "web", |ips| ips.len() == 3);
    }

    stage("host death and return");
    // An agent restart (kill -9): the sockets in its tasks' namespaces come back.
    let h2_web = running_tasks(h2, "web")
        .into_iter()
        .find(|t| t.host == h2.netns())
        .expect("a web task on h2");
    let h2_ns = task_netns(&bed, &h2_web);
    agents[1].kill9().unwrap();
    assert!(
        ask_ns(&h2_ns, "web", "A").status.starts_with("no answer"),
        "the agent is dead"
    );
    agents[1] = h2.start_agent(&restart_args).unwrap();
    wait_until("DNS back in h2's task", DEADLINE, || {
        ask_ns(&h2_ns, "web", "A") == ok(&[&vip])
    })
    .unwrap();
    answers_follow_ps(h2, "web", |ips| ips.len() == 3);

    stage("agent restart");
    // Sockets follow endpoints: created, attached, removed.
    let (probe_ns, _) = create_endpoint(h1, "skein", "probe").unwrap();
    assert_eq!(
        ask_ns(&probe_ns, "web", "A"),
        ok(&[&vip]),
        "endpoint create"
    );
    let attached = format!("{}-attached", bed.prefix());
    // Named with the testbed's prefix: the testbed removes it, also on failure.
    let added = std::process::Command::new("ip")
        .args(["netns", "add", &attached])
        .status()
        .unwrap();
    assert!(added.success(), "ip netns add {attached}");
    skein_ok(
        h1,
        &[
            "endpoint",
            "attach",
            "--network",
            "skein",
            "--name",
            "att",
            "--netns",
            &attached,
        ],
    )
    .unwrap();
    assert_eq!(
        ask_ns(&attached, "web", "A"),
        ok(&[&vip]),
        "endpoint attach"
    );
    skein_ok(h1, &["endpoint", "rm", "att"]).unwrap();
    wait_until("the attached namespace's sockets closed", DEADLINE, || {
        let out = in_netns(&attached, &["ss", "-lnu"]).unwrap();
        !String::from_utf8_lossy(&out.stdout).contains("127.0.0.11:53")
    })
    .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &attached])
        .status();

    stage("endpoints");
    // The upstream stops: forwarded names get SERVFAIL; Skein's names still answer.
    drop(upstream);
    wait_until("SERVFAIL without the upstream", DEADLINE, || {
        ask_ns(&probe_ns, UPSTREAM_NAME, "A") == status("SERVFAIL")
    })
    .unwrap();
    assert_eq!(ask_ns(&probe_ns, "web", "A"), ok(&[&vip]));

    let text = scrape(h1).unwrap();
    assert!(
        metric(
            &text,
            "skein_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}"
        ) > 0,
        "{text:?}"
    );
    assert!(
        metric(
            &text,
            "skein_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}"
        ) > 0
    );
    assert!(
        metric(
            &text,
            "skein_dns_queries_total{type=\"A\",rcode=\"SERVFAIL\"}"
        ) > 0
    );
    assert!(metric(&text, "skein_dns_forwarded_total") > 0);
    assert!(metric(&text, "skein_dns_upstream_failures_total") > 0);
    let _ = skein(h1, &["service", "ls"]);
}
