//! Bad input that needs root to reach (tracing options, pids, commands): one clear line on
//! stderr, a non-zero exit, no panic, nothing left attached.

use std::process::Command;

use crate::common::*;

#[test]
fn system_wide_with_a_command_is_refused() {
    if !privileged() {
        return;
    }
    assert_one_line_error(
        &["--system-wide", "--", "true"],
        "--system-wide and a command do not go together",
    );
}

#[test]
fn a_nonexistent_pid_is_one_line() {
    if !privileged() {
        return;
    }
    assert_one_line_error(&["--pid", "999999999"], "no process with pid 999999999");
}

#[test]
fn a_command_that_does_not_exist_or_cannot_run_is_one_line() {
    if !privileged() {
        return;
    }
    assert_one_line_error(
        &["--", "leaktrace-no-such-command"],
        "leaktrace-no-such-command: command not found",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let not_exec = dir.path().join("data.txt");
    std::fs::write(&not_exec, "hello").expect("write");
    assert_one_line_error(
        &["--", not_exec.to_str().expect("utf-8")],
        "not an ELF executable",
    );
}

#[test]
fn an_unwritable_json_path_fails_before_tracing() {
    if !privileged() {
        return;
    }
    assert_one_line_error(
        &[
            "--json",
            "/nonexistent-dir/out.json",
            "--pid",
            &std::process::id().to_string(),
        ],
        "cannot write JSON snapshots to /nonexistent-dir/out.json",
    );
}

#[test]
fn without_privileges_the_fix_is_named() {
    if !privileged() {
        return;
    }
    // Drop to nobody (65534) in the child before exec.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(leaktrace_bin())
        .args(["--pid", "1"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root or CAP_BPF"), "{stderr}");
}
