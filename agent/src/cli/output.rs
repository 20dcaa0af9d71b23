//! What the client commands print: tables like `docker node ls`, or JSON.
//!
//! Pure functions returning `String`; the current time is a parameter, so the ages in
//! the tests are deterministic.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::api::{
    Body, ConntrackRow, EndpointRow, LogChunk, NetworkRow, NodeRow, ServiceRow, ServiceStatus,
    VtepRow,
};

/// How list commands print their rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Columns padded for reading.
    #[default]
    Table,
    /// A pretty-printed JSON array of the rows, for scripts.
    Json,
}

/// Tables show the first 12 hex digits of a node ID, like Docker.
const SHORT_ID: usize = 12;
/// Space between table columns.
const GAP: &str = "   ";

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a client command prints for the agent's answer: lists in `format`, a token or a
/// confirmation as one line.
pub(crate) fn body(body: &Body, format: Format, now_ms: u64) -> String {
    match body {
        Body::Nodes(rows) => nodes(rows, format, now_ms),
        Body::Networks(rows) => networks(rows, format, now_ms),
        Body::Network(row) => networks(std::slice::from_ref(row), format, now_ms),
        Body::Token(token) => format!("{}\n", printable(token)),
        Body::Done(message) => format!("{}\n", printable(message)),
        Body::Endpoints(rows) => endpoints(rows, format),
        Body::Endpoint(row) => endpoints(std::slice::from_ref(row), format),
        Body::Vteps(rows) => vteps(rows, format),
        Body::Text(text) => text.clone(),
        Body::Services(rows) => services(rows, format),
        Body::ServiceStatus(status) => service_tasks(status, format, now_ms),
        Body::Json(value) => {
            let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
            text.push('\n');
            text
        }
        Body::Logs(chunk) => logs(chunk),
        Body::Conntrack(rows) => conntrack(rows, format),
        Body::Rollout(status) => super::rollout_output::rollout(status, format),
    }
}

/// `debug conntrack`: `PROTO CLIENT INGRESS BACKEND HOST SERVICE STATE AGE IDLE`.
pub(crate) fn conntrack(rows: &[ConntrackRow], format: Format) -> String {
    if format == Format::Json {
        return json(rows);
    }
    // `age` counts from a start: the elapsed time from 1 ms to 1 + elapsed.
    let elapsed = |ms: u64| age(1, ms.saturating_add(1));
    table(
        [
            "PROTO", "CLIENT", "INGRESS", "BACKEND", "HOST", "SERVICE", "STATE", "AGE", "IDLE",
        ],
        rows.iter().map(|row| {
            [
                printable(&row.protocol),
                printable(&row.client),
                printable(&row.ingress),
                printable(&row.backend),
                printable(&row.backend_host),
                printable(&row.service),
                printable(&row.state),
                elapsed(row.age_ms),
                elapsed(row.idle_ms),
            ]
        }),
    )
}

/// `service ls`: `NAME MODE REPLICAS NETWORK VIP PORTS COMMAND`.
pub(crate) fn services(rows: &[ServiceRow], format: Format) -> String {
    if format == Format::Json {
        return json(rows);
    }
    table(
        [
            "NAME", "MODE", "REPLICAS", "NETWORK", "VIP", "PORTS", "COMMAND",
        ],
        rows.iter().map(|row| {
            [
                printable(&row.name),
                printable(&row.mode),
                printable(&row.replicas),
                printable(&row.network),
                printable(&row.vip),
                printable(&row.ports.join(",")),
                printable(&row.command),
            ]
        }),
    )
}

/// `service ps`: `NAME ID NODE IP STATE SINCE MESSAGE`, one task per row.
pub(crate) fn service_tasks(status: &ServiceStatus, format: Format, now_ms: u64) -> String {
    if format == Format::Json {
        return json(&status.tasks);
    }
    table(
        ["NAME", "ID", "NODE", "IP", "STATE", "SINCE", "MESSAGE"],
        status.tasks.iter().map(|row| {
            [
                printable(&row.name),
                printable(&row.id),
                printable(&row.hostname),
                printable(&row.ip),
                row.state.to_string(),
                age(row.since_ms, now_ms),
                printable(&row.message),
            ]
        }),
    )
}

/// `service logs`: each line prefixed with its task, like `docker service logs`.
pub(crate) fn logs(chunk: &LogChunk) -> String {
    let mut out = String::new();
    for entry in &chunk.entries {
        for line in entry.text.lines() {
            out.push_str(&format!(
                "{}.{}    | {}\n",
                printable(&entry.task),
                printable(&entry.id),
                printable(line)
            ));
        }
    }
    out
}

/// `endpoint ls`: `ID NAME NETWORK IP NODE NETNS STATUS`.
pub(crate) fn endpoints(rows: &[EndpointRow], format: Format) -> String {
    if format == Format::Json {
        return json(rows);
    }
    table(
        ["ID", "NAME", "NETWORK", "IP", "NODE", "NETNS", "STATUS"],
        rows.iter().map(|row| {
            [
                printable(&row.id),
                printable(&row.name),
                printable(&row.network),
                printable(&row.ip),
                short_id(&row.node),
                printable(&row.netns),
                printable(&row.status),
            ]
        }),
    )
}

/// `network vtep ls`: `NETWORK CIDR UNDERLAY MAC`.
pub(crate) fn vteps(rows: &[VtepRow], format: Format) -> String {
    if format == Format::Json {
        return json(rows);
    }
    table(
        ["NETWORK", "CIDR", "UNDERLAY", "MAC"],
        rows.iter().map(|row| {
            [
                printable(&row.network),
                printable(&row.cidr),
                printable(&row.underlay),
                printable(&row.mac),
            ]
        }),
    )
}

/// `node ls`: `ID HOSTNAME ADDRESS STATUS AGE`, the node the CLI talks to marked `*`.
pub(crate) fn nodes(rows: &[NodeRow], format: Format, now_ms: u64) -> String {
    if format == Format::Json {
        return json(rows);
    }
    table(
        ["ID", "HOSTNAME", "ADDRESS", "STATUS", "AVAILABILITY", "AGE"],
        rows.iter().map(|row| {
            let mut id = short_id(&row.id);
            if row.is_self {
                id.push_str(" *");
            }
            [
                id,
                printable(&row.hostname),
                printable(&row.address),
                printable(&row.status),
                printable(&row.availability),
                age(row.started_at_ms, now_ms),
            ]
        }),
    )
}

/// `network ls`: `NAME SUBNET VNI CREATED BY AGE`.
pub(crate) fn networks(rows: &[NetworkRow], format: Format, now_ms: u64) -> String {
    if format == Format::Json {
        return json(rows);
    }
    table(
        ["NAME", "SUBNET", "VNI", "CREATED BY", "AGE"],
        rows.iter().map(|row| {
            [
                printable(&row.name),
                printable(&row.subnet),
                row.vni.to_string(),
                short_id(&row.created_by),
                age(row.created_at_ms, now_ms),
            ]
        }),
    )
}

/// Time from `since_ms` to `now_ms` in its largest whole unit: `5s`, `3m`, `2h`, `4d`;
/// `-` when `since_ms` is 0 (unknown). A clock behind `since_ms` counts as `0s`.
pub(crate) fn age(since_ms: u64, now_ms: u64) -> String {
    if since_ms == 0 {
        return "-".into();
    }
    let seconds = now_ms.saturating_sub(since_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

fn short_id(id: &str) -> String {
    printable(id).chars().take(SHORT_ID).collect()
}

/// Names come from other nodes over gossip: control characters (a terminal escape
/// sequence, a newline breaking the table) are shown as `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One value as pretty JSON, newline-terminated.
pub(crate) fn json_pretty<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn json<T: Serialize>(rows: &[T]) -> String {
    let mut text =
        serde_json::to_string_pretty(rows).expect("rows of strings and numbers always serialize");
    text.push('\n');
    text
}

/// A header and rows, each column padded to its widest cell; no trailing spaces.
fn table<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn node(id: &str, hostname: &str, is_self: bool, started_at_ms: u64) -> NodeRow {
        NodeRow {
            id: id.into(),
            hostname: hostname.into(),
            address: "10.0.0.1:7946".into(),
            status: "ready".into(),
            is_self,
            started_at_ms,
            availability: "active".into(),
        }
    }

    #[test]
    fn node_table_is_padded_and_marks_self() {
        let rows = [
            node(
                "3f2a9c1d0b8e47a6a1b2c3d4e5f60718",
                "host-one",
                true,
                NOW - 5_000,
            ),
            NodeRow {
                status: "down".into(),
                address: "10.0.0.22:7946".into(),
                ..node("0123456789abcdef0123456789abcdef", "h2", false, 0)
            },
        ];
        let expected = "\
ID               HOSTNAME   ADDRESS          STATUS   AVAILABILITY   AGE
3f2a9c1d0b8e *   host-one   10.0.0.1:7946    ready    active         5s
0123456789ab     h2         10.0.0.22:7946   down     active         -
";
        assert_eq!(nodes(&rows, Format::Table, NOW), expected);
    }

    #[test]
    fn empty_lists_print_the_header() {
        assert_eq!(
            nodes(&[], Format::Table, NOW),
            "ID   HOSTNAME   ADDRESS   STATUS   AVAILABILITY   AGE\n"
        );
        assert_eq!(networks(&[], Format::Json, NOW), "[]\n");
    }

    #[test]
    fn network_table() {
        let rows = [NetworkRow {
            name: "web".into(),
            subnet: "10.10.0.0/24".into(),
            vni: 4097,
            created_by: "3f2a9c1d0b8e47a6".into(),
            created_at_ms: NOW - 3 * 3_600_000 - 59_000,
        }];
        let expected = "\
NAME   SUBNET         VNI    CREATED BY     AGE
web    10.10.0.0/24   4097   3f2a9c1d0b8e   3h
";
        assert_eq!(networks(&rows, Format::Table, NOW), expected);
        assert_eq!(
            body(&Body::Network(rows[0].clone()), Format::Table, NOW),
            expected
        );
    }

    #[test]
    fn json_is_the_rows() {
        let rows = [node("ab", "h", true, 7)];
        let text = nodes(&rows, Format::Json, NOW);
        let back: Vec<NodeRow> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rows);
        assert!(text.contains("\n  {\n"), "pretty-printed: {text}");
    }

    #[test]
    fn ages() {
        for (ago_ms, expected) in [
            (0, "0s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (3_599_000, "59m"),
            (3_600_000, "1h"),
            (86_399_000, "23h"),
            (4 * 86_400_000, "4d"),
        ] {
            assert_eq!(age(NOW - ago_ms, NOW), expected, "{ago_ms} ms ago");
        }
        assert_eq!(age(0, NOW), "-");
        assert_eq!(age(NOW + 5_000, NOW), "0s", "a clock behind the start");
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let rows = [node("ab", "evil\x1b[2J\nname", false, 0)];
        let text = nodes(&rows, Format::Table, NOW);
        assert!(text.contains("evil?[2J?name"), "{text}");
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            body(&Body::Done("removed\x07".into()), Format::Table, NOW),
            "removed?\n"
        );
    }
}
