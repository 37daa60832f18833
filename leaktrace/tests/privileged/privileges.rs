//! leaktrace with only the capabilities SECURITY.md documents, as an ordinary user: through
//! ambient capabilities (systemd's `AmbientCapabilities=`) and through file capabilities
//! (`setcap`), tracing a fixture whose leak is known exactly.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::common::{fixture, leaktrace_bin, privileged};

/// Growth mode: eBPF programs and perf events (BPF, PERFMON), other users' /proc files and
/// memory (SYS_PTRACE), tracefs, which is root's 0700 (DAC_READ_SEARCH), and the exact mapped
/// files through /proc/PID/map_files (CHECKPOINT_RESTORE).
const GROWTH_CAPS: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "checkpoint_restore",
];
/// Exact mode adds SYS_ADMIN: on this kernel (6.18) perf_event_open of a uprobe asks for it.
const EXACT_EXTRA_CAP: &str = "sys_admin";
const NOBODY: u32 = 65534;

/// A directory the unprivileged user can use: the fixture's copy, the binary's copy, the JSON.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("leaktrace-caps")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    dir
}

/// The path's every ancestor must be searchable by nobody (the target dir under /work is).
fn copy_executable(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(from, &to).expect("copy");
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// A work directory with a copy of leaktrace that nobody may run.
fn workdir_with_leaktrace() -> (tempfile::TempDir, PathBuf) {
    let dir = workdir();
    let leaktrace = copy_executable(Path::new(leaktrace_bin()), dir.path(), "leaktrace");
    (dir, leaktrace)
}

fn exact_caps() -> Vec<&'static str> {
    let mut caps = GROWTH_CAPS.to_vec();
    caps.push(EXACT_EXTRA_CAP);
    caps
}

fn caps_arg(caps: &[&str]) -> String {
    caps.iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Run as nobody with `ambient` capabilities raised (none: only what the file grants).
fn run_as_nobody(ambient: &[&str], command: &[&str]) -> (i32, String) {
    let mut setpriv = Command::new("setpriv");
    setpriv.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
    ]);
    if !ambient.is_empty() {
        setpriv.arg(format!("--inh-caps={}", caps_arg(ambient)));
        setpriv.arg(format!("--ambient-caps={}", caps_arg(ambient)));
    }
    let output = setpriv.args(command).output().expect("setpriv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn steady_leak(snapshot: &Value) -> (u64, u64) {
    let process = &snapshot["processes"][0];
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| {
            s["frames"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["function"] == "steady_leak"))
        })
        .unwrap_or_else(|| panic!("no steady_leak site in {process:#}"));
    (
        site["outstanding_bytes"].as_u64().expect("bytes"),
        site["outstanding_count"].as_u64().expect("count"),
    )
}

fn trace_steady(leaktrace: &Path, dir: &Path, mode: &str, ambient: &[&str]) -> Value {
    let leak = copy_executable(&fixture("alloc_patterns", &[]), dir, "alloc_patterns");
    let json = dir.join(format!("{mode}.json"));
    let (code, output) = run_as_nobody(
        ambient,
        &[
            leaktrace.to_str().expect("utf-8"),
            "--mode",
            mode,
            "--headless",
            "--interval",
            "1s",
            "--json",
            json.to_str().expect("utf-8"),
            "--",
            leak.to_str().expect("utf-8"),
            "steady",
            "2",
        ],
    );
    assert_eq!(code, 0, "leaktrace as nobody failed:\n{output}");
    serde_json::from_slice(&fs::read(&json).expect("snapshot written")).expect("JSON")
}

#[test]
fn exact_mode_with_the_documented_ambient_capabilities_counts_the_leak_exactly() {
    if !privileged() {
        return;
    }
    let (dir, leaktrace) = workdir_with_leaktrace();
    let caps = exact_caps();
    let snapshot = trace_steady(&leaktrace, dir.path(), "exact", &caps);
    // steady 2: 200 rounds of one 100-byte leak.
    assert_eq!(steady_leak(&snapshot), (20_000, 200));
}

#[test]
fn growth_mode_needs_no_sys_admin() {
    if !privileged() {
        return;
    }
    let (dir, leaktrace) = workdir_with_leaktrace();
    let snapshot = trace_steady(&leaktrace, dir.path(), "growth", GROWTH_CAPS);
    let process = &snapshot["processes"][0];
    assert_eq!(process["comm"], "alloc_patterns");
    // The program's first heap growth is its constructor's allocation: named through the
    // modules' unwind tables, which nobody could read without the capabilities.
    let site = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["frames"][0]["function"] == "allocate_before_main")
        .unwrap_or_else(|| panic!("no growth named allocate_before_main: {process:#}"));
    assert_eq!(site["frames"][1]["function"], "before_main", "{site:#}");
    assert!(
        site["allocated_bytes"].as_u64().expect("bytes") >= 4242,
        "{site:#}"
    );
}

#[test]
fn the_setcap_recipe_lets_an_ordinary_user_trace_exactly() {
    if !privileged() {
        return;
    }
    let (dir, leaktrace) = workdir_with_leaktrace();
    let caps = exact_caps();
    // The recipe of SECURITY.md, word for word.
    let file_caps = format!(
        "{}+ep",
        caps.iter()
            .map(|c| format!("cap_{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let status = Command::new(crate::common::require_tool("setcap", "libcap2-bin"))
        .arg(&file_caps)
        .arg(&leaktrace)
        .status()
        .expect("run setcap");
    assert!(status.success(), "setcap {file_caps} failed");
    let snapshot = trace_steady(&leaktrace, dir.path(), "exact", &[]);
    assert_eq!(steady_leak(&snapshot), (20_000, 200));
}

#[test]
fn without_sys_admin_exact_mode_fails_in_one_line_naming_it() {
    if !privileged() {
        return;
    }
    let (dir, leaktrace) = workdir_with_leaktrace();
    let leak = copy_executable(
        &fixture("alloc_patterns", &[]),
        dir.path(),
        "alloc_patterns",
    );
    let (code, output) = run_as_nobody(
        GROWTH_CAPS,
        &[
            leaktrace.to_str().expect("utf-8"),
            "--headless",
            "--",
            leak.to_str().expect("utf-8"),
            "steady",
            "1",
        ],
    );
    assert_eq!(code, 1, "{output}");
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("leaktrace: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{output}");
    assert!(errors[0].contains("CAP_SYS_ADMIN"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

/// The capabilities a root leaktrace keeps once attached, with `--json` and a launched command
/// (privileges.rs): BPF, PERFMON, SYS_ADMIN (later attaches), SYS_PTRACE, DAC_READ_SEARCH,
/// CHECKPOINT_RESTORE (the target's /proc files and modules), DAC_OVERRIDE and FOWNER (the JSON),
/// KILL (the launched command).
const KEPT_BY_ROOT: &[u32] = &[39, 38, 21, 19, 2, 40, 1, 3, 5];

/// Each thread's capability sets of process `pid`: (thread name, field, mask).
fn thread_capabilities(pid: u32) -> Vec<(String, String, u64)> {
    let mut sets = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let (Ok(status), Ok(name)) = (
            fs::read_to_string(task.path().join("status")),
            fs::read_to_string(task.path().join("comm")),
        ) else {
            continue;
        };
        for line in status.lines() {
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            if field.starts_with("Cap") {
                let mask = u64::from_str_radix(value.trim(), 16).expect("hex capability set");
                sets.push((name.trim().to_string(), field.to_string(), mask));
            }
        }
    }
    sets
}

#[test]
fn root_leaktrace_drops_the_capabilities_it_no_longer_needs_once_attached() {
    if !privileged() {
        return;
    }
    let kept = KEPT_BY_ROOT.iter().fold(0u64, |mask, cap| mask | 1 << cap);
    // The HTTP thread, which parses network input, keeps nothing at all.
    let expected = |thread: &str, field: &str| match (thread, field) {
        ("leaktrace-http", _) => 0,
        (_, "CapEff" | "CapPrm" | "CapBnd") => kept,
        _ => 0,
    };
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut run = crate::common::Run::start(&[
        "--headless",
        "--interval",
        "300ms",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:21781",
        "--",
        fixture.to_str().expect("utf-8 path"),
        "leak",
    ]);
    run.wait_for("finished leak", std::time::Duration::from_secs(30));
    assert!(
        thread_capabilities(run.pid())
            .iter()
            .any(|(thread, _, _)| thread == "leaktrace-http"),
        "the HTTP thread runs"
    );
    // The drop follows the attach, which releases the command: poll until it shows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let wrong = loop {
        let wrong: Vec<_> = thread_capabilities(run.pid())
            .into_iter()
            .filter(|(thread, field, mask)| *mask != expected(thread, field))
            .collect();
        if wrong.is_empty() || std::time::Instant::now() > deadline {
            break wrong;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        wrong.is_empty(),
        "threads of leaktrace with other capability sets than {kept:#x}: {wrong:x?}"
    );
    // Tracing goes on without them: the leak made before and after the drop is counted exactly,
    // and the JSON is written.
    run.send_line();
    let (code, lines) = run.finish(std::time::Duration::from_secs(60));
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&fs::read(&json).expect("final JSON")).expect("JSON parses");
    let process = crate::common::only_process(&snapshot);
    assert_eq!(
        crate::common::totals_for(process, "leak_exactly").0,
        500 * 100,
        "{process:#?}"
    );
}
