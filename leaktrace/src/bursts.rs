//! Growth mode's bursts, driven: which traced process gets the next short burst of exact
//! tracing and when (`model::BurstPlan`, within `--overhead-budget`), starting it
//! (`Tracer::start_burst`: its probes detach on a thread of their own), and handing what it
//! left in the outstanding-allocation map to the process's `model::SurvivalWatch`.
//!
//! Bursts run one at a time, for the processes given by `--pid` or launched in growth mode.
//! System-wide rows get none: a burst hooks one process's allocator, and doing so for every
//! process of a host is exact mode's cost spread everywhere (a later step: the top few
//! processes by heap growth, within one shared budget).
use std::collections::HashMap;

use leaktrace_common::SiteKey;

use crate::{
    allocator::{Allocator, Discovery},
    model::{BurstCpu, BurstPlan, BurstWindow, CpuReading, SiteEstimate, SurvivalWatch},
    procfs,
    schema::BurstReport,
    tracer::{RunningBurst, Tracer},
};

/// Why bursts stopped on a process that exited: no failure, not reported.
const EXITED: &str = "exited";

/// One process's bursts.
struct ProcessBursts {
    /// The allocator whose probes a burst attaches (None: nothing leaktrace can hook).
    allocator: Option<Allocator>,
    plan: BurstPlan,
    /// What the bursts cost, measured on the process's own CPU time.
    cpu: BurstCpu,
    watch: SurvivalWatch,
    /// Heap events of the process when its latest burst started (growth since then makes the
    /// next burst due sooner).
    heap_events_at_burst: u64,
    /// Why bursts cannot run on this process (said in the snapshot).
    unavailable: Option<String>,
}

/// The burst in progress.
struct Running {
    burst: RunningBurst,
    hits_before: u64,
}

/// `pid`'s CPU time now.
fn cpu_reading(pid: u32) -> Option<CpuReading> {
    let cpu = procfs::read_cpu_time(pid)?;
    Some(CpuReading {
        at_ns: crate::tracer::monotonic_ns(),
        user_ns: cpu.user_ns,
        system_ns: cpu.system_ns,
    })
}

/// Every growth-mode target's bursts.
pub struct Bursts {
    budget_pct: f64,
    ns_per_hit: Option<f64>,
    processes: HashMap<u32, ProcessBursts>,
    running: Option<Running>,
}

impl Bursts {
    /// `budget_pct`: `--overhead-budget`; `ns_per_hit`: the measured cost of one exact-mode
    /// probe hit.
    pub fn new(budget_pct: f64, ns_per_hit: Option<f64>) -> Self {
        Self {
            budget_pct,
            ns_per_hit,
            processes: HashMap::new(),
            running: None,
        }
    }

    /// Run bursts on `pid`, with the allocator discovery found serving its malloc.
    pub fn add(&mut self, pid: u32, allocators: &Discovery) {
        let allocator = allocators.hookable().next().cloned();
        let unavailable = match (&allocator, &allocators.unhookable) {
            (Some(_), _) => None,
            (None, Some(why)) => Some(why.clone()),
            (None, None) => Some("no allocator to hook (a static binary, or Go)".to_string()),
        };
        self.processes.insert(
            pid,
            ProcessBursts {
                allocator,
                plan: BurstPlan::new(self.budget_pct, self.ns_per_hit),
                cpu: BurstCpu::starting(cpu_reading(pid)),
                watch: SurvivalWatch::default(),
                heap_events_at_burst: 0,
                unavailable,
            },
        );
    }

    /// Stop bursts on a process that exited (its results stay reported).
    pub fn stop(&mut self, pid: u32) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.unavailable.get_or_insert_with(|| EXITED.to_string());
        }
    }

    /// Finish the running burst once its probes are detached, and start the next one that is
    /// due. `now_s`: seconds into the run; `heap_events`: a process's heap events so far.
    pub fn tick(&mut self, tracer: &mut Tracer, now_s: f64, heap_events: impl Fn(u32) -> u64) {
        if let Some(running) = self.running.as_mut() {
            let Some(ended_ns) = running.burst.ended_ns() else {
                return;
            };
            let hits = tracer.probe_hits().saturating_sub(running.hits_before);
            let pid = running.burst.pid;
            let window = BurstWindow {
                attached_ns: running.burst.attached_ns,
                ended_ns,
            };
            self.running = None;
            tracer.clear_inflight(pid);
            if let Some(p) = self.processes.get_mut(&pid) {
                match tracer.burst_blocks(pid) {
                    Ok(blocks) => {
                        let forget = p.watch.harvest(window, &blocks);
                        tracer.forget_blocks(pid, &forget);
                    }
                    Err(err) => log::warn!("cannot read the blocks of pid {pid}'s burst: {err:#}"),
                }
                let duration_s = ended_ns.saturating_sub(window.attached_ns) as f64 / 1e9;
                let cpu_ns = p.cpu.window_ended(cpu_reading(pid));
                log::debug!(
                    "burst on pid {pid}: {hits} probe hits in {duration_s:.3} s of burst; \
                     {:.1} ms of the target's CPU from attaching to detached",
                    cpu_ns.unwrap_or(f64::NAN) / 1e6
                );
                p.plan.record(now_s, duration_s, hits);
                p.plan.record_target_cpu(cpu_ns, hits);
            }
        }
        let next = self
            .processes
            .iter()
            .filter(|(_, p)| p.unavailable.is_none())
            .filter(|(pid, p)| {
                p.plan
                    .due(now_s, heap_events(**pid) != p.heap_events_at_burst)
            })
            .min_by_key(|(pid, p)| (p.plan.bursts(), **pid))
            .map(|(pid, _)| *pid);
        let Some(pid) = next else { return };
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let Some(allocator) = p.allocator.as_ref() else {
            return;
        };
        let hits_before = tracer.probe_hits();
        let duration = p.plan.burst_duration();
        p.cpu.window_started(cpu_reading(pid));
        match tracer.start_burst(pid, allocator, duration) {
            Ok(burst) => {
                let attach_hits = tracer.probe_hits().saturating_sub(hits_before);
                log::debug!(
                    "burst on pid {pid} for {duration:?} (attached in {:?}, {attach_hits} hits \
                     meanwhile)",
                    burst.attach_took,
                );
                p.plan.record_attaching(attach_hits);
                p.heap_events_at_burst = heap_events(pid);
                self.running = Some(Running { burst, hits_before });
            }
            Err(_) if !procfs::is_alive(pid) => {
                p.unavailable = Some(EXITED.to_string());
            }
            Err(err) => {
                log::warn!("no bursts on pid {pid}: {err:#}");
                p.unavailable = Some(format!("{err:#}"));
            }
        }
    }

    /// Whether bursts were planned for `pid`.
    pub fn covers(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// `pid`'s bursts and its estimated sites. `now_s`: seconds into the run;
    /// `processed_per_s`: its bytes processed per second; `allocations_seen`: allocations the
    /// bursts saw, per site.
    pub fn report(
        &self,
        pid: u32,
        now_s: f64,
        processed_per_s: Option<f64>,
        allocations_seen: &HashMap<SiteKey, u64>,
    ) -> Option<(BurstReport, Vec<SiteEstimate>)> {
        let p = self.processes.get(&pid)?;
        let report = BurstReport {
            bursts: p.watch.bursts() as u64,
            sampled_s: p.watch.sampled_s(),
            watched_blocks: p.watch.watched() as u64,
            probe_hits: p.plan.hits(),
            attach_probe_hits: p.plan.attach_hits(),
            ns_per_hit: p.plan.ns_per_hit(),
            measured_overhead_pct: p.plan.overhead_pct(now_s),
            target_cpu_overhead_pct: p.plan.target_cpu_overhead_pct(now_s),
            budget_pct: p.plan.budget_pct(),
            unavailable: p.unavailable.clone().filter(|why| why != EXITED),
        };
        let estimates = p.watch.estimates(now_s, processed_per_s, allocations_seen);
        Some((report, estimates))
    }
}
