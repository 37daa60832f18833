//! `cargo xtask bench --scenario go-census`: what the goroutine census of a Go program with many
//! blocked goroutines costs leaktrace's session loop.
//!
//! Builds `tests/fixtures/go/goroutines.go` with the `go` on PATH, starts it with
//! `--iterations` goroutines blocked on a channel send, and traces it by pid
//! (`leaktrace --pid P --headless --interval 1s --duration SECS`, `RUST_LOG=leaktrace=debug`)
//! once per round with each binary: this build (`leaktrace`) and, given `--baseline PATH`, another
//! one (`baseline`, e.g. main's). From leaktrace's debug lines it takes, per snapshot, how long
//! the session loop spent building it (`snapshot of N processes built in`) and how long the
//! census took (`goroutine census ... read and grouped in`, or before the census thread
//! `goroutine census read in` + `goroutines grouped in`). Reports the medians over every
//! snapshot of every round (the first snapshot of each run is left out: it symbolizes).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use leaktrace_supervisor::{Input, Lines, Supervised};

use super::{stats::stats, BenchArgs};

/// Per snapshot: (session-loop ms, census ms).
#[derive(Default)]
struct Samples {
    snapshot_ms: Vec<f64>,
    census_ms: Vec<f64>,
}

pub fn run(root: &Path, leaktrace_bin: &Path, out_dir: &Path, args: &BenchArgs) -> Result<()> {
    let fixture = out_dir.join("goroutines");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&fixture)
        .arg(root.join("tests/fixtures/go/goroutines.go"))
        .env("GO111MODULE", "off")
        .env("GOCACHE", root.join("target/go-cache"))
        .env("GOFLAGS", "")
        .status()
        .context("bench: cannot run `go build` (is golang-go installed? `cargo xtask setup`)")?;
    if !status.success() {
        bail!("bench: go build of the goroutines fixture failed");
    }
    let mut binaries: Vec<(&str, PathBuf)> = vec![("leaktrace", leaktrace_bin.to_path_buf())];
    if let Some(baseline) = &args.baseline {
        binaries.push(("baseline", baseline.clone()));
    }
    let goroutines = args.iterations;
    let mut command = Command::new(&fixture);
    command.arg(goroutines.to_string());
    let mut target = Supervised::spawn("goroutines fixture", &mut command, Input::Piped)?;
    target.wait_line(Duration::from_secs(120), "ready", Lines::Stdout, |l| {
        l.starts_with("ready").then_some(())
    })?;
    let pid = target.pid().to_string();
    let mut samples: Vec<Samples> = binaries.iter().map(|_| Samples::default()).collect();
    for round in 0..args.repeats as usize {
        for k in 0..binaries.len() {
            let i = (k + round) % binaries.len();
            let (name, bin) = &binaries[i];
            let json = out_dir.join("go-census.json");
            let output = Command::new(bin)
                .args([
                    "--pid",
                    &pid,
                    "--headless",
                    "--interval",
                    "1s",
                    "--duration",
                ])
                .arg(format!("{}s", args.duration_secs))
                .arg("--json")
                .arg(&json)
                .env("RUST_LOG", "leaktrace=debug")
                .output()
                .with_context(|| format!("bench: cannot run {}", bin.display()))?;
            if !output.status.success() {
                target.kill_and_reap();
                bail!(
                    "bench: {name} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let log = String::from_utf8_lossy(&output.stderr);
            let (snapshots, censuses) = parse_log(&log);
            println!(
                "round {round} {name}: {} snapshots, {} censuses",
                snapshots.len(),
                censuses.len()
            );
            samples[i].snapshot_ms.extend(snapshots.into_iter().skip(1));
            samples[i].census_ms.extend(censuses.into_iter().skip(1));
        }
    }
    target.kill_and_reap();
    println!("\ngo-census: {goroutines} goroutines blocked, interval 1s, medians (min-max) in ms");
    println!(
        "{:<10} {:>26} {:>26}",
        "binary", "session loop per snapshot", "census (read + group)"
    );
    let mut json = Vec::new();
    for ((name, bin), s) in binaries.iter().zip(&samples) {
        let cell = |v: &[f64]| {
            stats(v).map_or_else(
                || "-".to_string(),
                |s| format!("{:.1} ({:.1}-{:.1})", s.median, s.min, s.max),
            )
        };
        println!(
            "{name:<10} {:>26} {:>26}",
            cell(&s.snapshot_ms),
            cell(&s.census_ms)
        );
        json.push(format!(
            "{{\"name\":\"{name}\",\"binary\":\"{}\",\"snapshot_ms\":{:?},\"census_ms\":{:?}}}",
            bin.display(),
            s.snapshot_ms,
            s.census_ms
        ));
    }
    let path = out_dir.join("bench-go-census.json");
    std::fs::write(
        &path,
        format!(
            "{{\"goroutines\":{goroutines},\"variants\":[{}]}}\n",
            json.join(",")
        ),
    )
    .with_context(|| format!("bench: cannot write {}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(())
}

/// Snapshot build times and census times (ms) from leaktrace's debug log, in order.
fn parse_log(log: &str) -> (Vec<f64>, Vec<f64>) {
    let mut snapshots = Vec::new();
    let mut censuses = Vec::new();
    // Before the census thread: "census read in X", then "grouped in Y".
    let mut read_ms = None;
    for line in log.lines() {
        let after = |needle: &str| {
            line.find(needle)
                .and_then(|at| duration_ms(&line[at + needle.len()..]))
        };
        if line.contains("snapshot of") {
            snapshots.extend(after("built in "));
        } else if line.contains("read and grouped in ") {
            censuses.extend(after("read and grouped in "));
        } else if line.contains("goroutine census read in ") {
            read_ms = after("goroutine census read in ");
        } else if let (Some(read), Some(grouped)) = (read_ms, after("goroutines grouped in ")) {
            censuses.push(read + grouped);
            read_ms = None;
        }
    }
    (snapshots, censuses)
}

/// A `Duration`'s Debug text (`1.32s`, `671.1ms`, `850.2µs`, `12ns`) in ms.
fn duration_ms(text: &str) -> Option<f64> {
    let word = text.split_whitespace().next()?;
    let (number, scale) = [("ms", 1.0), ("µs", 1e-3), ("ns", 1e-6), ("s", 1e3)]
        .iter()
        .find_map(|(unit, scale)| word.strip_suffix(unit).map(|n| (n, *scale)))?;
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_logs() {
        let old = "[DEBUG leaktrace::golang] pid 1: goroutine census read in 649.5ms\n\
                   [DEBUG leaktrace::golang] pid 1: goroutines grouped in 443.8ms\n\
                   [DEBUG leaktrace::session] snapshot of 1 processes built in 1.32s\n";
        let (snapshots, censuses) = parse_log(old);
        assert_eq!(snapshots, vec![1320.0]);
        assert!((censuses[0] - 1093.3).abs() < 1e-6);
        let new = "pid 1: goroutine census of 3.0 s read and grouped in 850µs\n\
                   snapshot of 1 processes built in 2.5ms";
        assert_eq!(parse_log(new), (vec![2.5], vec![0.85]));
        assert_eq!(duration_ms("12ns"), Some(12e-6));
        assert_eq!(duration_ms("x"), None);
    }
}
