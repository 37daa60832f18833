//! Hostile target files (SECURITY.md, "Files leaktrace reads for a target"): a process maps
//! libhostile.so, then the library's path is replaced by a FIFO, by a link to a 50 GB (sparse)
//! file or by a truncated copy, and only then is leaktrace attached and the process leaks
//! through the library. leaktrace neither blocks nor crashes: it says once, on stderr, that it
//! cannot read the module and why, names the frames it can, counts the leak, and ends cleanly.
//!
//! As root, leaktrace reads the very file a process mapped through /proc/PID/map_files, and the
//! replaced inode lives on while it is mapped: growth mode's unwinder reads its `.eh_frame`
//! there, so its stacks stay complete through the library. Naming functions goes by the path
//! the process sees (blazesym opens the module itself): there the library is unreadable, and its
//! frames keep only their module and offset.

use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use leaktrace_supervisor::{Input, Stream, Supervised};
use serde_json::Value;

use crate::common::*;

/// tests/fixtures/hostile/hostile_target.c: 200 blocks of 100 B and 64 of 64 KiB, kept.
const SMALL_LEAK: (u64, u64) = (200 * 100, 200);
const LARGE_LEAK: (u64, u64) = (64 * 64 * 1024, 64);
/// glibc's first heap (132 KiB), already there when leaktrace attaches: its free part serves
/// the first blocks without growing the heap.
const FIRST_HEAP: u64 = 132 * 1024;
/// What growth mode must see at least: the leak less the first heap.
const LEAST_GROWTH: u64 = SMALL_LEAK.0 + LARGE_LEAK.0 - FIRST_HEAP;
/// The program's function that calls into the library.
const CALLER: &str = "leak_through_library";
/// Long enough for a loaded 2-core machine; a leaktrace that blocks never gets there.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Replacement {
    Fifo,
    LinkToHugeFile,
    TruncatedElf,
}

impl Replacement {
    /// Put the replacement beside `library`, then rename it over the library's path, as the
    /// process (or anyone who can write the directory) could. The process keeps its mapping of
    /// the old file.
    fn plant(self, library: &Path) {
        let planted = library.with_extension("so.planted");
        match self {
            Replacement::Fifo => {
                let path = std::ffi::CString::new(planted.as_os_str().as_encoded_bytes())
                    .expect("path without NUL");
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0, "mkfifo");
            }
            Replacement::LinkToHugeFile => {
                let huge = library.with_file_name("huge");
                // Sparse: 50 GB that cost no disk.
                fs::File::create(&huge)
                    .expect("create")
                    .set_len(50 << 30)
                    .expect("set_len");
                symlink(&huge, &planted).expect("symlink");
            }
            Replacement::TruncatedElf => {
                let elf = fs::read(library).expect("read the library");
                fs::write(&planted, &elf[..4096]).expect("write the truncated copy");
            }
        }
        fs::rename(&planted, library).expect("rename over the library");
    }

    /// Words of the reason leaktrace gives: target_files' own for what it refuses to open; for
    /// the truncated file, which is a regular file of a sane size, the ELF parser's.
    fn reason(self) -> &'static str {
        match self {
            Replacement::Fifo => "is not a regular file but a FIFO",
            Replacement::LinkToHugeFile => "is 53687091200 bytes, more than any module",
            Replacement::TruncatedElf => "ELF",
        }
    }
}

/// What one traced run left: the final snapshot, leaktrace's stderr, the target.
struct Outcome {
    snapshot: Value,
    stderr: Vec<String>,
    pid: u32,
    library: String,
}

impl Outcome {
    fn process(&self) -> &Value {
        self.snapshot["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .find(|p| p["pid"] == self.pid)
            .unwrap_or_else(|| panic!("pid {} not in the snapshot", self.pid))
    }

    /// The sites whose stack goes through the program's caller of the library.
    fn caller_sites(&self) -> Vec<&Value> {
        self.process()["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .filter(|s| function_names(s).contains(&CALLER))
            .collect()
    }

    /// Every site through the caller reaches it from the library, whose frame keeps its module
    /// and offset but has no name: the file at its path could not be read.
    fn assert_library_frames_unnamed(&self) {
        for site in self.caller_sites() {
            let frames = site["frames"].as_array().expect("frames");
            let caller = frames
                .iter()
                .position(|f| f["function"] == CALLER)
                .expect("caller frame");
            let library_frame = caller
                .checked_sub(1)
                .map(|i| &frames[i])
                .unwrap_or_else(|| panic!("no frame before {CALLER}: {site:#}"));
            assert_eq!(library_frame["module"], self.library.as_str(), "{site:#}");
            assert!(library_frame["offset"].is_u64(), "{site:#}");
            assert!(library_frame["function"].is_null(), "{site:#}");
        }
    }

    /// Exactly one stderr line names the library, with the reason it is unreadable.
    fn assert_reported_unreadable(&self, replacement: Replacement) {
        let naming: Vec<&String> = self
            .stderr
            .iter()
            .filter(|l| l.contains(&self.library))
            .collect();
        assert_eq!(
            naming.len(),
            1,
            "one line naming {} expected on stderr:\n{}",
            self.library,
            self.stderr.join("\n")
        );
        eprintln!("{replacement:?}: {}", naming[0]);
        assert!(
            naming[0].contains(replacement.reason()),
            "{replacement:?}: {:?} not in {:?}",
            replacement.reason(),
            naming[0]
        );
    }
}

fn sum_outstanding<'a>(sites: impl IntoIterator<Item = &'a Value>) -> (u64, u64) {
    sites.into_iter().fold((0, 0), |(bytes, count), s| {
        (
            bytes + s["outstanding_bytes"].as_u64().expect("bytes"),
            count + s["outstanding_count"].as_u64().expect("count"),
        )
    })
}

/// The sites of `pid` in `snapshot` whose stack goes through the caller.
fn caller_totals(snapshot: &Value, pid: u32) -> (u64, u64) {
    let sites = snapshot["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pid"] == pid)
        .flat_map(|p| p["sites"].as_array().into_iter().flatten())
        .filter(|s| function_names(s).contains(&CALLER));
    sum_outstanding(sites)
}

/// Start the program, replace its library, attach leaktrace in `mode`, let the program leak,
/// wait for a snapshot that holds the leak, then end leaktrace with SIGINT.
fn trace_hostile(replacement: Replacement, mode: &str) -> Outcome {
    let (program, library) = program_with_library(
        "hostile",
        "hostile",
        "hostile_target",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    // A copy per test: the replacement destroys the library's path. Canonical, as the kernel
    // prints mapped paths.
    let dir = tempfile::Builder::new()
        .prefix("hostile")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let dir_path = dir.path().canonicalize().expect("canonical");
    let program_copy = dir_path.join("hostile_target");
    let library_copy = dir_path.join("libhostile.so");
    fs::copy(&program, &program_copy).expect("copy the program");
    fs::copy(&library, &library_copy).expect("copy the library");

    let mut target = Supervised::spawn(
        "hostile_target",
        &mut Command::new(&program_copy),
        Input::Piped,
    )
    .expect("start the program");
    let pid = target
        .wait_stdout(PATIENCE, "ready line", |l| {
            l.strip_prefix("ready ")?.trim().parse::<u32>().ok()
        })
        .expect("ready line");
    assert_eq!(pid, target.pid());
    replacement.plant(&library_copy);

    let json = dir_path.join("snapshot.json");
    let pid_arg = pid.to_string();
    let mut run = Run::start(&[
        "--pid",
        &pid_arg,
        "--mode",
        mode,
        "--headless",
        "--interval",
        "500ms",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    run.wait_for(&format!("tracing pid {pid}"), PATIENCE);
    target.send_line().expect("release the program");
    target
        .wait_stdout(PATIENCE, "done line", |l| (l == "done").then_some(()))
        .expect("done line");
    // Snapshots keep coming while the module is unreadable: tracing goes on.
    let leaked = |snapshot: &Value| {
        let (bytes, count) = caller_totals(snapshot, pid);
        match mode {
            "exact" => count >= SMALL_LEAK.1 + LARGE_LEAK.1,
            _ => bytes >= LEAST_GROWTH,
        }
    };
    wait_for_snapshot(&json, PATIENCE, leaked);
    let interrupted = Instant::now();
    run.signal(libc::SIGINT);
    let (code, lines) = run.finish_lines(PATIENCE);
    let ending = interrupted.elapsed();
    let stderr: Vec<String> = lines
        .into_iter()
        .filter(|l| l.stream == Stream::Stderr)
        .map(|l| l.text)
        .collect();
    assert_eq!(code, 0, "leaktrace failed:\n{}", stderr.join("\n"));
    assert!(
        !stderr.iter().any(|l| l.contains("panicked")),
        "{}",
        stderr.join("\n")
    );
    target.send_line().expect("let the program exit");
    assert!(target.wait_exit(PATIENCE).expect("program exits").success());

    let snapshot: Value =
        serde_json::from_slice(&fs::read(&json).expect("final JSON written")).expect("JSON");
    validate_schema(&snapshot);
    eprintln!("{replacement:?} {mode}: leaktrace ended {ending:?} after SIGINT");
    Outcome {
        snapshot,
        stderr,
        pid,
        library: library_copy.display().to_string(),
    }
}

/// Exact mode counts every block, and names the program's frames around the unreadable one.
fn exact_mode_goes_on(replacement: Replacement) {
    if !privileged() {
        return;
    }
    let outcome = trace_hostile(replacement, "exact");
    let sites = outcome.caller_sites();
    assert_eq!(
        sum_outstanding(sites.iter().copied()),
        (SMALL_LEAK.0 + LARGE_LEAK.0, SMALL_LEAK.1 + LARGE_LEAK.1),
        "{:#}",
        outcome.process()
    );
    // The two loops call the library from two places: two stacks, two sites.
    for leak in [SMALL_LEAK, LARGE_LEAK] {
        assert!(
            sites.iter().any(|s| sum_outstanding([*s]) == leak),
            "no site with {leak:?}: {sites:#?}"
        );
    }
    outcome.assert_library_frames_unnamed();
    outcome.assert_reported_unreadable(replacement);
}

/// Growth mode sees the heap grow by the leak (less what the first heap held), on stacks unwound
/// through the library (read through map_files), and cannot name the library's frame.
fn growth_mode_goes_on(replacement: Replacement) {
    if !privileged() {
        return;
    }
    let outcome = trace_hostile(replacement, "growth");
    assert_eq!(outcome.snapshot["mode"], "growth");
    let (grown, _) = sum_outstanding(outcome.caller_sites());
    assert!(
        grown >= LEAST_GROWTH,
        "heap growth {grown} through {CALLER}, expected at least {LEAST_GROWTH}: {:#}",
        outcome.process()
    );
    outcome.assert_library_frames_unnamed();
    outcome.assert_reported_unreadable(replacement);
}

#[test]
fn exact_mode_goes_on_when_the_library_is_replaced_by_a_fifo() {
    exact_mode_goes_on(Replacement::Fifo);
}

#[test]
fn growth_mode_goes_on_when_the_library_is_replaced_by_a_fifo() {
    growth_mode_goes_on(Replacement::Fifo);
}

#[test]
fn exact_mode_goes_on_when_the_library_is_replaced_by_a_link_to_a_huge_file() {
    exact_mode_goes_on(Replacement::LinkToHugeFile);
}

#[test]
fn growth_mode_goes_on_when_the_library_is_replaced_by_a_link_to_a_huge_file() {
    growth_mode_goes_on(Replacement::LinkToHugeFile);
}

#[test]
fn exact_mode_goes_on_when_the_library_is_replaced_by_a_truncated_elf() {
    exact_mode_goes_on(Replacement::TruncatedElf);
}

#[test]
fn growth_mode_goes_on_when_the_library_is_replaced_by_a_truncated_elf() {
    growth_mode_goes_on(Replacement::TruncatedElf);
}
