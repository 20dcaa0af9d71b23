use std::time::Duration;

use manager::state::{service::StackMember, EndpointMode, Mode, PublishMode};

use super::{plan, yaml, ComposeError, MAX_FILE_BYTES};

/// Seed 000's compose file, `image` replaced by `command` (redis from Debian's package).
const SEED_000: &str = "\
version: '3'

services:
    counter:
        command: skein whoami --counter --port 4567
        networks:
            - backend
        ports:
            - \"4568:4567\"
        environment:
            - REDIS_HOST=redis
        depends_on:
            - redis
        deploy:
            replicas: 6
    redis:
        command: [\"redis-server\", \"--port\", \"6379\", \"--protected-mode\", \"no\"]
        networks:
            - backend
networks:
    backend:
        driver: overlay
";

fn refused(text: &str) -> ComposeError {
    plan(text, "shop").expect_err("accepted")
}

#[test]
fn seed_000_becomes_two_services_on_the_stacks_network() {
    let plan = plan(SEED_000, "redis-counter").unwrap();
    assert_eq!(plan.networks, ["redis-counter_backend"]);
    let names: Vec<_> = plan.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["redis-counter_counter", "redis-counter_redis"]);
    let counter = &plan.services[0];
    assert_eq!(counter.mode, Mode::Replicated { replicas: 6 });
    assert_eq!(counter.network.as_deref(), Some("redis-counter_backend"));
    assert_eq!(counter.publish[0].to_string(), "4568:4567/tcp");
    assert_eq!(counter.env, [("REDIS_HOST".into(), "redis".into())]);
    assert_eq!(
        counter.command,
        ["skein", "whoami", "--counter", "--port", "4567"]
    );
    assert_eq!(
        counter.stack,
        Some(StackMember {
            stack: "redis-counter".into(),
            short_name: "counter".into()
        })
    );
    let redis = &plan.services[1];
    assert_eq!(redis.mode, Mode::Replicated { replicas: 1 });
    assert_eq!(redis.command[0], "redis-server");
    assert_eq!(plan.warnings.len(), 1, "depends_on warns");
    assert!(
        plan.warnings[0].contains("line 12") && plan.warnings[0].contains("depends_on"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn an_unsupported_key_names_itself_and_its_line() {
    let text = SEED_000.replace(
        "    redis:\n        command",
        "    redis:\n        image: redis:latest\n        command",
    );
    let error = refused(&text);
    assert_eq!(error.line, Some(17), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("line 17: key `services.redis.image` is not supported"),
        "{message}"
    );
    assert!(message.contains("command:"), "says what to use: {message}");
    for (key, line) in [
        ("volumes:\n  - /data", 1),
        ("secrets: {}", 1),
        ("services:\n  a:\n    command: x\n    restart: always", 4),
        (
            "services:\n  a:\n    command: x\n    deploy:\n      placement: {}",
            5,
        ),
        ("services:\n  a:\n    command: x\n    entrypoint: y", 4),
    ] {
        let error = refused(key);
        assert_eq!(error.line, Some(line), "{key}: {error}");
        assert!(error.message.contains("not supported"), "{key}: {error}");
    }
}

#[test]
fn both_environment_forms_and_both_port_syntaxes() {
    let text = "
services:
  web:
    command: \"sh -c 'echo a  b' \\\"x y\\\"\"
    environment:
      A: 1
      B: \"two words\"
      C: \"\"
      D: cost $$5
    ports:
      - target: 80
        published: 8080
        protocol: udp
        mode: host
    deploy:
      mode: global
      endpoint_mode: dnsrr
    healthcheck:
      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost/it's\"]
      interval: 2s
    user: nobody
";
    let plan = plan(text, "s").unwrap();
    let web = &plan.services[0];
    assert_eq!(web.name, "s_web");
    assert_eq!(web.command, ["sh", "-c", "echo a  b", "x y"]);
    assert_eq!(
        web.env,
        [
            ("A".into(), "1".into()),
            ("B".into(), "two words".into()),
            ("C".into(), String::new()),
            ("D".into(), "cost $5".into()),
        ]
    );
    assert_eq!(web.publish[0].to_string(), "8080:80/udp");
    assert_eq!(web.publish_mode, PublishMode::Host);
    assert_eq!(web.mode, Mode::Global);
    assert_eq!(web.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(
        web.health_cmd.as_deref(),
        Some(r"'curl' '-f' 'http://localhost/it'\''s'")
    );
    assert_eq!(web.health_interval, Duration::from_secs(2));
    assert_eq!(web.user.as_deref(), Some("nobody"));
    assert_eq!(
        plan.networks,
        ["s_default"],
        "no networks: the stack's default"
    );

    let shell = plan_one("healthcheck:\n      test: [\"CMD-SHELL\", \"redis-cli ping\"]");
    assert_eq!(shell.health_cmd.as_deref(), Some("redis-cli ping"));
    let none = plan_one("healthcheck:\n      test: [\"NONE\"]");
    assert_eq!(none.health_cmd, None);
}

fn plan_one(extra: &str) -> crate::api::ServiceSpec {
    let text = format!("services:\n  a:\n    command: x\n    {extra}\n");
    plan(&text, "s").unwrap().services.remove(0)
}

#[test]
fn bad_values_are_errors_on_their_line() {
    for (extra, needle) in [
        ("ports:\n      - \"80\"", "picks no published port"),
        ("ports:\n      - \"127.0.0.1:80:80\"", "host address"),
        ("ports:\n      - \"80-81:80-81\"", "ranges"),
        ("ports:\n      - target: 80", "published"),
        ("environment:\n      - NOVALUE", "without a value"),
        ("environment:\n      A:", "without a value"),
        ("environment:\n      - A=${HOME}", "substitution"),
        ("networks: [a, b]", "more than one network"),
        ("networks: [nope]", "does not define"),
        ("deploy:\n      replicas: -1", "whole number"),
        (
            "deploy:\n      replicas: 2\n      mode: global",
            "mode: global",
        ),
        (
            "deploy:\n      update_config:\n        order: last-first",
            "update_config.order",
        ),
        (
            "deploy:\n      update_config:\n        max_failure_ratio: 0.3",
            "first failed task",
        ),
        (
            "deploy:\n      rollback_config:\n        failure_action: rollback",
            "cannot roll back",
        ),
        (
            "deploy:\n      update_config:\n        delay: soon",
            "update_config.delay",
        ),
        (
            "deploy:\n      rollback_config:\n        max_parallel: 2",
            "rollback_config.max_parallel",
        ),
        (
            "deploy:\n      resources:\n        reservations:\n          memory: 64M",
            "reserves nothing",
        ),
        (
            "deploy:\n      resources:\n        limits:\n          memory: lots",
            "limits.memory",
        ),
        ("healthcheck:\n      test: x\n      retries: 3", "retries"),
        ("healthcheck:\n      interval: 5", "unit"),
        ("command: \"a 'b\"", "unclosed quote"),
    ] {
        let text = format!("services:\n  a:\n    command: x\n    {extra}\n");
        let text = text.replacen("    command: x\n    command", "    command", 1);
        let error = refused(&text);
        assert!(error.line.is_some_and(|l| l >= 3), "{extra}: {error}");
        assert!(error.to_string().contains(needle), "{extra}: {error}");
    }
    assert!(refused("services:\n  Web:\n    command: x")
        .message
        .contains("\"Web\""));
    assert!(refused("services:\n  a: {}")
        .message
        .contains("no `command:`"));
    assert!(refused("version: '2'\nservices: {}")
        .message
        .contains("version 3"));
    assert!(refused("networks:\n  n:\n    driver: bridge\nservices: {}")
        .message
        .contains("bridge"));
    assert!(plan("services:\n  a:\n    command: x\n", "Bad_stack").is_err());
}

#[test]
fn duplicate_keys_are_refused_naming_both_lines() {
    let error = refused("services:\n  a:\n    command: x\n    command: y\n");
    assert_eq!(error.line, Some(4));
    assert!(error.message.contains("first on line 3"), "{error}");
    let error = refused("services:\n  a:\n    command: x\n  a:\n    command: y\n");
    assert_eq!(error.line, Some(4));
}

#[test]
fn alias_bombs_and_deep_or_big_files_are_refused() {
    let mut bomb = String::from(
        "x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "x-{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
        ));
    }
    bomb.push_str("services:\n  a:\n    command: x\n");
    assert!(bomb.len() < 2000);
    let started = std::time::Instant::now();
    let error = refused(&bomb);
    assert!(error.message.contains("alias bomb"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused early");

    let deep = format!("services: {}{}", "[".repeat(200), "]".repeat(200));
    assert!(refused(&deep).message.contains("deeper"));

    let big = format!("# {}\nservices: {{}}\n", "x".repeat(MAX_FILE_BYTES));
    assert!(refused(&big).message.contains("at most"));

    assert!(refused("services: {}\n---\nservices: {}\n")
        .message
        .contains("second"));
    assert!(refused("services: !custom {}\n").message.contains("tag"));
    assert!(
        refused("services: *nowhere\n")
            .message
            .contains("not valid YAML")
            || refused("services: *nowhere\n").message.contains("anchor")
    );
}

#[test]
fn anchors_and_merge_keys_work_within_limits() {
    let text = "
x-common: &common
  command: [skein, whoami]
  environment:
    A: a
services:
  one:
    <<: *common
  two:
    <<: *common
    command: [true]
";
    let plan = plan(text, "s").unwrap();
    assert_eq!(plan.services[0].command, ["skein", "whoami"]);
    assert_eq!(plan.services[0].env, [("A".into(), "a".into())]);
    assert_eq!(
        plan.services[1].command,
        ["true"],
        "the mapping's own key wins"
    );
}

#[test]
fn the_tree_keeps_lines() {
    let root = yaml::parse("a:\n  b: 1\n  c:\n    - x\n").unwrap();
    let yaml::Value::Map(entries) = &root.value else {
        panic!("{root:?}");
    };
    assert_eq!(entries[0].0.line, 1);
    let yaml::Value::Map(inner) = &entries[0].1.value else {
        panic!();
    };
    assert_eq!((inner[0].0.line, inner[1].0.line), (2, 3));
}

#[test]
fn resource_limits_become_the_services_limits() {
    let text = "services:\n  a:\n    command: x\n    deploy:\n      resources:\n        \
                limits:\n          memory: 64M\n          cpus: '0.5'\n          pids: 20\n";
    let spec = plan(text, "s").unwrap().services.remove(0);
    assert_eq!(spec.limits.memory_bytes, Some(64 << 20));
    assert_eq!(spec.limits.cpu_millis, Some(500));
    assert_eq!(spec.limits.pids, Some(20));
}

#[test]
fn update_and_rollback_config_map_to_the_services_rollout_controls() {
    use manager::rollout::{FailureAction, UpdateConfig, UpdateOrder};
    let spec = plan_one(
        "deploy:\n      update_config:\n        parallelism: 2\n        delay: 10s\n        \
         failure_action: rollback\n        monitor: 1m30s\n        max_failure_ratio: 0\n        \
         order: start-first\n      rollback_config:\n        parallelism: 0\n        \
         failure_action: continue\n        monitor: 500ms",
    );
    assert_eq!(
        spec.rollout.update,
        UpdateConfig {
            parallelism: 2,
            delay_ms: 10_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor_ms: 90_000,
        }
    );
    assert_eq!(
        spec.rollout.rollback,
        UpdateConfig {
            parallelism: 0,
            failure_action: FailureAction::Continue,
            monitor_ms: 500,
            ..UpdateConfig::default()
        },
        "keys not given keep Swarm's defaults"
    );
    // Without the blocks: Swarm's defaults for both.
    assert_eq!(plan_one("user: nobody").rollout, Default::default());
}
