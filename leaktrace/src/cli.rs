//! Command-line interface.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::schema::{Mode, Processed};

/// Exact eBPF memory-leak tracer: outstanding allocations by call stack, live, for running
/// processes or a command it launches.
#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    after_help = "Examples:\n  sudo leaktrace --pid 9163 --json leak.json\n  sudo leaktrace --duration 30s -- ./my-server --port 8080\n  leaktrace report leak.json --format markdown",
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Post-mortem subcommands (read saved snapshots; no root needed)"
)]
pub struct Cli {
    /// Read saved snapshots back instead of tracing.
    #[command(subcommand)]
    pub postmortem: Option<PostmortemCommand>,

    /// Trace this running process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// How often to sample, refresh the display and rewrite the JSON snapshot
    /// [default: 1s with the dashboard, 5s headless].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Print the periodic text table instead of the live dashboard (the default when stdout is
    /// not a terminal).
    #[arg(long)]
    pub headless: bool,

    /// Stop after this long (default: until Ctrl-C or until every target exits).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Write a JSON snapshot (schema leaktrace/1) here every interval and at the end.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// What counts as work processed, for the growth slope per MiB (from /proc/PID/io).
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = Processed::Both)]
    pub processed: Processed,

    /// Count only allocations at least this old in a site's aged outstanding bytes (the growth
    /// classification requires old allocations to keep surviving).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_min_age)]
    pub min_age: Duration,

    /// Also keep a rolling series of timestamped snapshots, one this often, in --snapshot-dir.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "snapshot_dir")]
    pub snapshot_every: Option<Duration>,

    /// Directory of the rolling snapshots (created if missing).
    #[arg(long, value_name = "DIR", requires = "snapshot_every")]
    pub snapshot_dir: Option<PathBuf>,

    /// Create snapshots readable only by the user running leaktrace (0600 instead of 0644;
    /// the umask can only narrow either).
    #[arg(long)]
    pub private: bool,

    /// How many rolling snapshots to keep (the oldest are deleted).
    #[arg(long, value_name = "N", default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// How many sites the periodic table shows per process.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// System-wide mode: how many processes, by heap growth, are reported in full (sites and
    /// stacks) in each snapshot and table; the others are summarized in one line.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_processes: u64,

    /// Capacity of the outstanding-allocation map (allocations beyond it are counted as dropped).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_allocations: u32,

    /// Capacity of the stack map (distinct call stacks; beyond it sites keep only their caller).
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub max_stacks: u32,

    /// Exact mode: memory for the unwind tables the kernel walks stacks with (modules' CFI, 16
    /// bytes a row; libc needs about 0.5 MiB, libcrypto 2 MiB). Modules beyond it are walked with
    /// frame pointers and counted as `stack_no_table`.
    #[arg(long, value_name = "MIB", default_value_t = crate::unwind_tables::DEFAULT_TABLE_MIB, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub unwind_table_mib: u32,

    /// Exact mode: capture the call stack of about one allocation per this many bytes (a
    /// Poisson sample over bytes, like jemalloc's and Go's pprof, e.g. 524288); the others are
    /// counted under their caller alone. Totals per caller stay exact; per stack they are shared
    /// out in proportion to the sampled stacks. Saves the stack walk on most calls.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_bytes: Option<u64>,

    /// Growth mode: CPU the short exact bursts that estimate leaking sites may cost each traced
    /// --pid or command, in percent of one CPU (measured: the snapshot reports it); 0 turns the
    /// bursts off (then growth mode says only what grew the heap) [default: 1].
    #[arg(long, value_name = "PCT", value_parser = parse_budget)]
    pub overhead_budget: Option<f64>,

    /// Watch every process's heap syscalls (brk, mmap, ...; no uprobes). The default when
    /// neither --pid nor a command is given; with --pid, those PIDs are also traced per --mode.
    #[arg(long)]
    pub system_wide: bool,

    /// exact: every malloc/free of the targets (uprobes; costs microseconds per call).
    /// growth: only the syscalls that grow the heap, with full stacks unwound from .eh_frame
    /// (near-zero overhead, safe to leave on a production service)
    /// [default: exact for --pid and commands, growth system-wide].
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,

    /// Serve /metrics (OpenMetrics for Prometheus), /debug/pprof/heap?pid=P (pprof),
    /// /snapshot.json and /healthz over HTTP at this address, e.g. 127.0.0.1:9464 (a bare port
    /// binds to 127.0.0.1; any other address must be written out, see SECURITY.md).
    #[arg(long, value_name = "ADDR", value_parser = crate::serve::parse_listen)]
    pub listen: Option<std::net::SocketAddr>,

    /// Require `Authorization: Bearer TOKEN` on every endpoint but /healthz, with TOKEN read
    /// from this file (which must not be readable or writable by others).
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub listen_token: Option<PathBuf>,

    /// How many sites per process /metrics lists, by leak rank.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "listen")]
    pub metrics_top_sites: usize,

    /// How long /metrics keeps the series of a process after it exited.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, requires = "listen")]
    pub metrics_grace: Duration,

    /// Command to launch and trace from its first allocation.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `--overhead-budget`: a percentage from 0 to 100.
fn parse_budget(text: &str) -> Result<f64, String> {
    let pct: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage (e.g. 1 or 0.5)"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("{text} is not between 0 and 100"));
    }
    Ok(pct)
}

/// Post-mortem commands: they read snapshots written by `--json` and need no privileges.
#[derive(Debug, Subcommand)]
pub enum PostmortemCommand {
    /// Print a readable report of a snapshot: per process summary, counters, top sites.
    Report(ReportArgs),
    /// Compare two snapshots (same run or not): change of outstanding memory per site.
    Diff(DiffArgs),
    /// Export outstanding memory by call stack: pprof profile, folded stacks or SVG flamegraph.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A snapshot written by `leaktrace --json`.
    #[arg(value_name = "FILE.json")]
    pub file: PathBuf,

    /// How many sites to show per process, by leak rank.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Only this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sites whose oldest outstanding block is at least this old.
    #[arg(long, value_name = "DURATION", value_parser = parse_min_age)]
    pub min_age: Option<Duration>,

    /// text for a terminal, markdown for pasting into a ticket.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Also print outstanding bytes by function (cumulative and self) and the call tree,
    /// callers first, pruned to the subtrees holding at least 1% of them.
    #[arg(long)]
    pub tree: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Markdown,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier snapshot.
    #[arg(value_name = "OLD.json")]
    pub old: PathBuf,

    /// The later snapshot (of the same run, or of another run or machine).
    #[arg(value_name = "NEW.json")]
    pub new: PathBuf,

    /// How many sites to list per process and kind of change.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A snapshot written by `leaktrace --json`.
    #[arg(value_name = "FILE.json")]
    pub file: PathBuf,

    /// pprof: gzip'd profile.proto for `go tool pprof`; folded: stacks for flamegraph.pl,
    /// inferno or speedscope; svg: a flamegraph of outstanding bytes; go-heap: the Go runtime's
    /// own heap profile (inuse/alloc space and objects) as pprof.
    #[arg(long, value_enum)]
    pub format: ExportFormat,

    /// Create the file readable only by its owner (0600 instead of 0644).
    #[arg(long)]
    pub private: bool,

    /// Where to write it (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Pprof,
    Folded,
    Svg,
    /// The Go runtime's heap profile of the Go processes, as `go tool pprof` reads it.
    GoHeap,
}

fn parse_min_age(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s" | "0ms") {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Parse "500ms", "5s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err(format!("`{text}` is not a valid duration")),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("`{text}` is not a valid duration ({e}); try 500ms, 5s, 2m"))?,
    };
    if parsed.is_zero() {
        return Err("the duration must be greater than zero".to_string());
    }
    Ok(parsed)
}

impl Cli {
    /// Who may read the files this run writes.
    pub fn access(&self) -> crate::output::Access {
        crate::output::Access::from_private(self.private)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3").is_err());
    }

    #[test]
    fn command_after_double_dash_is_kept_verbatim() {
        let cli = Cli::try_parse_from(["leaktrace", "--pid", "1", "--", "ls", "-l", "--pid"])
            .expect("parses");
        assert_eq!(cli.pids, vec![1]);
        assert_eq!(cli.command, vec!["ls", "-l", "--pid"]);
    }
}
