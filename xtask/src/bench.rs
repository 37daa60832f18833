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
//! `--scenario nginx`: requests/s of nginx serving a small static file on loopback to `wrk`, with
//! the same rotation, under the variants in `nginx.rs`.
//!
//! Peers (`bpftrace`, `memleak-bpfcc`) are installed with apt when missing, and bcc gets a kernel
//! headers tree built from Debian's linux-headers packages (see `prepare_peers`). A peer that
//! cannot start in the first round is skipped with the reason; any later failure, and any failure
//! of `untraced` or a leaktrace variant, is an error. Every child process started here is reaped,
//! and killed first if it is still running.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod nginx;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N x malloc(64)+free in a tight loop: ns per pair.
    MallocLoop,
    /// nginx serving a 612-byte file on loopback to wrk: requests per second.
    Nginx,
}

pub struct BenchArgs {
    pub scenario: Scenario,
    /// malloc-loop: pairs per run.
    pub iterations: u64,
    pub repeats: u32,
    /// nginx: seconds of each wrk measurement.
    pub duration_secs: u64,
    /// nginx: seconds of wrk warm-up before each measurement (tracer already attached).
    pub warmup_secs: u64,
    /// Run only these variants (by name); empty: all of the scenario's variants.
    pub only: Vec<String>,
}

/// Longest wait for a tracer to attach (and for the loop to print `ready`).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between "the tracer says it is attached" and starting the loop.
const SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for a process to exit once it should (after its work, or after SIGINT).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a process's output quoted in an error.
const TAIL_LINES: usize = 8;

const UNTRACED: &str = "untraced";
const LEAKTRACE: &str = "leaktrace";
const LEAKTRACE_GROWTH: &str = "leaktrace-growth";
const LEAKTRACE_SAMPLED: &str = "leaktrace-sampled";
const BPFTRACE: &str = "bpftrace";
const MEMLEAK: &str = "memleak-bpfcc";

/// Shared cache for the kernel-headers tree (survives `cargo clean`); `out_dir` is the fallback.
const HEADERS_CACHE: &str = "/var/cache/leaktrace-bench";
const HEADERS_MARKER: &str = ".leaktrace-bench-complete";

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
        Scenario::MallocLoop => run_malloc_loop(root, leaktrace_bin, out_dir, args),
        Scenario::Nginx => nginx::run(leaktrace_bin, out_dir, args),
    }
}

fn run_malloc_loop(
    root: &Path,
    leaktrace_bin: &Path,
    out_dir: &Path,
    args: &BenchArgs,
) -> Result<()> {
    if args.iterations == 0 {
        bail!("bench: iterations must be at least 1");
    }
    let loop_bin = compile_loop(root, out_dir)?;

    let peers = prepare_peers(out_dir, &PEER_PACKAGES)?;
    let mut variants = vec![
        Variant::new(UNTRACED, Kind::Untraced),
        Variant::new(LEAKTRACE, Kind::Leaktrace),
        Variant::new(LEAKTRACE_SAMPLED, Kind::LeaktraceSampled),
        growth_variant(leaktrace_bin),
    ];
    let mut bpftrace = Variant::new(BPFTRACE, Kind::Bpftrace);
    match find_program(BPFTRACE) {
        Some(bin) => bpftrace.bin = Some(bin),
        None => bpftrace.skip(
            peers
                .bpftrace_note
                .clone()
                .unwrap_or_else(|| "bpftrace is not on PATH".into()),
        ),
    }
    variants.push(bpftrace);
    variants.push(memleak_variant(&peers));
    let mut variants = select_variants(variants, &args.only)?;

    let n = args.iterations;
    println!(
        "bench: {} x malloc(64)+free, {} round(s); variants: {}",
        n,
        args.repeats,
        names(&variants)
    );
    let unit = Unit {
        label: "ns/pair",
        decimals: 1,
    };
    run_rounds(&mut variants, args.repeats, unit, |v| match v.kind {
        Kind::Untraced => run_untraced(&loop_bin, n),
        Kind::Leaktrace => run_leaktrace(leaktrace_bin, &[], &loop_bin, n),
        Kind::LeaktraceGrowth => run_leaktrace(leaktrace_bin, &GROWTH_ARGS, &loop_bin, n),
        Kind::LeaktraceSampled => run_leaktrace(leaktrace_bin, &SAMPLED_ARGS, &loop_bin, n),
        Kind::Bpftrace => run_bpftrace(bin_of(v)?, &loop_bin, n),
        Kind::Memleak => {
            let headers = peers.headers.as_ref().map_err(|e| anyhow!("{e}"))?;
            run_memleak(bin_of(v)?, headers, &loop_bin, n)
        }
    })?;

    let report = Report {
        scenario: "malloc-loop",
        title: format!(
            "ns per malloc(64)+free pair, {n} pairs, {} round(s):",
            args.repeats
        ),
        unit: "ns_per_pair",
        decimals: 1,
        params: vec![("iterations", n.to_string())],
        repeats: args.repeats,
        baselines: &[UNTRACED, BPFTRACE, MEMLEAK],
    };
    finish(
        &report,
        &summarize(&variants, report.baselines),
        out_dir,
        "bench.json",
    )
}

/// The leaktrace arguments that select growth mode.
const GROWTH_ARGS: [&str; 2] = ["--mode", "growth"];

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

/// Whether a `--help` text offers the `--mode` flag (a whole word: not `--model`).
fn help_mentions_mode(help: &str) -> bool {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|word| word == "--mode")
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
                        "  round {}/{} {:<16} {:>12.*} {}  ({:.1} s)",
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

/// Prints the table and writes the JSON file `json_name` in `out_dir`.
fn finish(report: &Report, rows: &[Row], out_dir: &Path, json_name: &str) -> Result<()> {
    println!();
    print!("{}", render_table(rows, report));
    let json_path = out_dir.join(json_name);
    std::fs::write(&json_path, render_json(rows, report))
        .with_context(|| format!("bench: cannot write {}", json_path.display()))?;
    println!("bench: wrote {}", json_path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Variants and results

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Untraced,
    Leaktrace,
    LeaktraceGrowth,
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

/// What a scenario's table and JSON say about themselves.
struct Report<'a> {
    scenario: &'a str,
    /// First line of the table.
    title: String,
    /// Unit of the samples, as a JSON value (`ns_per_pair`, `requests_per_sec`).
    unit: &'a str,
    /// Decimals of the values in the table.
    decimals: usize,
    /// Scenario parameters written to the JSON (name, JSON value).
    params: Vec<(&'a str, String)>,
    repeats: u32,
    /// Variants every median is compared with (ratio of medians), in column order.
    baselines: &'a [&'static str],
}

struct Row {
    name: &'static str,
    samples: Vec<f64>,
    stats: Option<Stats>,
    skipped: Option<String>,
    /// Ratio of this row's median to each baseline's median (same order as the baselines).
    ratios: Vec<Option<f64>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    Some(Stats {
        median,
        min: s[0],
        max: s[s.len() - 1],
    })
}

/// `value / base`, when both exist and the base is a positive, finite number.
fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    let (v, b) = value.zip(base)?;
    (b > 0.0 && b.is_finite() && v.is_finite()).then(|| v / b)
}

fn summarize(variants: &[Variant], baselines: &[&str]) -> Vec<Row> {
    let median_of = |name: &str| {
        variants
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| stats(&v.samples))
            .map(|s| s.median)
    };
    let bases: Vec<Option<f64>> = baselines.iter().map(|b| median_of(b)).collect();
    variants
        .iter()
        .map(|v| {
            let st = stats(&v.samples);
            let m = st.map(|s| s.median);
            Row {
                name: v.name,
                samples: v.samples.clone(),
                stats: st,
                skipped: v.skipped.clone(),
                ratios: bases.iter().map(|b| ratio(m, *b)).collect(),
            }
        })
        .collect()
}

fn render_table(rows: &[Row], report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.title);
    let columns: Vec<String> = report.baselines.iter().map(|b| format!("x {b}")).collect();
    let _ = write!(
        out,
        "{:<16} {:>12} {:>12} {:>12}",
        "variant", "median", "min", "max"
    );
    for c in &columns {
        let _ = write!(out, " {c:>11}");
    }
    out.push('\n');
    let ratio = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), fmt_ratio);
    let d = report.decimals;
    for r in rows {
        match (&r.stats, &r.skipped) {
            (Some(s), _) => {
                let _ = write!(
                    out,
                    "{:<16} {:>12.d$} {:>12.d$} {:>12.d$}",
                    r.name, s.median, s.min, s.max
                );
                for (c, x) in columns.iter().zip(&r.ratios) {
                    let _ = write!(out, " {:>w$}", ratio(*x), w = c.len().max(11));
                }
                out.push('\n');
            }
            (None, why) => {
                let why = why.as_deref().unwrap_or("no samples");
                let _ = writeln!(out, "{:<16} skipped: {}", r.name, first_line(why));
            }
        }
    }
    out
}

/// JSON key of the ratio to `baseline`: `ratio_to_memleak_bpfcc`.
fn ratio_key(baseline: &str) -> String {
    format!("ratio_to_{}", baseline.replace('-', "_"))
}

fn render_json(rows: &[Row], report: &Report) -> String {
    let num = |x: Option<f64>| x.map_or_else(|| "null".to_string(), json_num);
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\n  \"scenario\": {},\n  \"unit\": {},",
        json_str(report.scenario),
        json_str(report.unit)
    );
    for (name, value) in &report.params {
        let _ = write!(out, "\n  {}: {value},", json_str(name));
    }
    let _ = write!(
        out,
        "\n  \"repeats\": {},\n  \"variants\": [",
        report.repeats
    );
    for (i, r) in rows.iter().enumerate() {
        let samples: Vec<String> = r.samples.iter().map(|x| json_num(*x)).collect();
        let _ = write!(
            out,
            "{}\n    {{\"name\": {}, \"status\": {}, \"skip_reason\": {}, \"samples\": [{}], \
             \"median\": {}, \"min\": {}, \"max\": {}",
            if i == 0 { "" } else { "," },
            json_str(r.name),
            json_str(if r.stats.is_some() { "ok" } else { "skipped" }),
            r.skipped
                .as_deref()
                .map_or_else(|| "null".to_string(), json_str),
            samples.join(", "),
            num(r.stats.map(|s| s.median)),
            num(r.stats.map(|s| s.min)),
            num(r.stats.map(|s| s.max)),
        );
        for (b, x) in report.baselines.iter().zip(&r.ratios) {
            let _ = write!(out, ", {}: {}", json_str(&ratio_key(b)), num(*x));
        }
        out.push('}');
    }
    out.push_str("\n  ]\n}\n");
    out
}

/// A ratio with about three significant digits (0.000785, 0.818, 1.02, 1042).
fn fmt_ratio(r: f64) -> String {
    let decimals = if r >= 100.0 {
        0
    } else if r >= 10.0 {
        1
    } else if r >= 0.1 {
        2
    } else if r > 0.0 {
        // enough decimals to show three significant digits
        (2.0 - r.log10().floor()).clamp(2.0, 12.0) as usize
    } else {
        2
    };
    format!("{r:.decimals$}")
}

/// A finite number for JSON, rounded to 6 decimals (no float noise such as 14762.773000000001).
fn json_num(x: f64) -> String {
    if !x.is_finite() {
        return "null".to_string();
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// One measurement per variant

fn compile_loop(root: &Path, out_dir: &Path) -> Result<PathBuf> {
    let src = root.join("tests/fixtures/bench/malloc_loop.c");
    if !src.is_file() {
        bail!("bench: fixture {} not found", src.display());
    }
    let bin = out_dir.join("malloc_loop");
    let out = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("bench: gcc not found on PATH (install it: apt-get install -y gcc)")
        }
        Err(e) => bail!("bench: cannot run gcc: {e}"),
    };
    if !out.status.success() {
        bail!(
            "bench: gcc failed to compile {} ({}): {}",
            src.display(),
            out.status,
            tail_of(&out.stderr)
        );
    }
    Ok(bin)
}

/// Time budget for one loop run: generous enough for about 50 us per traced pair.
fn loop_timeout(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_nanos(n.saturating_mul(50_000))
}

fn parse_ns_per_pair(line: &str) -> Option<f64> {
    let v: f64 = line.strip_prefix("ns_per_pair ")?.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

fn is_ready(line: &str) -> bool {
    line.trim_end() == "ready"
}

/// After `ready`: sends the go line, then reads the loop's result and checks it exits cleanly.
fn go_and_measure(lp: &mut Proc, n: u64) -> Result<f64> {
    lp.send_line()?;
    let ns = lp.wait_stdout(loop_timeout(n), "`ns_per_pair` line", parse_ns_per_pair)?;
    lp.wait_exit_ok(EXIT_TIMEOUT)?;
    Ok(ns)
}

fn spawn_loop(loop_bin: &Path, n: u64) -> Result<Proc> {
    let mut cmd = Command::new(loop_bin);
    cmd.arg(n.to_string());
    let mut lp = Proc::spawn("malloc_loop", &mut cmd, true)?;
    lp.wait_stdout(ATTACH_TIMEOUT, "`ready` line", |l| {
        is_ready(l).then_some(())
    })?;
    Ok(lp)
}

fn run_untraced(loop_bin: &Path, n: u64) -> Result<f64> {
    let mut lp = spawn_loop(loop_bin, n)?;
    go_and_measure(&mut lp, n)
}

/// `mode_args`: extra leaktrace arguments (e.g. `--mode growth`), before the command.
fn run_leaktrace(leaktrace_bin: &Path, mode_args: &[&str], loop_bin: &Path, n: u64) -> Result<f64> {
    let mut cmd = Command::new(leaktrace_bin);
    cmd.args(mode_args)
        .args(["--interval", "1h", "--"])
        .arg(loop_bin)
        .arg(n.to_string());
    // leaktrace attaches, then launches the loop, which inherits leaktrace's stdin and stdout:
    // the loop's `ready` therefore also means "leaktrace is attached".
    let mut lt = Proc::spawn("leaktrace", &mut cmd, true)?;
    lt.wait_stdout(
        ATTACH_TIMEOUT,
        "`ready` line from the loop (leaktrace attaches, then launches it)",
        |l| is_ready(l).then_some(()),
    )?;
    lt.send_line()?;
    let ns = lt.wait_stdout(
        loop_timeout(n),
        "`ns_per_pair` line from the loop",
        parse_ns_per_pair,
    )?;
    let status = lt
        .wait_exit(EXIT_TIMEOUT)
        .context("leaktrace did not exit by itself after the traced loop exited")?;
    if !status.success() {
        bail!("leaktrace exited with {status}; last output: {}", lt.tail());
    }
    Ok(ns)
}

fn run_bpftrace(bpftrace_bin: &Path, loop_bin: &Path, n: u64) -> Result<f64> {
    let mut lp = spawn_loop(loop_bin, n)?;
    let pid = lp.pid();
    let libc = libc_path_of(pid)?;
    const MARK: &str = "leaktrace-bench: attached";
    let script = format!(
        "BEGIN {{ printf(\"{MARK}\\n\"); }}\n\
         uprobe:{libc}:malloc /pid == {pid}/ {{ @malloc = count(); }}\n\
         uretprobe:{libc}:malloc /pid == {pid}/ {{ @malloc_ret = count(); }}\n\
         uprobe:{libc}:free /pid == {pid}/ {{ @free = count(); }}\n"
    );
    let mut cmd = Command::new(bpftrace_bin);
    cmd.arg("-p").arg(pid.to_string()).arg("-e").arg(&script);
    let mut bt = Proc::spawn("bpftrace", &mut cmd, false)?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    bt.wait_stdout(ATTACH_TIMEOUT, "`Attaching N probes...` line", |l| {
        (l.starts_with("Attaching ") && l.contains("probes")).then_some(())
    })?;
    // BEGIN fires once every probe is attached (checked: counts match N exactly).
    bt.wait_stdout(
        deadline.saturating_duration_since(Instant::now()),
        "BEGIN marker (printed once all probes are attached)",
        |l| (l.trim_end() == MARK).then_some(()),
    )?;
    thread::sleep(SETTLE);
    let ns = go_and_measure(&mut lp, n)?;
    // bpftrace -p usually exits by itself when the process exits; SIGINT it if not.
    bt.interrupt(EXIT_TIMEOUT)?;
    let count_of = |map: &str| {
        let prefix = format!("@{map}: ");
        bt.log
            .iter()
            .filter_map(|l| l.strip_prefix("out: "))
            .find_map(|l| {
                l.strip_prefix(prefix.as_str())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let (m, mr, f) = (count_of("malloc"), count_of("malloc_ret"), count_of("free"));
    if m < n || mr < n || f < n {
        bail!(
            "bpftrace counted malloc={m} malloc_ret={mr} free={f}, expected at least {n} each: \
             its probes were not attached for the whole loop; last output: {}",
            bt.tail()
        );
    }
    Ok(ns)
}

fn run_memleak(memleak_bin: &Path, headers: &Path, loop_bin: &Path, n: u64) -> Result<f64> {
    let mut lp = spawn_loop(loop_bin, n)?;
    let mut ml = spawn_memleak(memleak_bin, headers, lp.pid())?;
    let ns = go_and_measure(&mut lp, n)?;
    if let Some(status) = ml.try_status()? {
        bail!(
            "memleak-bpfcc exited ({status}) while the loop ran; last output: {}",
            ml.tail()
        );
    }
    ml.interrupt(EXIT_TIMEOUT)?;
    Ok(ns)
}

/// Starts `memleak-bpfcc -p PID` and returns once its probes are attached.
fn spawn_memleak(memleak_bin: &Path, headers: &Path, pid: u32) -> Result<Proc> {
    let mut cmd = Command::new(memleak_bin);
    cmd.arg("-p")
        .arg(pid.to_string())
        .env("BCC_KERNEL_SOURCE", headers)
        .env("PYTHONUNBUFFERED", "1");
    let mut ml = Proc::spawn("memleak-bpfcc", &mut cmd, false)?;
    // memleak prints "Attaching to pid" *before* attaching; its first periodic report (after
    // compile + attach + one 5 s interval) is the first line that proves the probes are in.
    ml.wait_stdout(
        ATTACH_TIMEOUT,
        "first `Top N stacks with outstanding allocations` report (printed once attached, after its 5 s interval)",
        |l| {
            l.contains("stacks with outstanding allocations")
                .then_some(())
        },
    )?;
    thread::sleep(SETTLE);
    Ok(ml)
}

/// The path of the libc mapped into `pid`, from /proc/PID/maps.
fn libc_path_of(pid: u32) -> Result<String> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps =
        std::fs::read_to_string(&maps_path).with_context(|| format!("cannot read {maps_path}"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            let base = p.rsplit('/').next().unwrap_or(p);
            p.starts_with('/')
                && (base.starts_with("libc.so")
                    || (base.starts_with("libc-") && base.ends_with(".so")))
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no libc mapping found in {maps_path}"))
}

// ---------------------------------------------------------------------------------------------
// Child processes: output drained by threads, bounded waits, always reaped.

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn geteuid() -> u32;
}

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;

enum Line {
    Out(String),
    Err(String),
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    /// Every line seen so far, prefixed `out: ` or `err: `.
    log: Vec<String>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, with_stdin: bool) -> Result<Proc> {
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            drain(out, tx.clone(), Line::Out);
        }
        if let Some(err) = child.stderr.take() {
            drain(err, tx, Line::Err);
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            rx,
            log: Vec::new(),
            status: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send_line(&mut self) -> Result<()> {
        let mut stdin = self
            .stdin
            .take()
            .ok_or_else(|| anyhow!("{}: stdin already used", self.name))?;
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: cannot write the go line to its stdin", self.name))?;
        Ok(())
    }

    /// Logs the line; returns it with whether it came from stderr.
    fn record(&mut self, line: Line) -> (bool, String) {
        match line {
            Line::Out(l) => {
                self.log.push(format!("out: {l}"));
                (false, l)
            }
            Line::Err(l) => {
                self.log.push(format!("err: {l}"));
                (true, l)
            }
        }
    }

    /// Waits for a stdout line for which `pick` returns a value.
    fn wait_stdout<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_line(timeout, what, false, pick)
    }

    /// Waits for a stderr line for which `pick` returns a value.
    fn wait_stderr<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_line(timeout, what, true, pick)
    }

    fn wait_line<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        from_stderr: bool,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let (is_stderr, l) = self.record(line);
                    if is_stderr == from_stderr {
                        if let Some(v) = pick(&l) {
                            return Ok(v);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{}: no {} within {} s; last output: {}",
                    self.name,
                    what,
                    timeout.as_secs(),
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5)).map_or_else(
                        |_| "closed its output".to_string(),
                        |s| format!("exited with {s}"),
                    );
                    bail!(
                        "{} {} before its {}; last output: {}",
                        self.name,
                        status,
                        what,
                        self.tail()
                    );
                }
            }
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit (keeping its output drained).
    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status()? {
                self.collect_rest(Duration::from_secs(2));
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {} s", self.name, timeout.as_secs());
            }
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    self.record(line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn wait_exit_ok(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            bail!(
                "{} exited with {}; last output: {}",
                self.name,
                status,
                self.tail()
            );
        }
        Ok(())
    }

    /// SIGINT (if still running), then wait; SIGKILL if it ignores it.
    fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            self.collect_rest(Duration::from_secs(2));
            return Ok(s);
        }
        self.signal(SIGINT)?;
        match self.wait_exit(timeout) {
            Ok(s) => Ok(s),
            Err(_) => {
                self.kill_and_reap();
                bail!(
                    "{} ignored SIGINT for {} s and was killed",
                    self.name,
                    timeout.as_secs()
                )
            }
        }
    }

    /// Sends `sig` unless the process has already exited (and been reaped by us).
    fn signal(&mut self, sig: i32) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall wrapper; `pid` is our own child, not yet reaped (checked just
            // above), so the id cannot have been reused by another process.
            unsafe {
                kill(pid, sig);
            }
        }
        Ok(())
    }

    /// What the process printed on stdout so far, one line per line.
    fn stdout_text(&self) -> String {
        let mut text = String::new();
        for l in self.log.iter().filter_map(|l| l.strip_prefix("out: ")) {
            text.push_str(l);
            text.push('\n');
        }
        text
    }

    /// Reads what is left of the output once the process has exited.
    fn collect_rest(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.record(line);
                }
                Err(_) => return,
            }
        }
    }

    fn kill_and_reap(&mut self) {
        drop(self.stdin.take());
        if matches!(self.try_status(), Ok(None)) {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.status = Some(s);
            }
        }
    }

    /// The last lines of output, on one line (for a one-line error).
    fn tail(&self) -> String {
        let start = self.log.len().saturating_sub(TAIL_LINES);
        let lines = &self.log[start..];
        if lines.is_empty() {
            "(nothing)".to_string()
        } else {
            lines.join(" | ")
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn drain<R: Read + Send + 'static>(r: R, tx: Sender<Line>, wrap: fn(String) -> Line) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send(wrap(line)).is_err() {
                        // Receiver gone: keep reading so the writer never blocks on a full pipe.
                        let _ = std::io::copy(&mut r, &mut std::io::sink());
                        return;
                    }
                }
            }
        }
    });
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn tail_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join(" | ")
}

// ---------------------------------------------------------------------------------------------
// Peer set-up: apt packages and the kernel-headers tree for bcc.

struct Peers {
    /// Why bpftrace is unavailable, when its install was attempted and failed.
    bpftrace_note: Option<String>,
    /// Why bcc's tools are unavailable, when their install was attempted and failed.
    bcc_note: Option<String>,
    /// The BCC_KERNEL_SOURCE tree, or why there is none.
    headers: std::result::Result<PathBuf, String>,
}

const PEER_PACKAGES: [&str; 2] = ["bpftrace", "bpfcc-tools"];

/// Installs the missing `packages` (Debian names) and prepares what `memleak-bpfcc` needs.
fn prepare_peers(out_dir: &Path, packages: &[&str]) -> Result<Peers> {
    let mut peers = Peers {
        bpftrace_note: None,
        bcc_note: None,
        headers: Err(String::new()),
    };
    if find_program("dpkg").is_none() || find_program("apt-get").is_none() {
        let why =
            "not a Debian system (no dpkg/apt-get): peers are used only if already installed, \
                   and memleak-bpfcc has no kernel headers tree"
                .to_string();
        println!("bench: note: {why}");
        peers.headers = Err(why);
        return Ok(peers);
    }
    let mut apt = Apt { updated: false };
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("bench: installing {} with apt-get", missing.join(" "));
        if let Err(e) = apt.install(&missing) {
            let why = format!("apt-get install {} failed: {e:#}", missing.join(" "));
            println!("bench: note: {why}");
            if missing.contains(&"bpftrace") {
                peers.bpftrace_note = Some(why.clone());
            }
            if missing.contains(&"bpfcc-tools") {
                peers.bcc_note = Some(why);
            }
        }
    }
    if find_program(MEMLEAK).is_none() {
        peers.headers = Err(peers
            .bcc_note
            .clone()
            .unwrap_or_else(|| "memleak-bpfcc is not installed".to_string()));
        return Ok(peers);
    }
    peers.headers = match headers_tree(out_dir, &mut apt) {
        Ok(p) => Ok(p),
        Err(e) => {
            let why = format!("cannot prepare the kernel headers tree it needs: {e:#}");
            println!("bench: note: memleak-bpfcc will be skipped: {why}");
            Err(why)
        }
    };
    Ok(peers)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg")
        .args(["-s", pkg])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("Status:") && l.contains("install ok installed"))
        })
}

struct Apt {
    updated: bool,
}

impl Apt {
    fn run(&self, args: &[&str], dir: Option<&Path>) -> Result<Output> {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let out = cmd.output().context("cannot run apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get {} exited with {}: {}",
                args.join(" "),
                out.status,
                tail_of(&out.stderr)
            );
        }
        Ok(out)
    }

    fn update(&mut self) -> Result<()> {
        if !self.updated {
            if !is_root() {
                bail!("apt-get needs root");
            }
            println!("bench: apt-get update");
            self.run(&["update", "-q"], None)?;
            self.updated = true;
        }
        Ok(())
    }

    fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        self.update()?;
        let mut args = vec!["install", "-y", "-q"];
        args.extend_from_slice(pkgs);
        self.run(&args, None)?;
        Ok(())
    }

    /// `apt-cache depends PKG`: the direct `Depends:` package names.
    fn depends(&mut self, pkg: &str) -> Result<Vec<String>> {
        let query = || -> Option<Vec<String>> {
            let out = Command::new("apt-cache")
                .args(["depends", pkg])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            let deps: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends:"))
                .map(|d| {
                    d.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                })
                .collect();
            (!deps.is_empty()).then_some(deps)
        };
        if let Some(d) = query() {
            return Ok(d);
        }
        // Maybe the package lists were never fetched on this machine.
        if !self.updated {
            self.update()?;
            if let Some(d) = query() {
                return Ok(d);
            }
        }
        bail!("apt-cache knows no dependencies of {pkg}")
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// Debian's linux-headers (flavour + common), extracted with `dpkg -x` and merged into one tree,
/// cached under /var/cache/leaktrace-bench (or `out_dir` when that is not writable).
fn headers_tree(out_dir: &Path, apt: &mut Apt) -> Result<PathBuf> {
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow!("dpkg --print-architecture failed"))?;
    let name = format!("linux-headers-{arch}");
    let candidates = [PathBuf::from(HEADERS_CACHE), out_dir.to_path_buf()];
    for base in &candidates {
        let tree = base.join(&name);
        if tree.join(HEADERS_MARKER).is_file() {
            return Ok(tree);
        }
    }
    let base = candidates
        .iter()
        .find(|b| std::fs::create_dir_all(b).is_ok() && writable_dir(b))
        .ok_or_else(|| {
            anyhow!(
                "neither {HEADERS_CACHE} nor {} is writable",
                out_dir.display()
            )
        })?;
    let tree = base.join(&name);

    // linux-headers-amd64 -> linux-headers-6.1.0-NN-amd64 -> linux-headers-6.1.0-NN-common
    let flavour = apt
        .depends(&name)?
        .into_iter()
        .find(|d| d.starts_with("linux-headers-"))
        .ok_or_else(|| anyhow!("{name} depends on no linux-headers-* package"))?;
    let common = apt
        .depends(&flavour)?
        .into_iter()
        .find(|d| d.starts_with("linux-headers-") && d.ends_with("-common"))
        .ok_or_else(|| anyhow!("{flavour} depends on no linux-headers-*-common package"))?;
    println!(
        "bench: preparing kernel headers for memleak-bpfcc: {flavour} + {common} -> {}",
        tree.display()
    );

    let work = base.join(format!(".tmp-headers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = (|| -> Result<()> {
        apt.run(&["download", "-q", &flavour, &common], Some(&work))?;
        let extracted = work.join("x");
        for entry in std::fs::read_dir(&work)? {
            let deb = entry?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                let out = Command::new("dpkg")
                    .arg("-x")
                    .arg(&deb)
                    .arg(&extracted)
                    .stdin(Stdio::null())
                    .output()
                    .context("cannot run dpkg -x")?;
                if !out.status.success() {
                    bail!("dpkg -x {} failed: {}", deb.display(), tail_of(&out.stderr));
                }
            }
        }
        let src = extracted.join("usr/src");
        let common_dir = src.join(&common);
        let flavour_dir = src.join(&flavour);
        for d in [&common_dir, &flavour_dir] {
            if !d.is_dir() {
                bail!("{} missing after dpkg -x", d.display());
            }
        }
        // The flavour's top Makefile only includes the common one by absolute path: keep common's.
        merge_into(&flavour_dir, &common_dir, true)?;
        for needed in ["include/linux/kconfig.h", "include/generated/autoconf.h"] {
            if !common_dir.join(needed).is_file() {
                bail!("merged headers tree lacks {needed}");
            }
        }
        std::fs::write(
            common_dir.join(HEADERS_MARKER),
            format!("{flavour}\n{common}\n"),
        )?;
        if tree.exists() {
            std::fs::remove_dir_all(&tree)
                .with_context(|| format!("cannot remove stale {}", tree.display()))?;
        }
        std::fs::rename(&common_dir, &tree)
            .with_context(|| format!("cannot move the headers tree to {}", tree.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(tree)
}

fn writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Moves every entry of `from` into `to`, replacing files and symlinks already there
/// (except the top-level Makefile when `top`), recursing into directories.
fn merge_into(from: &Path, to: &Path, top: bool) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if top && name == "Makefile" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let src_is_dir = entry.file_type()?.is_dir();
        let dst_meta = std::fs::symlink_metadata(&dst).ok();
        match dst_meta {
            Some(m) if src_is_dir && m.is_dir() => merge_into(&src, &dst, false)?,
            Some(m) => {
                if m.is_dir() {
                    std::fs::remove_dir_all(&dst)?;
                } else {
                    std::fs::remove_file(&dst)?;
                }
                std::fs::rename(&src, &dst)?;
            }
            None => std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move {} to {}", src.display(), dst.display()))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(name: &'static str, kind: Kind, samples: &[f64]) -> Variant {
        let mut v = Variant::new(name, kind);
        v.samples = samples.to_vec();
        v
    }

    #[test]
    fn median_of_odd_and_even_sample_counts() {
        let s = stats(&[5.0, 1.0, 3.0]).expect("samples");
        assert_eq!(
            s,
            Stats {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        assert_eq!(stats(&[4.0, 1.0, 2.0, 10.0]).map(|s| s.median), Some(3.0));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn ratios_need_a_positive_base() {
        assert_eq!(ratio(Some(30.0), Some(10.0)), Some(3.0));
        assert_eq!(ratio(Some(30.0), Some(0.0)), None);
        assert_eq!(ratio(Some(30.0), None), None);
        assert_eq!(ratio(None, Some(10.0)), None);
    }

    #[test]
    fn summary_compares_medians_with_each_baseline() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[10.0, 12.0, 11.0]),
            variant(LEAKTRACE, Kind::Leaktrace, &[4400.0, 4000.0, 4200.0]),
            variant(MEMLEAK, Kind::Memleak, &[14000.0]),
            {
                let mut v = variant(BPFTRACE, Kind::Bpftrace, &[]);
                v.skip("not installed".into());
                v
            },
        ];
        let rows = summarize(&variants, &[UNTRACED, BPFTRACE, MEMLEAK]);
        let lt = &rows[1];
        assert_eq!(lt.stats.map(|s| s.median), Some(4200.0));
        assert_eq!(lt.ratios[0], Some(4200.0 / 11.0));
        assert_eq!(lt.ratios[1], None, "bpftrace has no samples");
        assert_eq!(lt.ratios[2], Some(0.3));
        assert_eq!(rows[0].ratios[0], Some(1.0));
        assert_eq!(rows[3].skipped.as_deref(), Some("not installed"));
    }

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

    fn report() -> Report<'static> {
        Report {
            scenario: "nginx",
            title: "title line".to_string(),
            unit: "requests_per_sec",
            decimals: 0,
            params: vec![("duration_s", "10".to_string())],
            repeats: 2,
            baselines: &[UNTRACED, MEMLEAK],
        }
    }

    #[test]
    fn table_shows_ratios_and_skip_reasons() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[40000.0, 38000.0]),
            variant(LEAKTRACE_GROWTH, Kind::LeaktraceGrowth, &[39000.0, 39000.0]),
            {
                let mut v = variant(MEMLEAK, Kind::Memleak, &[]);
                v.skip("it could not run: EINVAL\nsecond line".into());
                v
            },
        ];
        let rows = summarize(&variants, report().baselines);
        let table = render_table(&rows, &report());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "title line");
        assert!(lines[1].contains("x untraced") && lines[1].contains("x memleak-bpfcc"));
        assert!(lines[2].starts_with("untraced") && lines[2].contains(" 39000 "));
        assert!(lines[3].starts_with("leaktrace-growth") && lines[3].contains(" 1.00 "));
        assert!(lines[3].trim_end().ends_with("n/a"));
        assert_eq!(
            lines[4],
            "memleak-bpfcc    skipped: it could not run: EINVAL"
        );
    }

    #[test]
    fn json_names_scenario_params_and_ratio_keys() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[40000.0]),
            variant(MEMLEAK, Kind::Memleak, &[20000.0]),
        ];
        let rows = summarize(&variants, report().baselines);
        let json = render_json(&rows, &report());
        assert!(json.contains("\"scenario\": \"nginx\""));
        assert!(json.contains("\"unit\": \"requests_per_sec\""));
        assert!(json.contains("\"duration_s\": 10,"));
        assert!(json.contains("\"repeats\": 2,"));
        assert!(json.contains(
            "\"name\": \"memleak-bpfcc\", \"status\": \"ok\", \"skip_reason\": null, \
             \"samples\": [20000], \"median\": 20000, \"min\": 20000, \"max\": 20000, \
             \"ratio_to_untraced\": 0.5, \"ratio_to_memleak_bpfcc\": 1}"
        ));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(fmt_ratio(0.000785), "0.000785");
        assert_eq!(fmt_ratio(0.818), "0.82");
        assert_eq!(fmt_ratio(12.34), "12.3");
        assert_eq!(fmt_ratio(1042.4), "1042");
        assert_eq!(json_num(14762.773000000001), "14762.773");
    }
}
