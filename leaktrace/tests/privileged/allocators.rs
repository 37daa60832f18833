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
    trace_by_pid_after(command, options, |_| {})
}

/// [`trace_by_pid`], calling `prepare` with the fixture's pid before leaktrace starts.
fn trace_by_pid_after(
    command: &mut Command,
    options: &[&str],
    prepare: impl FnOnce(u32),
) -> Traced {
    let mut target = Supervised::spawn("fixture", command, Input::Piped).expect("start fixture");
    let ready = target
        .wait_stdout(Duration::from_secs(30), "ready line", |l| {
            Some(l.to_string())
        })
        .expect("ready line");
    assert!(ready.starts_with("ready"), "{ready}");
    prepare(target.pid());
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut args = vec!["--pid", &pid, "--interval", "200ms"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--json", json.to_str().expect("utf-8")]);
    let mut run = Run::start(&args);
    // Said once everything is attached.
    run.wait_for(&format!("tracing pid {pid}"), Duration::from_secs(30));
    target.send_line().expect("release fixture");
    target
        .wait_stdout(Duration::from_secs(60), "finished line", |l| {
            (l == "finished").then_some(())
        })
        .expect("finished line");
    // Two more snapshots with the process alive: its sites are symbolized while it lives (in
    // a mount namespace of its own, its files are gone with it).
    let duration = |s: &Value| s["duration_s"].as_f64().unwrap_or(0.0);
    let at_finish = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map_or(0.0, |s| duration(&s));
    wait_for_snapshot(&json, Duration::from_secs(60), |s| {
        duration(s) >= at_finish + 0.45
    });
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
            "{function} under {allocator}: leaktrace says {outstanding} B in {count} blocks; sites:\n{}",
            site_summary(&process)
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

/// Each site's outstanding bytes and first frames, for failure messages.
fn site_summary(process: &Value) -> String {
    process["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let frames: Vec<String> = s["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .take(3)
                .map(|f| format!("{} {}", f["function"], f["module"]))
                .collect();
            format!("{} B: {}", s["outstanding_bytes"], frames.join(" <- "))
        })
        .collect::<Vec<_>>()
        .join("\n")
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

/// A port of this test's range that nothing listens on.
fn free_port() -> u16 {
    (21500..21600)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port in 21500-21599")
}

fn used_memory(redis_cli: &Path, port: &str) -> u64 {
    let output = Command::new(redis_cli)
        .args(["-p", port, "info", "memory"])
        .output()
        .expect("redis-cli info");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Debian's redis-server links libjemalloc.so.2: attached by pid while 20000 values are SET,
/// leaktrace's outstanding bytes track Redis's own `used_memory` growth within 10%, and the
/// sites name Redis's functions. Debian builds Redis without frame pointers: until stacks are
/// unwound in the kernel, a site is Redis's allocation wrapper (`zmalloc_usable`, ...), the
/// caller the uretprobe sees, and little more; that is what is asserted.
#[test]
fn a_real_redis_is_traced_through_jemalloc() {
    if !privileged() {
        return;
    }
    let redis_server = require_tool("redis-server", "redis-server");
    let redis_cli = require_tool("redis-cli", "redis-tools");
    let port = free_port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = Supervised::spawn(
        "redis-server",
        Command::new(&redis_server)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path()),
        Input::Null,
    )
    .expect("start redis-server");
    redis
        .wait_stdout(Duration::from_secs(30), "redis ready", |l| {
            l.contains("Ready to accept connections").then_some(())
        })
        .expect("redis ready");
    let pid = redis.pid().to_string();
    let json = dir.path().join("redis.json");
    let mut run = Run::start(&[
        "--pid",
        &pid,
        "--interval",
        "500ms",
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    let started = run.wait_for(&format!("tracing pid {pid}"), Duration::from_secs(30));
    assert!(started.contains("jemalloc"), "{started}");
    let before = used_memory(&redis_cli, &port);

    // 20000 SETs of 1018-byte values (their sds, 1024 bytes, fills a jemalloc size class:
    // used_memory counts usable sizes, leaktrace the sizes asked for).
    let value = "x".repeat(1018);
    let mut protocol = Vec::new();
    for i in 0..20_000 {
        let key = format!("key:{i:05}");
        protocol.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    let input = dir.path().join("protocol");
    std::fs::write(&input, protocol).expect("write protocol");
    let status = Command::new(&redis_cli)
        .args(["-p", &port, "--pipe"])
        .stdin(std::fs::File::open(&input).expect("open protocol"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli --pipe");
    assert!(status.success());
    let after = used_memory(&redis_cli, &port);
    let grown = after.saturating_sub(before);
    assert!(grown > 20_000 * 1024, "used_memory grew by {grown} only");
    // Two intervals with the writes done.
    std::thread::sleep(Duration::from_millis(1500));
    run.signal(libc::SIGINT);
    // Without frame pointers the kernel's stack walks are garbage past Redis's wrapper: tens of
    // thousands of distinct stacks, symbolized at the end (slow in a debug build under load).
    let (code, lines) = run.finish(Duration::from_secs(240));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let _ = redis.interrupt(Duration::from_secs(10));

    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    assert_eq!(process["allocator"]["name"], "jemalloc");
    let outstanding = process["outstanding_bytes"].as_u64().expect("u64");
    let ratio = outstanding as f64 / grown as f64;
    eprintln!(
        "redis: leaktrace {outstanding} B outstanding, used_memory grew {grown} B ({ratio:.3})"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "leaktrace {outstanding} B vs used_memory growth {grown} B"
    );
    // The site holding most bytes is Redis's own allocation wrapper, in its executable.
    let sites = process["sites"].as_array().expect("sites");
    let biggest = sites
        .iter()
        .max_by_key(|s| s["outstanding_bytes"].as_u64())
        .expect("a site");
    let frame = &biggest["frames"][0];
    assert_eq!(frame["module"], process["exe"], "{biggest:#}");
    let function = frame["function"].as_str().unwrap_or_default();
    assert!(
        function.starts_with("zmalloc") || function.starts_with("zcalloc"),
        "{biggest:#}"
    );
}

/// A program with its own malloc, which leaktrace does not know: one line names what was
/// found, nothing is hooked (no zeros that look traced), and its heap growth is traced exactly
/// (the fixture says how much it mapped, in how many mmap calls).
#[test]
fn an_unknown_allocator_is_said_so_and_its_heap_growth_traced() {
    if !privileged() {
        return;
    }
    let exe = fixture("custom_malloc", &[]);
    let traced = trace_by_pid(&mut Command::new(&exe), &[]);
    let said: Vec<&String> = traced
        .leaktrace_lines
        .iter()
        .filter(|l| {
            l.starts_with("leaktrace:") && l.contains("by an allocator leaktrace does not know")
        })
        .collect();
    assert_eq!(said.len(), 1, "{}", traced.leaktrace_lines.join("\n"));
    assert!(
        said[0].contains(exe.to_str().expect("utf-8")),
        "{}",
        said[0]
    );
    assert!(
        said[0].contains("tracing its heap growth only"),
        "{}",
        said[0]
    );
    let (bytes, chunks): (u64, u64) = traced
        .fixture_lines
        .iter()
        .find_map(|l| {
            let mut words = l.strip_prefix("mapped ")?.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .expect("mapped line");
    assert!(bytes >= 4_000_000, "the fixture mapped {bytes} B");
    let process = only_process(&traced.snapshot);
    assert_eq!(process["exact"], false);
    assert_eq!(process["allocator"]["name"], "unknown");
    assert_eq!(
        process["hooked_functions"].as_array().map(Vec::len),
        Some(0)
    );
    assert!(process["allocator_not_hooked"]
        .as_str()
        .is_some_and(|why| why.contains("does not know")));
    let heap = &process["heap"];
    assert_eq!(
        heap["anon_mmap_outstanding_bytes"].as_u64(),
        Some(bytes),
        "{heap:#}"
    );
    // The growth is attributed to the stacks that mapped it, through the fixture's allocator.
    let sites = process["sites"].as_array().expect("sites");
    let grown: u64 = sites
        .iter()
        .filter(|s| function_names(s).contains(&"leak_custom"))
        .map(|s| s["growth_events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(grown, chunks, "{sites:#?}");
}

/// A stripped static binary names no malloc: said in one line, its heap syscalls still traced.
#[test]
fn a_stripped_static_binary_is_said_so_and_its_heap_traced() {
    if !privileged() {
        return;
    }
    let exe = fixture("allocators", &["-static", "-s", "-DNO_DLSYM"]);
    let traced = trace_by_pid(Command::new(&exe).arg("attach"), &[]);
    assert!(
        traced
            .leaktrace_lines
            .iter()
            .any(|l| l.contains("stripped static binary") && l.contains("heap growth only")),
        "{}",
        traced.leaktrace_lines.join("\n")
    );
    let process = only_process(&traced.snapshot);
    assert_eq!(process["exact"], false);
    assert!(process["allocator"].is_null(), "{:#}", process["allocator"]);
    // Registered for heap tracing (its work fits in the heap it had: no syscall is expected).
    assert!(process["heap"].is_object(), "{process:#}");
}

/// A target in its own mount namespace, whose executable and libc live on a tmpfs mounted in
/// that namespace only (paths that do not exist on the host): discovery, attaching, symbols and
/// build ids all go through the target's own files (/proc/PID/map_files, /proc/PID/root).
#[test]
fn a_target_in_its_own_mount_namespace_is_traced_through_its_own_files() {
    if !privileged() {
        return;
    }
    let unshare = require_tool("unshare", "util-linux");
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let dir = format!("/mnt/leaktrace-ns-{}", std::process::id());
    assert!(!Path::new(&dir).exists(), "{dir} exists on the host");
    let script = format!(
        "mount -t tmpfs leaktrace-ns /mnt && mkdir {dir} && cp {fixture} {dir}/allocators && \
         cp {libc} {dir}/ && LD_LIBRARY_PATH={dir} exec {dir}/allocators attach",
        fixture = allocators_fixture().display(),
        libc = libc.display(),
    );
    let process = assert_exact_under(
        Command::new(unshare).args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        "glibc",
        &[],
    );
    let module = format!("{dir}/libc.so.6");
    assert_eq!(process["allocator"]["module"], module.as_str());
    assert!(
        !Path::new(&module).exists(),
        "{module} is visible on the host"
    );
    // The fixture's own frames were symbolized from its file inside the namespace.
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| top_function(s) == Some("leak_malloc"))
        .expect("leak_malloc site");
    let frame = &site["frames"][0];
    assert_eq!(
        frame["module"],
        format!("{dir}/allocators").as_str(),
        "{frame:#}"
    );
    assert!(
        frame["build_id"].as_str().is_some_and(|id| id.len() == 40),
        "{frame:#}"
    );
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

/// A process in a cgroup named the way docker names a container's (`docker-ID.scope`) is
/// labelled with that cgroup and container id, in the JSON and the headless table.
#[test]
fn a_process_in_a_container_cgroup_is_labelled_with_it() {
    if !privileged() {
        return;
    }
    let Some(root) = cgroup2_mount() else {
        eprintln!("SKIPPED: no cgroup v2 hierarchy is mounted on this machine");
        return;
    };
    let id = format!("{:016x}", std::process::id()).repeat(4);
    let parent = root.join(format!("leaktrace-test-{}", std::process::id()));
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("create the cgroup");
    let traced = trace_by_pid_after(
        Command::new(allocators_fixture()).arg("attach"),
        &[],
        |pid| {
            std::fs::write(scope.join("cgroup.procs"), pid.to_string())
                .expect("move the fixture into the cgroup");
        },
    );
    // The fixture has exited: the cgroups are empty.
    let _ = std::fs::remove_dir(&scope);
    let _ = std::fs::remove_dir(&parent);
    let process = only_process(&traced.snapshot);
    let cgroup = &process["cgroup"];
    let expected_path = format!("/leaktrace-test-{}/docker-{id}.scope", std::process::id());
    assert_eq!(cgroup["path"], expected_path.as_str(), "{cgroup:#}");
    assert_eq!(cgroup["container_id"], id.as_str(), "{cgroup:#}");
    assert_eq!(cgroup["runtime"], "docker", "{cgroup:#}");
    let short = &id[..12];
    assert!(
        traced
            .leaktrace_lines
            .iter()
            .any(|l| l.contains(&format!("container docker {short}"))),
        "{}",
        traced.leaktrace_lines.join("\n")
    );
}

/// A jemalloc linked into the executable under the `je_` prefix serves its callers beside
/// libc's malloc: both are hooked, each call counted once, exactly.
#[test]
fn a_prefixed_jemalloc_in_the_executable_is_hooked_beside_glibc() {
    if !privileged() {
        return;
    }
    let exe = fixture("prefixed_jemalloc", &[]);
    let traced = trace_by_pid(&mut Command::new(&exe), &[]);
    let process = only_process(&traced.snapshot);
    assert_eq!(process["allocator"]["name"], "glibc", "{process:#}");
    let beside = &process["more_allocators"][0];
    assert_eq!(beside["name"], "jemalloc", "{beside:#}");
    assert_eq!(beside["prefix"], "je_", "{beside:#}");
    assert_eq!(beside["linked_into_executable"], true, "{beside:#}");
    let expected = expectations(&traced.fixture_lines);
    assert_eq!(expected.len(), 3, "{:?}", traced.fixture_lines);
    for (function, (bytes, blocks)) in &expected {
        let (outstanding, count, _, _) = totals_for(process, function);
        assert_eq!(
            (outstanding, count),
            (*bytes, *blocks),
            "{function}: sites:\n{}",
            site_summary(process)
        );
    }
    assert_eq!(totals_for(process, "churn").0, 0);
    assert_eq!(process["counters"]["unknown_frees"], 0);
    assert_eq!(process["counters"]["lost_events"], 0);
}
