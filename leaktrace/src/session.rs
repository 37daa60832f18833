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
    growth::{self, Growth, SeriesBuffer},
    model::{self, ProcessTotals},
    report::{self, ProcessReport, SiteReport, Snapshot},
    symbolize::Symbols,
    target::{self, ExitStatus, TargetProcess},
    tracer::{self, Capacity, MapsReading, Tracer},
};

/// How often liveness is checked and live processes' mappings are re-read (so that stacks stay
/// symbolizable after a process dies between two intervals).
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

struct Traced {
    process: TargetProcess,
    alive: bool,
    launched: bool,
    exit: Option<ExitStatus>,
    hooked: Vec<String>,
    /// /proc/PID/io counter (per `--processed`) when tracing started, and the latest value.
    processed_baseline: Option<u64>,
    processed_latest: Option<u64>,
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
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.pids.is_empty() && cli.command.is_empty() {
        bail!("nothing to trace: give --pid PID (repeatable) or -- COMMAND [ARGS...]");
    }
    tracer::preflight()?;
    if let Some(path) = &cli.json {
        report::check_writable(path)
            .with_context(|| format!("cannot write JSON snapshots to {}", path.display()))?;
    }

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

    let mut tracer = Tracer::load(Capacity {
        max_allocations: cli.max_allocations,
        max_stacks: cli.max_stacks,
    })?;
    let mut traced = Vec::new();
    for process in targets {
        let hooked = tracer.attach(process.pid, &process.libc_host_path)?;
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
    for t in &traced {
        eprintln!(
            "leaktrace: tracing pid {} ({}) through {} [{}]",
            t.process.pid,
            t.process.comm,
            t.process.libc.display(),
            t.hooked.join(" ")
        );
    }

    let mut session = Session {
        tracer,
        symbols: Symbols::new(),
        stacks: HashMap::new(),
        traced,
        series: HashMap::new(),
        started: Instant::now(),
        interval: cli.interval,
        min_age: cli.min_age,
        processed: cli.processed,
        top: cli.top,
        json: cli.json.clone(),
    };
    session.refresh_liveness();
    for t in &mut session.traced {
        t.sample_processed(session.processed);
    }
    let outcome = session.sample_loop(cli.duration).await;
    session.end_launched_commands().await;
    // The final snapshot is written whatever ended the run, then the probes go with `session`.
    let last = session.snapshot(true);
    print!("{}", report::render_table(&last, session.top));
    session.save(&last)?;
    outcome
}

struct Session {
    tracer: Tracer,
    symbols: Symbols,
    /// Stack map contents, read once per (pid, stack id): ids are never reused.
    stacks: HashMap<u32, Vec<u64>>,
    traced: Vec<Traced>,
    /// Outstanding bytes of every site at every interval, for the growth slopes.
    series: HashMap<leaktrace_common::SiteKey, SeriesBuffer>,
    started: Instant,
    interval: Duration,
    min_age: Duration,
    processed: Processed,
    top: usize,
    json: Option<PathBuf>,
}

impl Session {
    async fn sample_loop(&mut self, duration: Option<Duration>) -> anyhow::Result<()> {
        let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut liveness = tokio::time::interval(LIVENESS_PERIOD);
        liveness.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = tokio::time::Instant::from_std(self.started);
        let deadline = duration.map(|d| start + d);
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
                    self.refresh_liveness();
                    if self.traced.iter().all(|t| !t.alive) {
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

    fn save(&self, snapshot: &Snapshot) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            report::write_snapshot(path, snapshot)
                .with_context(|| format!("cannot write JSON snapshot {}", path.display()))?;
        }
        Ok(())
    }

    /// Read the maps and build a snapshot. Interval snapshots (not the final one) also add a
    /// sample to each live site's growth series: a dead process's flat tail is not growth data.
    fn snapshot(&mut self, complete: bool) -> Snapshot {
        let now_ns = tracer::monotonic_ns();
        let min_age_ns = u64::try_from(self.min_age.as_nanos()).unwrap_or(u64::MAX);
        let reading = match self.tracer.read(now_ns, min_age_ns) {
            Ok(reading) => reading,
            Err(err) => {
                log::warn!("cannot read the eBPF maps: {err:#}");
                MapsReading::default()
            }
        };
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
                        .or_insert_with(|| SeriesBuffer::new(growth::DEFAULT_CAPACITY))
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
        Snapshot {
            schema: report::SCHEMA.to_string(),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: t_s,
            mode: "exact".to_string(),
            interval_s: self.interval.as_secs_f64(),
            min_age_s: self.min_age.as_secs_f64(),
            processed: self.processed,
            complete,
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
        let sites = totals
            .sites
            .iter()
            .zip(growths)
            .zip(leak_rank)
            .map(|((site, growth), leak_rank)| {
                let addrs = self.site_stack(site.key.stack_id, site.key.caller);
                SiteReport {
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
        let t = &self.traced[index];
        ProcessReport {
            pid,
            comm: t.process.comm.clone(),
            exe: t.process.exe.display().to_string(),
            alive: t.alive,
            exit: t.exit,
            libc: t.process.libc.display().to_string(),
            hooked_functions: t.hooked.clone(),
            outstanding_bytes: totals.outstanding_bytes,
            outstanding_count: totals.outstanding_count,
            allocated_bytes: totals.allocated_bytes,
            allocated_count: totals.allocated_count,
            freed_count: totals.freed_count,
            bytes_processed: t.bytes_processed(),
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
        match self.tracer.stack(stack_id) {
            Some(stack) if !stack.is_empty() => {
                self.stacks.insert(stack_id, stack.clone());
                stack
            }
            _ => vec![caller],
        }
    }
}
