//! Post-mortem tooling: `report`, `diff` and `export` on snapshots recorded with the real tool
//! (tests/data, see docs/postmortem.md for how they were made), bad input, and property tests of
//! the reader and the diff matcher. The privileged test that SIGKILLs a traced fixture is in
//! `privileged/postmortem.rs`.
mod common;

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use clap::Parser as _;
use common::*;
use leaktrace::{
    cli::{Cli, PostmortemCommand},
    postmortem::{
        diff::{diff, SiteChange, SiteKey, SnapshotDiff},
        export, pprof,
        read::{
            parse_snapshot, read_snapshot, ReadError, RecordedFrame, RecordedGrowth,
            RecordedProcess, RecordedSite, RecordedSnapshot,
        },
        text::{render_report, ReportOptions, ReportStyle},
    },
    schema::{Counters, SiteCounters},
};
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

fn data(name: &str) -> String {
    data_file(name).to_str().expect("utf-8 path").to_string()
}

/// Run a command that must fail with one line on stderr containing `expected`.
fn fail_with(args: &[&str], expected: &str) {
    let (code, stdout, stderr) = leaktrace(args);
    assert_eq!(
        code, 1,
        "{args:?} should fail with status 1; stdout:\n{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected, got:\n{stderr}"
    );
    assert!(
        stderr.starts_with("leaktrace: error: ") && stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
    let parts: Vec<&str> = stderr.trim_end().split(": ").collect();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "the reason is repeated: {stderr}"
    );
}

fn load(name: &str) -> RecordedSnapshot {
    read_snapshot(&data_file(name)).expect("recorded snapshot reads")
}

fn load_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(data_file(name)).expect("read")).expect("parse")
}

fn write_json(dir: &Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).expect("encode")).expect("write");
    path.to_str().expect("utf-8").to_string()
}

/// The change of the one site whose label starts with `function`.
fn change_of<'a>(changes: &'a [SiteChange], function: &str) -> &'a SiteChange {
    let found: Vec<&SiteChange> = changes
        .iter()
        .filter(|c| c.label.starts_with(&format!("{function} ")) || c.label == function)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {function} site expected in {changes:#?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// The recorded data is what the tests think it is

const RECORDED: [&str; 5] = [
    "leak-run1.json",
    "leak-run2.json",
    "steady-at-1s.json",
    "steady-at-4s.json",
    "steady-final.json",
];

#[test]
fn recorded_snapshots_hold_the_fixtures_known_leaks() {
    for name in ["leak-run1.json", "leak-run2.json"] {
        let snapshot = load_json(name);
        let (bytes, count, ..) = totals_for(only_process(&snapshot), "leak_exactly");
        assert_eq!((bytes, count), (50_000, 500), "{name}");
    }
    for (name, leaked) in [
        ("steady-at-1s.json", 11_500),
        ("steady-at-4s.json", 42_700),
        ("steady-final.json", 60_000),
    ] {
        let snapshot = load_json(name);
        let (bytes, count, ..) = totals_for(only_process(&snapshot), "steady_leak");
        assert_eq!((bytes, count * 100), (leaked, leaked), "{name}");
    }
}

/// Snapshots written by an earlier leaktrace/1 must stay valid: fields added to the schema
/// later cannot be required (docs/json-schema.md, "Compatibility").
#[test]
fn snapshots_of_an_earlier_leaktrace_1_still_match_the_schema() {
    for name in RECORDED {
        validate_schema(&load_json(name));
    }
}

// ---------------------------------------------------------------------------------------------
// CLI shape

#[test]
fn tracing_options_and_the_trailing_command_still_parse() {
    let cli = Cli::try_parse_from(["leaktrace", "--pid", "1"]).expect("--pid parses");
    assert_eq!(cli.pids, vec![1]);
    assert!(cli.postmortem.is_none());

    let cli = Cli::try_parse_from(["leaktrace", "--", "ls"]).expect("-- ls parses");
    assert_eq!(cli.command, vec!["ls"]);
    assert!(cli.postmortem.is_none());

    // A program that happens to be called `report` is still launched.
    let cli = Cli::try_parse_from(["leaktrace", "--json", "x.json", "--", "report", "a.json"])
        .expect("-- report parses");
    assert_eq!(cli.command, vec!["report", "a.json"]);
    assert!(cli.postmortem.is_none());

    let cli = Cli::try_parse_from(["leaktrace", "report", "x.json", "--top", "3", "--pid", "7"])
        .expect("report parses");
    match cli.postmortem {
        Some(PostmortemCommand::Report(args)) => {
            assert_eq!(args.file, PathBuf::from("x.json"));
            assert_eq!((args.top, args.pid), (3, Some(7)));
        }
        other => panic!("expected report, got {other:?}"),
    }
    let cli = Cli::try_parse_from([
        "leaktrace",
        "export",
        "x.json",
        "--format",
        "svg",
        "-o",
        "y",
    ])
    .expect("export parses");
    assert!(matches!(cli.postmortem, Some(PostmortemCommand::Export(_))));

    // Tracing options do not mix with a subcommand.
    assert!(Cli::try_parse_from(["leaktrace", "--pid", "1", "report", "x.json"]).is_err());
}

#[test]
fn help_lists_the_post_mortem_subcommands() {
    let stdout = succeed(&["--help"]);
    for word in ["report", "diff", "export", "--pid", "COMMAND"] {
        assert!(stdout.contains(word), "{word} missing from:\n{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// report

#[test]
fn report_names_the_leak_with_its_frames() {
    let out = succeed(&["report", &data("leak-run1.json")]);
    assert!(out.contains("pid 19281 (alloc_patterns)"), "{out}");
    assert!(out.contains("exited with status 0"), "{out}");
    assert!(out.contains("counters         all zero"), "{out}");
    assert!(
        out.contains("#1 leak_exactly (alloc_patterns.c:31): 48.8 KiB (50000 bytes) outstanding in 500 blocks"),
        "{out}"
    );
    // Its frames, innermost first, with source locations.
    let leak = out.find("#1 leak_exactly").expect("site");
    let frames: Vec<&str> = out[leak..].lines().skip(2).take(3).collect();
    assert!(
        frames[0].trim_start().starts_with("leak_exactly"),
        "{frames:?}"
    );
    assert!(frames[0].ends_with("alloc_patterns.c:31"), "{frames:?}");
    assert!(frames[1].trim_start().starts_with("main"), "{frames:?}");
    // Inlined frames are marked.
    assert!(out.contains("call_init [inlined]"), "{out}");
    assert!(
        out.contains("Not shown: 1 with nothing outstanding."),
        "{out}"
    );
}

/// A growth-mode snapshot's sites are stacks that grew the heap: its report speaks of heap
/// growth and growth events, never of blocks, and does not call a `--pid` target system-wide.
#[test]
fn report_of_a_growth_mode_snapshot_speaks_of_heap_growth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["mode"] = json!("growth");
    let process = &mut snapshot["processes"][0];
    process["exact"] = json!(false);
    process["outstanding_bytes"] = json!(4_194_304);
    process["allocated_bytes"] = json!(8_388_608);
    process["allocated_count"] = json!(3);
    let site = &mut process["sites"][0];
    site["outstanding_bytes"] = json!(4_194_304);
    site["outstanding_count"] = json!(1);
    site["allocated_count"] = json!(3);
    let file = write_json(dir.path(), "growth.json", &snapshot);
    let out = succeed(&["report", &file]);
    assert!(
        out.contains("#1 leak_exactly (alloc_patterns.c:31): 4.0 MiB (4194304 bytes) of heap growth still mapped (3 growth events)"),
        "{out}"
    );
    assert!(
        out.contains("heap growth      4.0 MiB (4194304 bytes) still mapped of 8.0 MiB grown, in 3 growth events"),
        "{out}"
    );
    assert!(out.contains("tracing          growth mode:"), "{out}");
    assert!(!out.contains("system-wide"), "{out}");
    assert!(!out.contains(" block"), "{out}");
    let markdown = succeed(&["report", &file, "--format", "markdown"]);
    assert!(
        markdown.contains("| rank | still mapped | growth events |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| 1 | 4.0 MiB (4194304 bytes) | 3 |"),
        "{markdown}"
    );
}

#[test]
fn report_shows_the_bursts_estimate_as_estimated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["mode"] = json!("growth");
    let process = &mut snapshot["processes"][0];
    process["exact"] = json!(false);
    let frames = process["sites"][0]["frames"].clone();
    process["bursts"] = json!({
        "bursts": 5, "sampled_s": 0.75, "watched_blocks": 120, "probe_hits": 90000,
        "attach_probe_hits": 300, "ns_per_hit": 1300.0, "measured_overhead_pct": 0.25,
        "target_cpu_overhead_pct": 0.8, "budget_pct": 1.0
    });
    process["estimated_sites"] = json!([{
        "id": "1-2-est", "estimated": true, "estimate_rank": 1, "class": "leak_suspect",
        "samples": 400, "freed_samples": 3, "allocations_seen": 5000,
        "surviving_sampled_bytes": 72000, "surviving_bytes_per_s": 96000.0,
        "surviving_bytes_per_s_interval": {"low": 86800.0, "high": 105800.0},
        "recent_surviving_bytes_per_s": 95000.0, "recent_samples": 200,
        "surviving_bytes_per_mib_processed": null,
        "surviving_bytes_per_mib_processed_interval": null,
        "estimated_surviving_bytes": 2880000, "frames": frames
    }]);
    let file = write_json(dir.path(), "growth.json", &snapshot);
    let markdown = succeed(&["report", &file, "--format", "markdown"]);
    assert!(
        markdown.contains("#### Leak estimate from bursts of exact tracing (estimated)"),
        "{markdown}"
    );
    assert!(
        markdown.contains(
            "5 bursts, 0.75 s of allocations sampled; cost 0.25% of a CPU from 90000 probe hits, \
             0.80% on the target's own CPU time; budget 1%."
        ),
        "{markdown}"
    );
    assert!(
        markdown.contains(
            "| 1 | LEAK? | ~96000 | 86800..105800 | 95000 | 400 | 5000 | `leak_exactly (alloc_patterns.c:31)` |"
        ),
        "{markdown}"
    );
    let text = succeed(&["report", &file]);
    assert!(
        text.contains("#1 leak_exactly: ~96000 B/s surviving (95%: 86800..105800), 400 samples of 5000 allocations seen, LEAK?"),
        "{text}"
    );
    assert!(text.contains("bursts           5 bursts, 0.75 s"), "{text}");
}

#[test]
fn report_in_markdown_is_a_table_with_code_blocks() {
    let out = succeed(&["report", &data("leak-run1.json"), "--format", "markdown"]);
    assert!(out.starts_with("## leaktrace report: `"), "{out}");
    assert!(
        out.contains("| 1 | 48.8 KiB (50000 bytes) | 500 | n/a | +0 B | - / - | unknown | 1.3s | `leak_exactly (alloc_patterns.c:31)` |"),
        "{out}"
    );
    assert!(
        out.contains("#### #1 `leak_exactly (alloc_patterns.c:31)`: 48.8 KiB (50000 bytes) outstanding in 500 blocks"),
        "{out}"
    );
    assert!(
        out.contains("```text\nleak_exactly            alloc_patterns.c:31\n"),
        "{out}"
    );
    // Every table row has as many cells as its header.
    for table in out.split("\n\n").filter(|b| b.starts_with("| rank")) {
        let widths: BTreeSet<usize> = table
            .lines()
            .map(|l| l.matches('|').count() - l.matches("\\|").count())
            .collect();
        assert_eq!(widths.len(), 1, "ragged table:\n{table}");
    }
}

#[test]
fn report_shows_growth_and_filters_by_age_rank_and_pid() {
    let file = data("steady-final.json");
    let out = succeed(&["report", &file]);
    assert!(
        out.contains("#1 steady_leak (alloc_patterns.c:133): 58.6 KiB (60000 bytes) outstanding in 600 blocks"),
        "{out}"
    );
    assert!(out.contains("+1.7 GiB per MiB processed (R² 0.26), +523.2 KiB per minute (R² 0.99), class leak_suspect, oldest block 7.3s"), "{out}");
    assert!(out.contains("__GI__IO_file_doallocate"), "{out}");

    // Its oldest block is 0.9 s old: --min-age 2s drops it, and says so.
    let aged = succeed(&["report", &file, "--min-age", "2s"]);
    assert!(aged.contains("#1 steady_leak"), "{aged}");
    assert!(aged.contains("#3 allocate_before_main"), "{aged}");
    assert!(!aged.contains("__GI__IO_file_doallocate"), "{aged}");
    assert!(aged.contains("1 younger than 2.0s (--min-age)"), "{aged}");

    let top = succeed(&["report", &file, "--top", "1"]);
    assert!(
        top.contains("#1 steady_leak") && !top.contains("#2 "),
        "{top}"
    );
    assert!(top.contains("2 more below the top 1 (--top)"), "{top}");

    let by_pid = succeed(&["report", &file, "--pid", "19878"]);
    assert_eq!(by_pid, out);
    fail_with(
        &["report", &file, "--pid", "1"],
        "has no process with pid 1 (it has 19878 (alloc_patterns))",
    );
}

/// `--tree` on a snapshot written before `functions[]`: the tree is computed from the sites,
/// and `main` holds exactly what the fixture leaked under it (steady_leak's 600 x 100 bytes).
#[test]
fn report_tree_puts_the_fixtures_leak_under_main() {
    let file = data("steady-final.json");
    assert!(load_json("steady-final.json")["processes"][0]
        .get("functions")
        .is_none());
    let out = succeed(&["report", &file, "--tree"]);
    assert!(
        out.contains("Call tree, callers first (70.7 KiB in all"),
        "{out}"
    );
    assert!(
        out.contains("\n       58.6 KiB         0 B  main  [alloc_patterns]\n"),
        "{out}"
    );
    assert!(
        out.contains("\n       58.6 KiB  82.8%    main  [alloc_patterns]\n"),
        "{out}"
    );
    assert!(
        out.contains("\n       58.6 KiB  82.8%      steady_leak  [alloc_patterns]\n"),
        "{out}"
    );
    let snapshot = read_snapshot(Path::new(&file)).expect("reads");
    let main = snapshot.processes[0]
        .functions()
        .iter()
        .find(|f| f.function == "main")
        .expect("main");
    assert_eq!((main.cumulative_bytes, main.self_bytes), (60_000, 0));
    let markdown = succeed(&["report", &file, "--tree", "--format", "markdown"]);
    assert!(
        markdown.contains("#### Call tree\n\n```text\n"),
        "{markdown}"
    );
    let plain = succeed(&["report", &file]);
    assert!(!plain.contains("Call tree"), "{plain}");
}

/// What a snapshot writes for `functions[]` is what docs/leaktrace-1.schema.json says, field
/// by field (the schema allows no other field there).
#[test]
fn functions_match_the_schema() {
    use leaktrace::synthetic::{self, frame, EXE};
    let mut site = synthetic::site(
        "s",
        640,
        10,
        synthetic::growth(None, None, leaktrace::schema::GrowthClass::Unknown),
        None,
        vec![
            frame("xmalloc", EXE, None),
            frame("remember", EXE, Some(("app.c", 9))),
            frame("main", EXE, None),
        ],
    );
    site.leak_rank = 1;
    let snapshot = synthetic::snapshot(1.0, vec![synthetic::process(7, "app", vec![site])]);
    let mut value = serde_json::to_value(&snapshot).expect("serializes");
    let functions = value["processes"][0]["functions"]
        .as_array()
        .expect("functions");
    assert_eq!(functions.len(), 3);
    // Equal cumulative bytes: callers first, so main, remember, then xmalloc (the leaf).
    let names: Vec<&str> = functions
        .iter()
        .map(|f| f["function"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["main", "remember", "xmalloc"]);
    assert_eq!(functions[2]["self_bytes"], 640);
    assert_eq!(functions[0]["cumulative_bytes"], 640);
    validate_schema(&value);
    value["processes"][0]["functions"][0]["unexpected"] = json!(1);
    let bad = value.clone();
    assert!(std::panic::catch_unwind(move || validate_schema(&bad)).is_err());
}

#[test]
fn report_warns_when_counters_are_not_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["processes"][0]["counters"]["unknown_frees"] = json!(3);
    snapshot["processes"][0]["counters"]["dropped_allocations"] = json!(2);
    let file = write_json(dir.path(), "counters.json", &snapshot);
    let out = succeed(&["report", &file]);
    assert!(
        out.contains("WARNING: the numbers may be incomplete"),
        "{out}"
    );
    assert!(out.contains("2 allocations were not recorded"), "{out}");
    assert!(
        out.contains("3 frees of blocks not seen allocated"),
        "{out}"
    );
    let markdown = succeed(&["report", &file, "--format", "markdown"]);
    assert!(markdown.contains("> **WARNING: the numbers"), "{markdown}");
}

#[test]
fn report_of_a_killed_process_names_the_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["processes"][0]["exit"] = json!({"signal": 9});
    let file = write_json(dir.path(), "killed.json", &snapshot);
    let out = succeed(&["report", &file]);
    assert!(out.contains("killed by signal 9 (SIGKILL"), "{out}");
}

#[test]
fn fields_added_later_are_ignored_and_missing_ones_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["heap"] = json!({"brk_bytes": 1});
    snapshot["processes"][0]["sites"][0]["new_field"] = json!([1, 2, 3]);
    let file = write_json(dir.path(), "newer.json", &snapshot);
    assert!(succeed(&["report", &file]).contains("#1 leak_exactly"));

    let mut snapshot = load_json("leak-run1.json");
    let site = snapshot["processes"][0]["sites"][0]
        .as_object_mut()
        .expect("site");
    site.remove("outstanding_bytes");
    let file = write_json(dir.path(), "older.json", &snapshot);
    fail_with(
        &["report", &file],
        "is not a valid leaktrace/1 snapshot: missing field `outstanding_bytes`",
    );
}

#[test]
fn report_shows_the_heap_section_where_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    snapshot["processes"][0]["exact"] = json!(true);
    snapshot["processes"][0]["heap"] = json!({
        "brk_bytes": 135168, "brk_calls": 12, "brk_failures": 1,
        "fallback_mmaps": {"count": 2, "bytes": 2097152, "chunk_sizes": []},
        "anon_mmap_outstanding_bytes": 2097152, "anon_reserved_bytes": 0,
        "rss_bytes": 4194304, "vm_data_bytes": 8388608, "rss_growth_bytes": 1048576,
        "explained_share": 0.25, "events": 40
    });
    let site = &mut snapshot["processes"][0]["sites"][0];
    site["fallback_mmap_count"] = json!(2);
    site["fallback_mmap_bytes"] = json!(2097152);
    site["direct_mmap_bytes"] = json!(0);
    site["anon_mmap_bytes"] = json!(2097152);
    let file = write_json(dir.path(), "heap.json", &snapshot);
    let out = succeed(&["report", &file]);
    assert!(
        out.contains(
            "program break    132.0 KiB above the start of the heap, 12 brk calls, 1 failed"
        ),
        "{out}"
    );
    assert!(
        out.contains("mmap fallbacks   2 (2.0 MiB): malloc mapped memory because brk could not grow the heap"),
        "{out}"
    );
    assert!(
        out.contains("RSS              4.0 MiB (+1.0 MiB since tracing started; 25% of that is outstanding traced allocations)"),
        "{out}"
    );
    let leak = out.find("#1 leak_exactly").expect("site");
    assert!(
        out[leak..].contains("heap: 2 mmap fallbacks (2.0 MiB), 2.0 MiB of anonymous mappings"),
        "{out}"
    );
    let markdown = succeed(&["report", &file, "--format", "markdown"]);
    assert!(
        markdown.contains("| mmap fallbacks | 2 (2.0 MiB)"),
        "{markdown}"
    );

    // System-wide rows have heap data and no sites: the report has something to say, diff and
    // export do not.
    snapshot["processes"][0]["exact"] = json!(false);
    snapshot["processes"][0]["sites"] = json!([]);
    let file = write_json(dir.path(), "system-wide.json", &snapshot);
    let out = succeed(&["report", &file]);
    assert!(out.contains("heap syscalls only (system-wide)"), "{out}");
    assert!(out.contains("mmap fallbacks   2 (2.0 MiB)"), "{out}");
    fail_with(
        &["diff", &file, &file],
        "is an empty snapshot (no allocation sites)",
    );
    let svg = dir.path().join("x.svg");
    fail_with(
        &[
            "export",
            &file,
            "--format",
            "svg",
            "-o",
            svg.to_str().expect("utf-8"),
        ],
        "is an empty snapshot (no allocation sites)",
    );
}

// ---------------------------------------------------------------------------------------------
// diff

#[test]
fn diff_of_one_run_at_two_times_shows_the_leak_growing() {
    let old = load("steady-at-1s.json");
    let new = load("steady-at-4s.json");
    let changes = diff(&old, &new);
    assert!(changes.only_old.is_empty() && changes.only_new.is_empty());
    let process = &changes.processes[0];
    assert_eq!(
        process.changed[0].label,
        change_of(&process.changed, "steady_leak").label
    );
    let leak = change_of(&process.changed, "steady_leak");
    assert_eq!((leak.old_bytes, leak.new_bytes), (11_500, 42_700));
    assert_eq!((leak.bytes_change(), leak.count_change()), (31_200, 312));
    let constant = change_of(&process.changed, "allocate_before_main");
    assert_eq!(constant.bytes_change(), 0);

    let out = succeed(&[
        "diff",
        &data("steady-at-1s.json"),
        &data("steady-at-4s.json"),
    ]);
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("CHANGE"))
        .skip(1)
        .collect();
    assert!(
        rows[0].contains("+30.5 KiB (+31200 B)") && rows[0].contains("+312"),
        "{out}"
    );
    assert!(
        rows[0].contains("steady_leak (alloc_patterns.c:133)"),
        "{out}"
    );
    assert!(out.contains("New sites: none"), "{out}");
    assert!(out.contains("Vanished sites: none"), "{out}");
}

#[test]
fn diff_of_two_runs_matches_sites_despite_aslr_and_paths() {
    let old = load("leak-run1.json");
    let new = load("leak-run2.json");
    // Different processes, binaries at different paths, different addresses: only the meaning
    // of the frames is the same.
    let (a, b) = (&old.processes[0], &new.processes[0]);
    assert_ne!(a.pid, b.pid);
    assert_ne!(a.exe, b.exe);
    let leak_addr = |p: &RecordedProcess| p.sites[0].frames[0].addr;
    assert_ne!(leak_addr(a), leak_addr(b));

    let changes = diff(&old, &new);
    assert!(changes.only_old.is_empty() && changes.only_new.is_empty());
    let process = &changes.processes[0];
    assert!(
        process.new_sites.is_empty() && process.vanished_sites.is_empty(),
        "{process:#?}"
    );
    let leak = change_of(&process.changed, "leak_exactly");
    assert_eq!((leak.old_bytes, leak.new_bytes), (50_000, 50_000));
    assert_eq!(leak.bytes_change(), 0);

    let out = succeed(&["diff", &data("leak-run1.json"), &data("leak-run2.json")]);
    assert!(
        out.contains("pid 19281 (alloc_patterns) -> pid 19545 (alloc_patterns)"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("leak_exactly"))
        .expect("leak_exactly row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..8],
        &["0", "B", "0", "48.8", "KiB", "48.8", "KiB", "leak_exactly"],
        "{row}"
    );
}

#[test]
fn diff_lists_new_and_vanished_sites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = load_json("leak-run1.json");
    let mut new = load_json("leak-run2.json");
    // In NEW, the leak is gone and main allocates elsewhere.
    new["processes"][0]["sites"][0]["frames"][0]["function"] = json!("other_leak");
    let old_file = write_json(dir.path(), "old.json", &old);
    let new_file = write_json(dir.path(), "new.json", &new);
    let out = succeed(&["diff", &old_file, &new_file]);
    let new_at = out.find("New sites (1):").expect("new sites");
    let vanished_at = out.find("Vanished sites (1):").expect("vanished sites");
    assert!(
        out[new_at..vanished_at].contains("+48.8 KiB (+50000 B)"),
        "{out}"
    );
    assert!(out[new_at..vanished_at].contains("other_leak"), "{out}");
    assert!(out[vanished_at..].contains("-48.8 KiB (-50000 B)"), "{out}");
    assert!(out[vanished_at..].contains("leak_exactly"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// export

#[test]
fn folded_stacks_are_root_first_with_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("leak.folded");
    let out_arg = out.to_str().expect("utf-8");
    succeed(&[
        "export",
        &data("leak-run1.json"),
        "--format",
        "folded",
        "-o",
        out_arg,
    ]);
    let folded = std::fs::read_to_string(&out).expect("folded written");
    assert!(
        folded
            .lines()
            .any(|l| l == "__libc_start_call_main;main;leak_exactly 50000"),
        "{folded}"
    );
    assert!(
        folded.contains(";call_init_[i];before_main;allocate_before_main 4242"),
        "inlined frames carry _[i]: {folded}"
    );
    // Every outstanding byte, once; nothing with zero bytes.
    let total: u64 = folded
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .expect("bytes")
        })
        .sum();
    assert_eq!(total, 62_434);
    assert!(!folded.contains("churn_temporaries"), "{folded}");
    // `-o -` is standard output.
    let stdout = succeed(&[
        "export",
        &data("leak-run1.json"),
        "--format",
        "folded",
        "-o",
        "-",
    ]);
    assert_eq!(stdout, folded);
}

fn decode_pprof(path: &Path) -> pprof::Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("profile written"))
        .read_to_end(&mut raw)
        .expect("gzip");
    pprof::Profile::decode(raw.as_slice()).expect("profile.proto decodes")
}

#[test]
fn pprof_profile_decodes_with_outstanding_bytes_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("leak.pb.gz");
    let out_arg = out.to_str().expect("utf-8");
    succeed(&[
        "export",
        &data("leak-run1.json"),
        "--format",
        "pprof",
        "-o",
        out_arg,
    ]);
    let profile = decode_pprof(&out);
    let string = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(string(0), "");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (string(t.r#type), string(t.unit)))
        .collect();
    assert_eq!(
        types,
        vec![
            ("outstanding_space", "bytes"),
            ("outstanding_objects", "count")
        ]
    );
    assert_eq!(string(profile.default_sample_type), "outstanding_space");
    // Function names of a sample, leaf first.
    let names = |sample: &pprof::Sample| -> Vec<String> {
        sample
            .location_id
            .iter()
            .flat_map(|id| {
                let location = profile
                    .location
                    .iter()
                    .find(|l| l.id == *id)
                    .expect("location exists");
                location.line.iter().map(|line| {
                    let function = profile
                        .function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .expect("function exists");
                    string(function.name).to_string()
                })
            })
            .collect()
    };
    let leak = profile
        .sample
        .iter()
        .find(|s| names(s).first().map(String::as_str) == Some("leak_exactly"))
        .expect("a leak_exactly sample");
    assert_eq!(leak.value, vec![50_000, 500]);
    assert_eq!(
        names(leak),
        vec!["leak_exactly", "main", "__libc_start_call_main"]
    );
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(total, 62_434);
    // The inlined call_init shares a location with the function it was inlined into.
    let before_main = profile
        .sample
        .iter()
        .find(|s| names(s).first().map(String::as_str) == Some("allocate_before_main"))
        .expect("allocate_before_main sample");
    assert_eq!(before_main.location_id.len(), 3);
    assert_eq!(names(before_main).len(), 4);
    // pprof takes the first mapping for the main binary.
    assert_eq!(
        string(profile.mapping[0].filename),
        "/tmp/pm-fx/a/alloc_patterns"
    );

    let output = Command::new(require_tool("go", "golang-go"))
        .args(["tool", "pprof", "-top", out_arg])
        .output()
        .expect("go tool pprof");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go tool pprof failed: {stderr}");
    assert!(stdout.contains("Type: outstanding_space"), "{stdout}");
    let top = stdout
        .lines()
        .find(|l| l.ends_with("leak_exactly"))
        .unwrap_or_else(|| panic!("leak_exactly not listed:\n{stdout}\n{stderr}"));
    assert!(top.trim_start().starts_with("48.83kB"), "{stdout}");
}

#[test]
fn svg_flamegraph_shows_the_leak() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("leak.svg");
    let out_arg = out.to_str().expect("utf-8");
    succeed(&[
        "export",
        &data("leak-run1.json"),
        "--format",
        "svg",
        "-o",
        out_arg,
    ]);
    let svg = std::fs::read_to_string(&out).expect("svg written");
    assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(500)]);
    assert!(svg.contains("Outstanding memory"));
    assert!(
        svg.contains("leak_exactly (50,000 bytes, 80.08%)"),
        "leak_exactly frame missing"
    );
    // Deterministic: the same file renders the same SVG.
    succeed(&[
        "export",
        &data("leak-run1.json"),
        "--format",
        "svg",
        "-o",
        out_arg,
    ]);
    assert_eq!(std::fs::read_to_string(&out).expect("svg"), svg);
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn bad_input_is_one_line_and_a_failure_for_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = data("leak-run1.json");
    let text = std::fs::read_to_string(&good).expect("read");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path.to_str().expect("utf-8").to_string()
    };
    let truncated = write("truncated.json", &text[..text.len() / 2]);
    let corrupt = write("corrupt.json", &text.replacen("\"pid\"", "pid", 1));
    let binary = write("binary.json", "\u{0}\u{1}\u{7f}garbage");
    let other_schema = write("v2.json", &text.replace("leaktrace/1", "leaktrace/2"));
    let no_schema = write("noschema.json", "{\"processes\": []}");
    let mut empty = load_json("leak-run1.json");
    empty["processes"] = json!([]);
    let empty = write_json(dir.path(), "empty.json", &empty);
    let mut no_sites = load_json("leak-run1.json");
    no_sites["processes"][0]["sites"] = json!([]);
    let no_sites = write_json(dir.path(), "nosites.json", &no_sites);
    let missing = dir.path().join("missing.json");
    let missing = missing.to_str().expect("utf-8");

    let cases: [(&str, &str); 8] = [
        (
            missing,
            "missing.json: No such file or directory (os error 2)",
        ),
        (&truncated, "the snapshot is truncated"),
        (&corrupt, "is not JSON"),
        (&binary, "is not JSON"),
        (
            &other_schema,
            "has schema \"leaktrace/2\", this leaktrace reads only \"leaktrace/1\"",
        ),
        (&no_schema, "is not a leaktrace snapshot"),
        (&empty, "is an empty snapshot (no traced processes)"),
        (&no_sites, "is an empty snapshot (no allocation sites)"),
    ];
    let out = dir.path().join("out");
    let out = out.to_str().expect("utf-8");
    for (file, expected) in cases {
        fail_with(&["report", file], expected);
        fail_with(&["diff", file, &good], expected);
        fail_with(&["diff", &good, file], expected);
        for format in ["pprof", "folded", "svg"] {
            fail_with(&["export", file, "--format", format, "-o", out], expected);
        }
    }
    assert!(!Path::new(out).exists(), "nothing is written on bad input");
}

#[test]
fn unwritable_output_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = data("leak-run1.json");
    let no_dir = dir.path().join("no/such/dir/out.svg");
    let is_dir = dir.path().to_str().expect("utf-8");
    for format in ["pprof", "folded", "svg"] {
        fail_with(
            &[
                "export",
                &good,
                "--format",
                format,
                "-o",
                no_dir.to_str().expect("utf-8"),
            ],
            "cannot write",
        );
        fail_with(
            &["export", &good, "--format", format, "-o", is_dir],
            "cannot write",
        );
    }
}

#[test]
fn a_snapshot_with_nothing_outstanding_cannot_be_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = load_json("leak-run1.json");
    for site in snapshot["processes"][0]["sites"]
        .as_array_mut()
        .expect("sites")
    {
        site["outstanding_bytes"] = json!(0);
        site["outstanding_count"] = json!(0);
    }
    let file = write_json(dir.path(), "freed.json", &snapshot);
    let out = dir.path().join("out");
    fail_with(
        &[
            "export",
            &file,
            "--format",
            "svg",
            "-o",
            out.to_str().expect("utf-8"),
        ],
        "has no outstanding memory to export",
    );
    // The report still reads it, and says why nothing is listed.
    let report = succeed(&["report", &file]);
    assert!(report.contains("No sites to show."), "{report}");
    assert!(report.contains("4 with nothing outstanding"), "{report}");
}

// ---------------------------------------------------------------------------------------------
// Property tests: nothing panics, and the diff matcher is symmetric

const FIELD_NAMES: &[&str] = &[
    "schema",
    "leaktrace/1",
    "generated_at",
    "duration_s",
    "complete",
    "processes",
    "pid",
    "comm",
    "exe",
    "alive",
    "exit",
    "code",
    "signal",
    "outstanding_bytes",
    "outstanding_count",
    "allocated_bytes",
    "allocated_count",
    "freed_count",
    "bytes_processed",
    "counters",
    "sites",
    "growth",
    "class",
    "leak_rank",
    "frames",
    "function",
    "module",
    "offset",
    "inlined",
];

fn json_value() -> impl Strategy<Value = Value> {
    let name = || {
        prop_oneof![
            prop::sample::select(FIELD_NAMES).prop_map(str::to_string),
            ".{0,10}",
        ]
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        name().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer into `value`.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = format!("{prefix}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(path.clone());
                pointers(child, path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let path = format!("{prefix}/{i}");
                out.push(path.clone());
                pointers(child, path, out);
            }
        }
        _ => {}
    }
}

/// Everything the post-mortem commands do with a snapshot that read.
fn use_every_way(snapshot: &RecordedSnapshot, other: &RecordedSnapshot) {
    for style in [ReportStyle::Text, ReportStyle::Markdown] {
        for (pid, min_age) in [(None, None), (Some(19281), Some(Duration::from_secs(1)))] {
            let options = ReportOptions {
                top: 3,
                pid,
                min_age,
                tree: pid.is_none(),
                style,
            };
            let _ = render_report(snapshot, "f.json", &options);
        }
    }
    for (a, b) in [(snapshot, other), (other, snapshot), (snapshot, snapshot)] {
        let changes = diff(a, b);
        let _ = leaktrace::postmortem::diff::render_diff(&changes, "a", "b", 5);
    }
    if let Ok(folded) = export::folded(snapshot, "f.json") {
        for line in folded.lines() {
            let (stack, bytes) = line.rsplit_once(' ').expect("`stack bytes`");
            assert!(bytes.parse::<u64>().is_ok_and(|b| b > 0), "{line}");
            assert!(!stack.is_empty(), "{line}");
        }
    }
    let _ = export::svg(snapshot, "f.json");
    if let Ok(gz) = export::pprof_gz(snapshot, "f.json") {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .expect("gzip");
        let profile = pprof::Profile::decode(raw.as_slice()).expect("decodes");
        assert!(profile.sample.iter().all(|s| s.value.len() == 2));
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(prop::sample::Index, Value),
    Remove(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
    ]
}

const FUNCTIONS: &[&str] = &["leak", "main", "f"];
const MODULES: &[&str] = &["/a/server", "/b/server", "/lib/libc.so.6"];
const EXES: &[&str] = &["/a/server", "/b/server", "/c/other"];
const COMMS: &[&str] = &["server", "other"];

fn frame_strategy() -> impl Strategy<Value = RecordedFrame> {
    (
        prop::option::of(prop::sample::select(FUNCTIONS)),
        prop::option::of(prop::sample::select(MODULES)),
        prop::option::of(0u64..3),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(function, module, offset, inlined, addr)| RecordedFrame {
            addr: Some(addr),
            module: module.map(str::to_string),
            offset,
            function: function.map(str::to_string),
            file: None,
            line: None,
            inlined,
        })
}

fn snapshot_strategy() -> impl Strategy<Value = RecordedSnapshot> {
    let site = (
        0u64..10_000,
        0u64..100,
        prop::collection::vec(frame_strategy(), 0..4),
    )
        .prop_map(|(bytes, count, frames)| RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: bytes,
                outstanding_count: count,
                oldest_age_s: None,
                ..SiteCounters::default()
            },
            growth: RecordedGrowth {
                bytes_per_mib_processed: None,
                bytes_per_min: None,
                r2_processed: None,
                r2_time: None,
                class: "unknown".to_string(),
            },
            leak_rank: 1,
            frames,
            ..Default::default()
        });
    let process = (
        1u32..4,
        prop::sample::select(EXES),
        prop::sample::select(COMMS),
        prop::collection::vec(site, 0..6),
    )
        .prop_map(|(pid, exe, comm, sites)| RecordedProcess {
            pid,
            comm: comm.to_string(),
            exe: exe.to_string(),
            alive: true,
            exit: None,
            outstanding_bytes: sites.iter().map(|s| s.counters.outstanding_bytes).sum(),
            outstanding_count: sites.iter().map(|s| s.counters.outstanding_count).sum(),
            allocated_bytes: 0,
            allocated_count: 0,
            freed_count: 0,
            bytes_processed: None,
            counters: Counters::default(),
            sites,
            ..Default::default()
        });
    prop::collection::vec(process, 0..4).prop_map(|processes| RecordedSnapshot {
        schema: "leaktrace/1".to_string(),
        generated_at: String::new(),
        duration_s: 1.0,
        complete: true,
        mode: None,
        processes,
    })
}

type ProcessId = (u32, String, String, u64, u64);
type Summary = (
    ProcessId,
    ProcessId,
    Vec<SiteKey>,
    Vec<SiteKey>,
    Vec<(SiteKey, i128, i128)>,
);

/// (old, new, new keys, vanished keys, changes) per matched pair, sorted; with `swap`, as
/// seen from the other side.
fn summarize(changes: &SnapshotDiff, swap: bool) -> (Vec<Summary>, Vec<ProcessId>, Vec<ProcessId>) {
    let id = |p: &leaktrace::postmortem::diff::ProcessName| {
        (
            p.pid,
            p.comm.clone(),
            p.exe.clone(),
            p.outstanding_bytes,
            p.outstanding_count,
        )
    };
    let keys = |sites: &[SiteChange]| {
        let mut keys: Vec<SiteKey> = sites.iter().map(|s| s.key.clone()).collect();
        keys.sort();
        keys
    };
    let sign = if swap { -1 } else { 1 };
    let mut pairs: Vec<Summary> = changes
        .processes
        .iter()
        .map(|p| {
            let mut changed: Vec<(SiteKey, i128, i128)> = p
                .changed
                .iter()
                .map(|s| {
                    (
                        s.key.clone(),
                        sign * s.bytes_change(),
                        sign * s.count_change(),
                    )
                })
                .collect();
            changed.sort();
            if swap {
                (
                    id(&p.new),
                    id(&p.old),
                    keys(&p.vanished_sites),
                    keys(&p.new_sites),
                    changed,
                )
            } else {
                (
                    id(&p.old),
                    id(&p.new),
                    keys(&p.new_sites),
                    keys(&p.vanished_sites),
                    changed,
                )
            }
        })
        .collect();
    pairs.sort();
    let mut only_old: Vec<ProcessId> = changes.only_old.iter().map(id).collect();
    let mut only_new: Vec<ProcessId> = changes.only_new.iter().map(id).collect();
    only_old.sort();
    only_new.sort();
    if swap {
        (pairs, only_new, only_old)
    } else {
        (pairs, only_old, only_new)
    }
}

proptest! {
    // Failures print their seed; nothing is written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Err(err) = parse_snapshot(&bytes, "fuzz.json") {
            prop_assert_eq!(err.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_reader(value in json_value()) {
        let bytes = serde_json::to_vec(&value).expect("encode");
        match parse_snapshot(&bytes, "fuzz.json") {
            Ok(snapshot) => use_every_way(&snapshot, &load("leak-run2.json")),
            Err(err) => prop_assert_eq!(err.to_string().lines().count(), 1),
        }
    }

    #[test]
    fn every_truncation_of_a_snapshot_is_an_error(cut in 0usize..8410) {
        let bytes = std::fs::read(data_file("leak-run1.json")).expect("read");
        let end = bytes.iter().rposition(|&b| b == b'}').expect("closing brace");
        let cut = cut.min(end);
        let result = parse_snapshot(&bytes[..cut], "cut.json");
        prop_assert!(
            matches!(result, Err(ReadError::Truncated { .. })),
            "cut at {}: {:?}", cut, result
        );
    }

    #[test]
    fn mutated_snapshots_never_panic(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut value = load_json("leak-run1.json");
        for mutation in mutations {
            let mut all = Vec::new();
            pointers(&value, String::new(), &mut all);
            if all.is_empty() {
                break;
            }
            match mutation {
                Mutation::Replace(index, replacement) => {
                    if let Some(target) = value.pointer_mut(index.get(&all).as_str()) {
                        *target = replacement;
                    }
                }
                Mutation::Remove(index) => {
                    let pointer = index.get(&all).clone();
                    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
                    match value.pointer_mut(parent) {
                        Some(Value::Object(map)) => {
                            map.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Some(Value::Array(items)) => {
                            if let Ok(i) = key.parse::<usize>() {
                                items.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let bytes = serde_json::to_vec(&value).expect("encode");
        match parse_snapshot(&bytes, "mutated.json") {
            Ok(snapshot) => use_every_way(&snapshot, &load("leak-run2.json")),
            Err(err) => prop_assert_eq!(err.to_string().lines().count(), 1),
        }
    }

    #[test]
    fn the_diff_matcher_is_symmetric(a in snapshot_strategy(), b in snapshot_strategy()) {
        let forward = diff(&a, &b);
        let backward = diff(&b, &a);
        prop_assert_eq!(summarize(&forward, false), summarize(&backward, true));
        // Every process is accounted for exactly once.
        prop_assert_eq!(forward.processes.len() + forward.only_old.len(), a.processes.len());
        prop_assert_eq!(forward.processes.len() + forward.only_new.len(), b.processes.len());
        let _ = leaktrace::postmortem::diff::render_diff(&forward, "a", "b", 3);
    }
}

// ---------------------------------------------------------------------------------------------
// Go programs (tests/data/go-heapmap.json: a real run on tests/fixtures/go/heapmap.go, Go 1.22,
// 20,000 blocks of 4096 bytes kept in a map)

#[test]
fn a_go_snapshot_reports_exports_and_diffs_its_runtime_heap_profile() {
    let file = data("go-heapmap.json");
    let snapshot = load_json("go-heapmap.json");
    validate_schema(&snapshot);
    let go = &snapshot["processes"][0]["go"];
    let top = go["heap_profile"]["sites"][0]["inuse_bytes"]
        .as_u64()
        .expect("a profile site");

    let report = succeed(&["report", &file]);
    assert!(report.contains("Go go1.22.10:"), "{report}");
    assert!(
        report.contains("lags the live heap by up to two cycles"),
        "{report}"
    );
    assert!(report.contains("main.leakIntoMap (heapmap.go"), "{report}");
    let markdown = succeed(&["report", &file, "--format", "markdown"]);
    assert!(markdown.contains("#### Go runtime"), "{markdown}");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("heap.pb.gz");
    succeed(&[
        "export",
        &file,
        "--format",
        "go-heap",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    let profile = decode_pprof(&out);
    let string = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| string(t.r#type))
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_eq!(string(profile.default_sample_type), "inuse_space");
    assert_eq!(profile.period, 65536);
    assert!(
        profile
            .sample
            .iter()
            .any(|s| s.value[3] == i64::try_from(top).expect("fits")),
        "{top} in use not exported"
    );

    // The same program with half the leak before: the diff names the map's growth.
    let mut before = snapshot.clone();
    before["processes"][0]["go"]["heap_profile"]["sites"][0]["inuse_bytes"] = json!(top / 2);
    let before = write_json(dir.path(), "before.json", &before);
    let changes = succeed(&["diff", &before, &file]);
    assert!(changes.contains("Go heap profile"), "{changes}");
    assert!(
        changes.contains(&format!("(+{} B)", top - top / 2)),
        "{changes}"
    );

    // A snapshot without a Go program has no Go heap profile to export: one line.
    fail_with(
        &[
            "export",
            &data("leak-run1.json"),
            "--format",
            "go-heap",
            "-o",
            out.to_str().expect("utf-8"),
        ],
        "no Go heap profile",
    );
}
