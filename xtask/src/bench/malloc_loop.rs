//! `--scenario malloc-loop`: ns per `malloc(64)` + `free` pair of the loop fixture, untraced and
//! under each tracer (see the module docs of `bench`). `--scenario deep-loop`: the same pair 12
//! calls deep in code built without frame pointers (`deep_loop.c` + `deep_loop_lib.c`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use leaktrace_supervisor::{Input, Supervised};

use crate::system::{find_program, tail_of};

use super::{
    bin_of, growth_no_bursts_variant, growth_variant, memleak_variant, names,
    peers::{packages_for, prepare_peers, spawn_memleak, BCC_PACKAGE, BPFTRACE_PACKAGE},
    proc::{go, libc_path_of},
    report::{finish, Report},
    run_rounds, select_variants,
    stats::summarize,
    BenchArgs, Kind, Metric, Unit, Variant, ATTACH_TIMEOUT, BPFTRACE, EXIT_TIMEOUT, GROWTH_ARGS,
    GROWTH_NO_BURSTS_ARGS, LEAKTRACE, LEAKTRACE_SAMPLED, MEMLEAK, SAMPLED_ARGS, SETTLE, UNTRACED,
};

/// Which loop fixture a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Fixture {
    /// `malloc_loop.c`, `-O2 -fno-omit-frame-pointer`, the pair called from main.
    Shallow,
    /// `deep_loop.c` + `deep_loop_lib.c`, `-O2 -fomit-frame-pointer`, 12 calls deep.
    Deep,
}

pub(super) fn run(
    root: &Path,
    leaktrace_bin: &Path,
    out_dir: &Path,
    args: &BenchArgs,
    fixture: Fixture,
) -> Result<()> {
    if args.iterations == 0 {
        bail!("bench: iterations must be at least 1");
    }
    let loop_bin = match fixture {
        Fixture::Shallow => compile_loop(root, out_dir)?,
        Fixture::Deep => compile_deep_loop(root, out_dir)?,
    };

    let packages = packages_for(&args.only, &[BPFTRACE_PACKAGE, BCC_PACKAGE]);
    let peers = prepare_peers(out_dir, &packages)?;
    let mut variants = vec![
        Variant::new(UNTRACED, Kind::Untraced),
        Variant::new(LEAKTRACE, Kind::Leaktrace),
        Variant::new(LEAKTRACE_SAMPLED, Kind::LeaktraceSampled),
        growth_variant(leaktrace_bin),
        growth_no_bursts_variant(leaktrace_bin),
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
        "bench: {} x malloc(64)+free, {} round(s), {}; variants: {}",
        n,
        args.repeats,
        match args.metric {
            Metric::Wall => "wall-clock ns per pair",
            Metric::Cpu => "the loop's CPU time (user + system) per pair",
        },
        names(&variants)
    );
    let unit = Unit {
        label: match args.metric {
            Metric::Wall => "ns/pair",
            Metric::Cpu => "cpu ns/pair",
        },
        decimals: 1,
    };
    run_rounds(&mut variants, args.repeats, unit, |v| {
        let pair = match v.kind {
            Kind::Untraced => run_untraced(&loop_bin, n),
            Kind::Leaktrace => run_leaktrace(leaktrace_bin, &[], &loop_bin, n),
            Kind::LeaktraceGrowth => run_leaktrace(leaktrace_bin, &GROWTH_ARGS, &loop_bin, n),
            Kind::LeaktraceGrowthNoBursts => {
                run_leaktrace(leaktrace_bin, &GROWTH_NO_BURSTS_ARGS, &loop_bin, n)
            }
            Kind::LeaktraceSampled => run_leaktrace(leaktrace_bin, &SAMPLED_ARGS, &loop_bin, n),
            Kind::Bpftrace => run_bpftrace(bin_of(v)?, &loop_bin, n),
            Kind::Memleak => {
                let headers = peers.headers.as_ref().map_err(|e| anyhow!("{e}"))?;
                run_memleak(bin_of(v)?, headers, &loop_bin, n)
            }
        }?;
        Ok(match args.metric {
            Metric::Wall => pair.wall_ns,
            Metric::Cpu => pair.cpu_ns,
        })
    })?;

    let (scenario, depth) = match fixture {
        Fixture::Shallow => ("malloc-loop", ""),
        Fixture::Deep => (
            "deep-loop",
            " 12 calls deep (exe + library, -O2 -fomit-frame-pointer)",
        ),
    };
    let (what, unit) = match args.metric {
        Metric::Wall => ("ns", "ns_per_pair"),
        Metric::Cpu => ("CPU ns (the loop's user + system time)", "cpu_ns_per_pair"),
    };
    let report = Report {
        scenario,
        title: format!(
            "{what} per malloc(64)+free pair{depth}, {n} pairs, {} round(s):",
            args.repeats
        ),
        unit,
        decimals: 1,
        params: vec![("iterations", n)],
        repeats: args.repeats,
        baselines: &[UNTRACED, BPFTRACE, MEMLEAK],
    };
    finish(
        &report,
        &summarize(&variants, report.baselines),
        out_dir,
        match (fixture, args.metric) {
            (Fixture::Shallow, Metric::Wall) => "bench.json",
            (Fixture::Shallow, Metric::Cpu) => "bench-cpu.json",
            (Fixture::Deep, Metric::Wall) => "bench-deep.json",
            (Fixture::Deep, Metric::Cpu) => "bench-deep-cpu.json",
        },
    )
}

/// `deep_loop` and its library `libdeep_loop_lib.so` (found beside it: rpath `$ORIGIN`).
fn compile_deep_loop(root: &Path, out_dir: &Path) -> Result<PathBuf> {
    let src = root.join("tests/fixtures/bench");
    let flags = ["-O2", "-g", "-fomit-frame-pointer"];
    let lib = out_dir.join("libdeep_loop_lib.so");
    let bin = out_dir.join("deep_loop");
    let mut lib_cmd = Command::new("gcc");
    lib_cmd
        .args(flags)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(src.join("deep_loop_lib.c"));
    let mut bin_cmd = Command::new("gcc");
    bin_cmd
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(src.join("deep_loop.c"))
        .arg(format!("-L{}", out_dir.display()))
        .arg("-ldeep_loop_lib")
        .arg("-Wl,-rpath,$ORIGIN");
    for mut cmd in [lib_cmd, bin_cmd] {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("bench: cannot run gcc")?;
        if !out.status.success() {
            bail!(
                "bench: gcc failed on the deep-loop fixture ({}): {}",
                out.status,
                tail_of(&out.stderr)
            );
        }
    }
    Ok(bin)
}

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

/// What one run of the loop measured.
struct PairCost {
    /// Wall-clock ns per pair.
    wall_ns: f64,
    /// The loop's CPU time (user + system, from getrusage) per pair, in ns: what the probes
    /// cost the loop itself (they run in its system time), whatever else the machine runs.
    cpu_ns: f64,
}

fn parse_ns_per_pair(line: &str) -> Option<f64> {
    parse_value(line, "ns_per_pair ")
}

fn parse_cpu_ns_per_pair(line: &str) -> Option<f64> {
    parse_value(line, "cpu_ns_per_pair ")
}

fn parse_value(line: &str, prefix: &str) -> Option<f64> {
    let v: f64 = line.strip_prefix(prefix)?.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// The loop's two result lines, `ns_per_pair` then `cpu_ns_per_pair`.
fn read_pair_cost(lp: &mut Supervised, n: u64) -> Result<PairCost> {
    let wall_ns = lp.wait_stdout(loop_timeout(n), "`ns_per_pair` line", parse_ns_per_pair)?;
    let cpu_ns = lp.wait_stdout(
        EXIT_TIMEOUT,
        "`cpu_ns_per_pair` line",
        parse_cpu_ns_per_pair,
    )?;
    Ok(PairCost { wall_ns, cpu_ns })
}

fn is_ready(line: &str) -> bool {
    line.trim_end() == "ready"
}

/// After `ready`: sends the go line, then reads the loop's result and checks it exits cleanly.
fn go_and_measure(lp: &mut Supervised, n: u64) -> Result<PairCost> {
    go(lp)?;
    let cost = read_pair_cost(lp, n)?;
    lp.wait_exit_ok(EXIT_TIMEOUT)?;
    Ok(cost)
}

fn spawn_loop(loop_bin: &Path, n: u64) -> Result<Supervised> {
    let mut cmd = Command::new(loop_bin);
    cmd.arg(n.to_string());
    let mut lp = Supervised::spawn("malloc_loop", &mut cmd, Input::Piped)?;
    lp.wait_stdout(ATTACH_TIMEOUT, "`ready` line", |l| {
        is_ready(l).then_some(())
    })?;
    Ok(lp)
}

fn run_untraced(loop_bin: &Path, n: u64) -> Result<PairCost> {
    let mut lp = spawn_loop(loop_bin, n)?;
    go_and_measure(&mut lp, n)
}

/// `mode_args`: extra leaktrace arguments (e.g. `--mode growth`), before the command.
fn run_leaktrace(
    leaktrace_bin: &Path,
    mode_args: &[&str],
    loop_bin: &Path,
    n: u64,
) -> Result<PairCost> {
    let mut cmd = Command::new(leaktrace_bin);
    cmd.args(mode_args)
        .args(["--interval", "1h", "--"])
        .arg(loop_bin)
        .arg(n.to_string());
    // leaktrace attaches, then launches the loop, which inherits leaktrace's stdin and stdout:
    // the loop's `ready` therefore also means "leaktrace is attached".
    let mut lt = Supervised::spawn("leaktrace", &mut cmd, Input::Piped)?;
    lt.wait_stdout(
        ATTACH_TIMEOUT,
        "`ready` line from the loop (leaktrace attaches, then launches it)",
        |l| is_ready(l).then_some(()),
    )?;
    go(&mut lt)?;
    let cost = read_pair_cost(&mut lt, n)?;
    let status = lt
        .wait_exit(EXIT_TIMEOUT)
        .context("leaktrace did not exit by itself after the traced loop exited")?;
    if !status.success() {
        bail!("leaktrace exited with {status}; last output: {}", lt.tail());
    }
    Ok(cost)
}

fn run_bpftrace(bpftrace_bin: &Path, loop_bin: &Path, n: u64) -> Result<PairCost> {
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
    let mut bt = Supervised::spawn("bpftrace", &mut cmd, Input::Null)?;
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
    let cost = go_and_measure(&mut lp, n)?;
    // bpftrace -p usually exits by itself when the process exits; SIGINT it if not.
    bt.interrupt(EXIT_TIMEOUT)?;
    let count_of = |map: &str| {
        let prefix = format!("@{map}: ");
        bt.stdout_lines()
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
    Ok(cost)
}

fn run_memleak(memleak_bin: &Path, headers: &Path, loop_bin: &Path, n: u64) -> Result<PairCost> {
    let mut lp = spawn_loop(loop_bin, n)?;
    let mut ml = spawn_memleak(memleak_bin, headers, lp.pid())?;
    let cost = go_and_measure(&mut lp, n)?;
    if let Some(status) = ml.try_status()? {
        bail!(
            "memleak-bpfcc exited ({status}) while the loop ran; last output: {}",
            ml.tail()
        );
    }
    ml.interrupt(EXIT_TIMEOUT)?;
    Ok(cost)
}
