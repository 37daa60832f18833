//! `cargo xtask soak`: system-wide leaktrace (`--headless --json`) under a generated load of
//! short-lived gcc, python3 and sh processes, for `--minutes`; leaktrace's RSS and CPU are
//! sampled from /proc every 10 s and summarized at the end, with the snapshot's size, the bytes
//! of headless output and how long leaktrace took to exit after SIGINT.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How often leaktrace's RSS and CPU are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Parallel load loops (each runs one short process after another).
const LOAD_LOOPS: usize = 2;

/// One sample of leaktrace's own usage.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: f64,
    rss_bytes: u64,
    cpu_s: f64,
    json_bytes: u64,
}

pub fn run(leaktrace_bin: &Path, out_dir: &Path, minutes: f64) -> Result<()> {
    if !leaktrace_bin.exists() {
        bail!("soak: {} not found", leaktrace_bin.display());
    }
    fs::create_dir_all(out_dir)?;
    let program = out_dir.join("soak_load.c");
    fs::write(
        &program,
        "#include <stdlib.h>\n#include <string.h>\nint main(void) {\n  char *p[64];\n  for (int i = 0; i < 64; i++) { p[i] = malloc(4096 * (i + 1)); memset(p[i], 1, 4096); }\n  return p[3][0] == 1 ? 0 : 1;\n}\n",
    )?;
    let json = out_dir.join("soak.json");
    let stdout_path = out_dir.join("soak.stdout");
    let _ = fs::remove_file(&json);
    let mut leaktrace = Command::new(leaktrace_bin)
        .args(["--headless", "--interval", "5s", "--json"])
        .arg(&json)
        .stdout(fs::File::create(&stdout_path)?)
        .stderr(fs::File::create(out_dir.join("soak.stderr"))?)
        .spawn()
        .context("cannot start leaktrace")?;
    let pid = leaktrace.id();
    // Let it load and calibrate before the load starts.
    thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let started_processes = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..LOAD_LOOPS)
        .map(|n| {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&started_processes));
            let (program, dir) = (program.clone(), out_dir.to_path_buf());
            thread::spawn(move || load_loop(n, &program, &dir, &stop, &count))
        })
        .collect();
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    let cpu_at_start = cpu_seconds(pid).unwrap_or(0.0);
    while started.elapsed() < total {
        thread::sleep(SAMPLE_EVERY.min(total.saturating_sub(started.elapsed())));
        if let Ok(Some(status)) = leaktrace.try_wait() {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "soak: leaktrace exited early ({status}); see {}",
                out_dir.display()
            );
        }
        let sample = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_bytes: rss_bytes(pid).unwrap_or(0),
            cpu_s: cpu_seconds(pid).unwrap_or(0.0) - cpu_at_start,
            json_bytes: fs::metadata(&json).map_or(0, |m| m.len()),
        };
        println!(
            "soak: {:>6.0} s  RSS {:>6.1} MB  CPU {:>5.2}% of a core  snapshot {:>7.1} KB  {} processes started",
            sample.at_s,
            mb(sample.rss_bytes),
            sample.cpu_s / sample.at_s * 100.0,
            sample.json_bytes as f64 / 1e3,
            started_processes.load(Ordering::Relaxed)
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        let _ = handle.join();
    }
    let exit_ms = interrupt_and_time(&mut leaktrace)?;
    let final_json = fs::read(&json).context("the final snapshot is missing")?;
    let parsed: serde_json::Value =
        serde_json::from_slice(&final_json).context("the final snapshot does not parse")?;
    let summary = summarize(
        &samples,
        started_processes.load(Ordering::Relaxed),
        fs::metadata(&stdout_path).map_or(0, |m| m.len()),
        final_json.len() as u64,
        exit_ms,
        &parsed,
    );
    print!("{summary}");
    fs::write(out_dir.join("summary.txt"), &summary)?;
    Ok(())
}

/// Short processes, one after another until `stop`: a gcc compile, a python3 that allocates,
/// a shell pipeline and the compiled program, in turn.
fn load_loop(n: usize, program: &Path, dir: &Path, stop: &AtomicBool, count: &AtomicU64) {
    let binary = dir.join(format!("soak_load_{n}"));
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut command = match round % 4 {
            0 => {
                let mut c = Command::new("gcc");
                c.arg("-O1").arg("-o").arg(&binary).arg(program);
                c
            }
            1 => {
                let mut c = Command::new(if Path::new("/usr/bin/python3").exists() {
                    "/usr/bin/python3"
                } else {
                    "python3"
                });
                c.args([
                    "-c",
                    "b=[bytearray(65536) for _ in range(64)]; d={i: str(i) for i in range(20000)}",
                ]);
                c
            }
            2 => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "for i in 1 2 3 4 5; do echo $i; done | sort -r | head -n 2 >/dev/null",
                ]);
                c
            }
            _ => Command::new(&binary),
        };
        round += 1;
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if status.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// SIGINT leaktrace and wait for it: milliseconds until it exited.
fn interrupt_and_time(leaktrace: &mut Child) -> Result<f64> {
    let pid = i32::try_from(leaktrace.id()).context("pid out of range")?;
    let asked = Instant::now();
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = leaktrace.wait()?;
    let ms = asked.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("soak: leaktrace exited with {status}");
    }
    Ok(ms)
}

fn summarize(
    samples: &[Sample],
    processes: u64,
    stdout_bytes: u64,
    final_json_bytes: u64,
    exit_ms: f64,
    snapshot: &serde_json::Value,
) -> String {
    let mut out = Vec::new();
    let Some(last) = samples.last() else {
        return "soak: no samples\n".to_string();
    };
    let at = |s: f64| {
        samples
            .iter()
            .find(|x| x.at_s >= s)
            .map_or(last.rss_bytes, |x| x.rss_bytes)
    };
    let max_rss = samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    let max_json = samples.iter().map(|s| s.json_bytes).max().unwrap_or(0);
    let half = last.at_s / 2.0;
    let cpu_at_half = samples
        .iter()
        .find(|x| x.at_s >= half)
        .map_or(0.0, |x| x.cpu_s);
    let _ = writeln!(
        out,
        "soak summary ({:.1} min, {processes} short processes started, {:.1}/s)",
        last.at_s / 60.0,
        processes as f64 / last.at_s
    );
    let _ = writeln!(out, "  leaktrace RSS: {:.1} MB at 1 min, {:.1} MB at half-time, {:.1} MB at the end, {:.1} MB at most", mb(at(60.0)), mb(at(half)), mb(last.rss_bytes), mb(max_rss));
    let _ = writeln!(
        out,
        "  leaktrace CPU: {:.2}% of a core over the run, {:.2}% over the second half",
        last.cpu_s / last.at_s * 100.0,
        (last.cpu_s - cpu_at_half) / (last.at_s - half).max(1e-9) * 100.0
    );
    let _ = writeln!(out, "  snapshot: {:.1} KB at most while running, {:.1} KB final; {} processes in full, {} summarized", max_json as f64 / 1e3, final_json_bytes as f64 / 1e3, snapshot["processes"].as_array().map_or(0, Vec::len), snapshot["other_processes"]["processes"].as_u64().unwrap_or(0));
    let _ = writeln!(
        out,
        "  headless output: {:.1} KB in all ({:.1} KB/min)",
        stdout_bytes as f64 / 1e3,
        stdout_bytes as f64 / 1e3 / (last.at_s / 60.0)
    );
    let _ = writeln!(
        out,
        "  snapshot `self`: RSS {:.1} MB, CPU {:.2}% since start",
        snapshot["self"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        snapshot["self"]["cpu_pct_since_start"]
            .as_f64()
            .unwrap_or(0.0)
    );
    let _ = writeln!(out, "  exit after SIGINT: {exit_ms:.0} ms");
    String::from_utf8(out).unwrap_or_default()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of /proc/PID/stat, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Where the soak's files go.
pub fn out_dir(root: &Path) -> PathBuf {
    root.join("target/soak")
}
