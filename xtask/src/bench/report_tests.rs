use super::*;

fn sample() -> Report {
    let mut overlay = Figures::new("overlay");
    overlay
        .add("TCP across hosts", Some(9.0), "Gbit/s", Better::Higher)
        .against("kernel VXLAN", Some(10.0));
    overlay
        .add("ping rtt", Some(50.0), "µs", Better::Lower)
        .against("kernel VXLAN", Some(40.0));
    overlay
        .add("UDP delivered", None, "kpps", Better::Higher)
        .against("kernel VXLAN", Some(300.0));
    let mut gossip = Figures::new("gossip");
    gossip.add(
        "change visible on all, p99",
        Some(123.4),
        "ms",
        Better::Lower,
    );
    Report {
        date: utc_date(1_796_320_681),
        machine: Machine {
            kernel: "6.1.0-test".to_owned(),
            cpu_model: "Test CPU @ 2.0GHz".to_owned(),
            cpus: 2,
            memory_mib: 8000,
        },
        commit: "abc1234".to_owned(),
        load_average: (1.5, 2.25),
        benches: vec![
            BenchRun {
                bench: "overlay".to_owned(),
                command: "cargo xtask bench overlay".to_owned(),
                seconds: 60.0,
                failed: None,
                figures: overlay.into_vec(),
            },
            BenchRun {
                bench: "services".to_owned(),
                command: "cargo xtask bench services".to_owned(),
                seconds: 3.0,
                failed: Some(one_line(
                    "waiting for web running: timed out after 60s\nss:\nmore lines",
                )),
                // A failed bench's figures are never shown, even if it returned some.
                figures: vec![Figure::new("services", "x", Some(1.0), "s", Better::Lower)],
            },
            BenchRun {
                bench: "gossip".to_owned(),
                command: "cargo xtask bench gossip".to_owned(),
                seconds: 10.0,
                failed: None,
                figures: gossip.into_vec(),
            },
        ],
    }
}

#[test]
fn ratio_is_value_over_reference_when_both_were_measured() {
    assert_eq!(ratio(Some(9.0), Some(10.0)), Some(0.9));
    assert_eq!(ratio(None, Some(10.0)), None);
    assert_eq!(ratio(Some(9.0), None), None);
    assert_eq!(ratio(Some(9.0), Some(0.0)), None);
    let mut f = Figure::new("b", "n", Some(f64::NAN), "x", Better::Higher);
    assert_eq!(f.value, None, "NaN is not a measurement");
    f.against("r", Some(2.0));
    assert_eq!(f.ratio, None);
    let mut f = Figure::new("b", "n", Some(3.0), "x", Better::Higher);
    f.against("r", Some(f64::INFINITY));
    assert_eq!(f.reference.as_ref().unwrap().value, None);
    assert_eq!(f.ratio, None);
}

#[test]
fn table_has_one_row_per_figure_and_one_per_failed_bench() {
    let table = sample().table();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("bench"), "{table}");
    assert!(lines[0].contains("reference") && lines[0].ends_with("ratio"));
    assert!(
        lines[1].contains("TCP across hosts")
            && lines[1].contains("9 Gbit/s")
            && lines[1].contains("10 Gbit/s (kernel VXLAN)")
            && lines[1].ends_with("0.90× ↑"),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with("1.25× ↓"), "{}", lines[2]);
    // Not measured: no number, no ratio.
    assert!(
        lines[3].contains("not measured") && lines[3].ends_with("n/a"),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        [
            "services", "failed:", "waiting", "for", "web", "running:", "timed", "out", "after",
            "60s"
        ]
    );
    assert!(!table.contains("more lines"));
    assert!(lines[5].contains("123 ms ↓"), "{}", lines[5]);
    assert!(table.contains(
        "Measured 2026-12-03 17:58:01 UTC on Linux 6.1.0-test, 2 × Test CPU @ 2.0GHz, 7.8 GiB memory; commit abc1234"
    ), "{table}");
    // Columns line up: every row's ratio column ends at the same place or is empty.
    let ends: Vec<usize> = lines[..3].iter().map(|l| l.chars().count()).collect();
    assert_eq!(ends[1], ends[2], "{table}");
}

#[test]
fn markdown_table_has_the_header_the_rows_and_the_machine() {
    let md = sample().markdown();
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines[0].starts_with("Measured 2026-12-03"));
    assert_eq!(lines[2], "| bench | figure | value | reference | ratio |");
    assert_eq!(lines[3], "|---|---|--:|--:|--:|");
    assert_eq!(
        lines[4],
        "| overlay | TCP across hosts | 9 Gbit/s | 10 Gbit/s (kernel VXLAN) | 0.90× ↑ |"
    );
    assert_eq!(
        lines[7],
        "| services | failed: waiting for web running: timed out after 60s |  |  |  |"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with('|')).count(), 2 + 5);
}

#[test]
fn json_round_trips_and_names_its_fields() {
    let report = sample();
    let text = serde_json::to_string_pretty(&report).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["date"], "2026-12-03T17:58:01Z");
    assert_eq!(v["machine"]["cpus"], 2);
    assert_eq!(v["benches"][0]["figures"][0]["ratio"], 0.9);
    assert_eq!(v["benches"][0]["figures"][0]["better"], "higher");
    assert_eq!(
        v["benches"][0]["figures"][2]["value"],
        serde_json::Value::Null
    );
    assert!(v["benches"][1]["failed"]
        .as_str()
        .unwrap()
        .starts_with("waiting for web"));
    assert_eq!(report.failed().len(), 1);
}

#[test]
fn machine_is_read_from_proc_without_the_hostname() {
    let cpuinfo = "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 2.0GHz\n";
    let meminfo = "MemTotal:        8048576 kB\nMemFree:  1 kB\n";
    let m = Machine::parse("6.1.0-test\n", cpuinfo, meminfo);
    assert_eq!(m.kernel, "6.1.0-test");
    assert_eq!(m.cpus, 2);
    assert_eq!(m.cpu_model, "Test CPU @ 2.0GHz");
    assert_eq!(m.memory_mib, 7859);
    let empty = Machine::parse("", "", "");
    assert_eq!((empty.cpus, empty.memory_mib), (0, 0));
}

#[test]
fn dates_are_utc_calendar_dates() {
    assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_date(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc_date(1_796_320_681), "2026-12-03T17:58:01Z");
}

#[test]
fn numbers_keep_about_three_figures() {
    assert_eq!(number(123456.7), "123457");
    assert_eq!(number(12.34), "12.3");
    assert_eq!(number(1.234), "1.23");
    assert_eq!(number(0.01234), "0.012");
    assert_eq!(number(3.0), "3");
    assert_eq!(number(0.0), "0");
    assert_eq!(one_line(""), "no message");
    assert_eq!(one_line(&"x".repeat(300)).chars().count(), 200);
}
