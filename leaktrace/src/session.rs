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
    cli::{Cli, Processed},
    cost::HitRate,
    growth::{self, Growth, SeriesBuffer},
    heap::{HeapTracker, SiteHeap},
    model::{self, ProcessTotals},
    report::{self, HeapReport, ProbeCost, ProcessReport, SiteReport, Snapshot},
    symbolize::Symbols,
    target::{self, ExitStatus, TargetProcess},
    tracer::{self, Capacity, MapsReading, Tracer},
    ui::{self, Action, App, Event, Live, Update},
};

/// How often liveness is checked and live processes' mappings are re-read (so that stacks stay
/// symbolizable after a process dies between two intervals).
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

/// Samples kept per site for the growth fits (older ones are downsampled evenly): 4 KiB per
/// site, so 10,000 sites cost 40 MiB rather than the 160 MiB of growth.rs's default 512.
const SERIES_CAPACITY: usize = 128;

struct Traced {
    process: TargetProcess,
    alive: bool,
    launched: bool,
    exit: Option<ExitStatus>,
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
            alive: true,
            launched,
            exit: None,
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
        let Some(io) = target::read_io(self.process.pid) else {
            return;
        };
        let value = match measure {
            Processed::Read => io.read_bytes,
            Processed::Write => io.written_bytes,
            Processed::Both => io.read_bytes.saturating_add(io.written_bytes),
        };
        self.processed_baseline.get_or_insert(value);
        self.processed_latest = Some(value);
        if let Some(memory) = target::read_memory(self.process.pid) {
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
    tracer::preflight()?;
    if let Some(path) = &cli.json {
        report::check_writable(path)
            .with_context(|| format!("cannot write JSON snapshots to {}", path.display()))?;
    }
    let series = match (&cli.snapshot_dir, cli.snapshot_every) {
        (Some(dir), Some(every)) => Some((
            report::SnapshotSeries::new(dir, cli.keep)
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
        targets.push(target::inspect(pid)?);
    }
    let launch = match cli.command.first() {
        Some(program) => {
            let path = target::resolve_program(program)?;
            let libc = target::libc_for_executable(&path)?;
            Some((path, libc))
        }
        None => None,
    };

    let mut tracer = Tracer::load(
        Capacity {
            max_allocations: cli.max_allocations,
            max_stacks: cli.max_stacks,
        },
        system_wide,
    )?;
    // Before any target is attached, so that only our own loop hits the probes.
    let ns_per_hit = match tracer.calibrate() {
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
        let hooked = tracer.attach(process.pid, &process.libc_host_path)?;
        register_heap(&mut heap, process.pid);
        traced.push(Traced::new(process, false, &hooked));
    }
    if let Some((path, libc)) = launch {
        let mut child = target::spawn_paused(&path, &cli.command)?;
        let hooked = match tracer.attach(child.pid, &libc) {
            Ok(hooked) => hooked,
            Err(err) => {
                child.abort();
                return Err(err);
            }
        };
        child.release()?;
        register_heap(&mut heap, child.pid);
        let comm = target::read_comm(child.pid).unwrap_or_else(|_| {
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
        eprintln!("leaktrace: watching the heap syscalls of every process");
    }
    for t in &traced {
        eprintln!(
            "leaktrace: tracing pid {} ({}) through {} [{}]",
            t.process.pid,
            t.process.comm,
            t.process.libc.display(),
            t.hooked.join(" ")
        );
    }

    let reader = std::sync::Arc::new(tracer.reader()?);
    let hit_rate = HitRate::starting_at(Instant::now(), tracer.probe_hits());
    let mut session = Session {
        reader,
        tracer,
        symbols: Symbols::new(),
        stacks: HashMap::new(),
        traced,
        others: HashMap::new(),
        heap,
        system_wide,
        series: HashMap::new(),
        started: Instant::now(),
        interval,
        min_age: cli.min_age,
        processed: cli.processed,
        top: cli.top,
        json: cli.json.clone(),
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
    print!("{}", report::render_table(&last, session.top));
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
    /// Outstanding bytes of every site at every interval, for the growth slopes.
    series: HashMap<leaktrace_common::SiteKey, SeriesBuffer>,
    started: Instant,
    interval: Duration,
    min_age: Duration,
    processed: Processed,
    top: usize,
    json: Option<PathBuf>,
    /// `--snapshot-dir` / `--snapshot-every` / `--keep`.
    rolling: Option<(report::SnapshotSeries, Duration)>,
    last_series_write: Option<Instant>,
    /// Cost of one probe hit, from the calibration at start.
    ns_per_hit: Option<f64>,
    hit_rate: HitRate,
}

/// Start tracking a process's heap at its current program break, read from /proc.
fn register_heap(heap: &mut HeapTracker, pid: u32) {
    let brk = target::read_brk(pid);
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
                    print!("{}", report::render_table(&snapshot, self.top));
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
                                Some(path) => match report::write_snapshot(path, &snapshot) {
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
        let exact: std::collections::HashSet<u32> =
            self.traced.iter().map(|t| t.process.pid).collect();
        let heap = &mut self.heap;
        self.tracer
            .drain_heap_events(|event| heap.apply(event, exact.contains(&event.tgid)));
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
            if target::is_alive(t.process.pid) {
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
            report::write_snapshot(path, snapshot)
                .with_context(|| format!("cannot write JSON snapshot {}", path.display()))?;
        }
        if let Some((series, every)) = &self.rolling {
            let due = snapshot.complete
                || self
                    .last_series_write
                    .is_none_or(|last| last.elapsed() >= *every);
            if due {
                series
                    .write(snapshot)
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
        self.drain_heap_events();
        let t_s = self.started.elapsed().as_secs_f64();
        let mut processes = Vec::with_capacity(self.traced.len());
        for i in 0..self.traced.len() {
            let sampling = !complete && self.traced[i].alive;
            if sampling {
                self.traced[i].sample_processed(self.processed);
            }
            let pid = self.traced[i].process.pid;
            let totals = model::process_totals(
                pid,
                &reading.sites,
                &reading.counters,
                &reading.ages,
                now_ns,
            );
            if sampling {
                let processed = self.traced[i].bytes_processed().unwrap_or(0);
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
            processes.push(self.process_report(i, totals));
        }
        if self.system_wide {
            processes.extend(self.system_wide_rows());
        }
        Snapshot {
            schema: report::SCHEMA.to_string(),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: t_s,
            mode: if self.system_wide {
                "system_wide"
            } else {
                "exact"
            }
            .to_string(),
            interval_s: self.interval.as_secs_f64(),
            min_age_s: self.min_age.as_secs_f64(),
            processed: self.processed,
            complete,
            cost: Some(ProbeCost::new(
                self.ns_per_hit,
                self.hit_rate
                    .update(Instant::now(), self.tracer.probe_hits()),
            )),
            processes,
        }
    }

    fn process_report(&mut self, index: usize, totals: ProcessTotals) -> ProcessReport {
        let (pid, alive) = (self.traced[index].process.pid, self.traced[index].alive);
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
        let mut site_heap = self.heap.get(pid).map(|h| h.sites()).unwrap_or_default();
        let mut sites: Vec<SiteReport> = totals
            .sites
            .iter()
            .zip(growths)
            .zip(leak_rank)
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
        let first_rank = u32::try_from(sites.len() + 1).unwrap_or(u32::MAX);
        for (rank, (key, heap)) in heap_only.into_iter().enumerate() {
            let addrs = self.site_stack(key.stack_id, key.caller);
            sites.push(SiteReport {
                id: format!("{:x}-{}-heap", key.caller, key.stack_id),
                outstanding_bytes: 0,
                outstanding_count: 0,
                allocated_bytes: 0,
                allocated_count: 0,
                freed_bytes: 0,
                freed_count: 0,
                oldest_age_s: None,
                aged_outstanding_bytes: 0,
                aged_outstanding_count: 0,
                growth: growth::analyze(&[], 0, growth::DEFAULT_RECENT_WINDOW),
                leak_rank: first_rank.saturating_add(u32::try_from(rank).unwrap_or(u32::MAX)),
                heap,
                frames: self.symbols.stack_frames(pid, alive, &addrs),
            });
        }
        let heap = self.heap_report(pid, &self.traced[index], Some(totals.outstanding_bytes));
        let t = &self.traced[index];
        ProcessReport {
            pid,
            comm: t.process.comm.clone(),
            exe: t.process.exe.display().to_string(),
            alive: t.alive,
            exit: t.exit,
            exact: true,
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
        if stack_id == NO_STACK {
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

    /// System-wide mode: one row per other process seen making heap syscalls, largest heap
    /// growth first.
    fn system_wide_rows(&mut self) -> Vec<ProcessReport> {
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
        for pid in pids {
            let alive = target::is_alive(pid);
            let row = self.others.entry(pid).or_insert_with(|| {
                let process = TargetProcess {
                    pid,
                    comm: String::new(),
                    exe: std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default(),
                    libc: PathBuf::new(),
                    libc_host_path: PathBuf::new(),
                };
                Traced::new(process, false, &[])
            });
            if alive && row.alive {
                row.sample_processed(self.processed);
            } else {
                row.alive = false;
            }
            let Some(heap) = self.heap.get(pid) else {
                continue;
            };
            let comm = heap.comm.clone();
            let report = self.heap_report(pid, &self.others[&pid], None);
            let t = &self.others[&pid];
            rows.push(ProcessReport {
                pid,
                comm,
                exe: t.process.exe.display().to_string(),
                alive: t.alive,
                exit: None,
                exact: false,
                libc: String::new(),
                hooked_functions: Vec::new(),
                outstanding_bytes: 0,
                outstanding_count: 0,
                allocated_bytes: 0,
                allocated_count: 0,
                freed_count: 0,
                bytes_processed: t.bytes_processed(),
                heap: report,
                counters: report::Counters::default(),
                sites: Vec::new(),
            });
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
