//! Privileged tests of the growth slopes: fixtures whose leak per byte of input is known.

use std::{io::Write as _, time::Duration};

use crate::common::*;

fn site_of<'a>(process: &'a serde_json::Value, function: &str) -> &'a serde_json::Value {
    process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| top_function(s) == Some(function))
        .unwrap_or_else(|| panic!("no site for {function}: {process:#}"))
}

#[test]
fn leak_per_mib_processed_is_measured_and_classed_a_leak() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("perinput.json");
    let mut run = Run::start(&[
        "--interval",
        "200ms",
        "--processed",
        "read",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        fixture.to_str().expect("utf-8"),
        "perinput",
    ]);
    run.wait_for("tracing pid", Duration::from_secs(30));
    // Feed 4 KiB every 10 ms for 4 s through the pipe (1.6 MiB in all); the fixture leaks a
    // quarter of every byte it reads: 262144 bytes per MiB processed.
    let mut stdin = run.take_stdin();
    let chunk = vec![b'x'; 4096];
    let mut fed = 0usize;
    let start = std::time::Instant::now();
    for i in 0..400u32 {
        stdin.write_all(&chunk).expect("feed");
        fed += chunk.len();
        let next = Duration::from_millis(10) * (i + 1);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    drop(stdin);
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    assert!(
        process["bytes_processed"]
            .as_u64()
            .is_some_and(|b| b >= fed as u64),
        "processed {} < fed {fed}",
        process["bytes_processed"]
    );

    let leak = site_of(process, "leak_per_input");
    assert_eq!(leak["outstanding_bytes"].as_u64(), Some(fed as u64 / 4));
    let growth = &leak["growth"];
    let per_mib = growth["bytes_per_mib_processed"]
        .as_f64()
        .expect("slope per MiB");
    let expected = 0.25 * 1_048_576.0;
    assert!(
        (per_mib - expected).abs() / expected < 0.05,
        "slope {per_mib:.0} B/MiB, expected {expected:.0} within 5%: {growth}"
    );
    assert!(
        growth["r2_processed"].as_f64().is_some_and(|r2| r2 > 0.95),
        "{growth}"
    );
    assert!(
        growth["bytes_per_min"].as_f64().is_some_and(|b| b > 0.0),
        "{growth}"
    );
    assert_eq!(growth["class"], "leak_suspect", "{growth}");
    assert_eq!(leak["leak_rank"], 1, "the leak ranks first");

    let churn = site_of(process, "churn_temporaries");
    assert_eq!(churn["outstanding_bytes"], 0);
    assert_eq!(churn["growth"]["class"], "churn", "{}", churn["growth"]);
    // The headless table shows the ranking with slopes.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("LEAK?") && l.contains("leak_per_input")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn a_cache_that_stops_growing_is_a_plateau_not_a_leak() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture_with_interval("cache", "200ms");
    let process = only_process(&snapshot);
    let cache = site_of(process, "cache_insert");
    assert_eq!(cache["outstanding_bytes"], 300 * 1000);
    assert_eq!(cache["growth"]["class"], "plateau", "{}", cache["growth"]);
}
