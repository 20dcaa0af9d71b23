//! The figures every bench returns, and the one table (terminal and markdown) and JSON file
//! of `cargo xtask bench`.
//!
//! A figure is one number a bench measured, with its unit, which direction is better, and
//! the reference it was measured next to (the kernel's VXLAN, dnsmasq, a pass-through...)
//! when there is one; the ratio is always value ÷ reference. A figure whose part of the
//! bench did not measure it has no value and shows as `not measured`, never as a number; a
//! bench that failed as a whole is one row `failed: <one line>`.

use serde::{Deserialize, Serialize};

/// Which way a figure improves: the ratio is read with it (a ratio of 1.2 is good for
/// requests/s, bad for a latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// What a figure was measured next to, in the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reference {
    pub(crate) name: String,
    /// None: the reference side of this figure was not measured (its run failed).
    pub(crate) value: Option<f64>,
}

/// One measured figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Figure {
    pub(crate) bench: String,
    pub(crate) name: String,
    /// None: not measured in this run (the part of the bench that measures it failed).
    pub(crate) value: Option<f64>,
    pub(crate) unit: String,
    pub(crate) reference: Option<Reference>,
    /// value ÷ reference, when both were measured and the reference is not zero.
    pub(crate) ratio: Option<f64>,
    pub(crate) better: Better,
}

impl Figure {
    pub(crate) fn new(
        bench: &str,
        name: &str,
        value: Option<f64>,
        unit: &str,
        better: Better,
    ) -> Figure {
        Figure {
            bench: bench.to_owned(),
            name: name.to_owned(),
            value: value.filter(|v| v.is_finite()),
            unit: unit.to_owned(),
            reference: None,
            ratio: None,
            better,
        }
    }

    /// Sets the reference this figure was measured next to, and the ratio.
    pub(crate) fn against(&mut self, name: &str, value: Option<f64>) -> &mut Figure {
        let value = value.filter(|v| v.is_finite());
        self.reference = Some(Reference {
            name: name.to_owned(),
            value,
        });
        self.ratio = ratio(self.value, value);
        self
    }
}

/// value ÷ reference, when both are there and the quotient means something.
pub(crate) fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r != 0.0 => Some(v / r).filter(|q| q.is_finite()),
        _ => None,
    }
}

/// A bench's figures as it collects them.
pub(crate) struct Figures {
    bench: String,
    list: Vec<Figure>,
}

impl Figures {
    pub(crate) fn new(bench: &str) -> Figures {
        Figures {
            bench: bench.to_owned(),
            list: Vec::new(),
        }
    }

    /// Adds a figure; `.against(...)` on the result gives it a reference.
    pub(crate) fn add(
        &mut self,
        name: &str,
        value: Option<f64>,
        unit: &str,
        better: Better,
    ) -> &mut Figure {
        self.list
            .push(Figure::new(&self.bench, name, value, unit, better));
        self.list.last_mut().expect("just pushed")
    }

    /// Figures another bench returned (e.g. `mesh` running `mesh-cost`), kept as they are.
    pub(crate) fn extend(&mut self, figures: Vec<Figure>) {
        self.list.extend(figures);
    }

    pub(crate) fn into_vec(self) -> Vec<Figure> {
        self.list
    }
}

/// The machine a run was measured on, without its hostname.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) kernel: String,
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) memory_mib: u64,
}

impl Machine {
    /// From the contents of `/proc/sys/kernel/osrelease`, `/proc/cpuinfo`, `/proc/meminfo`.
    pub(crate) fn parse(osrelease: &str, cpuinfo: &str, meminfo: &str) -> Machine {
        let field = |line: &str, key: &str| {
            line.split_once(':')
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        };
        Machine {
            kernel: osrelease.trim().to_owned(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| field(l, "model name"))
                .unwrap_or_else(|| "unknown CPU".to_owned()),
            cpus: cpuinfo
                .lines()
                .filter(|l| field(l, "processor").is_some())
                .count(),
            memory_mib: meminfo
                .lines()
                .find_map(|l| field(l, "MemTotal"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
        }
    }

    /// This machine, from /proc.
    pub(crate) fn this() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine::parse(
            &read("/proc/sys/kernel/osrelease"),
            &read("/proc/cpuinfo"),
            &read("/proc/meminfo"),
        )
    }

    /// "Linux 6.1.0-18-amd64, 2 × Intel(R) Xeon(R) ..., 7.8 GiB".
    pub(crate) fn describe(&self) -> String {
        format!(
            "Linux {}, {} × {}, {:.1} GiB memory",
            self.kernel,
            self.cpus,
            self.cpu_model,
            self.memory_mib as f64 / 1024.0
        )
    }
}

/// One bench of a run: its figures, or why it failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BenchRun {
    pub(crate) bench: String,
    /// The command line that reproduces it (`cargo xtask bench overlay --tcp-seconds 4`).
    pub(crate) command: String,
    pub(crate) seconds: f64,
    /// One line: why the bench stopped. Its figures are then not shown.
    pub(crate) failed: Option<String>,
    pub(crate) figures: Vec<Figure>,
}

/// A whole `cargo xtask bench` run: what `target/bench/latest.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// UTC, `2026-12-03T17:58:01Z`.
    pub(crate) date: String,
    pub(crate) machine: Machine,
    /// `git describe`-like: the commit, `-dirty` with uncommitted changes.
    pub(crate) commit: String,
    /// `/proc/loadavg`'s 1-minute figure at the start and at the end: other load on the
    /// machine weighs on every figure.
    pub(crate) load_average: (f64, f64),
    pub(crate) benches: Vec<BenchRun>,
}

impl Report {
    pub(crate) fn failed(&self) -> Vec<&BenchRun> {
        self.benches.iter().filter(|b| b.failed.is_some()).collect()
    }

    /// The line under the table: when, where, which commit.
    pub(crate) fn measured_line(&self) -> String {
        format!(
            "Measured {} on {}; commit {}; load average {:.2} at the start, {:.2} at the end.",
            self.date.replace('T', " ").replace('Z', " UTC"),
            self.machine.describe(),
            self.commit,
            self.load_average.0,
            self.load_average.1
        )
    }

    /// The table's rows: bench, figure, value, reference, ratio.
    pub(crate) fn rows(&self) -> Vec<[String; 5]> {
        let mut rows = Vec::new();
        for run in &self.benches {
            if let Some(why) = &run.failed {
                rows.push([
                    run.bench.clone(),
                    format!("failed: {why}"),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
            for f in &run.figures {
                rows.push(row(f));
            }
        }
        rows
    }

    /// The terminal table, columns aligned.
    pub(crate) fn table(&self) -> String {
        let rows = self.rows();
        let mut width = HEADER.map(|h| h.chars().count());
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String; 5]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
                let pad = w - cell.chars().count();
                // Numbers right-aligned, words left-aligned.
                if i >= 2 {
                    s += &" ".repeat(pad);
                    s += cell;
                } else {
                    s += cell;
                    s += &" ".repeat(pad);
                }
                s += "  ";
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = line(&HEADER.map(str::to_owned));
        for r in &rows {
            out += &line(r);
        }
        out + LEGEND + "\n" + &self.measured_line() + "\n"
    }

    /// The README section: a markdown table with the date and the machine.
    pub(crate) fn markdown(&self) -> String {
        let escape = |c: &str| c.replace('|', "\\|");
        let mut out = format!(
            "{}\n\n| {} |\n|---|---|--:|--:|--:|\n",
            self.measured_line(),
            HEADER.join(" | ")
        );
        for r in self.rows() {
            out += &format!("| {} |\n", r.map(|c| escape(&c)).join(" | "));
        }
        out + "\n" + LEGEND + "\n"
    }
}

const HEADER: [&str; 5] = ["bench", "figure", "value", "reference", "ratio"];
const LEGEND: &str = "ratio = value ÷ reference; ↑ higher is better, ↓ lower is better. \
     Figures from one run on a shared machine: compare within the table only.";

fn row(f: &Figure) -> [String; 5] {
    let value = match f.value {
        Some(v) => with_unit(v, &f.unit),
        None => "not measured".to_owned(),
    };
    let reference = match &f.reference {
        Some(Reference {
            name,
            value: Some(v),
        }) => format!("{} ({name})", with_unit(*v, &f.unit)),
        Some(Reference { name, value: None }) => format!("not measured ({name})"),
        None => String::new(),
    };
    let ratio = match (f.ratio, &f.reference) {
        (Some(q), _) => format!("{}× {}", number(q), arrow(f.better)),
        (None, Some(_)) => "n/a".to_owned(),
        (None, None) => String::new(),
    };
    // A figure without a reference still says which way is better.
    let value = if f.reference.is_none() && f.value.is_some() {
        format!("{value} {}", arrow(f.better))
    } else {
        value
    };
    [f.bench.clone(), f.name.clone(), value, reference, ratio]
}

fn arrow(better: Better) -> &'static str {
    match better {
        Better::Higher => "↑",
        Better::Lower => "↓",
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        number(v)
    } else {
        format!("{} {unit}", number(v))
    }
}

/// Three significant figures or so, without a forest of decimals on large numbers.
pub(crate) fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 || (v.fract() == 0.0 && a < 1e15) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The first line of an error chain, short enough for a table cell.
pub(crate) fn one_line(error: &str) -> String {
    let first = error.lines().map(str::trim).find(|l| !l.is_empty());
    let mut line = first.unwrap_or("no message").to_owned();
    if line.chars().count() > 200 {
        line = line.chars().take(199).collect::<String>() + "…";
    }
    line
}

/// `SystemTime` seconds since the epoch → `2026-12-03T17:58:01Z` (UTC, no leap seconds,
/// as the kernel counts).
pub(crate) fn utc_date(unix_seconds: u64) -> String {
    let (days, rest) = (unix_seconds / 86_400, unix_seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
