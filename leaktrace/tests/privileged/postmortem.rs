//! A traced process killed with SIGKILL leaves a complete final snapshot, which the post-mortem
//! report reads.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

#[test]
fn sigkill_of_the_traced_command_leaves_a_final_snapshot() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("killed.json");
    let json_arg = json.to_str().expect("utf-8 path");
    let run = Run::start(&[
        "--interval",
        "300ms",
        "--json",
        json_arg,
        "--",
        fixture.to_str().expect("utf-8 path"),
        "steady",
        "30",
    ]);
    let leaking = |snapshot: &Value| {
        snapshot["processes"][0]["sites"]
            .as_array()
            .is_some_and(|sites| {
                sites.iter().any(|s| {
                    top_function(s) == Some("steady_leak")
                        && s["outstanding_bytes"].as_u64().is_some_and(|b| b > 0)
                })
            })
    };
    let before = wait_for_snapshot(&json, Duration::from_secs(30), leaking);
    let pid = before["processes"][0]["pid"].as_i64().expect("pid") as libc::pid_t;
    let (leaked_before, ..) = totals_for(only_process(&before), "steady_leak");
    // SAFETY: sending a signal to the fixture leaktrace launched; no memory is involved.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill({pid}, SIGKILL) failed");

    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    let bytes = std::fs::read(&json).expect("the final snapshot exists");
    let after: Value = serde_json::from_slice(&bytes).expect("the final snapshot parses");
    validate_schema(&after);
    assert_eq!(after["complete"], json!(true), "{after:#}");
    let process = only_process(&after);
    assert_eq!(process["pid"].as_i64(), Some(i64::from(pid)));
    assert_eq!(process["alive"], json!(false), "{process:#}");
    assert_eq!(process["exit"], json!({"signal": 9}), "{process:#}");
    // The leak as it was when the process died: 100-byte blocks, at least as many as before.
    let (bytes_leaked, blocks, ..) = totals_for(process, "steady_leak");
    assert!(
        bytes_leaked >= leaked_before,
        "{bytes_leaked} < {leaked_before}"
    );
    assert_eq!(bytes_leaked, blocks * 100);
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| top_function(s) == Some("steady_leak"))
        .expect("steady_leak site");
    let frame = &site["frames"][0];
    assert_eq!(frame["function"], json!("steady_leak"), "{site:#}");
    assert!(
        frame["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("alloc_patterns.c")),
        "{site:#}"
    );
    assert!(frame["line"].as_u64().is_some_and(|l| l > 0), "{site:#}");
    assert!(
        frame["build_id"].is_string() && frame["offset"].is_u64(),
        "{site:#}"
    );
    assert!(function_names(site).contains(&"main"), "{site:#}");

    // And the post-mortem report reads it.
    let report = succeed(&["report", json_arg]);
    assert!(report.contains("killed by signal 9 (SIGKILL"), "{report}");
    assert!(report.contains("#1 steady_leak"), "{report}");
}
