//! Load: a system-wide run while a thousand processes start and exit stays bounded, exits at
//! once on SIGINT and leaves a valid, bounded final snapshot.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::*;

#[test]
fn a_thousand_short_processes_leave_a_bounded_run_and_snapshot() {
    if !privileged() {
        return;
    }
    const PROCESSES: usize = 1000;
    const TOP: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("churn.json");
    let mut run = Run::start(&[
        "--headless",
        "--interval",
        "500ms",
        "--top-processes",
        &TOP.to_string(),
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    run.wait_for(
        "watching the heap syscalls of every process",
        Duration::from_secs(60),
    );
    // Each a shell that execs nothing and allocates a little: heap syscalls, exec, exit.
    for _ in 0..PROCESSES / 10 {
        let children: Vec<_> = (0..10)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "x=$(echo 1); echo $x >/dev/null"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start sh")
            })
            .collect();
        for mut child in children {
            let _ = child.wait();
        }
    }
    let wait_for_own = |s: &Value| s["self"]["rss_bytes"].as_u64().is_some();
    let running = wait_for_snapshot(&json, Duration::from_secs(60), wait_for_own);
    let asked = Instant::now();
    run.signal(libc::SIGINT);
    let (code, lines) = run.finish(Duration::from_secs(60));
    let exit = asked.elapsed();
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    assert!(lines.iter().all(|l| !l.contains("panicked")), "{lines:?}");
    let bytes = std::fs::read(&json).expect("the final snapshot exists");
    let last: Value = serde_json::from_slice(&bytes).expect("the final snapshot parses");
    validate_schema(&last);
    assert_eq!(last["complete"], true);
    for snapshot in [&running, &last] {
        // In full: the top processes only; the others in one summary.
        let rows = snapshot["processes"].as_array().expect("processes").len();
        assert!(rows <= TOP, "{rows} processes in full");
        let others = &snapshot["other_processes"];
        assert!(others["processes"].is_u64(), "{others}");
        // Exited ones are remembered a while, never all of them.
        assert!(
            others["exited"].as_u64().is_some_and(|n| n < 200),
            "{others}"
        );
    }
    // Bounded: a thousand processes do not cost leaktrace more than a few MB of JSON or
    // 400 MB of memory (its own figure, as the snapshot reports it).
    assert!(bytes.len() < 8 << 20, "{} bytes", bytes.len());
    let rss = last["self"]["rss_bytes"].as_u64().expect("own RSS");
    assert!(rss < 400 << 20, "RSS {rss}");
    assert!(last["self"]["cpu_seconds"]
        .as_f64()
        .is_some_and(|s| s > 0.0));
    // Exits promptly even with everything to detach (generous: the machine may be busy).
    assert!(exit < Duration::from_secs(20), "exit took {exit:?}");
}
