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

/// A hit's cost when it could not be measured (exact mode's measured cost here, rounded up).
const DEFAULT_NS_PER_HIT: f64 = 3000.0;

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
        }
    }

    /// How long the next burst lasts.
    pub fn burst_duration(&self) -> Duration {
        match self.allocation_rate {
            Some(rate) if rate > 0.0 => {
                Duration::from_secs_f64(TARGET_ALLOCATIONS / rate).clamp(MIN_BURST, MAX_BURST)
            }
            Some(_) => MAX_BURST,
            None => FIRST_BURST,
        }
    }

    /// Expected probe-hit cost of the next burst, in ns: what the latest one cost (its hits
    /// include those while the probes were being attached and detached, which take longer than
    /// a short burst itself), or before any, the target's.
    fn expected_cost_ns(&self) -> f64 {
        let hits = self
            .last_hits
            .map_or(TARGET_ALLOCATIONS * HITS_PER_ALLOCATION, |h| h as f64);
        hits * self.ns_per_hit
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

    /// CPU time the bursts cost the target so far, in ns (hits × measured cost of one).
    pub fn cost_ns(&self) -> f64 {
        self.hits as f64 * self.ns_per_hit
    }

    /// The bursts' measured cost over `elapsed_s`, in percent of one CPU.
    pub fn overhead_pct(&self, elapsed_s: f64) -> f64 {
        if elapsed_s <= 0.0 {
            return 0.0;
        }
        self.cost_ns() / (elapsed_s * 1e9) * 100.0
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
        // It cost 120,000 hits (240 ms): the next one waits until (240 + 240) ms / 1% = 48 s.
        plan.record(7.0, 0.04, 120_000);
        assert!(!plan.due(40.0, true));
        assert!(plan.due(48.5, true));
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
    fn a_quiet_heap_waits_longer_between_bursts() {
        let mut plan = BurstPlan::new(100.0, Some(1.0));
        plan.record(10.0, 0.1, 10);
        assert!(!plan.due(12.0, false));
        assert!(plan.due(12.0, true));
        assert!(plan.due(15.5, false));
    }
}
