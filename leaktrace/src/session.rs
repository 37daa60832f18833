//! One tracing run, in stages: resolve the configuration, validate it, find the targets, load
//! the probes, attach, sample every interval, finish. The session orchestrates: the reported
//! numbers come from `model` and the modules it reads (docs/architecture.md).
use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use leaktrace_common::NO_STACK;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, MissedTickBehavior},
};

use crate::{
    allocator::Discovery,
    bursts::Bursts,
    cli::Cli,
    cost::{HitRate, OwnMeter},
    golang::{self, GoTracker},
    heap::{AllocatorCalls, HeapTracker},
    model::{
        self, GrowthClock, ProcessMemory, ProcessTotals, SinceStart, SiteEvidence, SiteSeries,
    },
    output::{self, Access},
    privileges, procfs, report,
    schema::{
        self, BurstReport, EstimatedSite, ExitStatus, Mode, OtherProcesses, ProbeCost,
        ProcessReport, Processed, SiteHeap, SiteReport, Snapshot, SCHEMA,
    },
    serve,
    symbolize::Symbols,
    target::{self, TargetProcess},
    tracer::{self, Capacity, MapsReading, Scope, Tracer},
    ui::{self, Action, App, Event, Live, Update},
    unwind::StackUnwinder,
    unwind_tables::TableWorker,
};

/// How often liveness is checked and live processes' mappings are re-read (so that stacks stay
/// symbolizable after a process dies between two intervals).
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

/// Samples kept per site for the growth fits (older ones are downsampled evenly): 4 KiB per
/// site, so 10,000 sites cost 40 MiB rather than the 160 MiB of growth.rs's default 512.
const SERIES_CAPACITY: usize = 128;

/// System-wide mode: how long a process that exited stays listed (its heap state, sites and
/// series are then dropped, so a run of days on a busy host does not grow with process churn).
/// A process that exited with no heap growth is dropped at once: it has nothing to say.
const EXITED_KEPT: Duration = Duration::from_secs(60);

/// System-wide mode: at most this many exited processes are remembered (those with the least
/// to say are dropped first: no findings, then the least heap growth, then gone longest): a
/// build starts thousands of compilers a minute.
const EXITED_MAX: usize = 128;

/// System-wide mode: sites listed per process (at least; `--top` if more), by leak rank.
const SYSTEM_WIDE_SITES: usize = 20;

/// `--overhead-budget` when not given: growth mode's bursts may cost 1% of a CPU per target.
const DEFAULT_OVERHEAD_BUDGET_PCT: f64 = 1.0;

/// Where the run shows itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The live dashboard (stdout is a terminal and `--headless` was not given).
    Dashboard,
    /// The periodic text table.
    Headless,
}

/// What standard output is, for choosing the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    Terminal,
    Other,
}

impl Stdout {
    pub fn detect() -> Self {
        use std::io::IsTerminal as _;
        if std::io::stdout().is_terminal() {
            Stdout::Terminal
        } else {
            Stdout::Other
        }
    }
}

/// `--snapshot-dir`, `--snapshot-every` and `--keep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rolling {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: u32,
}

/// A run's settings, resolved from the command line: every default chosen, every combination
/// that cannot work refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `--pid`s, sorted, without repeats.
    pub pids: Vec<u32>,
    /// The command to launch (empty: none).
    pub command: Vec<OsString>,
    pub mode: Mode,
    /// `--mode` was given (otherwise a pure Go target without libc switches the run to growth).
    pub mode_chosen: bool,
    pub scope: Scope,
    pub view: View,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub json: Option<PathBuf>,
    pub rolling: Option<Rolling>,
    pub access: Access,
    pub processed: Processed,
    pub min_age: Duration,
    pub top: usize,
    /// `--top-processes`: system-wide processes reported in full.
    pub top_processes: usize,
    pub max_allocations: u32,
    pub max_stacks: u32,
    /// `--sample-bytes` (0: every stack).
    pub sample_bytes: u64,
    /// `--listen` and its options.
    pub listen: Option<serve::Options>,
    /// `--overhead-budget` (percent of one CPU; 0: no bursts).
    pub overhead_budget: f64,
    /// `--unwind-table-mib`.
    pub unwind_table_mib: u32,
}

impl Config {
    /// The settings `cli` asks for, with standard output being `stdout`.
    pub fn resolve(cli: Cli, stdout: Stdout) -> anyhow::Result<Config> {
        let view = match (cli.headless, stdout) {
            (false, Stdout::Terminal) => View::Dashboard,
            _ => View::Headless,
        };
        let (scope, mode) = scope_and_mode(&cli)?;
        let mut pids = cli.pids.clone();
        pids.sort_unstable();
        pids.dedup();
        let default_interval = match view {
            View::Dashboard => Duration::from_secs(1),
            View::Headless => Duration::from_secs(5),
        };
        let rolling = match (&cli.snapshot_dir, cli.snapshot_every) {
            (Some(dir), Some(every)) => Some(Rolling {
                dir: dir.clone(),
                every,
                keep: cli.keep,
            }),
            _ => None,
        };
        Ok(Config {
            access: cli.access(),
            pids,
            command: cli.command,
            mode,
            mode_chosen: cli.mode.is_some(),
            scope,
            view,
            interval: cli.interval.unwrap_or(default_interval),
            duration: cli.duration,
            json: cli.json,
            rolling,
            processed: cli.processed,
            min_age: cli.min_age,
            top: cli.top,
            top_processes: usize::try_from(cli.top_processes).unwrap_or(usize::MAX),
            max_allocations: cli.max_allocations,
            max_stacks: cli.max_stacks,
            sample_bytes: cli.sample_bytes.unwrap_or(0),
            listen: cli.listen.map(|addr| serve::Options {
                addr,
                token_file: cli.listen_token,
                top_sites: cli.metrics_top_sites,
                grace: cli.metrics_grace,
            }),
            overhead_budget: cli.overhead_budget.unwrap_or(DEFAULT_OVERHEAD_BUDGET_PCT),
            unwind_table_mib: cli.unwind_table_mib,
        })
    }

    fn growth(&self) -> bool {
        self.mode == Mode::Growth
    }

    fn system_wide(&self) -> bool {
        self.scope == Scope::SystemWide
    }

    fn min_age_ns(&self) -> u64 {
        u64::try_from(self.min_age.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Who is traced and how; refuses the combinations that cannot work (with messages that say
/// what to do instead, which clap's `conflicts_with` would not).
fn scope_and_mode(cli: &Cli) -> anyhow::Result<(Scope, Mode)> {
    let no_targets = cli.pids.is_empty() && cli.command.is_empty();
    let scope = if cli.system_wide || no_targets {
        Scope::SystemWide
    } else {
        Scope::Targets
    };
    if scope == Scope::SystemWide && !cli.command.is_empty() {
        bail!(
            "--system-wide and a command do not go together: launch the command in another shell"
        );
    }
    let everything = scope == Scope::SystemWide && cli.pids.is_empty();
    let mode = cli.mode.unwrap_or(if everything {
        Mode::Growth
    } else {
        Mode::Exact
    });
    if mode == Mode::Growth && cli.sample_bytes.is_some() {
        bail!("--sample-bytes samples exact mode's stacks: growth mode has no uprobes to sample");
    }
    if mode == Mode::Exact && everything {
        bail!("--mode exact needs --pid: system-wide tracing has no uprobes (use --mode growth)");
    }
    if mode == Mode::Exact && cli.overhead_budget.is_some() {
        bail!("--overhead-budget sets growth mode's bursts: exact mode traces every call (add --mode growth)");
    }
    Ok((scope, mode))
}

/// How a traced process came to be traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Given by `--pid`, picked in the dashboard, or seen system-wide: never signalled.
    Found,
    /// Launched by leaktrace: reaped for its exit status, and ended with the run.
    Launched,
}

struct Traced {
    process: TargetProcess,
    /// Exact: its malloc family is hooked; growth: its heap syscalls only.
    mode: Mode,
    origin: Origin,
    alive: bool,
    exit: Option<ExitStatus>,
    /// When it was first seen gone (system-wide rows are dropped some time after).
    gone_since: Option<Instant>,
    hooked: Vec<String>,
    /// /proc/PID/io counter (per `--processed`) since tracing started.
    work: SinceStart,
    memory: ProcessMemory,
    /// A launched command's exec events up to this time (CLOCK_MONOTONIC) are its first exec,
    /// already set up for at launch (it was held at its entry point instead).
    set_up_until_ns: u64,
}

impl Traced {
    /// `hooked`: the allocator functions hooked (none: growth mode).
    fn new(process: TargetProcess, origin: Origin, hooked: &[String]) -> Self {
        Self {
            process,
            mode: if hooked.is_empty() {
                Mode::Growth
            } else {
                Mode::Exact
            },
            origin,
            alive: true,
            exit: None,
            gone_since: None,
            hooked: hooked.to_vec(),
            work: SinceStart::default(),
            memory: match origin {
                Origin::Launched => ProcessMemory::launched(),
                Origin::Found => ProcessMemory::default(),
            },
            set_up_until_ns: 0,
        }
    }

    fn exact(&self) -> bool {
        self.mode == Mode::Exact
    }

    fn launched(&self) -> bool {
        self.origin == Origin::Launched
    }

    fn sample_processed(&mut self, measure: Processed) {
        let Some(io) = procfs::read_io(self.process.pid) else {
            return;
        };
        self.work
            .record(model::work_done(io.read_bytes, io.written_bytes, measure));
        if let Some((rss, vm_data)) = procfs::read_memory(self.process.pid) {
            self.memory.record(rss, vm_data);
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::resolve(cli, Stdout::detect())?;
    let rolling = validate(&config)?;
    let publisher = config.listen.as_ref().map(serve::start).transpose()?;
    let targets = find_targets(&mut config)?;
    let (mut tracer, ns_per_hit) = load(&config)?;
    let bursts = plan_bursts(&mut tracer, &config);
    // Exact mode's stacks, and growth mode's bursts' (whose probes are exact mode's), are
    // unwound in the kernel from the modules' tables.
    let tables = if config.growth() && bursts.is_none() {
        None
    } else {
        let (rows, rows_fd, mappings) = tracer.unwind_table_maps()?;
        let capacity = config.unwind_table_mib.saturating_mul(1 << 16);
        Some(
            TableWorker::start(
                rows,
                rows_fd,
                mappings,
                capacity,
                privileges_needed(&config),
            )
            .context("cannot start the unwind-table worker")?,
        )
    };
    let (heap, traced) = attach(&mut tracer, &config, targets, tables.as_ref())?;
    drop_privileges(&config);
    announce(&config, &traced);
    let mut session = Session::new(config, tracer, heap, traced, rolling, ns_per_hit)?;
    session.publisher = publisher;
    session.tables = tables;
    session.start_bursts(bursts);
    let outcome = session.run_loop().await;
    session.finish(outcome).await
}

/// What the rest of the run needs once attached (privileges.rs).
fn privileges_needed(config: &Config) -> privileges::Needs {
    privileges::Needs {
        writes_outputs: config.json.is_some() || config.rolling.is_some(),
        launched_command: !config.command.is_empty(),
    }
}

/// Once attached, keep only the capabilities the rest of the run needs (privileges.rs). A
/// failure to drop them is said, not fatal: tracing goes on with what leaktrace had.
fn drop_privileges(config: &Config) {
    match privileges::drop_unneeded(privileges_needed(config)) {
        Ok(dropped) if !dropped.is_empty() => {
            log::info!("dropped {} capabilities no longer needed", dropped.len())
        }
        Ok(_) => {}
        Err(err) => log::warn!("cannot drop the capabilities leaktrace no longer needs: {err:#}"),
    }
}

/// Refuse before tracing what would fail later: no privileges, an unwritable `--json`, an
/// unusable `--snapshot-dir`.
fn validate(config: &Config) -> anyhow::Result<Option<(output::SnapshotSeries, Duration)>> {
    tracer::preflight()?;
    if let Some(path) = &config.json {
        output::check_writable(path)
            .with_context(|| format!("cannot write JSON snapshots to {}", path.display()))?;
    }
    config
        .rolling
        .as_ref()
        .map(|rolling| {
            output::SnapshotSeries::new(&rolling.dir, rolling.keep, config.access)
                .with_context(|| format!("cannot keep snapshots in {}", rolling.dir.display()))
                .map(|series| (series, rolling.every))
        })
        .transpose()
}

/// What to trace: the `--pid`s, and the command to launch (its path and its allocators).
struct Targets {
    running: Vec<TargetProcess>,
    launch: Option<(PathBuf, Discovery)>,
}

/// Finds the targets. A pure Go program (no libc to hook) switches a run whose mode was not
/// chosen to growth mode: its Go heap is then followed through heap growth and the runtime's
/// own profile, which need no allocator probes.
fn find_targets(config: &mut Config) -> anyhow::Result<Targets> {
    let may_switch = !config.mode_chosen && config.mode == Mode::Exact && config.sample_bytes == 0;
    let mut running = Vec::new();
    for pid in config.pids.clone() {
        let process = target::inspect(pid)?;
        // A pure Go program has no allocator to hook: its heap is traced in growth mode, with
        // the runtime's own heap profile and goroutines.
        if process.allocators.hookable().next().is_none()
            && may_switch
            && golang::is_go_binary(&procfs::exe_file(pid))
        {
            switch_to_growth(config, pid);
        }
        running.push(process);
    }
    let launch = match config.command.first() {
        Some(program) => {
            let path = target::resolve_program(program)?;
            // Growth mode needs no allocator to hook: any ELF file is fine.
            let allocators = match target::allocators_for_executable(&path) {
                Ok(allocators) => allocators,
                Err(_) if config.growth() && target::is_elf(&path) => Discovery::default(),
                Err(_) if may_switch && golang::is_go_binary(&path) => {
                    switch_to_growth(config, 0);
                    Discovery::default()
                }
                Err(err) => return Err(err.into()),
            };
            if allocators.hookable().next().is_none() && may_switch && golang::is_go_binary(&path) {
                switch_to_growth(config, 0);
            }
            Some((path, allocators))
        }
        None => None,
    };
    Ok(Targets { running, launch })
}

/// Say once why the run traces in growth mode (`pid` 0: the command).
fn switch_to_growth(config: &mut Config, pid: u32) {
    if config.mode == Mode::Growth {
        return;
    }
    let who = if pid == 0 {
        "the command".to_string()
    } else {
        format!("pid {pid}")
    };
    eprintln!(
        "leaktrace: {who} is a pure Go program (no libc to hook): tracing in growth mode, with \
         the Go runtime's own heap profile and goroutines"
    );
    config.mode = Mode::Growth;
}

/// Load the probes and measure what one hit costs.
fn load(config: &Config) -> anyhow::Result<(Tracer, Option<f64>)> {
    let capacity = Capacity {
        max_allocations: config.max_allocations,
        max_stacks: config.max_stacks,
        sample_bytes: config.sample_bytes,
        // Rows of 16 bytes; growth mode walks them only in its bursts.
        unwind_rows: if config.growth() && !bursts_wanted(config) {
            1
        } else {
            config.unwind_table_mib.saturating_mul(1 << 16)
        },
    };
    let mut tracer = Tracer::load(capacity, config.scope, config.mode)?;
    // Before any target is attached, so that only our own loop hits the probes (exact mode) or
    // only our calibration child makes heap-growth events (growth mode).
    let calibration = if config.growth() {
        tracer.calibrate_growth()
    } else {
        tracer.calibrate()
    };
    let ns_per_hit = match calibration {
        Ok(calibration) => {
            log::info!(
                "one probe hit costs {:.0} ns here (calibrated in {} ms)",
                calibration.ns_per_hit,
                calibration.took.as_millis()
            );
            Some(calibration.ns_per_hit)
        }
        Err(err) => {
            log::warn!("cannot measure the cost of a probe hit: {err:#}");
            None
        }
    };
    Ok((tracer, ns_per_hit))
}

/// Growth mode's bursts (unless `--overhead-budget 0`), with the cost of one exact-mode probe
/// hit measured here, before any target is attached (as exact mode's calibration).
fn plan_bursts(tracer: &mut Tracer, config: &Config) -> Option<Bursts> {
    if !bursts_wanted(config) {
        return None;
    }
    let ns_per_hit = match tracer.calibrate() {
        Ok(calibration) => Some(calibration.ns_per_hit),
        Err(err) => {
            log::warn!("cannot measure the cost of a burst's probe hit: {err:#}");
            None
        }
    };
    Some(Bursts::new(config.overhead_budget, ns_per_hit))
}

/// Growth mode runs bursts on its `--pid` and launched targets (system-wide rows get none),
/// within a budget above 0.
fn bursts_wanted(config: &Config) -> bool {
    config.growth()
        && config.overhead_budget > 0.0
        && !(config.pids.is_empty() && config.command.is_empty())
}

/// Attach to the running targets, then launch the command paused, attach to it and release it.
fn attach(
    tracer: &mut Tracer,
    config: &Config,
    targets: Targets,
    tables: Option<&TableWorker>,
) -> anyhow::Result<(HeapTracker, Vec<Traced>)> {
    let mut heap = HeapTracker::new(target::page_size());
    let mut traced = Vec::new();
    for process in targets.running {
        // Its modules' tables first, so that its first traced allocations have whole stacks.
        if let Some(tables) = tables {
            tables.refresh_and_wait(process.pid, TABLES_AT_START);
        }
        let hooked = attach_one(tracer, config.mode, &process)?;
        register_heap(&mut heap, process.pid);
        traced.push(Traced::new(process, Origin::Found, &hooked));
    }
    if let Some((path, allocators)) = targets.launch {
        let mut child = target::spawn_paused(&path, &config.command)?;
        let libc = allocators
            .primary()
            .map(|a| a.module.clone())
            .unwrap_or_default();
        let process = TargetProcess {
            pid: child.pid,
            comm: String::new(),
            exe: path.clone(),
            libc,
            allocators,
            cgroup: procfs::read_cgroup(child.pid),
        };
        let hooked = match attach_one(tracer, config.mode, &process) {
            Ok(hooked) => hooked,
            Err(err) => {
                child.abort();
                return Err(err);
            }
        };
        // Exact mode: the child stops at its entry point (its libraries are mapped by then)
        // until their unwind tables are loaded; every later exec (`env`, `sh -c 'exec ...'`)
        // is stopped by the kernel until the new program's state is set up
        // (Session::on_exec). Without an entry stop, the first exec is stopped too.
        let entry_stop = tables.and_then(|_| tracer.stop_at_entry(child.pid, &path));
        if entry_stop.is_none() {
            if let Err(err) = tracer.stop_on_exec(child.pid) {
                child.abort();
                return Err(err);
            }
        }
        child.release()?;
        let mut set_up_until_ns = 0;
        if let (Some(tables), Some(link)) = (tables, entry_stop) {
            // Its first exec happened before the entry point: already set up for.
            set_up_until_ns = load_tables_at_entry(tracer, tables, child.pid, link);
        }
        register_heap(&mut heap, child.pid);
        let comm = procfs::read_comm(child.pid).unwrap_or_else(|_| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let process = TargetProcess { comm, ..process };
        let mut launched = Traced::new(process, Origin::Launched, &hooked);
        launched.set_up_until_ns = set_up_until_ns;
        traced.push(launched);
    }
    // The work baseline is taken before announcing the run: what the targets process from then
    // on is what the per-MiB slopes measure.
    for t in &mut traced {
        t.sample_processed(config.processed);
    }
    Ok((heap, traced))
}

/// How long loading a process's unwind tables may hold its start (a 100 MB binary's table
/// takes a few seconds to build on a slow machine).
const TABLES_AT_START: Duration = Duration::from_secs(60);

/// Wait for a launched child to stop at its entry point, load its unwind tables, and let it go
/// on. A child that does not stop (it exits first, or is not ELF) is left running. Returns the
/// moment just before it goes on: its execs up to then are set up for, every later one is
/// not (taken after the SIGCONT, an exec made meanwhile by a wrapper would be taken for the
/// first and its process left stopped).
fn load_tables_at_entry(
    tracer: &mut Tracer,
    tables: &TableWorker,
    pid: u32,
    link: aya::programs::uprobe::UProbeLinkId,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = loop {
        match procfs::read_stat(pid) {
            Ok(stat) if stat.state == 'T' => break true,
            Ok(stat) if stat.state != 'Z' && stat.state != 'X' && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => break false,
        }
    };
    if !tables.refresh_and_wait(pid, TABLES_AT_START) {
        log::warn!("pid {pid}: its unwind tables took too long to load; it goes on without them");
    }
    // Every later exec stops it (registered while it is stopped: its first exec was not).
    if let Err(err) = tracer.stop_on_exec(pid) {
        log::warn!("pid {pid}: its later execs will not be stopped: {err:#}");
    }
    tracer.remove_entry_stop(link);
    let set_up_until_ns = crate::tracer::monotonic_ns();
    if stopped {
        // SAFETY: our own child, not yet reaped (it is stopped), so the pid is its.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
    set_up_until_ns
}

/// Hook a process's allocator (exact mode) or watch its heap syscalls (growth mode); returns
/// the functions hooked. A process whose allocator cannot be hooked is said so in one line and
/// has its heap syscalls traced: never zeros that look traced.
fn attach_one(
    tracer: &mut Tracer,
    mode: Mode,
    process: &TargetProcess,
) -> anyhow::Result<Vec<String>> {
    let pid = process.pid;
    match mode {
        Mode::Growth => tracer.trace_heap_of(pid).map(|()| Vec::new()),
        Mode::Exact | Mode::SystemWide => match &process.allocators.unhookable {
            Some(why) => {
                tracer.trace_heap_of(pid)?;
                eprintln!(
                    "leaktrace: pid {pid} ({}): {why}; not hooked, tracing its heap growth only",
                    process.comm
                );
                Ok(Vec::new())
            }
            None => tracer.attach(pid, &process.allocators),
        },
    }
}

fn announce(config: &Config, traced: &[Traced]) {
    if config.system_wide() {
        eprintln!(
            "leaktrace: watching the heap syscalls of every process{}",
            if config.growth() {
                " (growth mode)"
            } else {
                ""
            }
        );
    }
    for t in traced {
        if t.exact() {
            let allocators: Vec<String> = t
                .process
                .allocators
                .hookable()
                .map(|a| format!("{} in {}", a.describe(), a.module.display()))
                .collect();
            eprintln!(
                "leaktrace: tracing pid {} ({}) through {} [{}]",
                t.process.pid,
                t.process.comm,
                allocators.join(" and "),
                t.hooked.join(" ")
            );
        } else {
            eprintln!(
                "leaktrace: tracing pid {} ({}) in growth mode [brk mmap mremap mprotect munmap]",
                t.process.pid, t.process.comm
            );
        }
    }
}

struct Session {
    config: Config,
    /// The aggregate maps, read off the event loop by the dashboard.
    reader: std::sync::Arc<tracer::MapsReader>,
    tracer: Tracer,
    symbols: Symbols,
    /// Stack map contents, read once per (pid, stack id): ids are never reused.
    stacks: HashMap<u32, Vec<u64>>,
    traced: Vec<Traced>,
    /// System-wide mode: processes seen only through their heap syscalls.
    others: HashMap<u32, Traced>,
    heap: HeapTracker,
    /// Growth mode: heap-growing syscalls carry stack copies, unwound here.
    unwinder: StackUnwinder,
    /// Exact mode: the unwind tables' worker (loads each traced process's modules).
    tables: Option<TableWorker>,
    /// Unwound stacks by process, as synthetic stack ids (above the kernel's) for site keys.
    interned: HashMap<(u32, Vec<u64>), u32>,
    /// Frame-pointer stacks of growth events, by kernel stack id (ids are never reused).
    fp_stacks: HashMap<u32, Vec<u64>>,
    /// The last synthetic stack id handed out (ids are not reused when processes are dropped).
    unwound_ids: u32,
    /// `bpf_ktime_get_ns()` time base at the start, for growth sites' first/last seen.
    start_ns: u64,
    /// Outstanding bytes of every site at every interval, for the growth slopes.
    series: SiteSeries,
    started: Instant,
    /// `--snapshot-dir` / `--snapshot-every` / `--keep`.
    rolling: Option<(output::SnapshotSeries, Duration)>,
    last_series_write: Option<Instant>,
    /// Cost of one probe hit, from the calibration at start.
    ns_per_hit: Option<f64>,
    hit_rate: HitRate,
    /// `--listen`: every snapshot built is served.
    publisher: Option<serve::Publisher>,
    /// Growth mode: short exact bursts on the targets, for the leak estimate.
    bursts: Option<Bursts>,
    /// Go targets: their runtime, read from their memory.
    go: HashMap<u32, GoTracker>,
    /// leaktrace's own CPU, for the snapshot's `self`.
    own: OwnMeter,
}

/// Which snapshot is taken: one of an interval (its live sites get a growth sample), or the
/// final one of the run (`complete`; a dead process's flat tail is no growth data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    Interval,
    Final,
}

/// When a snapshot is taken: seconds into the run, and `bpf_ktime_get_ns()` of the map read.
#[derive(Clone, Copy, Debug)]
struct Moment {
    t_s: f64,
    now_ns: u64,
}

/// Start tracking a process's heap at its current program break, read from /proc.
fn register_heap(heap: &mut HeapTracker, pid: u32) {
    let brk = procfs::read_brk(pid);
    heap.register(pid, brk.map(|b| b.0), brk.map(|b| b.1));
}

fn read_or_empty(reading: anyhow::Result<MapsReading>) -> MapsReading {
    reading.unwrap_or_else(|err| {
        log::warn!("cannot read the eBPF maps: {err:#}");
        MapsReading::default()
    })
}

impl Session {
    fn new(
        config: Config,
        tracer: Tracer,
        heap: HeapTracker,
        traced: Vec<Traced>,
        rolling: Option<(output::SnapshotSeries, Duration)>,
        ns_per_hit: Option<f64>,
    ) -> anyhow::Result<Self> {
        let reader = std::sync::Arc::new(tracer.reader()?);
        let hits = if config.growth() {
            0
        } else {
            tracer.probe_hits()
        };
        let mut session = Session {
            config,
            reader,
            tracer,
            symbols: Symbols::new(),
            stacks: HashMap::new(),
            traced,
            others: HashMap::new(),
            heap,
            unwinder: StackUnwinder::new(),
            tables: None,
            interned: HashMap::new(),
            fp_stacks: HashMap::new(),
            unwound_ids: 0,
            start_ns: tracer::monotonic_ns(),
            series: SiteSeries::new(SERIES_CAPACITY),
            started: Instant::now(),
            rolling,
            last_series_write: None,
            ns_per_hit,
            hit_rate: HitRate::starting_at(Instant::now(), hits),
            publisher: None,
            bursts: None,
            go: HashMap::new(),
            own: OwnMeter::starting_at(Instant::now()),
        };
        for t in &session.traced {
            let pid = t.process.pid;
            match GoTracker::of_process(pid) {
                Ok(Some(go)) => {
                    log::info!("pid {pid}: Go program, {}", go.runtime.build.version);
                    if let Some(why) = go.runtime.census_unavailable() {
                        eprintln!("leaktrace: pid {pid} ({}): {why}", go.runtime.build.version);
                    }
                    session.go.insert(pid, go);
                }
                Ok(None) => {}
                Err(err) => log::warn!("pid {pid}: cannot read it as a Go program: {err}"),
            }
        }
        session.refresh_liveness();
        Ok(session)
    }

    /// Growth mode: plan bursts for every traced target (the system-wide rows get none).
    fn start_bursts(&mut self, bursts: Option<Bursts>) {
        self.bursts = bursts;
        if let Some(bursts) = self.bursts.as_mut() {
            for t in self.traced.iter().filter(|t| !t.exact()) {
                bursts.add(t.process.pid, &t.process.allocators);
            }
        }
    }

    /// Finish a burst whose probes are gone and start the next one due (growth mode).
    fn run_bursts(&mut self) {
        let Some(bursts) = self.bursts.as_mut() else {
            return;
        };
        let now_s = self.started.elapsed().as_secs_f64();
        let heap = &self.heap;
        bursts.tick(&mut self.tracer, now_s, |pid| {
            heap.get(pid).map_or(0, |h| h.events)
        });
    }

    /// The loop of the run's view, until `--duration`, a signal, `q` or (headless) every
    /// target's exit.
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        let duration = self.config.duration;
        match self.config.view {
            View::Headless => self.sample_loop(duration).await,
            View::Dashboard => {
                // Log lines would land in the middle of the dashboard.
                if std::env::var_os("RUST_LOG").is_none() {
                    log::set_max_level(log::LevelFilter::Off);
                }
                let outcome =
                    ui::run_terminal(async |dash| self.dashboard_loop(dash, duration).await)
                        .await
                        .context("cannot drive the terminal")
                        .and_then(|outcome| outcome);
                log::set_max_level(log::LevelFilter::Warn);
                outcome
            }
        }
    }

    /// End launched commands and write the final snapshot, whatever ended the run; the probes
    /// go with the session.
    async fn finish(mut self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        self.end_launched_commands().await;
        let last = self.snapshot(Taken::Final);
        let saved = self.save(&last);
        print!("{}", crate::table::render_table(&last, self.config.top));
        // The snapshot is written first; then the probes go without the run waiting for the
        // kernel to unregister each of them.
        self.tracer.release_in_background();
        saved?;
        outcome
    }
}

/// What both sampling loops wait on besides their own inputs.
struct Clocks {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    liveness: tokio::time::Interval,
    start: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
}

impl Session {
    fn clocks(&self, duration: Option<Duration>) -> anyhow::Result<Clocks> {
        let mut liveness = tokio::time::interval(LIVENESS_PERIOD);
        liveness.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = tokio::time::Instant::from_std(self.started);
        Ok(Clocks {
            sigint: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            liveness,
            start,
            deadline: duration.map(|d| start + d),
        })
    }

    async fn sample_loop(&mut self, duration: Option<Duration>) -> anyhow::Result<()> {
        let Clocks {
            mut sigint,
            mut sigterm,
            mut liveness,
            start,
            deadline,
        } = self.clocks(duration)?;
        let mut next_sample = start + self.config.interval;
        loop {
            tokio::select! {
                _ = sleep_until(next_sample) => {
                    let snapshot = self.snapshot(Taken::Interval);
                    print!("{}", crate::table::render_table(&snapshot, self.config.top));
                    self.save(&snapshot)?;
                    next_sample += self.config.interval;
                }
                _ = liveness.tick() => {
                    self.drain_heap_events();
                    self.refresh_liveness();
                    self.run_bursts();
                    if !self.config.system_wide() && self.traced.iter().all(|t| !t.alive) {
                        eprintln!("leaktrace: every traced process has exited");
                        return Ok(());
                    }
                }
                _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => {
                    return Ok(());
                }
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    /// The live dashboard's loop: input, samples, liveness and signals. Targets exiting do not
    /// end it (their data stays browsable); `q`, `--duration` or a signal do.
    async fn dashboard_loop(
        &mut self,
        dash: &mut ui::Dashboard,
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        let mut app = App::new();
        app.handle(dash.size_event()?);
        let Clocks {
            mut sigint,
            mut sigterm,
            mut liveness,
            start,
            deadline,
        } = self.clocks(duration)?;
        // A first picture at once rather than after a whole interval.
        let mut next_sample = tokio::time::Instant::now();
        let mut pending_read: Option<(u64, tokio::task::JoinHandle<anyhow::Result<MapsReading>>)> =
            None;
        loop {
            dash.draw(&app)?;
            tokio::select! {
                event = dash.next_event() => match event {
                    Some(Ok(event)) => match app.handle(event) {
                        Some(Action::Quit) => return Ok(()),
                        Some(Action::Redraw) => dash.redraw_all()?,
                        Some(action) if self.on_action(&mut app, action) => {
                            next_sample = tokio::time::Instant::now();
                        }
                        Some(_) => {}
                        None => {}
                    },
                    Some(Err(err)) => return Err(err.into()),
                    None => return Ok(()),
                },
                _ = sleep_until(next_sample), if pending_read.is_none() => {
                    // Reading the maps can take long (two syscalls per outstanding block): it
                    // runs on a blocking thread while keys keep being handled.
                    let (now_ns, min_age_ns) = self.read_clock();
                    let reader = std::sync::Arc::clone(&self.reader);
                    pending_read = Some((
                        now_ns,
                        tokio::task::spawn_blocking(move || reader.read(now_ns, min_age_ns)),
                    ));
                }
                joined = async {
                    match pending_read.as_mut() {
                        Some((_, read)) => read.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now_ns = pending_read.take().map_or(0, |(at, _)| at);
                    let reading = read_or_empty(joined.context("the map reader failed").and_then(|r| r));
                    self.show_reading(&mut app, now_ns, reading);
                    next_sample = tokio::time::Instant::now() + self.config.interval;
                }
                _ = liveness.tick() => {
                    self.drain_heap_events();
                    self.refresh_liveness();
                    self.run_bursts();
                }
                _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => {
                    return Ok(());
                }
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    /// Carry out a dashboard action that needs the session; whether a sample is due at once.
    fn on_action(&mut self, app: &mut App, action: Action) -> bool {
        match action {
            Action::WriteSnapshot => {
                let snapshot = self.snapshot(Taken::Interval);
                let status = match &self.config.json {
                    Some(path) => match report::write_snapshot(path, &snapshot, self.config.access)
                    {
                        Ok(()) => format!("snapshot written to {}", path.display()),
                        Err(err) => format!("cannot write {}: {err}", path.display()),
                    },
                    None => "no --json PATH given: nothing written".to_string(),
                };
                app.set_status(status);
                false
            }
            Action::TraceProcess(pid) => {
                let status = match self.trace_exactly(pid) {
                    Ok(()) => format!("tracing pid {pid} exactly"),
                    Err(err) => format!("cannot trace pid {pid}: {err:#}"),
                };
                app.set_status(status);
                true
            }
            Action::Quit | Action::Redraw => false,
        }
    }

    /// Build, save and show the snapshot of a map reading the dashboard asked for.
    fn show_reading(&mut self, app: &mut App, now_ns: u64, reading: MapsReading) {
        let snapshot = self.build_snapshot(Taken::Interval, now_ns, reading);
        if let Err(err) = self.save(&snapshot) {
            app.set_status(format!("{err:#}"));
        }
        let probe_hits_per_s = snapshot.cost.and_then(|c| c.probe_hits_per_s);
        let live = Live {
            uptime_s: Some(self.started.elapsed().as_secs_f64()),
            probe_hits_per_s,
        };
        app.handle(Event::Update(Box::new(Update { snapshot, live })));
    }

    /// Start exact (uprobe) tracing of a process seen in system-wide mode.
    fn trace_exactly(&mut self, pid: u32) -> anyhow::Result<()> {
        if self.traced.iter().any(|t| t.process.pid == pid) {
            return Ok(());
        }
        let process = target::inspect(pid)?;
        if let Some(why) = &process.allocators.unhookable {
            anyhow::bail!("{why}");
        }
        if let Some(tables) = &self.tables {
            tables.refresh_and_wait(pid, TABLES_AT_START);
        }
        let hooked = self.tracer.attach(pid, &process.allocators)?;
        register_heap(&mut self.heap, pid);
        let mut traced = Traced::new(process, Origin::Found, &hooked);
        traced.sample_processed(self.config.processed);
        self.others.remove(&pid);
        self.traced.push(traced);
        self.symbols.refresh_maps(pid);
        Ok(())
    }

    fn drain_heap_events(&mut self) {
        let exact: std::collections::HashSet<u32> = self
            .traced
            .iter()
            .filter(|t| t.exact())
            .map(|t| t.process.pid)
            .collect();
        // Stack copies are unwound in place (they live in the ring buffer); events are applied
        // afterwards, in order, once their stacks are interned.
        let mut drained = Vec::new();
        let unwinder = &mut self.unwinder;
        self.tracer.drain_heap_events(|record| {
            // The modules read before an exec are the old program's: the events after it are
            // unwound with the new program's (read once, not first tried with the old ones).
            if record.event.kind == leaktrace_common::HeapEventKind::Exec as u32 {
                unwinder.forget(record.event.tgid);
            }
            let unwound = record
                .stack
                .map(|copy| unwinder.unwind(record.event.tgid, &copy));
            drained.push((record.event, unwound));
        });
        for (mut event, unwound) in drained {
            if let Some((frames, in_libc)) = unwound {
                let stack = self.growth_stack(&event, frames, in_libc);
                event.caller = stack.first().copied().unwrap_or(0);
                event.stack_id = self.intern(event.tgid, stack);
            }
            let calls = if exact.contains(&event.tgid) {
                AllocatorCalls::Traced
            } else {
                // A growth-mode process under a burst: its allocator calls are seen for the
                // burst's estimate only; the heap keeps growth mode's attribution by stack.
                if event.kind == leaktrace_common::HeapEventKind::CallSite as u32 {
                    continue;
                }
                event.call_ns = 0;
                AllocatorCalls::Untraced
            };
            self.heap.apply(&event, calls);
            if event.kind == leaktrace_common::HeapEventKind::Exec as u32 {
                self.on_exec(
                    event.tgid,
                    &crate::heap::comm_of(&event),
                    event.timestamp_ns,
                );
            }
        }
    }

    /// A process exec'd: everything known of the old program goes (mappings, frames, stacks,
    /// series, the kernel's blocks and sites, the RSS baseline), the process is named after the
    /// new program, and in exact mode the allocator probes follow it to the new program's C
    /// library. A launched command was stopped by the kernel at the exec: it continues now.
    fn on_exec(&mut self, pid: u32, comm: &str, at_ns: u64) {
        if self
            .traced
            .iter()
            .any(|t| t.process.pid == pid && at_ns <= t.set_up_until_ns)
        {
            return;
        }
        // (The unwinder forgot the old program at the exec record.)
        self.symbols.forget(pid);
        self.series.forget(pid);
        let stacks = &mut self.stacks;
        self.interned.retain(|(owner, _), id| {
            if *owner == pid {
                stacks.remove(id);
            }
            *owner != pid
        });
        if self.others.remove(&pid).is_some() {
            // A system-wide row: the new program gets a row of its own from its next event.
            return;
        }
        let Some(index) = self.traced.iter().position(|t| t.process.pid == pid) else {
            return;
        };
        if self.traced[index].exact() {
            self.tracer.forget_old_program(pid);
            self.follow_exec_exactly(index);
        }
        let t = &mut self.traced[index];
        t.process.comm = procfs::read_comm(pid).unwrap_or_else(|_| comm.to_string());
        if let Ok(exe) = procfs::read_exe(pid) {
            t.process.exe = exe;
        }
        t.memory = ProcessMemory::launched();
        // The work baseline now, before the new program reads anything (a launched command is
        // stopped here; /proc/PID/io counts on across the exec).
        t.work = SinceStart::default();
        t.sample_processed(self.config.processed);
        self.symbols.refresh_maps(pid);
        if t.launched() {
            // Its new program's libraries load once it runs: with unwind tables, it is held
            // again at its entry point until their tables are in.
            let exe = procfs::path_in_root(pid, &t.process.exe);
            let entry_stop = self
                .tables
                .as_ref()
                .and_then(|_| self.tracer.stop_at_entry(pid, &exe));
            // SAFETY: our own child, stopped by the kernel at its exec; not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            if let (Some(tables), Some(link)) = (&self.tables, entry_stop) {
                let _ = load_tables_at_entry(&mut self.tracer, tables, pid, link);
            }
        }
        log::info!(
            "pid {pid} exec'd {} ({})",
            self.traced[index].process.exe.display(),
            self.traced[index].process.comm
        );
    }

    /// Exact mode, after an exec: keep the probes when the new program uses the same allocator
    /// files (uprobes are set on a file, for this process), move them otherwise; a program
    /// that cannot be hooked is said so and traced in growth mode.
    fn follow_exec_exactly(&mut self, index: usize) {
        let pid = self.traced[index].process.pid;
        let exe = procfs::read_exe(pid).unwrap_or_default();
        // The new program's libraries are not mapped yet at its exec: its allocators are found
        // from its file, through the process's root, in its loader's search order.
        let found = target::allocators_for_exec(pid, &procfs::path_in_root(pid, &exe))
            .map_err(|err| err.to_string())
            .and_then(|found| match &found.unhookable {
                Some(why) => Err(why.clone()),
                None => Ok(found),
            });
        let files =
            |d: &Discovery| -> Vec<PathBuf> { d.hookable().map(|a| a.file.clone()).collect() };
        let t = &mut self.traced[index];
        match found {
            Ok(found) if files(&found) == files(&t.process.allocators) => {
                t.process.libc = found
                    .primary()
                    .map(|a| a.module.clone())
                    .unwrap_or_default();
                t.process.allocators = found;
            }
            Ok(found) => {
                if let Err(err) = self.tracer.detach_process(pid) {
                    log::warn!("pid {pid}: {err:#}");
                }
                match self.tracer.attach(pid, &found) {
                    Ok(hooked) => {
                        t.hooked = hooked;
                        t.process.libc = found
                            .primary()
                            .map(|a| a.module.clone())
                            .unwrap_or_default();
                        t.process.allocators = found;
                    }
                    Err(err) => {
                        eprintln!(
                            "leaktrace: pid {pid}: cannot hook its new program {}: {err:#}; \
                             tracing its heap growth only",
                            exe.display()
                        );
                        t.hooked.clear();
                        t.mode = Mode::Growth;
                    }
                }
            }
            Err(why) => {
                eprintln!(
                    "leaktrace: pid {pid}: its new program {}: {why}; not hooked, tracing its \
                     heap growth only",
                    exe.display()
                );
                if let Err(err) = self.tracer.detach_process(pid) {
                    log::warn!("pid {pid}: {err:#}");
                }
                t.hooked.clear();
                t.mode = Mode::Growth;
            }
        }
    }

    /// A growth event's stack: the unwound one without the C library's leading frames (the
    /// allocator and syscall wrappers), unless the kernel's frame-pointer walk went further
    /// (Go: the copied system stack ends where the goroutine's frames begin).
    fn growth_stack(
        &mut self,
        event: &leaktrace_common::HeapEvent,
        frames: Vec<u64>,
        in_libc: usize,
    ) -> Vec<u64> {
        let skip = if in_libc < frames.len() { in_libc } else { 0 };
        let unwound = &frames[skip..];
        if event.stack_id != NO_STACK {
            let fp = match self.fp_stacks.get(&event.stack_id) {
                Some(fp) => Some(fp.clone()),
                None => self.tracer.stack(event.stack_id).inspect(|fp| {
                    self.fp_stacks.insert(event.stack_id, fp.clone());
                }),
            };
            if let Some(fp) = fp {
                // The frame-pointer walk also starts in the C library; drop the same frames.
                let fp_skip = self.unwinder.leading_libc(event.tgid, &fp);
                let fp_rest: Vec<u64> = fp.iter().copied().skip(fp_skip).collect();
                if fp_rest.len() > unwound.len() + 1 {
                    return fp_rest;
                }
            }
        }
        unwound.to_vec()
    }

    fn intern(&mut self, pid: u32, stack: Vec<u64>) -> u32 {
        /// Above any stack id the kernel hands out (`--max-stacks` is at most 2^31 here).
        const FIRST_UNWOUND_ID: u32 = 0x8000_0000;
        // A Go program's stacks are keyed by runtime function, not call site (see
        // `GoRuntime::site_key`); the first stack seen is the one shown.
        let key = match self.go.get(&pid) {
            Some(go) => go.runtime.site_key(&stack),
            None => stack.clone(),
        };
        if let Some(id) = self.interned.get(&(pid, key.clone())) {
            return *id;
        }
        self.unwound_ids = self.unwound_ids.wrapping_add(1) & 0x3fff_ffff;
        let id = FIRST_UNWOUND_ID | self.unwound_ids;
        // The mappings are kept now, while the process surely lives: a short-lived process may
        // be gone by the next snapshot, and the frames are named from module and offset then
        // (growth mode's unwinder has just read them: not read twice).
        let seen = self.unwinder.maps_seen(pid);
        self.symbols.keep_maps_for(pid, &stack, seen);
        self.interned.insert((pid, key), id);
        self.stacks.insert(id, stack);
        id
    }

    /// Note exits (reaping launched children for their status) and keep live processes'
    /// mappings fresh.
    fn refresh_liveness(&mut self) {
        for t in self.traced.iter_mut().filter(|t| t.alive) {
            if t.launched() {
                if let Some(status) = target::try_wait_child(t.process.pid) {
                    t.exit = Some(status);
                    t.alive = false;
                    continue;
                }
            }
            if procfs::is_alive(t.process.pid) {
                self.symbols.refresh_maps(t.process.pid);
                // Libraries loaded since (dlopen) get their tables; the worker does nothing
                // when the executable mappings are unchanged.
                if let Some(tables) = &self.tables {
                    tables.refresh(t.process.pid);
                }
            } else {
                t.alive = false;
                if let Some(tables) = &self.tables {
                    tables.forget(t.process.pid);
                }
            }
            if !t.alive {
                if let Some(bursts) = self.bursts.as_mut() {
                    bursts.stop(t.process.pid);
                }
            }
        }
    }

    /// A command leaktrace launched does not outlive the run (as with `timeout`): SIGTERM, then
    /// SIGKILL if it is still there after a grace period. Processes given by --pid are never touched.
    async fn end_launched_commands(&mut self) {
        const GRACE: Duration = Duration::from_secs(2);
        let launched: Vec<u32> = self
            .traced
            .iter()
            .filter(|t| t.launched() && t.alive)
            .map(|t| t.process.pid)
            .collect();
        if launched.is_empty() {
            return;
        }
        for pid in &launched {
            // SAFETY: our own child, not yet reaped, so the pid cannot have been reused. A child
            // stopped at an exec would not act on SIGTERM until continued.
            unsafe {
                libc::kill(*pid as i32, libc::SIGTERM);
                libc::kill(*pid as i32, libc::SIGCONT);
            }
        }
        let deadline = Instant::now() + GRACE;
        loop {
            self.refresh_liveness();
            if self.traced.iter().all(|t| !t.launched() || !t.alive) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.traced.iter().filter(|t| t.launched() && t.alive) {
            // SAFETY: as above.
            unsafe { libc::kill(t.process.pid as i32, libc::SIGKILL) };
        }
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.refresh_liveness();
            if self.traced.iter().all(|t| !t.launched() || !t.alive) {
                return;
            }
        }
    }

    /// Write `--json` and, when due (and always for the final snapshot), the next snapshot of
    /// the rolling series.
    fn save(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        if let Some(path) = &self.config.json {
            report::write_snapshot(path, snapshot, self.config.access)
                .with_context(|| format!("cannot write JSON snapshot {}", path.display()))?;
        }
        if let Some((series, every)) = &self.rolling {
            let due = snapshot.complete
                || self
                    .last_series_write
                    .is_none_or(|last| last.elapsed() >= *every);
            if due {
                series
                    .write_with(&snapshot.generated_at, |file| {
                        report::write_json(file, snapshot)
                    })
                    .context("cannot write the rolling snapshot")?;
                self.last_series_write = Some(Instant::now());
            }
        }
        if self.config.system_wide() {
            // Building a system-wide snapshot allocates and frees much in many sizes: give the
            // freed memory back rather than let the heap keep its peak.
            // SAFETY: glibc's malloc_trim only walks its own free lists.
            unsafe { libc::malloc_trim(0) };
        }
        Ok(())
    }

    /// Read the maps and build a snapshot, on this thread.
    fn snapshot(&mut self, taken: Taken) -> Snapshot {
        let (now_ns, min_age_ns) = self.read_clock();
        let reading = read_or_empty(self.reader.read(now_ns, min_age_ns));
        self.build_snapshot(taken, now_ns, reading)
    }

    /// The moment of a map read and the `--min-age` threshold, both in ns.
    fn read_clock(&self) -> (u64, u64) {
        (tracer::monotonic_ns(), self.config.min_age_ns())
    }

    /// Build a snapshot from a map reading. Interval snapshots (not the final one) also add a
    /// sample to each live site's growth series: a dead process's flat tail is not growth data.
    fn build_snapshot(&mut self, taken: Taken, now_ns: u64, reading: MapsReading) -> Snapshot {
        let building = Instant::now();
        self.drain_heap_events();
        log::debug!("heap events drained in {:?}", building.elapsed());
        let at = Moment {
            t_s: self.started.elapsed().as_secs_f64(),
            now_ns,
        };
        let mut traced = std::mem::take(&mut self.traced);
        let mut processes = Vec::with_capacity(traced.len());
        for t in &mut traced {
            let sampling = taken == Taken::Interval && t.alive;
            if sampling {
                t.sample_processed(self.config.processed);
            }
            processes.push(self.sample_process(t, sampling, at, &reading, usize::MAX));
        }
        self.traced = traced;
        let mut other_processes = None;
        if self.config.system_wide() {
            let (rows, others) = self.system_wide_rows(taken, at, &reading);
            processes.extend(rows);
            other_processes = Some(others);
        }
        self.symbols.bound(
            crate::symbolize::MODULES_OPEN,
            crate::symbolize::MODULES_OPEN_BYTES,
        );
        log::debug!(
            "snapshot of {} processes built in {:?}",
            processes.len(),
            building.elapsed()
        );
        let snapshot = Snapshot {
            schema: SCHEMA.to_string(),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: at.t_s,
            mode: self.config.mode,
            system_wide: self.config.system_wide(),
            unwinding: self.config.growth().then_some(self.unwinder.stats),
            unwind_tables: self.tables.as_ref().map(TableWorker::stats),
            interval_s: self.config.interval.as_secs_f64(),
            min_age_s: self.config.min_age.as_secs_f64(),
            processed: self.config.processed,
            complete: taken == Taken::Final,
            cost: Some(self.cost()),
            own_usage: Some(self.own.update(
                Instant::now(),
                procfs::own_cpu_seconds(),
                procfs::own_memory(),
            )),
            processes,
            other_processes,
        };
        if let Some(publisher) = &mut self.publisher {
            publisher.publish(snapshot.clone());
        }
        snapshot
    }

    /// What tracing costs: probe hits (exact mode) or heap-growth events (growth mode) per
    /// second, times the cost of one, measured at start; growth mode adds the measured cost of
    /// unwinding an event in userspace.
    fn cost(&mut self) -> ProbeCost {
        let (events, ns_per_event) = if self.config.growth() {
            let stats = self.unwinder.stats;
            (
                stats.events,
                model::growth_event_ns(self.ns_per_hit, &stats),
            )
        } else {
            (self.tracer.probe_hits(), self.ns_per_hit)
        };
        ProbeCost::new(ns_per_event, self.hit_rate.update(Instant::now(), events))
    }

    /// One process's totals, a sample for its sites' growth series, and its report.
    fn sample_process(
        &mut self,
        t: &Traced,
        sampling: bool,
        at: Moment,
        reading: &MapsReading,
        max_sites: usize,
    ) -> ProcessReport {
        let pid = t.process.pid;
        let mut site_heap = self.heap.get(pid).map(|h| h.sites()).unwrap_or_default();
        let totals = self.totals(t, at, reading, &mut site_heap);
        if sampling {
            let processed = t.work.grown().unwrap_or(0);
            self.series.record(&totals.sites, at.t_s, processed);
        }
        let mut report = self.process_report(t, totals, site_heap, reading, max_sites);
        if let Some(go) = self.go.get_mut(&pid) {
            report.go = Some(go.report(at.t_s, sampling, t.alive, &mut self.symbols));
        }
        report
    }

    /// A process's totals: from the maps in exact mode, from heap growth otherwise (then with
    /// `site_heap` given each site's growth events).
    fn totals(
        &self,
        t: &Traced,
        at: Moment,
        reading: &MapsReading,
        site_heap: &mut HashMap<leaktrace_common::SiteKey, SiteHeap>,
    ) -> ProcessTotals {
        let pid = t.process.pid;
        let from_maps = model::process_totals(
            pid,
            &reading.sites,
            &reading.counters,
            &reading.ages,
            at.now_ns,
        );
        if t.exact() {
            return from_maps;
        }
        let clock = GrowthClock {
            start_ns: self.start_ns,
            now_ns: at.now_ns,
            min_age_ns: self.config.min_age_ns(),
        };
        model::growth_totals(self.heap.get(pid), from_maps.counters, clock, site_heap)
    }

    /// A process's report with at most `max_sites` sites, by leak rank (only those are
    /// symbolized). `site_heap`: the heap attribution of its sites (`ProcessHeap::sites`).
    fn process_report(
        &mut self,
        t: &Traced,
        totals: ProcessTotals,
        site_heap: HashMap<leaktrace_common::SiteKey, SiteHeap>,
        reading: &MapsReading,
        max_sites: usize,
    ) -> ProcessReport {
        let (pid, alive) = (t.process.pid, t.alive);
        let evidence = if t.exact() {
            SiteEvidence::Allocations
        } else {
            SiteEvidence::HeapGrowth
        };
        let mut sites = Vec::new();
        for (key, mut site) in
            model::site_reports(&totals, &self.series, site_heap, max_sites, evidence)
        {
            let addrs = self.site_stack(key.stack_id, key.caller);
            site.frames = self.symbols.stack_frames(pid, alive, &addrs);
            sites.push(site);
        }
        let (bursts, estimated_sites) = self.estimated_sites(t, reading, max_sites);
        let heap = self
            .heap
            .get(pid)
            .map(|heap| model::heap_report(heap, &t.memory, Some(totals.outstanding_bytes)));
        ProcessReport {
            pid,
            comm: t.process.comm.clone(),
            exe: t.process.exe.display().to_string(),
            alive: t.alive,
            exit: t.exit,
            exact: t.exact(),
            libc: t.process.libc.display().to_string(),
            allocator: t.process.allocators.primary().map(allocator_report),
            more_allocators: t
                .process
                .allocators
                .allocators
                .iter()
                .skip(1)
                .map(allocator_report)
                .collect(),
            allocator_not_hooked: t.process.allocators.unhookable.clone(),
            cgroup: t.process.cgroup.as_ref().map(|c| schema::CgroupReport {
                path: c.path.clone(),
                container_id: c.container_id.clone(),
                runtime: c.runtime.map(str::to_string),
            }),
            hooked_functions: t.hooked.clone(),
            outstanding_bytes: totals.outstanding_bytes,
            outstanding_count: totals.outstanding_count,
            allocated_bytes: totals.allocated_bytes,
            allocated_count: totals.allocated_count,
            freed_count: totals.freed_count,
            bytes_processed: t.work.grown(),
            heap,
            counters: totals.counters,
            functions: model::function_totals(sites.iter().map(SiteReport::stack_cost)),
            sites,
            bursts,
            estimated_sites,
            go: None,
        }
    }

    /// Growth mode: a process's bursts and its sites estimated from them, at most `max_sites`,
    /// named.
    fn estimated_sites(
        &mut self,
        t: &Traced,
        reading: &MapsReading,
        max_sites: usize,
    ) -> (Option<BurstReport>, Vec<EstimatedSite>) {
        let pid = t.process.pid;
        let Some(bursts) = self.bursts.as_ref().filter(|b| b.covers(pid)) else {
            return (None, Vec::new());
        };
        let now_s = self.started.elapsed().as_secs_f64();
        let allocations_seen: HashMap<leaktrace_common::SiteKey, u64> = reading
            .sites
            .iter()
            .filter(|(key, _)| key.tgid == pid)
            .map(|(key, stats)| (*key, stats.allocated_count))
            .collect();
        let processed_per_s = t
            .work
            .grown()
            .filter(|_| now_s > 0.0)
            .map(|bytes| bytes as f64 / now_s);
        let Some((report, estimates)) =
            bursts.report(pid, now_s, processed_per_s, &allocations_seen)
        else {
            return (None, Vec::new());
        };
        let mut sites = Vec::new();
        for estimate in estimates.into_iter().take(max_sites) {
            let addrs = self.site_stack(estimate.key.stack_id, estimate.key.caller);
            let frames = self.symbols.stack_frames(pid, t.alive, &addrs);
            sites.push(model::estimated_site(&estimate, frames));
        }
        (Some(report), sites)
    }

    /// The return addresses of a site, innermost (the allocator's caller) first.
    fn site_stack(&mut self, stack_id: u32, caller: u64) -> Vec<u64> {
        if stack_id == NO_STACK || stack_id == leaktrace_common::UNSAMPLED_STACK {
            return vec![caller];
        }
        if let Some(stack) = self.stacks.get(&stack_id) {
            return stack.clone();
        }
        let mut stack = match self.tracer.stack(stack_id) {
            Some(stack) if !stack.is_empty() => stack,
            _ => return vec![caller],
        };
        // Heap-syscall sites: the stack starts in the syscall wrapper, which has no frame of its
        // own, so the frame-pointer walk skipped the wrapper's caller; the probe read it.
        if caller != 0 && !stack.contains(&caller) {
            stack.insert(1.min(stack.len()), caller);
        }
        self.stacks.insert(stack_id, stack.clone());
        stack
    }

    /// Drop everything kept about a system-wide row's process.
    fn forget_process(&mut self, pid: u32) {
        self.others.remove(&pid);
        self.heap.processes.remove(&pid);
        self.unwinder.forget(pid);
        self.series.forget(pid);
        self.symbols.forget(pid);
        let stacks = &mut self.stacks;
        self.interned.retain(|(owner, _), id| {
            if *owner == pid {
                stacks.remove(id);
            }
            *owner != pid
        });
    }

    /// System-wide mode: one row per other process seen making heap syscalls, largest heap
    /// growth first, in growth mode with its sites: the `--top-processes` largest in full, the
    /// others summed up (neither symbolized nor sampled, so that a busy host costs what N
    /// processes cost).
    fn system_wide_rows(
        &mut self,
        taken: Taken,
        at: Moment,
        reading: &MapsReading,
    ) -> (Vec<ProcessReport>, OtherProcesses) {
        let exact: std::collections::HashSet<u32> =
            self.traced.iter().map(|t| t.process.pid).collect();
        let pids: Vec<u32> = self
            .heap
            .processes
            .keys()
            .copied()
            .filter(|p| !exact.contains(p))
            .collect();
        let mut ranked: Vec<(u64, u32)> = pids
            .into_iter()
            .filter_map(|pid| self.keep_system_wide(pid).map(|growth| (growth, pid)))
            .collect();
        self.forget_exited_beyond(EXITED_MAX);
        ranked.retain(|(_, pid)| self.others.contains_key(pid));
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let top = self.config.top_processes.min(ranked.len());
        let mut others = OtherProcesses::default();
        for &(growth, pid) in &ranked[top..] {
            let alive = self.others.get(&pid).is_some_and(|r| r.alive);
            others.processes += 1;
            others.alive += u64::from(alive);
            others.exited += u64::from(!alive);
            others.heap_growth_bytes = others.heap_growth_bytes.saturating_add(growth);
            others.heap_events += self.heap.get(pid).map_or(0, |h| h.events);
        }
        let mut rows = Vec::with_capacity(top);
        let mut last_drain = Instant::now();
        for &(_, pid) in &ranked[..top] {
            rows.push(self.system_wide_row(pid, taken, at, reading));
            // Naming new stacks of many processes takes a while: keep the ring buffer drained
            // (and short-lived processes' mappings read) meanwhile.
            if last_drain.elapsed() >= LIVENESS_PERIOD {
                self.drain_heap_events();
                last_drain = Instant::now();
            }
        }
        rows.sort_by(model::by_heap_growth);
        (rows, others)
    }

    /// Note whether a process seen only through its heap syscalls lives; returns its heap
    /// growth, or `None` once it is forgotten: gone for [`EXITED_KEPT`], or gone with no
    /// growth, no failed brk and no mmap fallback (nothing to say).
    fn keep_system_wide(&mut self, pid: u32) -> Option<u64> {
        let alive = procfs::is_alive(pid);
        let reused = alive && self.others.get(&pid).is_some_and(|r| !r.alive);
        let expired = self
            .others
            .get(&pid)
            .and_then(|r| r.gone_since)
            .is_some_and(|since| since.elapsed() >= EXITED_KEPT);
        if reused || expired {
            // A new process with a dead one's pid starts afresh; a long-gone one goes.
            self.forget_process(pid);
            if !reused {
                return None;
            }
        }
        let growth = self.heap.get(pid).map_or(0, model::process_heap_growth);
        let findings = self.heap.get(pid).is_some_and(|h| h.has_findings());
        if !alive && growth == 0 && !findings {
            self.forget_process(pid);
            return None;
        }
        if !self.others.contains_key(&pid) {
            let comm = self
                .heap
                .get(pid)
                .map(|h| h.comm.clone())
                .unwrap_or_default();
            let process = TargetProcess::bare(pid, comm);
            self.others
                .insert(pid, Traced::new(process, Origin::Found, &[]));
        }
        if let Some(row) = self.others.get_mut(&pid) {
            if !alive && row.alive {
                row.alive = false;
                row.gone_since = Some(Instant::now());
                self.unwinder.forget(pid);
            }
        }
        Some(growth)
    }

    /// Forget the exited system-wide processes with the least to say, beyond `max` of them.
    fn forget_exited_beyond(&mut self, max: usize) {
        let heap = &self.heap;
        let mut exited: Vec<(bool, u64, Instant, u32)> = self
            .others
            .iter()
            .filter_map(|(pid, r)| {
                let since = r.gone_since?;
                let state = heap.get(*pid);
                Some((
                    state.is_some_and(|h| h.has_findings()),
                    state.map_or(0, model::process_heap_growth),
                    since,
                    *pid,
                ))
            })
            .collect();
        if exited.len() <= max {
            return;
        }
        exited.sort_unstable();
        let excess = exited.len() - max;
        for (.., pid) in exited.into_iter().take(excess) {
            self.forget_process(pid);
        }
    }

    /// The full row of one process seen only through its heap syscalls (known to
    /// [`Session::keep_system_wide`]).
    fn system_wide_row(
        &mut self,
        pid: u32,
        taken: Taken,
        at: Moment,
        reading: &MapsReading,
    ) -> ProcessReport {
        let mut row = self.others.remove(&pid).unwrap_or_else(|| {
            let process = TargetProcess::bare(pid, String::new());
            Traced::new(process, Origin::Found, &[])
        });
        let sampling = taken == Taken::Interval && row.alive;
        if sampling {
            row.sample_processed(self.config.processed);
        }
        let max_sites = self.config.top.max(SYSTEM_WIDE_SITES);
        let report = self.sample_process(&row, sampling, at, reading, max_sites);
        self.others.insert(pid, row);
        report
    }
}

/// An allocator as the JSON names it.
fn allocator_report(allocator: &crate::allocator::Allocator) -> schema::AllocatorReport {
    schema::AllocatorReport {
        name: allocator
            .family
            .map_or("unknown", crate::allocator::Family::name)
            .to_string(),
        version: allocator.version.clone(),
        module: allocator.module.display().to_string(),
        linked_into_executable: allocator.in_executable,
        prefix: (!allocator.prefix.is_empty()).then(|| allocator.prefix.clone()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn resolve(args: &[&str], stdout: Stdout) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("leaktrace").chain(args.iter().copied()))
            .expect("parses");
        Config::resolve(cli, stdout)
    }

    fn error(args: &[&str]) -> String {
        resolve(args, Stdout::Other)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn no_target_means_system_wide_growth_mode() {
        let config = resolve(&[], Stdout::Other).expect("resolves");
        assert_eq!(config.scope, Scope::SystemWide);
        assert_eq!(config.mode, Mode::Growth);
        assert_eq!(config.view, View::Headless);
        assert_eq!(config.interval, Duration::from_secs(5));
    }

    #[test]
    fn pids_are_traced_exactly_sorted_and_once() {
        let config = resolve(&["-p", "9", "-p", "3", "-p", "9"], Stdout::Other).expect("ok");
        assert_eq!(config.pids, [3, 9]);
        assert_eq!(config.scope, Scope::Targets);
        assert_eq!(config.mode, Mode::Exact);
        let config = resolve(&["--system-wide", "-p", "3"], Stdout::Other).expect("ok");
        assert_eq!(config.scope, Scope::SystemWide);
        assert_eq!(config.mode, Mode::Exact);
        let config = resolve(&["--mode", "growth", "--", "ls"], Stdout::Other).expect("ok");
        assert_eq!((config.scope, config.mode), (Scope::Targets, Mode::Growth));
        assert_eq!(config.command, ["ls"]);
    }

    #[test]
    fn the_dashboard_needs_a_terminal_and_no_headless() {
        let config = resolve(&["-p", "1"], Stdout::Terminal).expect("ok");
        assert_eq!(config.view, View::Dashboard);
        assert_eq!(config.interval, Duration::from_secs(1));
        let config = resolve(&["-p", "1", "--headless"], Stdout::Terminal).expect("ok");
        assert_eq!(config.view, View::Headless);
        let config = resolve(&["-p", "1", "--interval", "2s"], Stdout::Terminal).expect("ok");
        assert_eq!(config.interval, Duration::from_secs(2));
    }

    #[test]
    fn combinations_that_cannot_work_are_refused_in_one_line() {
        let messages = [
            error(&["--system-wide", "--", "true"]),
            error(&["--mode", "exact"]),
            error(&["--mode", "growth", "--sample-bytes", "4096", "-p", "1"]),
        ];
        assert!(messages[0].starts_with("--system-wide and a command do not go together"));
        assert!(messages[1].starts_with("--mode exact needs --pid"));
        assert!(messages[2].starts_with("--sample-bytes samples exact mode's stacks"));
        assert!(messages.iter().all(|m| m.lines().count() == 1));
    }

    #[test]
    fn rolling_snapshots_and_options_are_carried_over() {
        let config = resolve(
            &[
                "-p",
                "1",
                "--snapshot-dir",
                "/tmp/s",
                "--snapshot-every",
                "1m",
                "--keep",
                "3",
                "--private",
                "--sample-bytes",
                "512",
                "--min-age",
                "2s",
            ],
            Stdout::Other,
        )
        .expect("ok");
        assert_eq!(
            config.rolling,
            Some(Rolling {
                dir: PathBuf::from("/tmp/s"),
                every: Duration::from_secs(60),
                keep: 3,
            })
        );
        assert_eq!(config.access, Access::Private);
        assert_eq!(config.sample_bytes, 512);
        assert_eq!(config.min_age_ns(), 2_000_000_000);
        assert_eq!(
            resolve(&["-p", "1"], Stdout::Other).expect("ok").rolling,
            None
        );
    }
}
