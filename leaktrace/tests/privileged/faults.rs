//! Faults: the target killed while leaktrace reads it, and the heap ring buffer overflowing.
//! Neither may make leaktrace panic, fail, or report a wrong figure without saying so
//! (tests/fixtures/faults.c knows every true figure).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::common::*;

fn faults() -> PathBuf {
    fixture("faults", &[])
}

/// What must stay the same of a frame once its process is gone: where it is (module, file
/// offset, build id) and what it is named.
fn frame_identity(site: &Value) -> Vec<Value> {
    site["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            json!([
                f["addr"],
                f["module"],
                f["offset"],
                f["build_id"],
                f["function"],
                f["file"],
                f["line"]
            ])
        })
        .collect()
}

fn site_of<'a>(process: &'a Value, function: &str) -> &'a Value {
    process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| top_function(s) == Some(function))
        .unwrap_or_else(|| panic!("no {function} site: {process:#}"))
}

fn kill(pid: libc::pid_t) {
    // SAFETY: kill(2) has no memory preconditions; `pid` is the fixture leaktrace launched.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill({pid}, SIGKILL) failed");
}

/// Killed while leaktrace keeps reading it (its maps, the module files of a library it maps
/// and unmaps every few ms, its heap events), at a different point of that churn each round:
/// leaktrace exits 0 with a final snapshot, and the leak and its frames are what they were
/// before the kill (module, offset and build id included).
#[test]
fn a_target_killed_while_leaktrace_reads_it_keeps_its_figures_and_frames() {
    if !privileged() {
        return;
    }
    let faults = faults();
    for round in 0..3u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = dir.path().join("killed.json");
        let run = Run::start(&[
            "--interval",
            "200ms",
            "--json",
            json.to_str().expect("utf-8"),
            "--",
            faults.to_str().expect("utf-8"),
            "killed",
        ]);
        let leaked = |s: &Value| {
            s["processes"][0]["sites"].as_array().is_some_and(|sites| {
                sites.iter().any(|site| {
                    top_function(site) == Some("leak_before_kill")
                        && site["outstanding_bytes"] == 50_000
                })
            })
        };
        let before = wait_for_snapshot(&json, Duration::from_secs(60), leaked);
        let pid = before["processes"][0]["pid"].as_i64().expect("pid") as libc::pid_t;
        let frames_before = frame_identity(site_of(only_process(&before), "leak_before_kill"));
        // A different moment of the churn each round (no timing is asserted).
        std::thread::sleep(Duration::from_millis(37 * round + 11));
        kill(pid);
        let (code, lines) = run.finish(Duration::from_secs(60));
        assert_eq!(
            code,
            0,
            "round {round}: leaktrace failed:\n{}",
            lines.join("\n")
        );
        assert!(
            lines.iter().all(|l| !l.contains("panicked")),
            "round {round}: {lines:?}"
        );
        let after: Value = serde_json::from_slice(&std::fs::read(&json).expect("final snapshot"))
            .expect("the final snapshot parses");
        validate_schema(&after);
        assert_eq!(after["complete"], true);
        let process = only_process(&after);
        assert_eq!(process["alive"], false, "{process:#}");
        assert_eq!(process["exit"], json!({"signal": 9}), "{process:#}");
        assert_eq!(
            totals_for(process, "leak_before_kill"),
            (50_000, 500, 500, 0),
            "round {round}"
        );
        let site = site_of(process, "leak_before_kill");
        assert_eq!(
            frame_identity(site),
            frames_before,
            "round {round}: {site:#}"
        );
        // Every frame keeps where it is: the fixture's and libc's frames have a module, an
        // offset and a build id.
        for frame in site["frames"].as_array().expect("frames") {
            assert!(
                frame["module"].is_string() && frame["offset"].is_u64(),
                "{frame:#}"
            );
            assert!(frame["build_id"].is_string(), "{frame:#}");
        }
        assert!(
            function_names(site).contains(&"main"),
            "round {round}: {:?}",
            function_names(site)
        );
    }
}

/// The pid of leaktrace's launched child (from /proc/PID/task/*/children): the one whose
/// name starts with one of `comms` (its calibration children come and go before it, and a
/// child not yet exec'd is named after leaktrace).
fn launched_child(leaktrace: u32, comms: &[&str], within: Duration) -> libc::pid_t {
    let deadline = Instant::now() + within;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{leaktrace}/task")).expect("tasks");
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comms.iter().any(|c| comm.trim_end().starts_with(c)) {
                    return pid.parse().expect("pid");
                }
            }
        }
        assert!(Instant::now() < deadline, "leaktrace launched nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Killed while leaktrace holds it stopped (at its entry point or at an exec) to read its maps
/// and modules and load their unwind tables: leaktrace goes on, says how it ended, and exits
/// 0 with a final snapshot. Both ways in: the program itself, and through `sh -c 'exec ...'`.
#[test]
fn a_target_killed_while_leaktrace_sets_it_up_ends_the_run_cleanly() {
    if !privileged() {
        return;
    }
    let faults = faults();
    let faults = faults.to_str().expect("utf-8");
    let wrapped = format!("exec {faults} killed");
    let commands: [&[&str]; 2] = [&[faults, "killed"], &["sh", "-c", &wrapped]];
    for command in commands {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = dir.path().join("setup.json");
        let mut args = vec![
            "--interval",
            "200ms",
            "--json",
            json.to_str().expect("utf-8"),
            "--",
        ];
        args.extend_from_slice(command);
        let run = Run::start(&args);
        let child = launched_child(run.pid(), &["faults", "sh"], Duration::from_secs(60));
        // Killed at its first stop by leaktrace (or, if that was missed, as soon as seen).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut state = None;
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.trim().chars().next());
            if state == Some('T') || state.is_none() {
                break;
            }
            std::thread::yield_now();
        }
        eprintln!("{command:?}: killed in state {state:?}");
        kill(child);
        let (code, lines) = run.finish(Duration::from_secs(60));
        assert_eq!(
            code,
            0,
            "{command:?}: leaktrace failed:\n{}",
            lines.join("\n")
        );
        assert!(
            lines.iter().all(|l| !l.contains("panicked")),
            "{command:?}: {lines:?}"
        );
        let after: Value = serde_json::from_slice(&std::fs::read(&json).expect("final snapshot"))
            .expect("the final snapshot parses");
        validate_schema(&after);
        assert_eq!(after["complete"], true);
        let process = only_process(&after);
        assert_eq!(process["pid"], child, "{process:#}");
        assert_eq!(process["alive"], false, "{process:#}");
        assert_eq!(process["exit"], json!({"signal": 9}), "{process:#}");
        // Killed before its own code ran: its leak site was never reached.
        assert_eq!(totals_for(process, "leak_before_kill"), (0, 0, 0, 0));
    }
}

/// Far more heap-growth records than the ring buffer holds between two drains (100,000 stack
/// copies of 16 KiB against a 32 MiB buffer): the overflow is counted in `lost_events` and
/// said in the table, every mapping is either seen or counted lost, the regions kept before
/// the flood are exactly right, and the flood's own still-mapped bytes are wrong by at most
/// what was lost.
#[test]
fn a_ring_buffer_overflow_is_counted_and_no_figure_is_silently_wrong() {
    if !privileged() {
        return;
    }
    const KEPT: u64 = 20;
    const FLOOD: u64 = 100_000;
    const REGION: u64 = 64 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("flood.json");
    let faults = faults();
    let flood = FLOOD.to_string();
    let mut run = Run::start(&[
        "--mode",
        "growth",
        "--overhead-budget",
        "0",
        "--interval",
        "300ms",
        "--headless",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        faults.to_str().expect("utf-8"),
        "flood",
        &flood,
    ]);
    run.wait_for("kept", Duration::from_secs(60));
    // The kept regions are in a snapshot before the flood starts.
    let kept_seen = |s: &Value| {
        s["processes"][0]["sites"].as_array().is_some_and(|sites| {
            sites
                .iter()
                .any(|site| function_names(site).contains(&"keep_regions"))
        })
    };
    wait_for_snapshot(&json, Duration::from_secs(60), kept_seen);
    run.send_line();
    run.wait_for("finished flood", Duration::from_secs(120));
    // Drained and sampled once more before it exits.
    std::thread::sleep(Duration::from_millis(700));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    let snapshot: Value = serde_json::from_slice(&std::fs::read(&json).expect("final snapshot"))
        .expect("the final snapshot parses");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    let lost = process["counters"]["lost_events"].as_u64().expect("lost");
    assert!(lost > 0, "no event counted lost: {process:#}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("warning:") && l.contains(&format!("lost events {lost}"))),
        "the table does not say {lost} events were lost:\n{}",
        lines.join("\n")
    );
    let sites = process["sites"].as_array().expect("sites");
    let by_function = |name: &str| -> Vec<&Value> {
        sites
            .iter()
            .filter(|s| function_names(s).contains(&name))
            .collect()
    };
    // Made before the flood, drained before it: exact.
    let kept = by_function("keep_regions");
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0]["outstanding_bytes"], KEPT * REGION, "{:#}", kept[0]);
    assert_eq!(kept[0]["growth_events"], KEPT, "{:#}", kept[0]);
    // The flood: each of its mappings seen or counted lost, never more seen than made; what
    // still looks mapped (an unmap lost) is at most a region per lost record.
    let flooded = by_function("flood_regions");
    let seen: u64 = flooded
        .iter()
        .map(|s| s["growth_events"].as_u64().expect("growth_events"))
        .sum();
    let still_mapped: u64 = flooded
        .iter()
        .map(|s| s["outstanding_bytes"].as_u64().expect("outstanding"))
        .sum();
    assert!(seen <= FLOOD, "{seen} mappings seen of {FLOOD}");
    assert!(
        seen + lost >= FLOOD,
        "{seen} mappings seen and {lost} records lost, of {FLOOD} mappings"
    );
    assert_eq!(still_mapped % REGION, 0, "{still_mapped}");
    assert!(
        still_mapped <= lost * REGION,
        "{still_mapped} bytes still mapped by the flood with {lost} records lost"
    );
}
