//! One tracing run: resolve targets, attach, sample every interval, stop cleanly.
use std::{
    collections::HashMap,
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
    cli::{Cli, Mode, Processed},
    cost::HitRate,
    growth::{self, Growth, SeriesBuffer},
    heap::{AllocatorCalls, HeapTracker, SiteHeap},
    model::{self, ProcessTotals},
    output::{self, Access},
    procfs,
    report::{self, HeapReport, ProbeCost, ProcessReport, SiteReport, Snapshot},
    symbolize::Symbols,
    target::{self, ExitStatus, TargetProcess},
    tracer::{self, Capacity, MapsReading, Tracer},
    ui::{self, Action, App, Event, Live, Update},
    unwind::StackUnwinder,
};

/// How often liveness is checked and live processes' mappings are re-read (so that stacks stay
/// symbolizable after a process dies between two intervals).
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

/// Samples kept per site for the growth fits (older ones are downsampled evenly): 4 KiB per
/// site, so 10,000 sites cost 40 MiB rather than the 160 MiB of growth.rs's default 512.
const SERIES_CAPACITY: usize = 128;

/// System-wide mode: how long a process that exited stays listed (its heap state, sites and
/// series are then dropped, so a run of days on a busy host does not grow with process churn).
const EXITED_KEPT: Duration = Duration::from_secs(600);

/// System-wide mode: sites listed per process (at least; `--top` if more), by leak rank.
const SYSTEM_WIDE_SITES: usize = 20;

struct Traced {
    process: TargetProcess,
    /// Its malloc family is hooked (exact mode); otherwise growth mode's syscalls only.
    exact: bool,
    alive: bool,
    launched: bool,
    exit: Option<ExitStatus>,
    /// When it was first seen gone (system-wide rows are dropped some time after).
    gone_since: Option<Instant>,
    hooked: Vec<String>,
    /// /proc/PID/io counter (per `--processed`) when tracing started, and the latest value.
    processed_baseline: Option<u64>,
    processed_latest: Option<u64>,
    /// RSS when tracing started, and (RSS, VmData) at the latest sample.
    rss_baseline: Option<u64>,
    memory: Option<(u64, u64)>,
}

impl Traced {
    fn new(process: TargetProcess, launched: bool, hooked: &[&str]) -> Self {
        Self {
            process,
            exact: !hooked.is_empty(),
            alive: true,
            launched,
            exit: None,
            gone_since: None,
            hooked: hooked.iter().map(|s| s.to_string()).collect(),
            processed_baseline: None,
            processed_latest: None,
            rss_baseline: None,
            memory: None,
        }
    }

    /// Bytes processed since tracing started.
    fn bytes_processed(&self) -> Option<u64> {
        Some(
            self.processed_latest?
                .saturating_sub(self.processed_baseline?),
        )
    }

    fn sample_processed(&mut self, measure: Processed) {
        let Some(io) = procfs::read_io(self.process.pid) else {
            return;
        };
        let value = match measure {
            Processed::Read => io.read_bytes,
            Processed::Write => io.written_bytes,
            Processed::Both => io.read_bytes.saturating_add(io.written_bytes),
        };
        self.processed_baseline.get_or_insert(value);
        self.processed_latest = Some(value);
        if let Some(memory) = procfs::read_memory(self.process.pid) {
            self.rss_baseline.get_or_insert(memory.0);
            self.memory = Some(memory);
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let dashboard = !cli.headless && std::io::stdout().is_terminal();
    let interval = cli.interval.unwrap_or(if dashboard {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    let system_wide = cli.system_wide || (cli.pids.is_empty() && cli.command.is_empty());
    if system_wide && !cli.command.is_empty() {
        bail!(
            "--system-wide and a command do not go together: launch the command in another shell"
        );
    }
    let growth = match cli.mode {
        Some(mode) => mode == Mode::Growth,
        None => system_wide && cli.pids.is_empty(),
    };
    if growth && cli.sample_bytes.is_some() {
        bail!("--sample-bytes samples exact mode's stacks: growth mode has no uprobes to sample");
    }
    if !growth && system_wide && cli.pids.is_empty() {
        bail!("--mode exact needs --pid: system-wide tracing has no uprobes (use --mode growth)");
    }
    tracer::preflight()?;
    if let Some(path) = &cli.json {
        output::check_writable(path)
            .with_context(|| format!("cannot write JSON snapshots to {}", path.display()))?;
    }
    let series = match (&cli.snapshot_dir, cli.snapshot_every) {
        (Some(dir), Some(every)) => Some((
            output::SnapshotSeries::new(dir, cli.keep, cli.access())
                .with_context(|| format!("cannot keep snapshots in {}", dir.display()))?,
            every,
        )),
        _ => None,
    };

    let mut pids = cli.pids.clone();
    pids.sort_unstable();
    pids.dedup();
    let mut targets = Vec::new();
    for pid in pids {
        targets.push(if growth {
            target::inspect_any(pid)?
        } else {
            target::inspect(pid)?
        });
    }
    let launch = match cli.command.first() {
        Some(program) => {
            let path = target::resolve_program(program)?;
            // Growth mode needs no allocator to hook: static binaries (Go) are fine.
            let libc = match target::libc_for_executable(&path) {
                Ok(libc) => libc,
                Err(_) if growth && target::is_elf(&path) => PathBuf::new(),
                Err(err) => return Err(err.into()),
            };
            Some((path, libc))
        }
        None => None,
    };

    let mut tracer = Tracer::load(
        Capacity {
            max_allocations: cli.max_allocations,
            max_stacks: cli.max_stacks,
            sample_bytes: cli.sample_bytes.unwrap_or(0),
        },
        if system_wide {
            tracer::Scope::SystemWide
        } else {
            tracer::Scope::Targets
        },
        if growth { Mode::Growth } else { Mode::Exact },
    )?;
    // Before any target is attached, so that only our own loop hits the probes (exact mode) or
    // only our calibration child makes heap-growth events (growth mode).
    let calibration = if growth {
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
    let page_size = crate::target::page_size();
    let mut heap = HeapTracker::new(page_size);
    let mut traced = Vec::new();
    for process in targets {
        let hooked = if growth {
            tracer.trace_heap_of(process.pid)?;
            Vec::new()
        } else {
            tracer.attach(process.pid, &process.libc_host_path)?
        };
        register_heap(&mut heap, process.pid);
        traced.push(Traced::new(process, false, &hooked));
    }
    if let Some((path, libc)) = launch {
        let mut child = target::spawn_paused(&path, &cli.command)?;
        let attached = if growth {
            tracer.trace_heap_of(child.pid).map(|()| Vec::new())
        } else {
            tracer.attach(child.pid, &libc)
        };
        let hooked = match attached {
            Ok(hooked) => hooked,
            Err(err) => {
                child.abort();
                return Err(err);
            }
        };
        child.release()?;
        register_heap(&mut heap, child.pid);
        let comm = procfs::read_comm(child.pid).unwrap_or_else(|_| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let process = TargetProcess {
            pid: child.pid,
            comm,
            exe: path,
            libc_host_path: libc.clone(),
            libc,
        };
        traced.push(Traced::new(process, true, &hooked));
    }
    // The work baseline is taken before announcing the run: what the targets process from then
    // on is what the per-MiB slopes measure.
    for t in &mut traced {
        t.sample_processed(cli.processed);
    }
    if system_wide {
        eprintln!(
            "leaktrace: watching the heap syscalls of every process{}",
            if growth { " (growth mode)" } else { "" }
        );
    }
    for t in &traced {
        if t.exact {
            eprintln!(
                "leaktrace: tracing pid {} ({}) through {} [{}]",
                t.process.pid,
                t.process.comm,
                t.process.libc.display(),
                t.hooked.join(" ")
            );
        } else {
            eprintln!(
                "leaktrace: tracing pid {} ({}) in growth mode [brk mmap mremap mprotect munmap]",
                t.process.pid, t.process.comm
            );
        }
    }

    let reader = std::sync::Arc::new(tracer.reader()?);
    let hit_rate =
        HitRate::starting_at(Instant::now(), if growth { 0 } else { tracer.probe_hits() });
    let mut session = Session {
        reader,
        tracer,
        symbols: Symbols::new(),
        stacks: HashMap::new(),
        traced,
        others: HashMap::new(),
        heap,
        system_wide,
        growth,
        unwinder: StackUnwinder::new(),
        interned: HashMap::new(),
        fp_stacks: HashMap::new(),
        unwound_ids: 0,
        start_ns: tracer::monotonic_ns(),
        series: HashMap::new(),
        started: Instant::now(),
        interval,
        min_age: cli.min_age,
        processed: cli.processed,
        top: cli.top,
        json: cli.json.clone(),
        access: cli.access(),
        rolling: series,
        last_series_write: None,
        ns_per_hit,
        hit_rate,
    };
    session.refresh_liveness();
    let outcome = if dashboard {
        // Log lines would land in the middle of the dashboard.
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(log::LevelFilter::Off);
        }
        let outcome =
            ui::run_terminal(async |dash| session.dashboard_loop(dash, cli.duration).await)
                .await
                .context("cannot drive the terminal")
                .and_then(|outcome| outcome);
        log::set_max_level(log::LevelFilter::Warn);
        outcome
    } else {
        session.sample_loop(cli.duration).await
    };
    session.end_launched_commands().await;
    // The final snapshot is written whatever ended the run, then the probes go with `session`.
    let last = session.snapshot(true);
    print!("{}", crate::table::render_table(&last, session.top));
    session.save(&last)?;
    outcome
}

struct Session {
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
    system_wide: bool,
    /// Growth mode: heap-growing syscalls carry stack copies, unwound here.
    growth: bool,
    unwinder: StackUnwinder,
    /// Unwound stacks by process, as synthetic stack ids (above the kernel's) for site keys.
    interned: HashMap<(u32, Vec<u64>), u32>,
    /// Frame-pointer stacks of growth events, by kernel stack id (ids are never reused).
    fp_stacks: HashMap<u32, Vec<u64>>,
    /// The last synthetic stack id handed out (ids are not reused when processes are dropped).
    unwound_ids: u32,
    /// `bpf_ktime_get_ns()` time base at the start, for growth sites' first/last seen.
    start_ns: u64,
    /// Outstanding bytes of every site at every interval, for the growth slopes.
    series: HashMap<leaktrace_common::SiteKey, SeriesBuffer>,
    started: Instant,
    interval: Duration,
    min_age: Duration,
    processed: Processed,
    top: usize,
    json: Option<PathBuf>,
    /// `--private`: who may read the snapshots.
    access: Access,
    /// `--snapshot-dir` / `--snapshot-every` / `--keep`.
    rolling: Option<(output::SnapshotSeries, Duration)>,
    last_series_write: Option<Instant>,
    /// Cost of one probe hit, from the calibration at start.
    ns_per_hit: Option<f64>,
    hit_rate: HitRate,
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
        let mut next_sample = start + self.interval;
        loop {
            tokio::select! {
                _ = sleep_until(next_sample) => {
                    let snapshot = self.snapshot(false);
                    print!("{}", crate::table::render_table(&snapshot, self.top));
                    self.save(&snapshot)?;
                    next_sample += self.interval;
                }
                _ = liveness.tick() => {
                    self.drain_heap_events();
                    self.refresh_liveness();
                    if !self.system_wide && self.traced.iter().all(|t| !t.alive) {
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
                        Some(Action::WriteSnapshot) => {
                            let snapshot = self.snapshot(false);
                            let status = match &self.json {
                                Some(path) => match report::write_snapshot(path, &snapshot, self.access) {
                                    Ok(()) => format!("snapshot written to {}", path.display()),
                                    Err(err) => format!("cannot write {}: {err}", path.display()),
                                },
                                None => "no --json PATH given: nothing written".to_string(),
                            };
                            app.set_status(status);
                        }
                        Some(Action::TraceProcess(pid)) => {
                            let status = match self.trace_exactly(pid) {
                                Ok(()) => format!("tracing pid {pid} exactly"),
                                Err(err) => format!("cannot trace pid {pid}: {err:#}"),
                            };
                            app.set_status(status);
                            next_sample = tokio::time::Instant::now();
                        }
                        Some(Action::Redraw) => dash.redraw_all()?,
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
                    let snapshot = self.build_snapshot(false, now_ns, reading);
                    if let Err(err) = self.save(&snapshot) {
                        app.set_status(format!("{err:#}"));
                    }
                    let probe_hits_per_s = snapshot.cost.and_then(|c| c.probe_hits_per_s);
                    let live = Live {
                        uptime_s: Some(self.started.elapsed().as_secs_f64()),
                        probe_hits_per_s,
                    };
                    app.handle(Event::Update(Box::new(Update { snapshot, live })));
                    next_sample = tokio::time::Instant::now() + self.interval;
                }
                _ = liveness.tick() => {
                    self.drain_heap_events();
                    self.refresh_liveness();
                }
                _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => {
                    return Ok(());
                }
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    /// Start exact (uprobe) tracing of a process seen in system-wide mode.
    fn trace_exactly(&mut self, pid: u32) -> anyhow::Result<()> {
        if self.traced.iter().any(|t| t.process.pid == pid) {
            return Ok(());
        }
        let process = target::inspect(pid)?;
        let hooked = self.tracer.attach(pid, &process.libc_host_path)?;
        register_heap(&mut self.heap, pid);
        let mut traced = Traced::new(process, false, &hooked);
        traced.sample_processed(self.processed);
        self.others.remove(&pid);
        self.traced.push(traced);
        self.symbols.refresh_maps(pid);
        Ok(())
    }

    fn drain_heap_events(&mut self) {
        let exact: std::collections::HashSet<u32> = self
            .traced
            .iter()
            .filter(|t| t.exact)
            .map(|t| t.process.pid)
            .collect();
        // Stack copies are unwound in place (they live in the ring buffer); events are applied
        // afterwards, in order, once their stacks are interned.
        let mut drained = Vec::new();
        let unwinder = &mut self.unwinder;
        self.tracer.drain_heap_events(|record| {
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
                AllocatorCalls::Untraced
            };
            self.heap.apply(&event, calls);
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
        if let Some(id) = self.interned.get(&(pid, stack.clone())) {
            return *id;
        }
        self.unwound_ids = self.unwound_ids.wrapping_add(1) & 0x3fff_ffff;
        let id = FIRST_UNWOUND_ID | self.unwound_ids;
        // The mappings are read now, while the process surely lives: a short-lived process may
        // be gone by the next snapshot, and the frames are named from module and offset then.
        self.symbols.keep_maps_for(pid, &stack);
        self.interned.insert((pid, stack.clone()), id);
        self.stacks.insert(id, stack);
        id
    }

    /// Note exits (reaping launched children for their status) and keep live processes'
    /// mappings fresh.
    fn refresh_liveness(&mut self) {
        for t in self.traced.iter_mut().filter(|t| t.alive) {
            if t.launched {
                if let Some(status) = target::try_wait_child(t.process.pid) {
                    t.exit = Some(status);
                    t.alive = false;
                    continue;
                }
            }
            if procfs::is_alive(t.process.pid) {
                self.symbols.refresh_maps(t.process.pid);
            } else {
                t.alive = false;
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
            .filter(|t| t.launched && t.alive)
            .map(|t| t.process.pid)
            .collect();
        if launched.is_empty() {
            return;
        }
        for pid in &launched {
            // SAFETY: our own child, not yet reaped, so the pid cannot have been reused.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + GRACE;
        loop {
            self.refresh_liveness();
            if self.traced.iter().all(|t| !t.launched || !t.alive) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.traced.iter().filter(|t| t.launched && t.alive) {
            // SAFETY: as above.
            unsafe { libc::kill(t.process.pid as i32, libc::SIGKILL) };
        }
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.refresh_liveness();
            if self.traced.iter().all(|t| !t.launched || !t.alive) {
                return;
            }
        }
    }

    /// Write `--json` and, when due (and always for the final snapshot), the next snapshot of
    /// the rolling series.
    fn save(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            report::write_snapshot(path, snapshot, self.access)
                .with_context(|| format!("cannot write JSON snapshot {}", path.display()))?;
        }
        if let Some((series, every)) = &self.rolling {
            let due = snapshot.complete
                || self
                    .last_series_write
                    .is_none_or(|last| last.elapsed() >= *every);
            if due {
                let bytes = report::snapshot_json(snapshot)?;
                series
                    .write(&snapshot.generated_at, &bytes)
                    .context("cannot write the rolling snapshot")?;
                self.last_series_write = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Read the maps and build a snapshot, on this thread.
    fn snapshot(&mut self, complete: bool) -> Snapshot {
        let (now_ns, min_age_ns) = self.read_clock();
        let reading = read_or_empty(self.reader.read(now_ns, min_age_ns));
        self.build_snapshot(complete, now_ns, reading)
    }

    /// The moment of a map read and the `--min-age` threshold, both in ns.
    fn read_clock(&self) -> (u64, u64) {
        let min_age_ns = u64::try_from(self.min_age.as_nanos()).unwrap_or(u64::MAX);
        (tracer::monotonic_ns(), min_age_ns)
    }

    /// Build a snapshot from a map reading. Interval snapshots (not the final one) also add a
    /// sample to each live site's growth series: a dead process's flat tail is not growth data.
    fn build_snapshot(&mut self, complete: bool, now_ns: u64, reading: MapsReading) -> Snapshot {
        let building = Instant::now();
        self.drain_heap_events();
        log::debug!("heap events drained in {:?}", building.elapsed());
        let t_s = self.started.elapsed().as_secs_f64();
        let mut traced = std::mem::take(&mut self.traced);
        let mut processes = Vec::with_capacity(traced.len());
        for t in &mut traced {
            let sampling = !complete && t.alive;
            if sampling {
                t.sample_processed(self.processed);
            }
            processes.push(self.sample_process(t, sampling, t_s, now_ns, &reading, usize::MAX));
        }
        self.traced = traced;
        if self.system_wide {
            processes.extend(self.system_wide_rows(complete, t_s, now_ns, &reading));
        }
        log::debug!(
            "snapshot of {} processes built in {:?}",
            processes.len(),
            building.elapsed()
        );
        Snapshot {
            schema: report::SCHEMA.to_string(),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: t_s,
            mode: if self.growth { "growth" } else { "exact" }.to_string(),
            system_wide: self.system_wide,
            unwinding: self.growth.then_some(self.unwinder.stats),
            interval_s: self.interval.as_secs_f64(),
            min_age_s: self.min_age.as_secs_f64(),
            processed: self.processed,
            complete,
            cost: Some(self.cost()),
            processes,
        }
    }

    /// What tracing costs: probe hits (exact mode) or heap-growth events (growth mode) per
    /// second, times the cost of one, measured at start; growth mode adds the measured cost of
    /// unwinding an event in userspace.
    fn cost(&mut self) -> ProbeCost {
        if self.growth {
            let stats = self.unwinder.stats;
            let rate = self.hit_rate.update(Instant::now(), stats.events);
            let per_event = match (self.ns_per_hit, stats.ns_per_event()) {
                (Some(kernel), Some(unwind)) => Some(kernel + unwind),
                (kernel, _) => kernel,
            };
            ProbeCost::new(per_event, rate)
        } else {
            let hits = self.tracer.probe_hits();
            ProbeCost::new(self.ns_per_hit, self.hit_rate.update(Instant::now(), hits))
        }
    }

    /// One process's totals (from the maps in exact mode, from heap growth otherwise), a
    /// sample for its sites' growth series, and its report.
    #[allow(clippy::too_many_arguments)]
    fn sample_process(
        &mut self,
        t: &Traced,
        sampling: bool,
        t_s: f64,
        now_ns: u64,
        reading: &MapsReading,
        max_sites: usize,
    ) -> ProcessReport {
        let pid = t.process.pid;
        let mut totals = model::process_totals(
            pid,
            &reading.sites,
            &reading.counters,
            &reading.ages,
            now_ns,
        );
        let mut site_heap = self.heap.get(pid).map(|h| h.sites()).unwrap_or_default();
        if !t.exact {
            totals = self.growth_totals(pid, totals.counters, now_ns, &mut site_heap);
        }
        if sampling {
            let processed = t.bytes_processed().unwrap_or(0);
            for site in &totals.sites {
                self.series
                    .entry(site.key)
                    .or_insert_with(|| SeriesBuffer::new(SERIES_CAPACITY))
                    .push(growth::Sample {
                        t_s,
                        processed_bytes: processed,
                        outstanding_bytes: site.outstanding_bytes,
                        aged_outstanding_bytes: site.aged_outstanding_bytes,
                    });
            }
        }
        self.process_report(t, totals, site_heap, max_sites)
    }

    /// Growth mode's sites of a process: heap bytes each stack grew (outstanding: still there;
    /// allocated: all it grew; freed: what was given back since), as the totals exact mode
    /// reads from the maps. Each site's heap attribution (`site_heap`, from
    /// `ProcessHeap::sites`) gets its growth events and when they were first and last seen.
    fn growth_totals(
        &self,
        pid: u32,
        counters: report::Counters,
        now_ns: u64,
        site_heap: &mut HashMap<leaktrace_common::SiteKey, SiteHeap>,
    ) -> ProcessTotals {
        let mut totals = ProcessTotals {
            counters,
            ..ProcessTotals::default()
        };
        let Some(heap) = self.heap.get(pid) else {
            return totals;
        };
        let min_age_ns = u64::try_from(self.min_age.as_nanos()).unwrap_or(u64::MAX);
        let seen_s = |ns: u64| ns.saturating_sub(self.start_ns) as f64 / 1e9;
        for (key, tally) in heap.growth() {
            let attribution = site_heap.entry(*key).or_default();
            attribution.growth_events = tally.events;
            attribution.first_seen_s = Some(seen_s(tally.first_ns));
            attribution.last_seen_s = Some(seen_s(tally.last_ns));
            let outstanding = attribution.net_bytes();
            let age_ns = now_ns.saturating_sub(tally.first_ns);
            let aged = if age_ns >= min_age_ns { outstanding } else { 0 };
            totals.sites.push(model::SiteTotals {
                key: *key,
                outstanding_bytes: outstanding,
                outstanding_count: u64::from(outstanding > 0),
                allocated_bytes: tally.bytes,
                allocated_count: tally.events,
                freed_bytes: tally.bytes.saturating_sub(outstanding),
                freed_count: 0,
                oldest_age_s: (outstanding > 0).then(|| age_ns as f64 / 1e9),
                aged_outstanding_bytes: aged,
                aged_outstanding_count: u64::from(aged > 0),
            });
            totals.outstanding_bytes += outstanding;
            totals.outstanding_count += u64::from(outstanding > 0);
            totals.allocated_bytes += tally.bytes;
            totals.allocated_count += tally.events;
        }
        totals.sites.sort_by(|a, b| {
            b.outstanding_bytes
                .cmp(&a.outstanding_bytes)
                .then(b.allocated_bytes.cmp(&a.allocated_bytes))
                .then(a.key.stack_id.cmp(&b.key.stack_id))
        });
        totals
    }

    /// A process's report with at most `max_sites` sites, by leak rank (only those are
    /// symbolized). `site_heap`: the heap attribution of its sites (`ProcessHeap::sites`);
    /// entries of no allocation site become heap-only sites.
    fn process_report(
        &mut self,
        t: &Traced,
        totals: ProcessTotals,
        mut site_heap: HashMap<leaktrace_common::SiteKey, SiteHeap>,
        max_sites: usize,
    ) -> ProcessReport {
        let (pid, alive) = (t.process.pid, t.alive);
        let growths: Vec<Growth> = totals
            .sites
            .iter()
            .map(|site| {
                let samples = self
                    .series
                    .get(&site.key)
                    .map_or(&[][..], SeriesBuffer::samples);
                growth::analyze(samples, site.allocated_bytes, growth::DEFAULT_RECENT_WINDOW)
            })
            .collect();
        let mut by_likelihood: Vec<usize> = (0..growths.len()).collect();
        growth::sort_by_leak_likelihood(&mut by_likelihood, |&i| growths.get(i));
        let mut leak_rank = vec![0u32; growths.len()];
        for (rank, &i) in by_likelihood.iter().enumerate() {
            leak_rank[i] = u32::try_from(rank + 1).unwrap_or(u32::MAX);
        }
        let mut sites: Vec<SiteReport> = totals
            .sites
            .iter()
            .zip(growths)
            .zip(leak_rank)
            .filter(|(_, rank)| usize::try_from(*rank).is_ok_and(|r| r <= max_sites))
            .map(|((site, growth), leak_rank)| {
                let addrs = self.site_stack(site.key.stack_id, site.key.caller);
                SiteReport {
                    heap: site_heap.remove(&site.key).unwrap_or_default(),
                    id: site.id(),
                    outstanding_bytes: site.outstanding_bytes,
                    outstanding_count: site.outstanding_count,
                    allocated_bytes: site.allocated_bytes,
                    allocated_count: site.allocated_count,
                    freed_bytes: site.freed_bytes,
                    freed_count: site.freed_count,
                    oldest_age_s: site.oldest_age_s,
                    aged_outstanding_bytes: site.aged_outstanding_bytes,
                    aged_outstanding_count: site.aged_outstanding_count,
                    growth,
                    leak_rank,
                    frames: self.symbols.stack_frames(pid, alive, &addrs),
                }
            })
            .collect();
        // Sites that only made heap syscalls (the program's own mmaps, or allocator calls whose
        // only effect was a syscall).
        let mut heap_only: Vec<(leaktrace_common::SiteKey, SiteHeap)> =
            site_heap.into_iter().collect();
        heap_only.sort_by(|a, b| {
            b.1.anon_mmap_bytes
                .cmp(&a.1.anon_mmap_bytes)
                .then(a.0.caller.cmp(&b.0.caller))
        });
        let first_rank = u32::try_from(totals.sites.len() + 1).unwrap_or(u32::MAX);
        let room = max_sites.saturating_sub(totals.sites.len());
        for (rank, (key, heap)) in heap_only.into_iter().take(room).enumerate() {
            let addrs = self.site_stack(key.stack_id, key.caller);
            sites.push(SiteReport::heap_only(
                format!("{:x}-{}-heap", key.caller, key.stack_id),
                heap,
                first_rank.saturating_add(u32::try_from(rank).unwrap_or(u32::MAX)),
                self.symbols.stack_frames(pid, alive, &addrs),
            ));
        }
        let heap = self.heap_report(pid, t, Some(totals.outstanding_bytes));
        ProcessReport {
            pid,
            comm: t.process.comm.clone(),
            exe: t.process.exe.display().to_string(),
            alive: t.alive,
            exit: t.exit,
            exact: t.exact,
            libc: t.process.libc.display().to_string(),
            hooked_functions: t.hooked.clone(),
            outstanding_bytes: totals.outstanding_bytes,
            outstanding_count: totals.outstanding_count,
            allocated_bytes: totals.allocated_bytes,
            allocated_count: totals.allocated_count,
            freed_count: totals.freed_count,
            bytes_processed: t.bytes_processed(),
            heap,
            counters: totals.counters,
            sites,
        }
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

    /// The heap object of a process. `outstanding`: its traced outstanding bytes (exact mode).
    fn heap_report(
        &self,
        pid: u32,
        traced: &Traced,
        outstanding: Option<u64>,
    ) -> Option<HeapReport> {
        let heap = self.heap.get(pid)?;
        let rss_growth = match (traced.memory, traced.rss_baseline) {
            (Some((rss, _)), Some(base)) => Some(rss as i64 - base as i64),
            _ => None,
        };
        let explained_share = match (outstanding, rss_growth) {
            (Some(out), Some(growth)) if growth > 0 => Some((out as f64 / growth as f64).min(1.0)),
            _ => None,
        };
        Some(HeapReport {
            brk_bytes: heap.brk_bytes(),
            brk_calls: heap.brk_calls,
            brk_failures: heap.brk_failures,
            fallback_mmaps: heap.fallbacks(),
            anon_mmap_outstanding_bytes: heap.anon_committed_bytes(),
            anon_reserved_bytes: heap.anon_reserved_bytes(),
            rss_bytes: traced.memory.map(|m| m.0),
            vm_data_bytes: traced.memory.map(|m| m.1),
            rss_growth_bytes: rss_growth,
            explained_share,
            events: heap.events,
        })
    }

    /// Drop everything kept about a system-wide row's process.
    fn forget_process(&mut self, pid: u32) {
        self.others.remove(&pid);
        self.heap.processes.remove(&pid);
        self.unwinder.forget(pid);
        self.series.retain(|key, _| key.tgid != pid);
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
    /// growth first; in growth mode with its sites.
    fn system_wide_rows(
        &mut self,
        complete: bool,
        t_s: f64,
        now_ns: u64,
        reading: &MapsReading,
    ) -> Vec<ProcessReport> {
        let exact: std::collections::HashSet<u32> =
            self.traced.iter().map(|t| t.process.pid).collect();
        let pids: Vec<u32> = self
            .heap
            .processes
            .keys()
            .copied()
            .filter(|p| !exact.contains(p))
            .collect();
        let mut rows = Vec::with_capacity(pids.len());
        let mut last_drain = Instant::now();
        for pid in pids {
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
                    continue;
                }
            }
            let comm = self
                .heap
                .get(pid)
                .map(|h| h.comm.clone())
                .unwrap_or_default();
            let mut row = self.others.remove(&pid).unwrap_or_else(|| {
                let process = TargetProcess {
                    pid,
                    comm,
                    exe: procfs::read_exe(pid).unwrap_or_default(),
                    libc: PathBuf::new(),
                    libc_host_path: PathBuf::new(),
                };
                Traced::new(process, false, &[])
            });
            let sampling = !complete && alive && row.alive;
            if sampling {
                row.sample_processed(self.processed);
            } else if !alive && row.alive {
                row.alive = false;
                row.gone_since = Some(Instant::now());
                self.unwinder.forget(pid);
            }
            let max_sites = self.top.max(SYSTEM_WIDE_SITES);
            rows.push(self.sample_process(&row, sampling, t_s, now_ns, reading, max_sites));
            self.others.insert(pid, row);
            // Naming new stacks of many processes takes a while: keep the ring buffer drained
            // (and short-lived processes' mappings read) meanwhile.
            if last_drain.elapsed() >= LIVENESS_PERIOD {
                self.drain_heap_events();
                last_drain = Instant::now();
            }
        }
        let growth = |p: &ProcessReport| {
            p.heap
                .as_ref()
                .map_or(0, |h| h.brk_bytes + h.anon_mmap_outstanding_bytes)
        };
        rows.sort_by(|a, b| growth(b).cmp(&growth(a)).then(a.pid.cmp(&b.pid)));
        rows
    }
}
