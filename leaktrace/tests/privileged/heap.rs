//! Privileged tests of the heap-syscall view: the program break, anonymous mappings and
//! malloc's mmap fallback, checked against strace's record of the same fixture.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use leaktrace_supervisor::{Input, Supervised};
use serde_json::Value;

use crate::common::*;

/// What strace says the fixture's heap syscalls were: (failed brk calls, fallback mmap sizes:
/// anonymous mmaps made right after a failed brk, large anonymous mmaps).
fn strace_ground_truth(mode: &str) -> (u64, Vec<u64>, Vec<u64>) {
    let strace = require_tool("strace", "strace");
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("strace.log");
    let status = Command::new(strace)
        .args(["-f", "-e", "trace=brk,mmap", "-o"])
        .arg(&log)
        .arg(&fixture)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("strace");
    assert!(status.success());
    let text = std::fs::read_to_string(&log).expect("strace log");
    let (mut failures, mut fallbacks, mut large) = (0, Vec::new(), Vec::new());
    let mut after_failed_brk = false;
    for line in text.lines() {
        if let Some(call) = line.split_once("brk(").map(|(_, rest)| rest) {
            let requested = call.split(')').next().unwrap_or("");
            let result = call.rsplit("= ").next().unwrap_or("").trim();
            after_failed_brk = requested != "NULL" && requested != result;
            failures += u64::from(after_failed_brk);
        } else if line.contains("mmap(NULL, ")
            && line.contains("MAP_ANONYMOUS")
            && !line.contains("PROT_NONE")
        {
            let len: u64 = line
                .split("mmap(NULL, ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .expect("mmap length");
            if after_failed_brk {
                fallbacks.push(len);
            } else if len >= 1 << 20 {
                large.push(len);
            }
            after_failed_brk = false;
        }
    }
    (failures, fallbacks, large)
}

fn site_with<'a>(process: &'a Value, function: &str) -> Option<&'a Value> {
    process["sites"]
        .as_array()?
        .iter()
        .find(|s| function_names(s).contains(&function))
}

#[test]
fn fallback_mmaps_after_failed_brk_are_counted_and_attributed() {
    if !privileged() {
        return;
    }
    let (failures, fallbacks, _) = strace_ground_truth("fallback");
    assert!(
        failures > 0 && !fallbacks.is_empty(),
        "the fixture must provoke the fallback"
    );
    let snapshot = trace_fixture("fallback", &[]);
    let process = only_process(&snapshot);
    let heap = &process["heap"];
    assert_eq!(heap["brk_failures"].as_u64(), Some(failures), "{heap:#}");
    assert_eq!(
        heap["fallback_mmaps"]["count"].as_u64(),
        Some(fallbacks.len() as u64),
        "{heap:#}"
    );
    assert_eq!(
        heap["fallback_mmaps"]["bytes"].as_u64(),
        Some(fallbacks.iter().sum::<u64>())
    );
    // The chunk sizes, in the order glibc used them.
    let mut expected_sizes: Vec<u64> = Vec::new();
    for size in &fallbacks {
        if !expected_sizes.contains(size) {
            expected_sizes.push(*size);
        }
    }
    let sizes: Vec<u64> = heap["fallback_mmaps"]["chunk_sizes"]
        .as_array()
        .expect("chunk sizes")
        .iter()
        .map(|c| c["bytes"].as_u64().expect("bytes"))
        .collect();
    assert_eq!(sizes, expected_sizes);
    // Attributed to the allocation site in fill_heap, not to a glibc frame.
    let site = site_with(process, "fill_heap").expect("fill_heap site");
    assert_eq!(
        site["fallback_mmap_count"].as_u64(),
        Some(fallbacks.len() as u64)
    );
    assert_eq!(
        site["fallback_mmap_bytes"].as_u64(),
        Some(fallbacks.iter().sum::<u64>())
    );
    assert_eq!(site["outstanding_bytes"], 2048 * 1000);
}

#[test]
fn without_the_hole_there_is_no_fallback() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("nohole", &[]);
    let heap = &only_process(&snapshot)["heap"];
    assert_eq!(heap["brk_failures"], 0, "{heap:#}");
    assert_eq!(heap["fallback_mmaps"]["count"], 0, "{heap:#}");
    assert!(
        heap["brk_bytes"].as_u64().is_some_and(|b| b >= 2048 * 1000),
        "{heap:#}"
    );
}

#[test]
fn a_large_malloc_is_a_direct_mmap_of_its_caller_until_freed() {
    if !privileged() {
        return;
    }
    let (_, _, large) = strace_ground_truth("bigalloc");
    assert_eq!(large.len(), 1, "{large:?}");
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("big.json");
    let mut run = Run::start(&[
        "--interval",
        "200ms",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        fixture.to_str().expect("utf-8"),
        "bigalloc",
    ]);
    run.wait_for("allocated big", Duration::from_secs(30));
    // The first snapshot that holds the block (one interval or more later on a busy machine).
    let live = wait_for_snapshot(&json, Duration::from_secs(30), |s| {
        s["processes"][0]["sites"].as_array().is_some_and(|sites| {
            sites.iter().any(|site| {
                function_names(site).contains(&"big_alloc")
                    && site["direct_mmap_bytes"].as_u64().is_some_and(|b| b > 0)
            })
        })
    });
    let process = only_process(&live);
    let site = site_with(process, "big_alloc").expect("big_alloc site");
    assert_eq!(
        site["direct_mmap_bytes"].as_u64(),
        Some(large[0]),
        "{site:#}"
    );
    assert_eq!(site["outstanding_bytes"], 1 << 20);
    let mapped_before = process["heap"]["anon_mmap_outstanding_bytes"]
        .as_u64()
        .expect("u64");

    run.send_line();
    run.wait_for("finished bigalloc", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(400));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let last: Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    validate_schema(&last);
    let process = only_process(&last);
    let direct =
        site_with(process, "big_alloc").map_or(0, |s| s["direct_mmap_bytes"].as_u64().unwrap_or(0));
    assert_eq!(direct, 0, "freeing the block returns its bytes");
    let mapped_after = process["heap"]["anon_mmap_outstanding_bytes"]
        .as_u64()
        .expect("u64");
    assert_eq!(mapped_before - mapped_after, large[0]);
}

#[test]
fn partial_munmap_and_mremap_keep_mapped_bytes_exact() {
    if !privileged() {
        return;
    }
    let snapshot = trace_fixture("mapops", &[]);
    let process = only_process(&snapshot);
    // SAFETY: no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    let site = site_with(process, "map_pieces").expect("map_pieces site");
    // 10 pages, minus 2 from the middle, first piece grown 4 -> 7, second shrunk 4 -> 2.
    assert_eq!(site["anon_mmap_bytes"].as_u64(), Some(9 * page), "{site:#}");
    assert_eq!(site["direct_mmap_bytes"], 0);
}

#[test]
fn system_wide_mode_lists_a_process_started_later_and_marks_it_exited() {
    if !privileged() {
        return;
    }
    let (failures, fallbacks, _) = strace_ground_truth("fallback");
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("system.json");
    let mut run = Run::start(&[
        "--interval",
        "200ms",
        // Every process in full: on a busy machine the fixture need not be among the top 20.
        "--top-processes",
        "100000",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    run.wait_for(
        "watching the heap syscalls of every process",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut child = Supervised::spawn(
        "fixture",
        Command::new(&fixture).arg("fallback"),
        Input::Piped,
    )
    .expect("start fixture");
    let pid = child.pid();
    // Kept alive after its work, as a service would be: heap events are unwound and symbolized
    // while the process and its mappings are there (within 100 ms on an idle machine; the test
    // waits for a snapshot that attributes them, however busy the machine is).
    child
        .wait_stdout(Duration::from_secs(30), "`finished fallback` line", |l| {
            l.contains("finished fallback").then_some(())
        })
        .unwrap_or_else(|e| panic!("the fixture ended before finishing its work: {e}"));
    wait_for_snapshot(&json, Duration::from_secs(30), |s| {
        s["processes"].as_array().is_some_and(|rows| {
            rows.iter()
                .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
                .flat_map(|p| p["sites"].as_array().into_iter().flatten())
                .any(|site| {
                    site["fallback_mmap_count"].as_u64() == Some(fallbacks.len() as u64)
                        && function_names(site).contains(&"fill_heap")
                })
        })
    });
    child.close_stdin();
    let status = child
        .wait_exit(Duration::from_secs(30))
        .expect("fixture exits");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(800));
    run.signal(libc::SIGINT);
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    validate_schema(&snapshot);
    // System-wide runs in growth mode: every process's heap growth comes with its stack.
    assert_eq!(snapshot["mode"], "growth");
    assert_eq!(snapshot["system_wide"], true);
    let row = snapshot["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not listed"));
    assert_eq!(row["alive"], false);
    assert_eq!(row["exact"], false);
    assert!(
        row["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("alloc_patterns")),
        "{row}"
    );
    let heap = &row["heap"];
    assert_eq!(heap["brk_failures"].as_u64(), Some(failures), "{heap:#}");
    // Without uprobes the fallback is recognized by the thread's order of syscalls.
    assert_eq!(
        heap["fallback_mmaps"]["count"].as_u64(),
        Some(fallbacks.len() as u64),
        "{heap:#}"
    );
    assert!(heap["anon_mmap_outstanding_bytes"]
        .as_u64()
        .is_some_and(|b| b >= fallbacks.iter().sum::<u64>()));
    // The fallback chunks are attributed to the stack that made them, unwound through glibc.
    let fallback_site = row["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["fallback_mmap_count"].as_u64().unwrap_or(0) > 0)
        .unwrap_or_else(|| panic!("no site holds the fallbacks: {row:#}"));
    assert_eq!(
        fallback_site["fallback_mmap_count"].as_u64(),
        Some(fallbacks.len() as u64)
    );
    assert!(
        function_names(fallback_site).contains(&"fill_heap"),
        "{fallback_site:#}"
    );
}
