//! What tracing costs the traced programs: probe hits per second times the measured cost of one
//! hit (measured at start by [`crate::tracer::Tracer::calibrate`] on leaktrace's own process, or
//! in growth mode by [`crate::tracer::Tracer::calibrate_growth`] on a child of it).
use std::time::{Duration, Instant};

use crate::schema::OwnUsage;

/// leaktrace's own CPU use: since start and over the latest interval.
#[derive(Clone, Copy, Debug)]
pub struct OwnMeter {
    started: Instant,
    last: Option<(Instant, f64)>,
}

impl OwnMeter {
    pub fn starting_at(started: Instant) -> Self {
        Self {
            started,
            last: None,
        }
    }

    /// The usage at `now`, given the CPU seconds used so far and the memory read now.
    pub fn update(
        &mut self,
        now: Instant,
        cpu_seconds: f64,
        memory: Option<(u64, u64)>,
    ) -> OwnUsage {
        let pct = |cpu: f64, wall: Duration| {
            let wall = wall.as_secs_f64();
            (wall > 0.0).then(|| (cpu / wall * 100.0).max(0.0))
        };
        let cpu_pct = self
            .last
            .and_then(|(at, cpu)| pct(cpu_seconds - cpu, now.saturating_duration_since(at)));
        self.last = Some((now, cpu_seconds));
        OwnUsage {
            rss_bytes: memory.map(|m| m.0),
            peak_rss_bytes: memory.map(|m| m.1),
            cpu_seconds,
            cpu_pct,
            cpu_pct_since_start: pct(cpu_seconds, now.saturating_duration_since(self.started)),
        }
    }
}

/// One calibration round: the same allocation loop timed without and with the probes, and the
/// probe hits the traced run caused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Round {
    pub untraced_ns: u64,
    pub traced_ns: u64,
    pub hits: u64,
}

impl Round {
    /// Extra time per hit in this round; `None` without hits. Noise can make the traced loop
    /// faster than the untraced one: that reads as a free probe, not a negative cost.
    fn ns_per_hit(&self) -> Option<f64> {
        (self.hits > 0)
            .then(|| self.traced_ns.saturating_sub(self.untraced_ns) as f64 / self.hits as f64)
    }
}

/// The cost of one probe hit: the median over the rounds that had hits.
pub fn ns_per_hit(rounds: &[Round]) -> Option<f64> {
    let mut per_round: Vec<f64> = rounds.iter().filter_map(Round::ns_per_hit).collect();
    if per_round.is_empty() {
        return None;
    }
    per_round.sort_by(f64::total_cmp);
    let mid = per_round.len() / 2;
    Some(if per_round.len() % 2 == 1 {
        per_round[mid]
    } else {
        (per_round[mid - 1] + per_round[mid]) / 2.0
    })
}

/// Estimated CPU time spent in the probes, in percent of one CPU: `hits/s × ns/hit`.
pub fn overhead_pct(probe_hits_per_s: f64, ns_per_hit: f64) -> f64 {
    if !probe_hits_per_s.is_finite()
        || !ns_per_hit.is_finite()
        || probe_hits_per_s <= 0.0
        || ns_per_hit <= 0.0
    {
        return 0.0;
    }
    probe_hits_per_s * ns_per_hit / 1e9 * 100.0
}

/// Probe hits per second between successive readings of the hit counter. A reading closer than
/// [`HitRate::MIN_WINDOW`] to the previous one (the final snapshot right after an interval's)
/// keeps the previous rate instead of dividing by almost nothing.
#[derive(Clone, Debug)]
pub struct HitRate {
    last: (Instant, u64),
    rate: Option<f64>,
}

impl HitRate {
    pub const MIN_WINDOW: Duration = Duration::from_millis(100);

    /// Start counting from `hits` at `at`.
    pub fn starting_at(at: Instant, hits: u64) -> Self {
        Self {
            last: (at, hits),
            rate: None,
        }
    }

    /// Take a reading; returns the rate over the latest window long enough to tell.
    pub fn update(&mut self, at: Instant, hits: u64) -> Option<f64> {
        let window = at.saturating_duration_since(self.last.0);
        if window >= Self::MIN_WINDOW {
            self.rate = Some(hits.saturating_sub(self.last.1) as f64 / window.as_secs_f64());
            self.last = (at, hits);
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(untraced_ns: u64, traced_ns: u64, hits: u64) -> Round {
        Round {
            untraced_ns,
            traced_ns,
            hits,
        }
    }

    #[test]
    fn ns_per_hit_is_the_median_extra_time_per_hit() {
        // 1000 ns/hit, 2000 ns/hit, 1500 ns/hit: the median is 1500.
        let rounds = [
            round(100, 3_100, 3),
            round(100, 6_100, 3),
            round(100, 4_600, 3),
        ];
        assert_eq!(ns_per_hit(&rounds), Some(1500.0));
        // An even count averages the middle two; rounds without hits do not count.
        let rounds = [round(0, 1_000, 1), round(0, 3_000, 1), round(0, 9, 0)];
        assert_eq!(ns_per_hit(&rounds), Some(2000.0));
    }

    #[test]
    fn ns_per_hit_guards() {
        assert_eq!(ns_per_hit(&[]), None);
        assert_eq!(ns_per_hit(&[round(10, 20, 0)]), None);
        // Traced faster than untraced (noise): free, not negative.
        assert_eq!(ns_per_hit(&[round(500, 400, 10)]), Some(0.0));
    }

    #[test]
    fn overhead_is_percent_of_one_cpu() {
        // 10,000 hits/s at 1 µs each: 10 ms of CPU per second = 1 %.
        assert!((overhead_pct(10_000.0, 1_000.0) - 1.0).abs() < 1e-12);
        // A million hits/s at 2 µs: two CPUs' worth.
        assert!((overhead_pct(1e6, 2_000.0) - 200.0).abs() < 1e-9);
        assert_eq!(overhead_pct(0.0, 1_000.0), 0.0);
        assert_eq!(overhead_pct(1_000.0, f64::NAN), 0.0);
        assert_eq!(overhead_pct(-5.0, 1_000.0), 0.0);
    }

    #[test]
    fn hit_rate_is_measured_over_the_last_window() {
        let t0 = Instant::now();
        let mut rate = HitRate::starting_at(t0, 1_000);
        assert_eq!(
            rate.update(t0 + Duration::from_secs(2), 5_000),
            Some(2_000.0)
        );
        assert_eq!(rate.update(t0 + Duration::from_secs(3), 5_500), Some(500.0));
        // Too close to the previous reading: the previous rate stands, the window goes on.
        assert_eq!(
            rate.update(t0 + Duration::from_millis(3_010), 9_000),
            Some(500.0)
        );
        assert_eq!(
            rate.update(t0 + Duration::from_secs(4), 6_500),
            Some(1_000.0)
        );
    }

    #[test]
    fn hit_rate_is_unknown_until_a_window_passed() {
        let t0 = Instant::now();
        let mut rate = HitRate::starting_at(t0, 0);
        assert_eq!(rate.update(t0, 10), None);
        // A counter that went backwards (cannot happen, but) reads as no hits.
        let mut rate = HitRate::starting_at(t0, 100);
        assert_eq!(rate.update(t0 + Duration::from_secs(1), 50), Some(0.0));
    }
}

#[cfg(test)]
mod own_meter_tests {
    use super::*;

    #[test]
    fn own_cpu_is_a_share_of_wall_time_per_interval_and_since_start() {
        let start = Instant::now();
        let mut meter = OwnMeter::starting_at(start);
        let first = meter.update(start + Duration::from_secs(10), 0.5, Some((100, 200)));
        assert_eq!(first.cpu_pct, None);
        assert_eq!(first.cpu_pct_since_start, Some(5.0));
        assert_eq!(
            (first.rss_bytes, first.peak_rss_bytes),
            (Some(100), Some(200))
        );
        // 0.25 s of CPU over the next 5 s: 5% of a core; 0.75 s in 15 s overall: 5%.
        let second = meter.update(start + Duration::from_secs(15), 0.75, None);
        assert!((second.cpu_pct.expect("an interval") - 5.0).abs() < 1e-9);
        assert!((second.cpu_pct_since_start.expect("elapsed") - 5.0).abs() < 1e-9);
        assert_eq!(second.rss_bytes, None);
        // No time elapsed: no percentage rather than a division by zero.
        assert_eq!(
            meter
                .update(start + Duration::from_secs(15), 0.8, None)
                .cpu_pct,
            None
        );
    }
}
