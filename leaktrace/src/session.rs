//! One tracing run: resolve targets, attach, sample every interval, stop cleanly.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use leaktrace_common::NO_STACK;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, sleep_until},
};

use crate::{
    cli::Cli,
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
        traced.push(Traced {
            process,
            alive: true,
            launched: false,
            exit: None,
            hooked: hooked.iter().map(|s| s.to_string()).collect(),
        });
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
        traced.push(Traced {
            process: TargetProcess {
                pid: child.pid,
                comm,
                exe: path,
                libc_host_path: libc.clone(),
                libc,
            },
            alive: true,
            launched: true,
            exit: None,
            hooked: hooked.iter().map(|s| s.to_string()).collect(),
        });
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
        started: Instant::now(),
        interval: cli.interval,
        top: cli.top,
        json: cli.json.clone(),
    };
    session.refresh_liveness();
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
    started: Instant,
    interval: Duration,
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

    fn snapshot(&mut self, complete: bool) -> Snapshot {
        let reading = match self.tracer.read() {
            Ok(reading) => reading,
            Err(err) => {
                log::warn!("cannot read the eBPF maps: {err:#}");
                MapsReading::default()
            }
        };
        let now_ns = tracer::monotonic_ns();
        let mut processes = Vec::with_capacity(self.traced.len());
        for i in 0..self.traced.len() {
            let pid = self.traced[i].process.pid;
            let totals =
                model::process_totals(pid, &reading.sites, &reading.counters, &reading.oldest, now_ns);
            processes.push(self.process_report(i, totals));
        }
        Snapshot {
            schema: report::SCHEMA.to_string(),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: self.started.elapsed().as_secs_f64(),
            mode: "exact".to_string(),
            interval_s: self.interval.as_secs_f64(),
            complete,
            processes,
        }
    }

    fn process_report(&mut self, index: usize, totals: ProcessTotals) -> ProcessReport {
        let (pid, alive) = (self.traced[index].process.pid, self.traced[index].alive);
        let sites = totals
            .sites
            .iter()
            .map(|site| {
                let addrs = self.site_stack(pid, site.key.stack_id, site.key.caller);
                SiteReport {
                    id: site.id(),
                    outstanding_bytes: site.outstanding_bytes,
                    outstanding_count: site.outstanding_count,
                    allocated_bytes: site.allocated_bytes,
                    allocated_count: site.allocated_count,
                    freed_bytes: site.freed_bytes,
                    freed_count: site.freed_count,
                    oldest_age_s: site.oldest_age_s,
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
            counters: totals.counters,
            sites,
        }
    }

    /// The return addresses of a site, innermost (the allocator's caller) first.
    fn site_stack(&mut self, _pid: u32, stack_id: u32, caller: u64) -> Vec<u64> {
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
