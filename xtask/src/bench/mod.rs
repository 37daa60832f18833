//! `cargo xtask bench`: what tracing costs, in two scenarios.
//!
//! `--scenario malloc-loop` (the default): a tight `malloc(64)` + `free` loop. The fixture
//! `tests/fixtures/bench/malloc_loop.c` prints `ready`, waits for one line on stdin (so a tracer
//! can attach first), runs N pairs and prints `ns_per_pair <float>`. Each round runs every variant
//! once, one after another (only one tool may hold a uprobe on malloc at a time), with the
//! starting variant rotated from round to round to spread machine noise:
//!
//! - `untraced`: the loop alone;
//! - `leaktrace`: `leaktrace --interval 1h -- <loop> N` (leaktrace launches the loop itself);
//! - `leaktrace-sampled`: the same with `--sample-bytes 524288` (stacks of sampled allocations only);
//! - `leaktrace-growth`: the same with `--mode growth` (no uprobes: heap syscalls only); skipped
//!   when this leaktrace's `--help` has no `--mode`;
//! - `bpftrace`: count-only uprobes on libc's malloc (entry + return) and free, `-p PID`;
//! - `memleak-bpfcc`: bcc's memleak with its defaults (stacks), `-p PID`.
//!
//! `--scenario deep-loop`: the same, with the pair 12 calls deep in an executable and a library
//! built `-O2 -fomit-frame-pointer` (`tests/fixtures/bench/deep_loop*.c`): what full stacks
//! unwound from the modules' CFI cost, against the same peers (bench-deep.json).
//!
//! `--scenario nginx`: requests/s of nginx serving a small static file on loopback to `wrk`, with
//! the same rotation, under the variants in `nginx.rs`.
//!
//! Peers (`bpftrace`, `memleak-bpfcc`) are installed with apt when missing, and bcc gets a kernel
//! headers tree built from Debian's linux-headers packages (see `peers::prepare_peers`). A peer that
//! cannot start in the first round is skipped with the reason; any later failure, and any failure
//! of `untraced` or a leaktrace variant, is an error. Every child process started here is reaped,
//! and killed first if it is still running.

//!
//! Modules: `malloc_loop` and `nginx` (the scenarios), `stats` (medians and ratios), `report`
//! (the table and the JSON file), `peers` (bpftrace and bcc: install, kernel headers, start),
//! `proc` (programs on PATH, /proc, output tails). Child processes are `leaktrace_supervisor`'s.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use self::peers::Peers;
use crate::system::find_program;

mod go_census;
mod malloc_loop;
mod nginx;
mod peers;
mod proc;
mod report;
mod stats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N x malloc(64)+free in a tight loop: ns per pair.
    MallocLoop,
    /// The same pair 12 calls deep (executable + library, -O2 -fomit-frame-pointer): ns per
    /// pair with full stacks unwound from the modules' CFI.
    DeepLoop,
    /// nginx serving a 612-byte file on loopback to wrk: requests per second.
    Nginx,
    /// A Go program with `--iterations` blocked goroutines traced by pid: what its goroutine
    /// census costs the session loop, per snapshot.
    GoCensus,
}

/// What one measurement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Wall-clock: ns per pair (loops), requests/s (nginx).
    Wall,
    /// The target's own CPU time (user + system) per unit of work: ns per pair (the loop's
    /// getrusage), µs per request (the nginx worker's /proc/PID/stat over the measurement).
    /// Probes run in the target's system time, so this is what tracing costs the target,
    /// whatever else the machine runs (wall-clock figures on a shared VM move by more than
    /// the overhead a budget of 1% allows).
    Cpu,
}

pub struct BenchArgs {
    pub scenario: Scenario,
    pub metric: Metric,
    /// malloc-loop: pairs per run.
    pub iterations: u64,
    pub repeats: u32,
    /// nginx: seconds of each wrk measurement.
    pub duration_secs: u64,
    /// nginx: seconds of wrk warm-up before each measurement (tracer already attached).
    pub warmup_secs: u64,
    /// Run only these variants (by name); empty: all of the scenario's variants.
    pub only: Vec<String>,
    /// go-census: another leaktrace binary to measure beside this build (e.g. main's).
    pub baseline: Option<std::path::PathBuf>,
}

/// Longest wait for a tracer to attach (and for the loop to print `ready`).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between "the tracer says it is attached" and starting the loop.
const SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for a process to exit once it should (after its work, or after SIGINT).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const UNTRACED: &str = "untraced";
const LEAKTRACE: &str = "leaktrace";
const LEAKTRACE_GROWTH: &str = "leaktrace-growth";
const LEAKTRACE_GROWTH_NO_BURSTS: &str = "leaktrace-growth-no-bursts";
const LEAKTRACE_SAMPLED: &str = "leaktrace-sampled";
const BPFTRACE: &str = "bpftrace";
const MEMLEAK: &str = "memleak-bpfcc";

/// `leaktrace_bin`: an already-built release leaktrace binary. `out_dir`: a scratch dir (target/bench).
pub fn run(root: &Path, leaktrace_bin: &Path, out_dir: &Path, args: &BenchArgs) -> Result<()> {
    if args.repeats == 0 {
        bail!("bench: repeats must be at least 1");
    }
    if !leaktrace_bin.is_file() {
        bail!(
            "bench: leaktrace binary {} not found (build it with `cargo build --release` first)",
            leaktrace_bin.display()
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("bench: cannot create {}", out_dir.display()))?;
    match args.scenario {
        Scenario::MallocLoop => malloc_loop::run(
            root,
            leaktrace_bin,
            out_dir,
            args,
            malloc_loop::Fixture::Shallow,
        ),
        Scenario::DeepLoop => malloc_loop::run(
            root,
            leaktrace_bin,
            out_dir,
            args,
            malloc_loop::Fixture::Deep,
        ),
        Scenario::Nginx => nginx::run(leaktrace_bin, out_dir, args),
        Scenario::GoCensus => go_census::run(root, leaktrace_bin, out_dir, args),
    }
}

/// The leaktrace arguments that select growth mode.
const GROWTH_ARGS: [&str; 2] = ["--mode", "growth"];

/// Growth mode without its bursts (`--overhead-budget 0`): what the bursts cost is the
/// difference with `leaktrace-growth` (default budget, 1%).
const GROWTH_NO_BURSTS_ARGS: [&str; 4] = ["--mode", "growth", "--overhead-budget", "0"];

/// Exact mode walking the stack of about one allocation per 512 KiB (pprof's default rate).
const SAMPLED_ARGS: [&str; 2] = ["--sample-bytes", "524288"];

/// `leaktrace-growth`, skipped with the reason when this leaktrace has no `--mode` flag.
fn growth_variant(leaktrace_bin: &Path) -> Variant {
    let mut v = Variant::new(LEAKTRACE_GROWTH, Kind::LeaktraceGrowth);
    let help = Command::new(leaktrace_bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output();
    match help {
        Ok(out) if help_mentions_mode(&String::from_utf8_lossy(&out.stdout)) => {}
        Ok(_) => v.skip(
            "this leaktrace has no --mode flag (growth mode is not in this build)".to_string(),
        ),
        Err(e) => v.skip(format!("cannot run `leaktrace --help`: {e}")),
    }
    v
}

/// `leaktrace-growth-no-bursts`, skipped when this leaktrace has no `--overhead-budget`.
fn growth_no_bursts_variant(leaktrace_bin: &Path) -> Variant {
    let mut v = Variant::new(LEAKTRACE_GROWTH_NO_BURSTS, Kind::LeaktraceGrowthNoBursts);
    let help = Command::new(leaktrace_bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output();
    match help {
        Ok(out) if help_mentions(&String::from_utf8_lossy(&out.stdout), "--overhead-budget") => {}
        Ok(_) => v.skip("this leaktrace has no --overhead-budget flag (no bursts)".to_string()),
        Err(e) => v.skip(format!("cannot run `leaktrace --help`: {e}")),
    }
    v
}

/// Whether a `--help` text offers the `--mode` flag (a whole word: not `--model`).
fn help_mentions_mode(help: &str) -> bool {
    help_mentions(help, "--mode")
}

/// Whether a `--help` text offers `flag` (a whole word).
fn help_mentions(help: &str, flag: &str) -> bool {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|word| word == flag)
}

/// `memleak-bpfcc`, skipped with the reason when it or its kernel headers are missing.
fn memleak_variant(peers: &Peers) -> Variant {
    let mut memleak = Variant::new(MEMLEAK, Kind::Memleak);
    match (find_program(MEMLEAK), &peers.headers) {
        (None, _) => memleak.skip(
            peers
                .bcc_note
                .clone()
                .unwrap_or_else(|| "memleak-bpfcc is not installed".into()),
        ),
        (Some(_), Err(why)) => memleak.skip(why.clone()),
        (Some(bin), Ok(_)) => memleak.bin = Some(bin),
    }
    memleak
}

/// The variants named in `only` (all when it is empty), in the scenario's order.
fn select_variants(variants: Vec<Variant>, only: &[String]) -> Result<Vec<Variant>> {
    if only.is_empty() {
        return Ok(variants);
    }
    if let Some(unknown) = only.iter().find(|o| !variants.iter().any(|v| v.name == *o)) {
        bail!(
            "bench: no variant named {unknown:?} in this scenario (variants: {})",
            names(&variants)
        );
    }
    Ok(variants
        .into_iter()
        .filter(|v| only.iter().any(|o| o == v.name))
        .collect())
}

fn names(variants: &[Variant]) -> String {
    variants
        .iter()
        .map(|v| v.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How one measurement is printed while the rounds run.
#[derive(Clone, Copy)]
struct Unit {
    label: &'static str,
    decimals: usize,
}

/// Runs every variant once per round, the starting variant rotated from round to round. A peer
/// that fails before it has any sample is skipped with the reason; any other failure is an error.
fn run_rounds(
    variants: &mut [Variant],
    repeats: u32,
    unit: Unit,
    mut measure: impl FnMut(&Variant) -> Result<f64>,
) -> Result<()> {
    let count = variants.len();
    for round in 0..repeats as usize {
        for k in 0..count {
            let v = &mut variants[rotated(round, k, count)];
            if v.skipped.is_some() {
                continue;
            }
            let started = Instant::now();
            match measure(v) {
                Ok(value) => {
                    println!(
                        "  round {}/{} {:<26} {:>12.*} {}  ({:.1} s)",
                        round + 1,
                        repeats,
                        v.name,
                        unit.decimals,
                        value,
                        unit.label,
                        started.elapsed().as_secs_f64()
                    );
                    v.samples.push(value);
                }
                Err(e) if v.kind.is_peer() && v.samples.is_empty() => {
                    let mut why = format!("it could not run: {e:#}");
                    if ["Failed to attach", "EINVAL", "Invalid argument"]
                        .iter()
                        .any(|m| why.contains(m))
                    {
                        why.push_str(
                            " (hint: while another tool holds a uprobe on malloc, e.g. a running \
                             leaktrace or its tests, attaching fails here: run the bench alone)",
                        );
                    }
                    println!("  note: skipping {}: {}", v.name, why);
                    v.skip(why);
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "bench: {} failed in round {}/{}",
                        v.name,
                        round + 1,
                        repeats
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Index of the `k`-th variant run in `round`: each round starts one variant later.
fn rotated(round: usize, k: usize, count: usize) -> usize {
    (round + k) % count
}

// ---------------------------------------------------------------------------------------------
// Variants and results

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Untraced,
    Leaktrace,
    LeaktraceGrowth,
    LeaktraceGrowthNoBursts,
    LeaktraceSampled,
    Bpftrace,
    Memleak,
}

impl Kind {
    fn is_peer(self) -> bool {
        matches!(self, Kind::Bpftrace | Kind::Memleak)
    }
}

struct Variant {
    name: &'static str,
    kind: Kind,
    bin: Option<PathBuf>,
    samples: Vec<f64>,
    skipped: Option<String>,
}

impl Variant {
    fn new(name: &'static str, kind: Kind) -> Self {
        Variant {
            name,
            kind,
            bin: None,
            samples: Vec::new(),
            skipped: None,
        }
    }

    fn skip(&mut self, why: String) {
        self.skipped = Some(why);
    }
}

fn bin_of(v: &Variant) -> Result<&Path> {
    v.bin
        .as_deref()
        .ok_or_else(|| anyhow!("{}: no binary", v.name))
}

/// Writes `contents` to `path` through a fresh temporary file of the same directory (created
/// exclusively, with a random name), renamed over `path` once complete.
fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("bench: cannot create a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut file, contents)
        .with_context(|| format!("bench: cannot write {}", file.path().display()))?;
    // Readable by all like any file the bench writes (the temporary file starts as 0600).
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("bench: cannot set the mode of {}", file.path().display()))?;
    file.persist(path)
        .with_context(|| format!("bench: cannot write {}", path.display()))?;
    Ok(())
}

/// A variant with these samples, for the unit tests.
#[cfg(test)]
fn variant(name: &'static str, kind: Kind, samples: &[f64]) -> Variant {
    let mut v = Variant::new(name, kind);
    v.samples = samples.to_vec();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_starting_variant() {
        let order = |round| (0..3).map(|k| rotated(round, k, 3)).collect::<Vec<_>>();
        assert_eq!(order(0), [0, 1, 2]);
        assert_eq!(order(1), [1, 2, 0]);
        assert_eq!(order(2), [2, 0, 1]);
        assert_eq!(order(3), [0, 1, 2]);
    }

    #[test]
    fn only_keeps_the_named_variants_in_order() {
        let all = || {
            vec![
                variant(UNTRACED, Kind::Untraced, &[]),
                variant(LEAKTRACE, Kind::Leaktrace, &[]),
                variant(LEAKTRACE_GROWTH, Kind::LeaktraceGrowth, &[]),
            ]
        };
        let picked = select_variants(all(), &["leaktrace-growth".into(), "untraced".into()])
            .expect("known names");
        assert_eq!(names(&picked), "untraced, leaktrace-growth");
        assert_eq!(select_variants(all(), &[]).map(|v| v.len()).ok(), Some(3));
        assert!(select_variants(all(), &["leaktrace-exact".into()]).is_err());
    }

    #[test]
    fn mode_flag_is_found_as_a_whole_word_only() {
        assert!(help_mentions_mode(
            "Options:\n      --mode <MODE>  growth or exact [default: exact]\n"
        ));
        assert!(help_mentions_mode("  --mode=growth"));
        assert!(!help_mentions_mode("  --model <M>\n  --modes\n  mode\n"));
    }
}
