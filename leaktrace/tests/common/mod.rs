//! Helpers for the integration tests: build the C fixtures, run leaktrace on them (through
//! leaktrace-supervisor, so nothing outlives a failed test), read its JSON.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::{Path, PathBuf},
    process::{ChildStdin, Command},
    sync::OnceLock,
    time::{Duration, Instant},
};

use leaktrace_supervisor::{Input, Line, Lines, Supervised};
use serde_json::Value;

pub mod files;

pub fn leaktrace_bin() -> &'static str {
    env!("CARGO_BIN_EXE_leaktrace")
}

/// Run leaktrace to completion: (exit code, stdout, stderr).
pub fn leaktrace(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(leaktrace_bin())
        .args(args)
        .output()
        .expect("run leaktrace");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Run a post-mortem command that must succeed; its stdout.
pub fn succeed(args: &[&str]) -> String {
    let (code, stdout, stderr) = leaktrace(args);
    assert_eq!(code, 0, "{args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
    stdout
}

/// Run leaktrace with arguments that must fail with one line on stderr containing `expected`.
pub fn assert_one_line_error(args: &[&str], expected: &str) {
    let (code, _stdout, stderr) = leaktrace(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected for {args:?}, got:\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The path of `tool`, which `cargo xtask setup` installs (Debian's `package`). Its absence is a
/// failure that says how to fix it, never a skipped check.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    which::which(tool).unwrap_or_else(|_| {
        panic!("{tool} is missing: run `cargo xtask setup` (it installs Debian's {package})")
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Privileged tests need root (CI runs as root) and a kernel with uprobes. Not being root is a
/// failure with instructions; a kernel without uprobes is a loud skip.
pub fn privileged() -> bool {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "leaktrace's privileged tests load eBPF programs: run them as root (sudo cargo xtask test)"
    );
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        eprintln!(
            "\n\n*** SKIPPED: this kernel has no uprobe support (CONFIG_UPROBE_EVENTS) ***\n\n"
        );
        return false;
    }
    true
}

/// Compile a fixture from tests/fixtures once per test binary.
pub fn fixture(name: &str, extra_flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().expect("fixture lock");
    let key = format!("{name} {}", extra_flags.join(" "));
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let suffix = if extra_flags.is_empty() {
        String::new()
    } else {
        format!("-{}", built.len())
    };
    let output = dir.join(format!("{name}{suffix}-{}", std::process::id()));
    let source = workspace_root()
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    let status = Command::new("gcc")
        .args([
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-pthread",
            "-Wno-alloc-size-larger-than",
        ])
        .args(extra_flags)
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {}", source.display());
    built.insert(key, output.clone());
    output
}

/// Build `tests/fixtures/DIR/LIBRARY.c` as the shared library `libLIBRARY.so` and
/// `tests/fixtures/DIR/PROGRAM.c` linked to it, with `flags`, once per test binary. The program
/// finds the library beside it (rpath `$ORIGIN`), so a test may copy the two elsewhere.
/// Returns (program, library).
pub fn program_with_library(
    dir: &str,
    library: &str,
    program: &str,
    flags: &[&str],
) -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, (PathBuf, PathBuf)>>,
    > = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .expect("fixture lock");
    let key = format!("{dir} {library} {program} {}", flags.join(" "));
    if let Some(paths) = built.get(&key) {
        return paths.clone();
    }
    let src = workspace_root().join("tests/fixtures").join(dir);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{dir}-fixture-{}-{}",
        std::process::id(),
        built.len()
    ));
    std::fs::create_dir_all(&out).expect("fixture dir");
    let compile = |gcc: &mut Command, source: &str| {
        let status = gcc.status().expect("run gcc");
        assert!(status.success(), "gcc failed on {dir}/{source}.c");
    };
    let lib = out.join(format!("lib{library}.so"));
    compile(
        Command::new("gcc")
            .args(flags)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(src.join(format!("{library}.c"))),
        library,
    );
    let exe = out.join(program);
    compile(
        Command::new("gcc")
            .args(flags)
            .args(["-pthread", "-o"])
            .arg(&exe)
            .arg(src.join(format!("{program}.c")))
            .arg(format!("-L{}", out.display()))
            .arg(format!("-l{library}"))
            .arg("-Wl,-rpath,$ORIGIN"),
        program,
    );
    built.insert(key, (exe.clone(), lib.clone()));
    (exe, lib)
}

/// A running leaktrace whose stdout/stderr lines are collected as they come; killed if the test
/// ends before it does.
pub struct Run {
    leaktrace: Supervised,
}

impl Run {
    pub fn start(args: &[&str]) -> Run {
        let mut command = Command::new(leaktrace_bin());
        command.args(args);
        let leaktrace =
            Supervised::spawn("leaktrace", &mut command, Input::Piped).expect("start leaktrace");
        Run { leaktrace }
    }

    pub fn pid(&self) -> u32 {
        self.leaktrace.pid()
    }

    /// Sends `signal` to leaktrace.
    pub fn signal(&mut self, signal: libc::c_int) {
        self.leaktrace.signal(signal).expect("signal leaktrace");
    }

    /// The pipe on leaktrace's stdin (which a launched command inherits).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.leaktrace.take_stdin().expect("stdin")
    }

    /// Every output line so far, stdout and stderr in arrival order.
    fn seen(&self) -> Vec<String> {
        self.leaktrace
            .log()
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }

    /// Wait for a line containing `needle` (from leaktrace or the traced command).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self
            .leaktrace
            .log()
            .iter()
            .find(|l| l.text.contains(needle))
        {
            return line.text.clone();
        }
        let found = self
            .leaktrace
            .wait_line(timeout, needle, Lines::Either, |l| {
                l.contains(needle).then(|| l.to_string())
            });
        found.unwrap_or_else(|_| {
            self.leaktrace.kill_and_reap();
            panic!(
                "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                self.seen().join("\n")
            )
        })
    }

    pub fn send_line(&mut self) {
        let _ = self.leaktrace.send_line();
    }

    /// Wait for exit; returns the status code and every output line.
    pub fn finish(self, timeout: Duration) -> (i32, Vec<String>) {
        let (code, lines) = self.finish_lines(timeout);
        (code, lines.into_iter().map(|l| l.text).collect())
    }

    /// [`Run::finish`], with each line's stream (leaktrace's warnings go to stderr, its
    /// periodic table to stdout).
    pub fn finish_lines(mut self, timeout: Duration) -> (i32, Vec<Line>) {
        self.leaktrace.close_stdin();
        let Ok(status) = self.leaktrace.wait_exit(timeout) else {
            self.leaktrace.kill_and_reap();
            panic!(
                "leaktrace did not exit within {timeout:?}; saw:\n{}",
                self.seen().join("\n")
            );
        };
        (status.code().unwrap_or(-1), self.leaktrace.log().to_vec())
    }
}

/// Launch `fixture mode` under leaktrace, let it finish its work, release it, and return the
/// final JSON snapshot.
pub fn trace_fixture(mode: &str, extra: &[&str]) -> Value {
    trace_fixture_args(mode, "300ms", extra)
}

pub fn trace_fixture_with_interval(mode: &str, interval: &str) -> Value {
    trace_fixture_args(mode, interval, &[])
}

fn trace_fixture_args(mode: &str, interval: &str, extra: &[&str]) -> Value {
    let fixture = fixture("alloc_patterns", &[]);
    let mut options = vec!["--interval", interval];
    options.extend_from_slice(extra);
    // Leaktrace sees the process alive once more (mappings, a sample) before it exits.
    trace_command(
        &options,
        &[fixture.to_str().expect("utf-8 path"), mode],
        (&format!("finished {mode}"), Duration::from_secs(30)),
        Duration::from_millis(400),
    )
    .0
}

/// Launch `command` under `leaktrace OPTIONS --json PATH --`, wait (at most `within`) for a
/// line containing `finished`, wait `linger`, release the command (a line on its stdin), and
/// return the final snapshot (checked against the schema) and every output line.
pub fn trace_command(
    options: &[&str],
    command: &[&str],
    (finished, within): (&str, Duration),
    linger: Duration,
) -> (Value, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut args = options.to_vec();
    args.extend_from_slice(&["--json", json.to_str().expect("utf-8 path"), "--"]);
    args.extend_from_slice(command);
    let mut run = Run::start(&args);
    run.wait_for(finished, within);
    std::thread::sleep(linger);
    release_and_read(run, &json)
}

/// Release a launched command (a line on its stdin), wait for leaktrace to exit 0, and return
/// the final snapshot at `json` (checked against the schema) and every output line.
pub fn release_and_read(mut run: Run, json: &Path) -> (Value, Vec<String>) {
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));
    let snapshot: Value = serde_json::from_slice(&std::fs::read(json).expect("final JSON exists"))
        .expect("JSON parses");
    validate_schema(&snapshot);
    (snapshot, lines)
}

pub fn validate_schema(snapshot: &Value) {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(workspace_root().join("docs/leaktrace-1.schema.json"))
            .expect("schema file");
        let schema: Value = serde_json::from_str(&text).expect("schema parses");
        jsonschema::validator_for(&schema).expect("schema compiles")
    });
    let errors: Vec<String> = validator
        .iter_errors(snapshot)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "snapshot does not match docs/leaktrace-1.schema.json: {errors:#?}"
    );
}

pub fn only_process(snapshot: &Value) -> &Value {
    let processes = snapshot["processes"].as_array().expect("processes");
    assert_eq!(processes.len(), 1, "{snapshot:#}");
    &processes[0]
}

/// The name of the innermost named frame of a site.
pub fn top_function(site: &Value) -> Option<&str> {
    site["frames"]
        .as_array()?
        .iter()
        .find_map(|f| f["function"].as_str())
}

/// (outstanding bytes, outstanding count, allocated count, freed count) summed over the sites
/// whose innermost named frame is `function`.
pub fn totals_for(process: &Value, function: &str) -> (u64, u64, u64, u64) {
    let mut totals = (0, 0, 0, 0);
    for site in process["sites"].as_array().expect("sites") {
        if top_function(site) == Some(function) {
            totals.0 += site["outstanding_bytes"].as_u64().expect("u64");
            totals.1 += site["outstanding_count"].as_u64().expect("u64");
            totals.2 += site["allocated_count"].as_u64().expect("u64");
            totals.3 += site["freed_count"].as_u64().expect("u64");
        }
    }
    totals
}

pub fn function_names(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| f["function"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// A snapshot recorded with the real tool, from tests/data.
pub fn data_file(name: &str) -> PathBuf {
    workspace_root().join("tests/data").join(name)
}

/// Poll the snapshot at `path` (rewritten atomically by leaktrace) until `ready` accepts it.
pub fn wait_for_snapshot(path: &Path, timeout: Duration, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(snapshot) = serde_json::from_slice::<Value>(&bytes) {
                if ready(&snapshot) {
                    return snapshot;
                }
                last = Some(snapshot);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never became ready within {timeout:?}; last snapshot: {last:#?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
