//! When growth mode's next burst may start and how long it lasts, so that what the bursts cost
//! the target stays within `--overhead-budget` (percent of one CPU, as `cost.rs` counts).
//!
//! A burst costs its probe hits times the measured cost of one hit. The plan keeps the run's
//! total below the budget: a burst starts only when the cost so far plus the expected cost of
//! the burst fits in `budget × time elapsed`. Its duration aims at [`TARGET_ALLOCATIONS`],
//! from the allocation rate the previous burst measured, within [`MIN_BURST`]..[`MAX_BURST`].
use std::time::Duration;

/// Allocations a burst aims to see: thousands give a site leaking one block per request
/// hundreds of samples, while the burst stays tens of milliseconds on a busy service. Attaching
/// and detaching (0.1-0.7 s here, probes live meanwhile) cost about as much as a burst of this
/// size, so much shorter bursts would spend the budget on their edges.
pub const TARGET_ALLOCATIONS: f64 = 10_000.0;

/// Probe hits per allocation: the entry and return probes, and (usually) a free.
const HITS_PER_ALLOCATION: f64 = 3.0;

/// Shortest burst: attaching takes about 15 ms here, a shorter burst samples little.
pub const MIN_BURST: Duration = Duration::from_millis(20);
/// Longest burst (the time cap), for processes that allocate slowly.
pub const MAX_BURST: Duration = Duration::from_millis(500);
/// The first burst, before any allocation rate is known.
const FIRST_BURST: Duration = Duration::from_millis(40);

/// Gap between the end of a burst and the next one after heap growth, and without any: a
/// burst's detach takes a few hundred milliseconds, and a quiet heap needs fewer samples.
pub const GAP_AFTER_GROWTH: Duration = Duration::from_secs(1);
pub const GAP_WITHOUT_GROWTH: Duration = Duration::from_secs(5);

/// `ns` over `elapsed_s`, in percent of one CPU.
fn pct_of_cpu(ns: f64, elapsed_s: f64) -> f64 {
    if elapsed_s <= 0.0 {
        return 0.0;
    }
    ns / (elapsed_s * 1e9) * 100.0
}

/// A hit's cost when it could not be measured (exact mode's measured cost here, rounded up).
const DEFAULT_NS_PER_HIT: f64 = 3000.0;

/// A process's CPU time at one moment (`procfs::read_cpu_time` at `at_ns`, CLOCK_MONOTONIC).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuReading {
    pub at_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

/// Shortest stretch between bursts whose CPU rates are trusted as the process's own (readings
/// have clock-tick resolution, 10 ms).
const MIN_QUIET: Duration = Duration::from_millis(500);

/// Least user time a window would hold at the quiet rate for it to tell how much of its own
/// work the process did (a few clock ticks).
const MIN_USER: Duration = Duration::from_millis(30);

/// What the bursts cost the target, measured on the target itself: its CPU time from the start
/// of a burst's attaching to the end of its detaching, against its rates between bursts.
///
/// Probe hits run in the target's system time. A process with CPU to spare spends them on
/// top of its own work (its system time grows by the cost); a busy one (a loop, a saturated
/// server) does less of its own work meanwhile: its own user and system time shrink in the
/// same proportion, and the probes take the difference. In both cases the user time of a
/// window says how much of its own work the process did, and the cost is the system time
/// beyond what that work takes: `system - user × system_rate / user_rate`, the rates being
/// those of the stretch before the burst (`system - system_rate × W` for a process that spends
/// next to no user time).
#[derive(Clone, Debug, Default)]
pub struct BurstCpu {
    /// The start of the stretch since the latest window (or since tracing started).
    quiet_since: Option<CpuReading>,
    /// User and system ns per ns, between bursts.
    quiet_rates: Option<(f64, f64)>,
    window_start: Option<CpuReading>,
}

impl BurstCpu {
    /// Tracing starts (no burst yet).
    pub fn starting(reading: Option<CpuReading>) -> Self {
        Self {
            quiet_since: reading,
            ..Self::default()
        }
    }

    /// A burst starts attaching.
    pub fn window_started(&mut self, reading: Option<CpuReading>) {
        if let (Some(quiet), Some(now)) = (self.quiet_since, reading) {
            let span = now.at_ns.saturating_sub(quiet.at_ns);
            if span >= MIN_QUIET.as_nanos() as u64 {
                let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / span as f64;
                self.quiet_rates = Some((
                    rate(quiet.user_ns, now.user_ns),
                    rate(quiet.system_ns, now.system_ns),
                ));
            }
        }
        self.window_start = reading;
    }

    /// The burst's probes are all detached; returns this window's cost in ns, when measured.
    pub fn window_ended(&mut self, reading: Option<CpuReading>) -> Option<f64> {
        let start = self.window_start.take();
        self.quiet_since = reading;
        let (start, end, (user_rate, system_rate)) = (start?, reading?, self.quiet_rates?);
        let span = end.at_ns.saturating_sub(start.at_ns) as f64;
        let user = end.user_ns.saturating_sub(start.user_ns) as f64;
        let system = end.system_ns.saturating_sub(start.system_ns) as f64;
        let own_system = if user_rate * span >= MIN_USER.as_nanos() as f64 {
            user * system_rate / user_rate
        } else {
            system_rate * span
        };
        Some(system - own_system)
    }
}

/// One process's bursts so far: their cost against the budget.
#[derive(Clone, Debug)]
pub struct BurstPlan {
    budget_pct: f64,
    ns_per_hit: f64,
    /// Probe hits of every burst so far, and their sampled time.
    hits: u64,
    /// Allocations per second the latest burst measured.
    allocation_rate: Option<f64>,
    /// Probe hits of the latest burst.
    last_hits: Option<u64>,
    /// Seconds into the run when the latest burst ended.
    last_end_s: Option<f64>,
    bursts: u64,
    /// Probe hits while the probes were being attached, before the bursts' sampling started.
    attach_hits: u64,
    /// The bursts' cost measured on the target's own CPU time ([`BurstCpu`]).
    target_cpu_ns: Option<f64>,
}

impl BurstPlan {
    /// `budget_pct`: `--overhead-budget`; `ns_per_hit`: the calibrated cost of one exact-mode
    /// probe hit (None: not measured).
    pub fn new(budget_pct: f64, ns_per_hit: Option<f64>) -> Self {
        Self {
            budget_pct: budget_pct.max(0.0),
            ns_per_hit: ns_per_hit
                .filter(|ns| ns.is_finite() && *ns > 0.0)
                .unwrap_or(DEFAULT_NS_PER_HIT),
            hits: 0,
            allocation_rate: None,
            last_hits: None,
            last_end_s: None,
            bursts: 0,
            attach_hits: 0,
            target_cpu_ns: None,
        }
    }

    /// How long the next burst lasts: long enough for [`TARGET_ALLOCATIONS`], or for its own
    /// probe hits to cost at least what a burst's edges cost (see [`BurstPlan::edge_ns`]):
    /// those buy no sample, so on a busy process a longer burst puts the budget into samples.
    pub fn burst_duration(&self) -> Duration {
        match self.allocation_rate {
            Some(rate) if rate > 0.0 => {
                let edges = self.edge_ns() / (self.ns_per_hit * HITS_PER_ALLOCATION);
                let allocations = TARGET_ALLOCATIONS.max(edges);
                Duration::from_secs_f64(allocations / rate).clamp(MIN_BURST, MAX_BURST)
            }
            Some(_) => MAX_BURST,
            None => FIRST_BURST,
        }
    }

    /// What a burst cost the target beyond the hits of its sampling time, per burst so far: the
    /// hits while its probes were being attached, and what the hit counter does not see. On a
    /// malloc loop here that was most of it: 250-300 ms of the loop's CPU time per burst
    /// whether the burst saw 20,000 hits or 53,000 (1.3 µs each, calibrated), spent within
    /// 0.4 s of the burst: traps of probes whose program was already unlinked while the kernel
    /// tore them down, by the look of it (the hits stop counting, the system time does not).
    fn edge_ns(&self) -> f64 {
        if self.bursts == 0 {
            return 0.0;
        }
        let sampling_hits = self.hits.saturating_sub(self.attach_hits) as f64;
        (self.cost_ns() - sampling_hits * self.ns_per_hit).max(0.0) / self.bursts as f64
    }

    /// Expected cost of the next burst, in ns: its edges as the bursts so far measured them,
    /// and the hits of the allocations it will see.
    fn expected_cost_ns(&self) -> f64 {
        let allocations = match self.allocation_rate {
            Some(rate) if rate > 0.0 => rate * self.burst_duration().as_secs_f64(),
            _ => TARGET_ALLOCATIONS,
        };
        self.edge_ns() + allocations * HITS_PER_ALLOCATION * self.ns_per_hit
    }

    /// Whether a burst may start `now_s` seconds into the run; `heap_grew`: the process's heap
    /// changed since the latest burst.
    pub fn due(&self, now_s: f64, heap_grew: bool) -> bool {
        let gap = if heap_grew {
            GAP_AFTER_GROWTH
        } else {
            GAP_WITHOUT_GROWTH
        };
        if self
            .last_end_s
            .is_some_and(|end| now_s - end < gap.as_secs_f64())
        {
            return false;
        }
        let allowed_ns = self.budget_pct / 100.0 * now_s.max(0.0) * 1e9;
        self.cost_ns() + self.expected_cost_ns() <= allowed_ns
    }

    /// A burst's probes were attached after `hits` probe hits (counted in its total too).
    pub fn record_attaching(&mut self, hits: u64) {
        self.attach_hits = self.attach_hits.saturating_add(hits);
    }

    /// A burst's cost measured on the target's CPU time ([`BurstCpu::window_ended`]; `None`:
    /// not measurable), for a burst of `hits` probe hits. Each burst counts at least its hits
    /// times their calibrated cost: a window's reading has the noise of clock ticks and of the
    /// target's own load changing (on nginx under wrk, -220 to +430 ms a burst), and a reading
    /// below what the hits alone cost would let the next bursts come too soon.
    pub fn record_target_cpu(&mut self, window_ns: Option<f64>, hits: u64) {
        let hits_ns = hits as f64 * self.ns_per_hit;
        self.target_cpu_ns = match (self.target_cpu_ns, window_ns) {
            (total, Some(window)) => Some(total.unwrap_or(0.0) + window.max(hits_ns)),
            (Some(total), None) => Some(total + hits_ns),
            (None, None) => None,
        };
    }

    /// A burst ended `end_s` into the run, having lasted `duration_s` with `hits` probe hits
    /// (allocations are estimated from them).
    pub fn record(&mut self, end_s: f64, duration_s: f64, hits: u64) {
        self.hits = self.hits.saturating_add(hits);
        self.last_hits = Some(hits);
        self.bursts += 1;
        self.last_end_s = Some(end_s);
        if duration_s > 0.0 {
            self.allocation_rate = Some(hits as f64 / HITS_PER_ALLOCATION / duration_s);
        }
    }

    /// CPU time the bursts cost the target so far, in ns, as the budget counts it: the larger
    /// of their probe hits × the calibrated cost of one, and the cost measured on the target's
    /// own CPU time (which also holds what the hit count misses, e.g. the traps of a probe
    /// whose program did not run to the counter, or a calibration on a quieter moment).
    pub fn cost_ns(&self) -> f64 {
        self.hits_cost_ns().max(self.target_cpu_ns.unwrap_or(0.0))
    }

    fn hits_cost_ns(&self) -> f64 {
        self.hits as f64 * self.ns_per_hit
    }

    /// The bursts' cost from their probe hits over `elapsed_s`, in percent of one CPU.
    pub fn overhead_pct(&self, elapsed_s: f64) -> f64 {
        pct_of_cpu(self.hits_cost_ns(), elapsed_s)
    }

    /// The bursts' cost measured on the target's own CPU time over `elapsed_s`, in percent of
    /// one CPU; `None` before a burst's window could be measured.
    pub fn target_cpu_overhead_pct(&self, elapsed_s: f64) -> Option<f64> {
        Some(pct_of_cpu(self.target_cpu_ns?, elapsed_s))
    }

    pub fn attach_hits(&self) -> u64 {
        self.attach_hits
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn bursts(&self) -> u64 {
        self.bursts
    }

    pub fn budget_pct(&self) -> f64 {
        self.budget_pct
    }

    pub fn ns_per_hit(&self) -> f64 {
        self.ns_per_hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_start_only_when_the_budget_has_room() {
        // 1% of a CPU at 2,000 ns a hit: the first burst's 30,000 expected hits cost 60 ms,
        // which 1% allows after 6 s.
        let mut plan = BurstPlan::new(1.0, Some(2000.0));
        assert!(!plan.due(5.0, true));
        assert!(plan.due(6.5, true));
        // It cost 120,000 hits (240 ms) in 40 ms: 1M allocations/s. The next one, 20 ms (the
        // shortest), expects 20,000 allocations' hits (120 ms): it waits until
        // (240 + 120) ms / 1% = 36 s.
        plan.record(7.0, 0.04, 120_000);
        assert!(!plan.due(35.0, true));
        assert!(plan.due(36.5, true));
        assert!((plan.overhead_pct(24.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_duration_aims_at_the_target_allocations_within_bounds() {
        let mut plan = BurstPlan::new(1.0, None);
        assert_eq!(plan.burst_duration(), FIRST_BURST);
        // 3 hits an allocation: 3,000,000 hits in 1 s is 1M allocations/s -> 10 ms -> 20 ms.
        plan.record(1.0, 1.0, 3_000_000);
        assert_eq!(plan.burst_duration(), MIN_BURST);
        // 30,000 allocations/s: 10,000 take 333 ms.
        plan.record(10.0, 1.0, 90_000);
        let ms = plan.burst_duration().as_millis();
        assert!((330..=340).contains(&ms), "{ms}");
        plan.record(20.0, 1.0, 30);
        assert_eq!(plan.burst_duration(), MAX_BURST);
    }

    #[test]
    fn bursts_outlast_what_their_edges_cost() {
        let mut plan = BurstPlan::new(1.0, None);
        // 100,000 allocations/s, and 60,000 of the 300,000 hits while attaching (3 µs each):
        // the edges cost 180 ms, what 20,000 allocations' hits cost: 200 ms, not 100 ms.
        plan.record_attaching(60_000);
        plan.record(1.0, 1.0, 300_000);
        let ms = plan.burst_duration().as_millis();
        assert!((195..=205).contains(&ms), "{ms}");
        // Cheap edges: the target allocations rule.
        let mut plan = BurstPlan::new(1.0, None);
        plan.record_attaching(300);
        plan.record(1.0, 1.0, 300_000);
        assert_eq!(plan.burst_duration().as_millis(), 100);
        // A malloc loop: 30,000 hits (1 µs each) in a 40 ms burst, 280 ms of its CPU time: the
        // edges cost 250 ms, what 83,333 allocations' hits cost, 333 ms at 250,000/s.
        let mut plan = BurstPlan::new(1.0, Some(1000.0));
        plan.record(10.0, 0.04, 30_000);
        plan.record_target_cpu(Some(280e6), 30_000);
        let ms = plan.burst_duration().as_millis();
        assert!((330..=336).contains(&ms), "{ms}");
    }

    #[test]
    fn the_budget_counts_the_larger_of_the_hits_and_the_targets_cpu() {
        let mut plan = BurstPlan::new(1.0, Some(1000.0));
        plan.record(10.0, 0.1, 100_000);
        assert!((plan.cost_ns() - 1e8).abs() < 1.0);
        plan.record_target_cpu(Some(3e8), 100_000);
        assert!((plan.cost_ns() - 3e8).abs() < 1.0);
        assert_eq!(plan.target_cpu_overhead_pct(100.0), Some(0.3));
        assert!((plan.overhead_pct(100.0) - 0.1).abs() < 1e-12);
        // The next burst is expected to cost its edges (200 ms) and the hits of the 66,667
        // allocations that make them worth it (200 ms): with 300 ms spent, 1% allows it at 70 s.
        assert!(!plan.due(69.0, true));
        assert!(plan.due(70.5, true));
    }

    #[test]
    fn each_burst_counts_at_least_its_hits() {
        let mut plan = BurstPlan::new(1.0, Some(1000.0));
        // Not measurable yet: nothing measured on the target.
        plan.record_target_cpu(None, 10_000);
        assert_eq!(plan.target_cpu_overhead_pct(10.0), None);
        // A window read 50 ms below nothing (noise): the burst counts its hits, 20 ms.
        plan.record_target_cpu(Some(-50e6), 20_000);
        assert_eq!(plan.target_cpu_overhead_pct(10.0), Some(0.2));
        // Then one not measurable: its hits (5 ms); then one at 100 ms.
        plan.record_target_cpu(None, 5_000);
        plan.record_target_cpu(Some(100e6), 30_000);
        assert_eq!(plan.target_cpu_overhead_pct(10.0), Some(1.25));
    }

    fn reading(at_ms: u64, user_ms: u64, system_ms: u64) -> Option<CpuReading> {
        const MS: u64 = 1_000_000;
        Some(CpuReading {
            at_ns: at_ms * MS,
            user_ns: user_ms * MS,
            system_ns: system_ms * MS,
        })
    }

    #[test]
    fn a_busy_target_pays_in_work_not_in_cpu_time() {
        // A loop at 100% of a CPU, all user time; a 200 ms window where the probes take 50 ms
        // of system time out of its 200 ms.
        let mut cpu = BurstCpu::starting(reading(0, 0, 0));
        cpu.window_started(reading(10_000, 10_000, 0));
        let cost = cpu.window_ended(reading(10_200, 10_150, 50));
        assert_eq!(cost, Some(50e6));
        // A saturated server, 30% user and 70% system: 50 ms of probes in a 200 ms window
        // leave it 150 ms of its own work (45 ms user, 105 ms system).
        let mut cpu = BurstCpu::starting(reading(0, 0, 0));
        cpu.window_started(reading(10_000, 3_000, 7_000));
        let cost = cpu
            .window_ended(reading(10_200, 3_045, 7_155))
            .expect("measured");
        assert!((cost - 50e6).abs() < 1.0, "{cost}");
    }

    #[test]
    fn an_idle_target_pays_in_system_time() {
        // 10% user, 5% system between bursts; a 1 s window with 30 ms of probe hits on top.
        let mut cpu = BurstCpu::starting(reading(0, 0, 0));
        cpu.window_started(reading(2_000, 200, 100));
        let cost = cpu
            .window_ended(reading(3_000, 300, 180))
            .expect("measured");
        assert!((cost - 30e6).abs() < 1.0, "{cost}");
        // No window measured without a quiet stretch before it; readings missing: none.
        let mut cpu = BurstCpu::starting(reading(0, 0, 0));
        cpu.window_started(reading(100, 10, 0));
        assert_eq!(cpu.window_ended(reading(300, 30, 10)), None);
        let mut cpu = BurstCpu::starting(None);
        cpu.window_started(reading(2_000, 200, 100));
        assert_eq!(cpu.window_ended(reading(3_000, 300, 180)), None);
    }

    #[test]
    fn a_quiet_heap_waits_longer_between_bursts() {
        let mut plan = BurstPlan::new(100.0, Some(1.0));
        plan.record(10.0, 0.1, 10);
        assert!(!plan.due(12.0, false));
        assert!(plan.due(12.0, true));
        assert!(plan.due(15.5, false));
    }
}
