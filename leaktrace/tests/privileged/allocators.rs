//! Allocators beyond the dynamic glibc (issue 16): one workload whose answer is known exactly
//! (tests/fixtures/allocators.c), traced by pid under each allocator leaktrace recognizes, byte
//! for byte per function; a real Redis against its own `used_memory`; a target in its own mount
//! namespace; a process whose allocator leaktrace does not know.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace_supervisor::{Input, Supervised};
use serde_json::Value;

use crate::common::*;

const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const TCMALLOC_MINIMAL: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

/// A library `cargo xtask setup` installs: its absence is a failure saying so.
fn require_library<'a>(path: &'a str, package: &str) -> &'a str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run `cargo xtask setup` (it installs Debian's {package})"
    );
    path
}

/// What one traced run gave: the final snapshot, leaktrace's lines, the fixture's stdout.
struct Traced {
    snapshot: Value,
    leaktrace_lines: Vec<String>,
    fixture_lines: Vec<String>,
}

/// Start `command` (the allocators fixture in `attach` mode, or anything that prints "ready",
/// waits for a line, works, prints "finished" and exits at the next line), attach leaktrace by
/// pid with `options`, let it work, and return the final snapshot.
fn trace_by_pid(command: &mut Command, options: &[&str]) -> Traced {
    let mut target = Supervised::spawn("fixture", command, Input::Piped).expect("start fixture");
    let ready = target
        .wait_stdout(Duration::from_secs(30), "ready line", |l| {
            Some(l.to_string())
        })
        .expect("ready line");
    assert!(ready.starts_with("ready"), "{ready}");
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut args = vec!["--pid", &pid, "--interval", "200ms"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--json", json.to_str().expect("utf-8")]);
    let mut run = Run::start(&args);
    run.wait_for(&format!("pid {pid}"), Duration::from_secs(30));
    target.send_line().expect("release fixture");
    target
        .wait_stdout(Duration::from_secs(60), "finished line", |l| {
            (l == "finished").then_some(())
        })
        .expect("finished line");
    // Two intervals with the process alive: its sites are symbolized while it lives.
    std::thread::sleep(Duration::from_millis(700));
    target.send_line().expect("let the fixture exit");
    assert!(target
        .wait_exit(Duration::from_secs(30))
        .expect("fixture exits")
        .success());
    let fixture_lines: Vec<String> = target.stdout_lines().map(str::to_string).collect();
    let (code, leaktrace_lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "leaktrace failed:\n{}", leaktrace_lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("final JSON")).expect("JSON parses");
    validate_schema(&snapshot);
    Traced {
        snapshot,
        leaktrace_lines,
        fixture_lines,
    }
}

/// The fixture's "expect FUNCTION BYTES BLOCKS" lines.
fn expectations(lines: &[String]) -> BTreeMap<String, (u64, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("expect ")?.split_whitespace();
            let function = words.next()?.to_string();
            let bytes = words.next()?.parse().ok()?;
            let blocks = words.next()?.parse().ok()?;
            Some((function, (bytes, blocks)))
        })
        .collect()
}

/// Trace the fixture started by `command` and check every function's outstanding bytes and
/// blocks against what the fixture says it kept; returns the process's JSON.
fn assert_exact_under(command: &mut Command, allocator: &str, own: &[&str]) -> Value {
    let traced = trace_by_pid(command, &[]);
    let expected = expectations(&traced.fixture_lines);
    for function in ["leak_malloc", "leak_calloc", "leak_realloc"]
        .iter()
        .chain(own)
    {
        assert!(
            expected.contains_key(*function),
            "the fixture did not run {function} under {allocator}: {:?}",
            traced.fixture_lines
        );
    }
    let process = only_process(&traced.snapshot).clone();
    assert_eq!(
        process["allocator"]["name"],
        allocator,
        "{:#}\n{}",
        process["allocator"],
        traced.leaktrace_lines.join("\n")
    );
    assert_eq!(process["exact"], true);
    for (function, (bytes, blocks)) in &expected {
        let (outstanding, count, _, _) = totals_for(&process, function);
        assert_eq!(
            (outstanding, count),
            (*bytes, *blocks),
            "{function} under {allocator}: leaktrace says {outstanding} B in {count} blocks"
        );
    }
    let (churned, churn_blocks, churn_allocs, _) = totals_for(&process, "churn");
    assert_eq!((churned, churn_blocks), (0, 0), "churn under {allocator}");
    assert!(
        churn_allocs >= 6000,
        "churn allocations seen: {churn_allocs}"
    );
    // Each free was seen once: a forwarder (operator delete -> free) hooked beside its target
    // would count a free twice, the second as unknown.
    assert_eq!(
        process["counters"]["lost_events"], 0,
        "{:#}",
        process["counters"]
    );
    process
}

fn allocators_fixture() -> PathBuf {
    fixture("allocators", &[])
}

#[test]
fn glibc_is_traced_exactly() {
    if !privileged() {
        return;
    }
    let process = assert_exact_under(
        Command::new(allocators_fixture()).arg("attach"),
        "glibc",
        &[],
    );
    assert!(process["allocator"]["module"]
        .as_str()
        .is_some_and(|m| m.ends_with("libc.so.6")));
}

#[test]
fn preloaded_jemalloc_is_traced_exactly_through_its_own_entry_points() {
    if !privileged() {
        return;
    }
    let library = require_library(JEMALLOC, "libjemalloc2");
    let process = assert_exact_under(
        Command::new(allocators_fixture())
            .arg("attach")
            .env("LD_PRELOAD", library),
        "jemalloc",
        &["own_jemalloc", "own_operator_new"],
    );
    assert_eq!(process["allocator"]["module"], library);
    assert!(process["allocator"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with('5')));
    let hooked: Vec<&str> = process["hooked_functions"]
        .as_array()
        .expect("hooked")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "malloc", "mallocx", "rallocx", "xallocx", "sdallocx", "dallocx", "_Znwm", "free",
    ] {
        assert!(hooked.contains(&name), "{name} not in {hooked:?}");
    }
    assert_eq!(process["counters"]["unknown_frees"], 0);
}

#[test]
fn preloaded_tcmalloc_is_traced_exactly_through_its_own_entry_points() {
    if !privileged() {
        return;
    }
    let library = require_library(TCMALLOC_MINIMAL, "libtcmalloc-minimal4");
    let process = assert_exact_under(
        Command::new(allocators_fixture())
            .arg("attach")
            .env("LD_PRELOAD", library),
        "tcmalloc_minimal",
        &["own_tcmalloc", "own_operator_new"],
    );
    assert_eq!(process["counters"]["unknown_frees"], 0);
}

#[test]
fn preloaded_mimalloc_is_traced_exactly_through_its_own_entry_points() {
    if !privileged() {
        return;
    }
    let library = require_library(MIMALLOC, "libmimalloc2.0");
    let process = assert_exact_under(
        Command::new(allocators_fixture())
            .arg("attach")
            .env("LD_PRELOAD", library),
        "mimalloc",
        &["own_mimalloc", "own_operator_new"],
    );
    assert_eq!(process["counters"]["unknown_frees"], 0);
}

#[test]
fn a_static_glibc_binary_is_traced_exactly() {
    if !privileged() {
        return;
    }
    let exe = fixture("allocators", &["-static", "-DNO_DLSYM"]);
    let process = assert_exact_under(Command::new(&exe).arg("attach"), "glibc", &[]);
    assert_eq!(process["allocator"]["linked_into_executable"], true);
}

#[test]
fn a_static_musl_binary_is_traced_exactly() {
    if !privileged() {
        return;
    }
    let musl_gcc = require_tool("musl-gcc", "musl-tools");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let exe = dir.join(format!("allocators-musl-{}", std::process::id()));
    let status = Command::new(musl_gcc)
        .args([
            "-static",
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-DNO_DLSYM",
        ])
        .arg("-Wno-alloc-size-larger-than")
        .arg("-o")
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/allocators.c"))
        .status()
        .expect("run musl-gcc");
    assert!(status.success(), "musl-gcc failed");
    let process = assert_exact_under(Command::new(&exe).arg("attach"), "musl", &[]);
    assert_eq!(process["allocator"]["linked_into_executable"], true);
}
