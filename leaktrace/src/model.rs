//! Pure aggregation: from what the maps say to per-process, per-site numbers. No I/O.
use std::collections::HashMap;

use leaktrace_common::{PidCounters, SiteKey, SiteStats};

use crate::report::Counters;

/// What the outstanding-allocation map says of one site's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteAges {
    pub blocks: u64,
    /// `bpf_ktime_get_ns` of the oldest block.
    pub oldest_ns: u64,
    /// Bytes and blocks allocated at least `--min-age` ago.
    pub aged_bytes: u64,
    pub aged_blocks: u64,
}

impl Default for SiteAges {
    fn default() -> Self {
        Self {
            blocks: 0,
            oldest_ns: u64::MAX,
            aged_bytes: 0,
            aged_blocks: 0,
        }
    }
}

/// One site of one process, before symbolization.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteTotals {
    pub key: SiteKey,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_bytes: u64,
    pub freed_count: u64,
    pub oldest_age_s: Option<f64>,
    /// Outstanding bytes and blocks allocated at least `--min-age` ago.
    pub aged_outstanding_bytes: u64,
    pub aged_outstanding_count: u64,
}

impl SiteTotals {
    /// `ages`: what the outstanding-allocation map holds for this site.
    pub fn new(key: SiteKey, stats: &SiteStats, ages: Option<SiteAges>, now_ns: u64) -> Self {
        // Per-CPU slots are read one after another while the target runs, so a free can be seen
        // before its allocation; never report that as negative memory.
        let outstanding_bytes = stats.allocated_bytes.saturating_sub(stats.freed_bytes);
        let outstanding_count = stats.allocated_count.saturating_sub(stats.freed_count);
        let ages = ages.unwrap_or_default();
        let oldest_age_s = (ages.blocks > 0 && outstanding_count > 0)
            .then(|| now_ns.saturating_sub(ages.oldest_ns) as f64 / 1e9);
        Self {
            key,
            outstanding_bytes,
            outstanding_count,
            allocated_bytes: stats.allocated_bytes,
            allocated_count: stats.allocated_count,
            freed_bytes: stats.freed_bytes,
            freed_count: stats.freed_count,
            oldest_age_s,
            // Both views are read at slightly different moments; aged can never exceed the total.
            aged_outstanding_bytes: ages.aged_bytes.min(outstanding_bytes),
            aged_outstanding_count: ages.aged_blocks.min(outstanding_count),
        }
    }

    /// A stable name for the site within its process.
    pub fn id(&self) -> String {
        format!("{:x}-{}", self.key.caller, self.key.stack_id)
    }
}

/// Totals of one process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessTotals {
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_count: u64,
    pub counters: Counters,
    /// Sorted by outstanding bytes (then allocated bytes), largest first.
    pub sites: Vec<SiteTotals>,
}

/// Gather the sites and counters of `pid`.
pub fn process_totals(
    pid: u32,
    sites: &[(SiteKey, SiteStats)],
    counters: &HashMap<u32, PidCounters>,
    ages: &HashMap<SiteKey, SiteAges>,
    now_ns: u64,
) -> ProcessTotals {
    let mut totals = ProcessTotals::default();
    for (key, stats) in sites.iter().filter(|(k, _)| k.tgid == pid) {
        let site = SiteTotals::new(*key, stats, ages.get(key).copied(), now_ns);
        totals.outstanding_bytes += site.outstanding_bytes;
        totals.outstanding_count += site.outstanding_count;
        totals.allocated_bytes += site.allocated_bytes;
        totals.allocated_count += site.allocated_count;
        totals.freed_count += site.freed_count;
        totals.sites.push(site);
    }
    totals.sites.sort_by(|a, b| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then(b.allocated_bytes.cmp(&a.allocated_bytes))
            .then(a.key.caller.cmp(&b.key.caller))
    });
    if let Some(c) = counters.get(&pid) {
        totals.counters = Counters {
            dropped_allocations: c.dropped_allocations,
            stack_errors: c.stack_errors,
            lost_events: c.lost_events,
            unknown_frees: c.unknown_frees,
        };
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, caller: u64) -> SiteKey {
        SiteKey {
            tgid,
            stack_id: 7,
            caller,
        }
    }

    fn stats(
        allocated_bytes: u64,
        allocated_count: u64,
        freed_bytes: u64,
        freed_count: u64,
    ) -> SiteStats {
        SiteStats {
            allocated_bytes,
            allocated_count,
            freed_bytes,
            freed_count,
        }
    }

    #[test]
    fn outstanding_is_allocated_minus_freed_per_process_sorted() {
        let sites = vec![
            (key(1, 0x10), stats(1000, 10, 900, 9)),
            (key(1, 0x20), stats(50_000, 500, 0, 0)),
            (key(2, 0x30), stats(7, 1, 0, 0)),
        ];
        let mut ages = HashMap::new();
        ages.insert(
            key(1, 0x20),
            SiteAges {
                blocks: 500,
                oldest_ns: 1_000_000_000,
                aged_bytes: 30_000,
                aged_blocks: 300,
            },
        );
        let counters = HashMap::from([(
            1,
            PidCounters {
                unknown_frees: 4,
                ..PidCounters::default()
            },
        )]);
        let totals = process_totals(1, &sites, &counters, &ages, 3_500_000_000);
        assert_eq!(totals.outstanding_bytes, 50_100);
        assert_eq!(totals.outstanding_count, 501);
        assert_eq!(totals.allocated_count, 510);
        assert_eq!(totals.freed_count, 9);
        assert_eq!(totals.counters.unknown_frees, 4);
        assert_eq!(totals.sites.len(), 2);
        assert_eq!(totals.sites[0].key.caller, 0x20);
        assert_eq!(totals.sites[0].oldest_age_s, Some(2.5));
        assert_eq!(totals.sites[0].aged_outstanding_bytes, 30_000);
        assert_eq!(totals.sites[0].aged_outstanding_count, 300);
        assert_eq!(totals.sites[1].oldest_age_s, None);
    }

    #[test]
    fn a_free_seen_before_its_allocation_never_goes_negative() {
        let ages = SiteAges {
            blocks: 0,
            oldest_ns: 5,
            aged_bytes: 100,
            aged_blocks: 1,
        };
        let site = SiteTotals::new(key(1, 1), &stats(100, 1, 200, 2), Some(ages), 10);
        assert_eq!(site.outstanding_bytes, 0);
        assert_eq!(site.outstanding_count, 0);
        assert_eq!(site.oldest_age_s, None);
        assert_eq!(site.aged_outstanding_bytes, 0);
    }
}
