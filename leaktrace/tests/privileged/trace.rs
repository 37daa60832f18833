//! Privileged tests: the real eBPF programs tracing real processes with known answers.

use std::{process::Command, time::Duration};

use leaktrace_supervisor::{Input, Supervised};

use crate::common::*;

#[test]
fn exact_leak_is_attributed_to_its_function_and_caller() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("leak", &[]);
    assert_eq!(snapshot["schema"], "leaktrace/1");
    assert_eq!(snapshot["complete"], true);
    let process = only_process(&snapshot);
    assert_eq!(process["alive"], false);
    assert_eq!(process["exit"]["code"], 0);

    let leak_sites: Vec<_> = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| function_names(s).contains(&"leak_exactly"))
        .collect();
    assert_eq!(leak_sites.len(), 1, "one call site leaks: {leak_sites:#?}");
    let site = leak_sites[0];
    assert_eq!(site["outstanding_bytes"], 500 * 100);
    assert_eq!(site["outstanding_count"], 500);
    assert_eq!(site["allocated_count"], 500);
    assert_eq!(site["freed_count"], 0);
    // The allocator's immediate caller is the first frame, then its caller.
    let names = function_names(site);
    assert_eq!(&names[..2], &["leak_exactly", "main"], "{names:?}");
    let first = &site["frames"][0];
    assert!(
        first["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("alloc_patterns.c")),
        "{first}"
    );
    assert!(first["line"].as_u64().is_some_and(|l| l > 0));
    assert!(first["module"]
        .as_str()
        .is_some_and(|m| m.contains("alloc_patterns")));
    assert!(
        first["build_id"].as_str().is_some_and(|b| b.len() >= 16),
        "{first}"
    );
    assert!(site["oldest_age_s"].as_f64().is_some_and(|age| age > 0.0));
    // It is the largest site.
    assert_eq!(process["sites"][0]["id"], site["id"]);

    // The churn site allocated and freed everything.
    assert_eq!(totals_for(process, "churn_temporaries"), (0, 0, 1000, 1000));
    let counters = &process["counters"];
    assert_eq!(counters["dropped_allocations"], 0);
    assert_eq!(counters["stack_errors"], 0);
    assert_eq!(counters["lost_events"], 0);
    assert_eq!(counters["unknown_frees"], 0);
    // Process totals are the sum of its sites.
    let sum: u64 = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| s["outstanding_bytes"].as_u64().expect("u64"))
        .sum();
    assert_eq!(process["outstanding_bytes"].as_u64(), Some(sum));
}

/// `--sample-bytes`: only some allocations' stacks are walked, yet every total per caller stays
/// exact (the unsampled ones are counted under their caller and shared among its stacks).
#[test]
fn sampled_stacks_keep_exact_totals_per_caller() {
    if !privileged() {
        return;
    }
    // A mean gap of 4 KiB over 50,000 leaked bytes: about a dozen of the 500 blocks (and some of
    // the churn) get their stack walked.
    let snapshot = trace_fixture("leak", &["--sample-bytes", "4096"]);
    let process = only_process(&snapshot);
    let leak_sites: Vec<_> = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| function_names(s).first() == Some(&"leak_exactly"))
        .collect();
    assert_eq!(
        leak_sites.len(),
        1,
        "one caller, one stack: {leak_sites:#?}"
    );
    let site = leak_sites[0];
    assert_eq!(site["outstanding_bytes"], 500 * 100);
    assert_eq!(site["outstanding_count"], 500);
    assert_eq!(site["allocated_count"], 500);
    // The stack was sampled, so the site has its full stack, not its caller alone.
    assert_eq!(&function_names(site)[..2], &["leak_exactly", "main"]);
    assert_eq!(totals_for(process, "churn_temporaries"), (0, 0, 1000, 1000));
    assert_eq!(process["counters"]["lost_events"], 0);
    assert_eq!(process["counters"]["stack_errors"], 0);

    // With a mean gap of 1 TiB no stack is walked: the caller alone names the site, and the
    // totals are still exact.
    let snapshot = trace_fixture("leak", &["--sample-bytes", "1099511627776"]);
    let process = only_process(&snapshot);
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| function_names(s).first() == Some(&"leak_exactly"))
        .expect("leak site");
    assert_eq!(function_names(site), ["leak_exactly"], "{site:#}");
    assert_eq!(site["outstanding_bytes"], 500 * 100);
    assert_eq!(site["outstanding_count"], 500);
}

#[test]
fn every_function_of_the_malloc_family_has_exact_semantics() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("family", &[]);
    let process = only_process(&snapshot);
    let expected: &[(&str, u64, u64)] = &[
        ("f_calloc", 1000, 1),
        ("f_realloc_grow", 5000, 1),
        ("f_realloc_shrink", 100, 1),
        ("f_realloc_move", 100_100, 2),
        ("f_realloc_null", 300, 1),
        ("f_realloc_zero", 0, 0),
        ("f_realloc_fail", 200, 1),
        ("f_reallocarray", 970, 3),
        ("f_posix_memalign", 1000, 1),
        ("f_aligned_alloc", 640, 1),
        ("f_memalign", 1280, 1),
        ("f_valloc", 5000, 1),
        ("f_pvalloc", 8192, 1),
    ];
    for (function, bytes, count) in expected {
        let (outstanding, blocks, ..) = totals_for(process, function);
        assert_eq!((outstanding, blocks), (*bytes, *count), "{function}");
    }
    // realloc moves free the old block; the zero-size realloc freed its block.
    assert_eq!(totals_for(process, "f_realloc_move").3, 1);
    assert_eq!(totals_for(process, "f_realloc_zero"), (0, 0, 1, 1));
    // free(NULL), failed calls and internal nesting (reallocarray -> realloc, memalign -> malloc)
    // leave no trace in the error counters.
    let counters = &process["counters"];
    assert_eq!(counters["unknown_frees"], 0, "{counters}");
    assert_eq!(counters["lost_events"], 0, "{counters}");
    assert_eq!(counters["dropped_allocations"], 0, "{counters}");
    let hooked: Vec<&str> = process["hooked_functions"]
        .as_array()
        .expect("hooked")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for f in [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "free",
    ] {
        assert!(hooked.contains(&f), "{f} not hooked: {hooked:?}");
    }
}

#[test]
fn cross_thread_frees_are_exact() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("threads", &[]);
    let process = only_process(&snapshot);
    // 4 threads x 1000 blocks of 16*(t+1) bytes; each thread frees 900 of its neighbour's.
    let (bytes, count, allocated, freed) = totals_for(process, "thread_alloc");
    assert_eq!(bytes, 100 * (16 + 32 + 48 + 64));
    assert_eq!(count, 400);
    assert_eq!(allocated, 4000);
    assert_eq!(freed, 3600);
    assert_eq!(process["counters"]["lost_events"], 0);
    assert_eq!(process["counters"]["dropped_allocations"], 0);
}

#[test]
fn launch_mode_sees_allocations_made_before_main() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("ctor", &[]);
    let process = only_process(&snapshot);
    assert_eq!(totals_for(process, "allocate_before_main").0, 4242);
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| top_function(s) == Some("allocate_before_main"))
        .expect("constructor site");
    assert!(function_names(site).contains(&"before_main"), "{site:#}");
}

#[test]
fn attaching_to_a_running_process_counts_earlier_blocks_as_unknown_frees() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let mut target = Supervised::spawn(
        "fixture",
        Command::new(&fixture).arg("attach"),
        Input::Piped,
    )
    .expect("start fixture");
    let first_line = |l: &str| Some(l.to_string());
    let line = target
        .wait_stdout(Duration::from_secs(30), "ready line", first_line)
        .expect("ready line");
    assert!(line.starts_with("ready"), "{line}");
    let target_pid = target.pid();
    let pid = target_pid.to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("attach.json");
    let mut run = Run::start(&[
        "--pid",
        &pid,
        "--interval",
        "200ms",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    run.wait_for(&format!("tracing pid {pid}"), Duration::from_secs(30));
    // Let the process do its traced work: free the 50 early blocks, leak 10 x 123.
    let mut target_stdin = target.take_stdin().expect("stdin");
    std::io::Write::write_all(&mut target_stdin, b"go\n").expect("release fixture");
    let line = target
        .wait_stdout(Duration::from_secs(30), "done line", first_line)
        .expect("done line");
    assert_eq!(line.trim(), "done");
    std::thread::sleep(Duration::from_millis(300));
    drop(target_stdin);
    let status = target
        .wait_exit(Duration::from_secs(30))
        .expect("fixture exits");
    assert!(status.success());
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));

    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    assert_eq!(process["pid"].as_u64(), Some(u64::from(target_pid)));
    assert_eq!(process["alive"], false);
    assert_eq!(process["counters"]["unknown_frees"], 50);
    assert_eq!(totals_for(process, "late_leak"), (1230, 10, 10, 0));
    assert_eq!(totals_for(process, "free_early"), (0, 0, 0, 0));
    for site in process["sites"].as_array().expect("sites") {
        let allocated = site["allocated_bytes"].as_u64().expect("u64");
        let freed = site["freed_bytes"].as_u64().expect("u64");
        assert!(
            freed <= allocated,
            "a site freed more than it allocated: {site:#}"
        );
    }
}

#[test]
fn json_snapshots_are_never_partial_while_rewritten() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("live.json");
    let reader_path = json.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || {
        let (mut parsed, mut distinct, mut last) = (0u32, 0u32, String::new());
        while !reader_stop.load(std::sync::atomic::Ordering::Relaxed) {
            match std::fs::read_to_string(&reader_path) {
                Ok(text) => {
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("partial or corrupt snapshot ({e}): {text:?}"));
                    validate_schema(&value);
                    parsed += 1;
                    if text != last {
                        distinct += 1;
                        last = text;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
        (parsed, distinct)
    });
    let mut run = Run::start(&[
        "--interval",
        "50ms",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        fixture.to_str().expect("utf-8"),
        "steady",
        "2",
    ]);
    run.wait_for("finished steady", Duration::from_secs(30));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (parsed, distinct) = reader.join().expect("reader thread");
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert!(
        distinct >= 10,
        "only {distinct} distinct snapshots seen ({parsed} reads)"
    );
    // The steady leak: 100 bytes every 10 ms for 2 s.
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    assert_eq!(
        totals_for(only_process(&snapshot), "steady_leak"),
        (200 * 100, 200, 200, 0)
    );
    // The periodic table named the leak while it ran.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("steady_leak (alloc_patterns.c:")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn duration_stops_the_run_and_ends_the_launched_command() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("timed.json");
    let run = Run::start(&[
        "--interval",
        "200ms",
        "--duration",
        "1s",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        fixture.to_str().expect("utf-8"),
        "steady",
        "60",
    ]);
    let started = std::time::Instant::now();
    let (code, lines) = run.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert!(started.elapsed() < Duration::from_secs(15));
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    let process = only_process(&snapshot);
    assert_eq!(snapshot["complete"], true);
    assert_eq!(
        process["alive"], false,
        "the launched command is ended with the run"
    );
    let (bytes, count, ..) = totals_for(process, "steady_leak");
    assert!(count > 20 && bytes == count * 100, "{bytes} {count}");
}

#[test]
fn a_rolling_series_keeps_the_newest_snapshots_whole() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let series = dir.path().join("series");
    let mut run = Run::start(&[
        "--interval",
        "100ms",
        "--snapshot-every",
        "200ms",
        "--snapshot-dir",
        series.to_str().expect("utf-8"),
        "--keep",
        "3",
        "--",
        fixture.to_str().expect("utf-8"),
        "steady",
        "2",
    ]);
    run.wait_for("finished steady", Duration::from_secs(30));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let mut files: Vec<_> = std::fs::read_dir(&series)
        .expect("series dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let parsed: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).expect("read")).expect("parses"))
        .collect();
    for snapshot in &parsed {
        validate_schema(snapshot);
    }
    assert_eq!(
        parsed[2]["complete"], true,
        "the newest is the final snapshot"
    );
    let durations: Vec<f64> = parsed
        .iter()
        .map(|s| s["duration_s"].as_f64().expect("f64"))
        .collect();
    assert!(durations.windows(2).all(|w| w[0] < w[1]), "{durations:?}");
    assert_eq!(
        totals_for(only_process(&parsed[2]), "steady_leak"),
        (200 * 100, 200, 200, 0)
    );
}
