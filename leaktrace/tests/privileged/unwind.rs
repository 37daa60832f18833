//! Exact mode's in-kernel unwinding (issue 12): stacks through code built without frame
//! pointers, unwound by the eBPF program from the tables compiled from the modules' CFI. Each
//! fixture leaks exactly N x S bytes from one stack whose every frame is known.
use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;

use crate::common::*;

const N: u64 = 200;
const S: u64 = 48;
const FLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];

fn deep() -> (PathBuf, PathBuf) {
    program_with_library("unwind", "deeplib", "deep", FLAGS)
}

/// `prefix_level_12` .. `prefix_level_1`, after the leaf.
fn chain(prefix: &str) -> Vec<String> {
    std::iter::once(format!("{prefix}_leaf"))
        .chain((1..=12).rev().map(|n| format!("{prefix}_level_{n}")))
        .collect()
}

fn trace_deep(mode: &str) -> Value {
    let (exe, _) = deep();
    trace_command(
        &["--interval", "300ms"],
        &[exe.to_str().expect("utf-8 path"), mode],
        (&format!("finished {mode}"), Duration::from_secs(60)),
        Duration::from_millis(400),
    )
    .0
}

/// The one site whose innermost frame is `leaf`, with every counter checked.
fn leak_site<'a>(process: &'a Value, leaf: &str) -> &'a Value {
    let sites: Vec<&Value> = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| top_function(s) == Some(leaf))
        .collect();
    assert_eq!(sites.len(), 1, "one stack leaks from {leaf}: {sites:#?}");
    let site = sites[0];
    assert_eq!(site["outstanding_bytes"], N * S, "{site:#}");
    assert_eq!(site["outstanding_count"], N, "{site:#}");
    site
}

fn assert_no_stack_errors(process: &Value) {
    let counters = &process["counters"];
    for reason in [
        "stack_errors",
        "stack_no_table",
        "stack_unwind_errors",
        "stack_truncated",
        "stack_map_full",
    ] {
        assert_eq!(counters[reason], 0, "{reason}: {counters}");
    }
}

/// `names` has `expected` in this order, each right after the previous one.
fn assert_consecutive(names: &[&str], expected: &[&str]) {
    let start = names
        .iter()
        .position(|n| *n == expected[0])
        .unwrap_or_else(|| panic!("no {} in {names:?}", expected[0]));
    assert_eq!(
        &names[start..(start + expected.len()).min(names.len())],
        expected,
        "{names:?}"
    );
}

#[test]
fn stacks_through_code_without_frame_pointers_are_whole_in_the_executable() {
    if !privileged() {
        return;
    }
    let snapshot = trace_deep("exe");
    let process = only_process(&snapshot);
    let site = leak_site(process, "exe_leaf");
    let names = function_names(site);
    let mut expected = chain("exe");
    expected.extend(["leak_in_exe".into(), "main".into()]);
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    // Down to the outermost frame, whose CFI says there is no caller.
    assert_eq!(names.last(), Some(&"_start"), "{names:?}");
    assert_no_stack_errors(process);
    let tables = &snapshot["unwind_tables"];
    assert!(
        tables["peak_bytes"].as_u64().is_some_and(|b| b > 0),
        "{tables}"
    );
}

#[test]
fn stacks_through_code_without_frame_pointers_are_whole_in_a_library() {
    if !privileged() {
        return;
    }
    let snapshot = trace_deep("lib");
    let process = only_process(&snapshot);
    let site = leak_site(process, "lib_leaf");
    let names = function_names(site);
    let mut expected = chain("lib");
    expected.extend(["leak_in_lib".into(), "main".into()]);
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    assert!(site["frames"][0]["module"]
        .as_str()
        .is_some_and(|m| m.ends_with("libdeeplib.so")));
    assert_no_stack_errors(process);
}

#[test]
fn stacks_from_a_signal_handler_continue_in_the_interrupted_code() {
    if !privileged() {
        return;
    }
    let snapshot = trace_deep("signal");
    let process = only_process(&snapshot);
    let site = leak_site(process, "exe_leaf");
    let names = function_names(site);
    let expected = chain("exe");
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    // The handler was entered from kill(), interrupted in raise_signals: past the signal frame
    // the walk goes on from the interrupted instruction.
    let rest = &names[expected.len()..];
    let raise = rest
        .iter()
        .position(|n| *n == "raise_signals")
        .unwrap_or_else(|| panic!("no raise_signals after the signal frame: {names:?}"));
    assert!(
        rest[..raise].iter().any(|n| n.contains("kill")),
        "the interrupted kill() is missing: {names:?}"
    );
    assert_eq!(rest.get(raise + 1), Some(&"main"), "{names:?}");
    assert_no_stack_errors(process);
}

#[test]
fn stacks_at_the_entry_of_a_plt_stub_reach_its_caller() {
    if !privileged() {
        return;
    }
    let snapshot = trace_deep("plt");
    let process = only_process(&snapshot);
    let site = leak_site(process, "exe_leaf");
    let names = function_names(site);
    let mut expected = chain("exe");
    expected.push("on_fault".into());
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    // The fault's pc is the PLT stub's first instruction (lib_level_1@plt): its frame is only
    // the return address pushed by the call, to call_through_plt.
    let frames = site["frames"].as_array().expect("frames");
    let at = |name: &str| {
        frames
            .iter()
            .position(|f| f["function"] == name)
            .unwrap_or_else(|| panic!("no {name}: {names:?}"))
    };
    let (handler, caller) = (at("on_fault"), at("call_through_plt"));
    // handler, __restore_rt (the signal frame), the stub, its caller.
    assert_eq!(caller, handler + 3, "{frames:#?}");
    assert_consecutive(&names, &["call_through_plt", "leak_at_plt_entry", "main"]);
    assert_no_stack_errors(process);
}

#[test]
fn stacks_in_a_thread_end_at_its_start() {
    if !privileged() {
        return;
    }
    let snapshot = trace_deep("thread");
    let process = only_process(&snapshot);
    let site = leak_site(process, "exe_leaf");
    let names = function_names(site);
    let mut expected = chain("exe");
    expected.extend([
        "leak_in_exe".into(),
        "thread_main".into(),
        "start_thread".into(),
    ]);
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    assert_no_stack_errors(process);
}

/// The executable modules a process maps now (distinct files).
fn mapped_modules(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut files: Vec<(String, String)> = maps
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 6 && fields[1].contains('x') && fields[4] != "0")
                .then(|| (fields[3].to_string(), fields[4].to_string()))
        })
        .collect();
    files.sort();
    files.dedup();
    files.len()
}

#[test]
fn stacks_through_a_dlopened_library_once_its_table_is_loaded() {
    if !privileged() {
        return;
    }
    let (exe, lib) = deep();
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy: another file than the library the program links, so dlopen maps it anew.
    let copy = dir.path().join("libdeeplib-dl.so");
    std::fs::copy(&lib, &copy).expect("copy the library");
    let json = dir.path().join("snapshot.json");
    let mut run = Run::start(&[
        "--interval",
        "200ms",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--",
        exe.to_str().expect("utf-8 path"),
        "dlopen",
        copy.to_str().expect("utf-8 path"),
    ]);
    run.wait_for("loaded", Duration::from_secs(60));
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|maps| maps.contains(copy.to_str().expect("utf-8 path")))
        })
        .expect("the fixture maps the copy");
    let modules = mapped_modules(pid) as u64;
    // Leaktrace reads the new mapping and loads the library's table: every module the process
    // maps has its table.
    wait_for_snapshot(&json, Duration::from_secs(60), |s| {
        s["unwind_tables"]["modules"].as_u64() == Some(modules)
    });
    run.send_line();
    run.wait_for("finished dlopen", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(400));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("final JSON")).expect("JSON");
    validate_schema(&snapshot);
    let process = only_process(&snapshot);
    let site = leak_site(process, "lib_leaf");
    let names = function_names(site);
    let mut expected = chain("lib");
    expected.extend(["leak_through_dlopen".into(), "main".into()]);
    assert_eq!(&names[..expected.len()], expected.as_slice(), "{names:?}");
    assert!(
        site["frames"][0]["module"]
            .as_str()
            .is_some_and(|m| m.ends_with("libdeeplib-dl.so")),
        "{site:#}"
    );
    assert_no_stack_errors(process);
}

fn x509_fixture() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let output = dir.join(format!("x509leak-{}", std::process::id()));
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/unwind/x509leak.c");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-o"])
        .arg(&output)
        .arg(&source)
        .arg("-lcrypto")
        .status()
        .expect("run gcc");
    assert!(
        status.success(),
        "gcc failed on x509leak.c: run `cargo xtask setup` (it installs libssl-dev)"
    );
    output
}

#[test]
fn a_leak_through_debian_s_libcrypto_reaches_the_caller() {
    if !privileged() {
        return;
    }
    let fixture = x509_fixture();
    let (snapshot, _) = trace_command(
        &["--interval", "300ms"],
        &[fixture.to_str().expect("utf-8 path")],
        ("finished x509", Duration::from_secs(60)),
        Duration::from_millis(400),
    );
    let process = only_process(&snapshot);
    // The X509_STORE_CTX itself: allocated in libcrypto (CRYPTO_zalloc <- X509_STORE_CTX_new_ex),
    // called by the fixture's verify_request, 100 times, never freed.
    let sites: Vec<&Value> = process["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| {
            let names = function_names(s);
            names.iter().any(|n| n.starts_with("X509_STORE_CTX_new"))
                && names.contains(&"verify_request")
        })
        .collect();
    assert_eq!(sites.len(), 1, "{sites:#?}");
    let site = sites[0];
    assert_eq!(site["outstanding_count"], 100, "{site:#}");
    let names = function_names(site);
    let new = names
        .iter()
        .position(|n| n.starts_with("X509_STORE_CTX_new"))
        .expect("X509_STORE_CTX_new");
    assert_eq!(
        &names[new + 1..new + 4],
        ["verify_request", "serve", "main"],
        "{names:?}"
    );
    // Every frame above the fixture's is libcrypto's.
    let frames = site["frames"].as_array().expect("frames");
    for frame in &frames[..=new] {
        assert!(
            frame["module"]
                .as_str()
                .is_some_and(|m| m.contains("libcrypto")),
            "{frame}"
        );
    }
    assert_no_stack_errors(process);
}
