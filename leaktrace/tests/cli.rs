//! Bad input: one clear line on stderr, a non-zero exit, no panic, nothing left attached. The
//! cases that need root are in `privileged/cli.rs`.
mod common;

use common::*;

#[test]
fn help_names_the_two_ways_to_trace() {
    let (code, stdout, _) = leaktrace(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--pid"), "{stdout}");
    assert!(stdout.contains("COMMAND"), "{stdout}");
    assert!(stdout.contains("--json"), "{stdout}");
}

#[test]
fn modes_that_cannot_work_are_refused_in_one_line() {
    // System-wide has no uprobes to be exact with.
    assert_one_line_error(&["--mode", "exact"], "--mode exact needs --pid");
    // Growth mode has no uprobes whose stacks could be sampled.
    assert_one_line_error(
        &["--mode", "growth", "--sample-bytes", "4096", "--pid", "1"],
        "--sample-bytes samples exact mode's stacks",
    );
    let (code, _, stderr) = leaktrace(&["--sample-bytes", "0", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    // Bursts belong to growth mode; a budget is a percentage.
    assert_one_line_error(
        &["--overhead-budget", "2", "--pid", "1"],
        "--overhead-budget sets growth mode's bursts",
    );
    let (code, _, stderr) =
        leaktrace(&["--mode", "growth", "--overhead-budget", "150", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not between 0 and 100"), "{stderr}");
    let (code, _, stderr) = leaktrace(&["--mode", "fast", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("exact") && stderr.contains("growth"),
        "{stderr}"
    );
}

#[test]
fn bad_durations_are_rejected_by_the_parser() {
    let (code, _, stderr) = leaktrace(&["--interval", "soon", "--pid", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a valid duration"), "{stderr}");
}

#[test]
fn listen_addresses_are_ip_and_port() {
    let (code, _, stderr) = leaktrace(&["--listen", "localhost:9464", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not IP:PORT"), "{stderr}");
    // The options of --listen need it.
    let (code, _, stderr) = leaktrace(&["--listen-token", "/nonexistent", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--listen <ADDR>"), "{stderr}");
}
