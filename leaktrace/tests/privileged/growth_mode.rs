//! Privileged tests of growth mode (`--mode growth`): no uprobes, heap-growing syscalls with user
//! stacks unwound from `.eh_frame`. The fixture leaks through a shared library, both built with
//! `-O2 -fomit-frame-pointer` like Debian's packages, so a frame-pointer walk cannot reach the
//! leaking functions: only unwinding with the modules' CFI can.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace_supervisor::{Input, Supervised};
use serde_json::Value;

use crate::common::*;

/// Requests per round and bytes each keeps (tests/fixtures/growth/service.c).
const RECORDS_PER_ROUND: u64 = 500;
const RECORD_BYTES: u64 = 1000;

/// The service linked to libstore.so, both without frame pointers.
fn service() -> PathBuf {
    program_with_library(
        "growth",
        "store",
        "service",
        &["-O2", "-g", "-fomit-frame-pointer"],
    )
    .0
}

/// Launch `service MODE ROUNDS` under `leaktrace --mode growth`, release it once it is done,
/// and return the final snapshot.
fn trace_service(mode: &str, rounds: u32) -> Value {
    let service = service().to_str().expect("utf-8").to_string();
    trace_growth(
        &[&service, mode, &rounds.to_string()],
        &format!("finished {mode}"),
    )
}

/// Launch `command` under `leaktrace --mode growth`, release it (a line on its stdin) once it
/// prints `finished`, and return the final snapshot.
fn trace_growth(command: &[&str], finished: &str) -> Value {
    // Released at once: a flat tail after the leak stops would rightly read as a plateau.
    let (snapshot, lines) = trace_command(
        &["--mode", "growth", "--interval", "300ms"],
        command,
        (finished, Duration::from_secs(60)),
        Duration::ZERO,
    );
    assert!(
        lines.iter().any(|l| l.contains("in growth mode")),
        "{}",
        lines.join("\n")
    );
    snapshot
}

fn ranked_first(process: &Value) -> &Value {
    process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["leak_rank"] == 1)
        .unwrap_or_else(|| panic!("no site ranked first: {process:#}"))
}

/// `expected` appear in this order (innermost first) among the site's frames.
fn assert_stack_contains(site: &Value, expected: &[&str]) {
    let names = function_names(site);
    let mut at = 0;
    for want in expected {
        match names[at..].iter().position(|n| n == want) {
            Some(i) => at += i + 1,
            None => panic!("{want} missing (in order {expected:?}) from the stack {names:?}"),
        }
    }
}

/// The leaked bytes plus what malloc adds: a 16-byte header per 1000-byte block (rounded to
/// 1008) and the heap's top padding (128 KiB), with room for the loader's own mappings.
fn assert_growth_matches(site: &Value, leaked: u64) {
    let grown = site["outstanding_bytes"].as_u64().expect("outstanding");
    let ceiling = leaked / RECORD_BYTES * 1008 + 1024 * 1024;
    assert!(
        (leaked..=ceiling).contains(&grown),
        "heap growth {grown} for {leaked} leaked bytes (expected {leaked}..={ceiling}): {site:#}"
    );
}

#[test]
fn growth_mode_finds_the_leak_with_full_stacks_through_code_without_frame_pointers() {
    if !privileged() {
        return;
    }
    let rounds = 60;
    let snapshot = trace_service("leak", rounds);
    assert_eq!(snapshot["mode"], "growth");
    let process = only_process(&snapshot);
    assert_eq!(process["exact"], false);
    assert_eq!(
        process["hooked_functions"].as_array().map(Vec::len),
        Some(0)
    );
    let top = ranked_first(process);
    // The library function that leaks, through the program's frames, to main: every one of
    // them built without frame pointers.
    assert_stack_contains(top, &["store_record", "remember_request", "serve", "main"]);
    assert!(
        function_names(top).iter().all(|n| *n != "malloc"),
        "the allocator's own frames lead the site: {:?}",
        function_names(top)
    );
    assert_growth_matches(top, u64::from(rounds) * RECORDS_PER_ROUND * RECORD_BYTES);
    // What grew the heap, steadily: never called a leak on growth events alone (issue 13).
    assert_eq!(top["growth"]["class"], "heap_growth", "{top:#}");
    assert!(top["growth_events"].as_u64().unwrap_or(0) > 10, "{top:#}");
    // Every stack copy was unwound, none came back empty, nothing was lost.
    let unwinding = &snapshot["unwinding"];
    assert!(
        unwinding["events"].as_u64().unwrap_or(0) >= top["growth_events"].as_u64().unwrap_or(0)
    );
    assert_eq!(unwinding["empty_copies"], 0, "{unwinding:#}");
    assert_eq!(process["counters"]["lost_events"], 0);
}

#[test]
fn a_thread_s_arena_growth_by_mprotect_is_attributed_to_the_thread_s_stack() {
    if !privileged() {
        return;
    }
    let rounds = 30;
    let snapshot = trace_service("thread", rounds);
    let process = only_process(&snapshot);
    let top = ranked_first(process);
    // A thread's stack ends within a page or two above its frames: the copy is clamped there
    // and still reaches the thread's start routine.
    assert_stack_contains(
        top,
        &["store_record", "remember_request", "serve", "worker"],
    );
    assert_growth_matches(top, u64::from(rounds) * RECORDS_PER_ROUND * RECORD_BYTES);
    assert_eq!(snapshot["unwinding"]["empty_copies"], 0);
}

#[test]
fn system_wide_runs_in_growth_mode_and_names_a_process_s_leaking_stack() {
    if !privileged() {
        return;
    }
    // The service runs on its own; leaktrace watches the whole machine.
    let mut service = Supervised::spawn(
        "service",
        Command::new(service()).args(["leak", "60"]),
        Input::Piped,
    )
    .expect("start the service");
    let pid = service.pid();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("system.json");
    let (code, _, stderr) = leaktrace(&[
        "--duration",
        "3s",
        "--interval",
        "1s",
        // Every process in full: on a busy machine the service need not be among the top 20.
        "--top-processes",
        "100000",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    service.close_stdin();
    let _ = service.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("growth mode"), "{stderr}");
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON")).expect("parses");
    validate_schema(&snapshot);
    assert_eq!(snapshot["mode"], "growth");
    assert_eq!(snapshot["system_wide"], true);
    let process = snapshot["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not among the processes"));
    assert_stack_contains(ranked_first(process), &["store_record", "remember_request"]);
}

/// A pure-Go program has no libc and no `.eh_frame`, and makes its heap syscalls on the system
/// stack: the copied stack ends at `runtime.systemstack`, the kernel's frame-pointer walk goes
/// on into the goroutine's frames, and growth mode keeps the longer of the two.
#[test]
fn a_go_program_s_leak_is_named_through_the_frame_pointer_walk() {
    if !privileged() {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/growth/goleak.go");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let exe = dir.join(format!("goleak-{}", std::process::id()));
    let status = Command::new(require_tool("go", "golang-go"))
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("path"))
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build failed");
    let snapshot = trace_growth(&[exe.to_str().expect("utf-8")], "finished go");
    let process = only_process(&snapshot);
    assert_eq!(process["counters"]["lost_events"], 0, "{process:#}");
    let top = ranked_first(process);
    assert_stack_contains(top, &["runtime.mallocgc", "main.rememberBlob", "main.main"]);
    // 30 rounds of 64 blocks of 64 KiB, kept.
    let leaked: u64 = 30 * 64 * (64 << 10);
    // The Go heap grows by committing whole 4 MiB chunks (`runtime.(*mheap).grow`), from the
    // stack of whichever allocation found no free page: the leak's own span allocation, but
    // also a GC assist inside the leaking call that needed a work buffer at that moment
    // (another site, through main.rememberBlob), or the runtime for itself (start-up, a
    // background GC worker). The leak then fills a chunk committed elsewhere without a syscall
    // of its own, so its sites hold the leak less what it found in the others' chunks.
    let chunks = heap_chunk_commits(process);
    let summary = chunks
        .iter()
        .map(|c| format!("{} bytes, leak: {}, {:?}", c.bytes, c.by_leak, c.functions))
        .collect::<Vec<_>>()
        .join("\n");
    for chunk in &chunks {
        assert_eq!(chunk.bytes % (4 << 20), 0, "not whole chunks:\n{summary}");
        // A cut-short walk would hide the leak's commits among others: every stack reaches
        // its goroutine's root or the program's entry.
        let root = chunk.functions.last().map(String::as_str);
        assert!(
            matches!(root, Some("runtime.goexit" | "runtime.rt0_go")),
            "a heap chunk committed from an incomplete stack:\n{summary}"
        );
    }
    let by_leak: u64 = chunks.iter().filter(|c| c.by_leak).map(|c| c.bytes).sum();
    let by_others: u64 = chunks.iter().filter(|c| !c.by_leak).map(|c| c.bytes).sum();
    // The leak's commits cover what it did not find in the others' chunks; it commits only
    // when it needs a page, so no more than a chunk beyond the leak (and the runtime's small
    // objects that share its chunks) ahead of need.
    assert!(
        (leaked.saturating_sub(by_others)..=leaked + (8 << 20)).contains(&by_leak),
        "Go heap chunks {by_leak} committed by the leak, {by_others} by others, for {leaked} leaked:\n{summary}"
    );
}

/// One site's commits of Go heap chunks (`runtime.sysMap` called by `runtime.(*mheap).grow`;
/// the runtime's metadata mappings are not heap chunks).
struct ChunkCommits {
    bytes: u64,
    /// Whether the stack runs through the leaking function.
    by_leak: bool,
    functions: Vec<String>,
}

fn heap_chunk_commits(process: &Value) -> Vec<ChunkCommits> {
    process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|site| {
            let functions: Vec<String> = function_names(site)
                .into_iter()
                .map(str::to_string)
                .collect();
            let commits_chunk = functions
                .windows(2)
                .any(|w| w[0] == "runtime.sysMap" && w[1] == "runtime.(*mheap).grow");
            commits_chunk.then(|| ChunkCommits {
                bytes: site["outstanding_bytes"].as_u64().expect("outstanding"),
                by_leak: functions.iter().any(|f| f == "main.rememberBlob"),
                functions,
            })
        })
        .collect()
}
