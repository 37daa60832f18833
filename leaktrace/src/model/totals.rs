//! Totals per site and per process: exact mode's from what the maps say, growth mode's from
//! the heap growth each stack made.
use std::collections::HashMap;

use leaktrace_common::{PidCounters, SiteKey, SiteStats, NO_STACK, UNSAMPLED_STACK};

use crate::{
    heap::ProcessHeap,
    schema::{Counters, SiteCounters, SiteHeap},
};

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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteTotals {
    pub key: SiteKey,
    pub counters: SiteCounters,
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
            counters: SiteCounters {
                outstanding_bytes,
                outstanding_count,
                allocated_bytes: stats.allocated_bytes,
                allocated_count: stats.allocated_count,
                freed_bytes: stats.freed_bytes,
                freed_count: stats.freed_count,
                oldest_age_s,
                // Both views are read at slightly different moments; aged can never exceed
                // the total.
                aged_outstanding_bytes: ages.aged_bytes.min(outstanding_bytes),
                aged_outstanding_count: ages.aged_blocks.min(outstanding_count),
            },
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

impl ProcessTotals {
    /// Count a site in the process's totals and keep it.
    fn add(&mut self, site: SiteTotals) {
        let c = &site.counters;
        self.outstanding_bytes += c.outstanding_bytes;
        self.outstanding_count += c.outstanding_count;
        self.allocated_bytes += c.allocated_bytes;
        self.allocated_count += c.allocated_count;
        self.freed_count += c.freed_count;
        self.sites.push(site);
    }

    /// Largest outstanding bytes first, then largest allocated bytes, then by `tie` of keys.
    fn sort_sites(&mut self, tie: impl Fn(&SiteKey, &SiteKey) -> std::cmp::Ordering) {
        self.sites.sort_by(|a, b| {
            b.counters
                .outstanding_bytes
                .cmp(&a.counters.outstanding_bytes)
                .then(b.counters.allocated_bytes.cmp(&a.counters.allocated_bytes))
                .then_with(|| tie(&a.key, &b.key))
        });
    }
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
        totals.add(SiteTotals::new(*key, stats, ages.get(key).copied(), now_ns));
    }
    share_unsampled(&mut totals.sites);
    totals.sort_sites(|a, b| a.caller.cmp(&b.caller));
    if let Some(c) = counters.get(&pid) {
        totals.counters = Counters {
            dropped_allocations: c.dropped_allocations,
            stack_errors: c.stack_errors,
            lost_events: c.lost_events,
            unknown_frees: c.unknown_frees,
            stack_no_table: c.stack_no_table,
            stack_unwind_errors: c.stack_unwind_errors,
            stack_truncated: c.stack_truncated,
            stack_map_full: c.stack_map_full,
        };
    }
    totals
}

/// `--sample-bytes`: allocations whose stack was not sampled are counted under their caller
/// alone (`UNSAMPLED_STACK`). Each such caller's totals are shared among its sampled stacks in
/// proportion to what those stacks hold themselves (outstanding by outstanding, allocated by
/// allocated): per caller every total stays exact, per stack it is an estimate. A caller with no
/// sampled stack keeps its caller-only site.
///
/// Allocations whose stack walk failed (`NO_STACK`: `bpf_get_stackid` refused, which happens
/// under load when another BPF program on the CPU holds the perf callchain buffer) are shared
/// the same way: otherwise they form a caller-only site beside the full stack, and a view that
/// picks that one shows the allocating function without its callers.
fn share_unsampled(sites: &mut Vec<SiteTotals>) {
    let callers_only = |key: &SiteKey| key.stack_id == UNSAMPLED_STACK || key.stack_id == NO_STACK;
    let unsampled: Vec<SiteTotals> = sites
        .iter()
        .filter(|s| callers_only(&s.key))
        .copied()
        .collect();
    for rest in unsampled {
        let stacks: Vec<usize> = (0..sites.len())
            .filter(|&i| sites[i].key.caller == rest.key.caller && !callers_only(&sites[i].key))
            .collect();
        if stacks.is_empty() {
            continue;
        }
        let weights = |f: fn(&SiteCounters) -> u64| -> Vec<u64> {
            let w: Vec<u64> = stacks.iter().map(|&i| f(&sites[i].counters)).collect();
            // Nothing to go by (all zero): share by what they allocated, else evenly.
            if w.iter().any(|&x| x > 0) {
                w
            } else {
                let alloc: Vec<u64> = stacks
                    .iter()
                    .map(|&i| sites[i].counters.allocated_bytes)
                    .collect();
                if alloc.iter().any(|&x| x > 0) {
                    alloc
                } else {
                    vec![1; stacks.len()]
                }
            }
        };
        let share = |f: fn(&SiteCounters) -> u64| split(f(&rest.counters), &weights(f));
        let shares = [
            share(|s| s.outstanding_bytes),
            share(|s| s.outstanding_count),
            share(|s| s.allocated_bytes),
            share(|s| s.allocated_count),
            share(|s| s.freed_bytes),
            share(|s| s.freed_count),
            share(|s| s.aged_outstanding_bytes),
            share(|s| s.aged_outstanding_count),
        ];
        for (n, &i) in stacks.iter().enumerate() {
            let site = &mut sites[i].counters;
            site.outstanding_bytes += shares[0][n];
            site.outstanding_count += shares[1][n];
            site.allocated_bytes += shares[2][n];
            site.allocated_count += shares[3][n];
            site.freed_bytes += shares[4][n];
            site.freed_count += shares[5][n];
            site.aged_outstanding_bytes += shares[6][n];
            site.aged_outstanding_count += shares[7][n];
            site.oldest_age_s = match (site.oldest_age_s, rest.counters.oldest_age_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        sites.retain(|s| s.key != rest.key);
    }
}

/// `total` in parts proportional to `weights` (not all zero), summing exactly to `total`.
fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(total) * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = parts.iter().sum();
    // What integer division left over goes to the heaviest.
    if let Some(heaviest) = (0..weights.len()).max_by_key(|&i| weights[i]) {
        parts[heaviest] += total - given;
    }
    parts
}

/// One growth-mode site (a stack that grew the heap) in its own words. Snapshots carry it under
/// the exact-mode names of [`SiteCounters`] (docs/json-schema.md, "Growth-mode sites").
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GrowthSiteTotals {
    /// Heap bytes this stack grew that are still mapped or below the break.
    pub still_mapped_bytes: u64,
    /// All heap bytes this stack grew.
    pub grown_bytes: u64,
    /// Heap-growing syscalls made from this stack.
    pub growth_events: u64,
    /// Age of its first growth, while it still holds some.
    pub first_growth_age_s: Option<f64>,
    /// `still_mapped_bytes` when its first growth is at least `--min-age` old, else 0.
    pub aged_still_mapped_bytes: u64,
}

impl From<GrowthSiteTotals> for SiteCounters {
    fn from(growth: GrowthSiteTotals) -> Self {
        let holds = |bytes: u64| u64::from(bytes > 0);
        Self {
            outstanding_bytes: growth.still_mapped_bytes,
            // Growth is not counted in blocks: 1 while the site holds growth, else 0.
            outstanding_count: holds(growth.still_mapped_bytes),
            allocated_bytes: growth.grown_bytes,
            allocated_count: growth.growth_events,
            freed_bytes: growth.grown_bytes.saturating_sub(growth.still_mapped_bytes),
            // Giving heap back is no event of the site's own.
            freed_count: 0,
            oldest_age_s: growth.first_growth_age_s,
            aged_outstanding_bytes: growth.aged_still_mapped_bytes,
            aged_outstanding_count: holds(growth.aged_still_mapped_bytes),
        }
    }
}

/// The moments growth mode measures ages against, all `bpf_ktime_get_ns()` time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowthClock {
    /// When tracing started.
    pub start_ns: u64,
    /// When the maps were read.
    pub now_ns: u64,
    /// `--min-age`.
    pub min_age_ns: u64,
}

impl GrowthClock {
    /// Seconds since tracing started.
    fn since_start_s(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// Growth mode's sites of a process: the heap bytes each stack grew (still there, all it grew,
/// given back since), as the totals exact mode reads from the maps. Each site's heap
/// attribution (`site_heap`, from `ProcessHeap::sites`) gets its growth events and when they
/// were first and last seen.
pub fn growth_totals(
    heap: Option<&ProcessHeap>,
    counters: Counters,
    clock: GrowthClock,
    site_heap: &mut HashMap<SiteKey, SiteHeap>,
) -> ProcessTotals {
    let mut totals = ProcessTotals {
        counters,
        ..ProcessTotals::default()
    };
    let Some(heap) = heap else {
        return totals;
    };
    for (key, tally) in heap.growth() {
        let attribution = site_heap.entry(*key).or_default();
        attribution.growth_events = tally.events;
        attribution.first_seen_s = Some(clock.since_start_s(tally.first_ns));
        attribution.last_seen_s = Some(clock.since_start_s(tally.last_ns));
        let still_mapped = attribution.net_bytes();
        let age_ns = clock.now_ns.saturating_sub(tally.first_ns);
        let site = GrowthSiteTotals {
            still_mapped_bytes: still_mapped,
            grown_bytes: tally.bytes,
            growth_events: tally.events,
            first_growth_age_s: (still_mapped > 0).then(|| age_ns as f64 / 1e9),
            aged_still_mapped_bytes: if age_ns >= clock.min_age_ns {
                still_mapped
            } else {
                0
            },
        };
        totals.add(SiteTotals {
            key: *key,
            counters: site.into(),
        });
    }
    totals.sort_sites(|a, b| a.stack_id.cmp(&b.stack_id));
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
        assert_eq!(totals.sites[0].counters.oldest_age_s, Some(2.5));
        assert_eq!(totals.sites[0].counters.aged_outstanding_bytes, 30_000);
        assert_eq!(totals.sites[0].counters.aged_outstanding_count, 300);
        assert_eq!(totals.sites[1].counters.oldest_age_s, None);
    }

    #[test]
    fn unsampled_allocations_are_shared_among_their_caller_s_sampled_stacks_exactly() {
        let sampled = |stack_id, caller| SiteKey {
            tgid: 1,
            stack_id,
            caller,
        };
        let sites = vec![
            // Caller 0x10: two sampled stacks (3 blocks and 1 block of 100 B still out).
            (sampled(1, 0x10), stats(300, 3, 0, 0)),
            (sampled(2, 0x10), stats(200, 2, 100, 1)),
            (
                sampled(UNSAMPLED_STACK, 0x10),
                stats(50_000, 500, 10_000, 100),
            ),
            // Caller 0x20: never sampled; keeps its caller-only site.
            (sampled(UNSAMPLED_STACK, 0x20), stats(64, 1, 0, 0)),
        ];
        let totals = process_totals(1, &sites, &HashMap::new(), &HashMap::new(), 0);
        // Per-caller and per-process totals are those of the maps, exactly.
        assert_eq!(totals.outstanding_bytes, 300 + 100 + 40_000 + 64);
        let of = |stack| {
            totals
                .sites
                .iter()
                .find(|s| s.key.stack_id == stack && s.key.caller == 0x10)
                .copied()
                .expect("site")
        };
        let (one, two) = (of(1), of(2));
        assert_eq!(
            one.counters.outstanding_bytes + two.counters.outstanding_bytes,
            40_400
        );
        assert_eq!(
            one.counters.allocated_count + two.counters.allocated_count,
            505
        );
        assert_eq!(one.counters.freed_bytes + two.counters.freed_bytes, 10_100);
        // 3:1 by outstanding bytes.
        assert_eq!(one.counters.outstanding_bytes, 300 + 30_000);
        assert_eq!(two.counters.outstanding_bytes, 100 + 10_000);
        // Freed: stack 1 freed nothing itself, so stack 2 takes every unsampled free.
        assert_eq!(one.counters.freed_bytes, 0);
        assert!(totals
            .sites
            .iter()
            .all(|s| s.key.stack_id != UNSAMPLED_STACK || s.key.caller == 0x20));
        assert_eq!(totals.sites.len(), 3);
    }

    #[test]
    fn allocations_whose_stack_walk_failed_join_their_caller_s_full_stack() {
        let key = |stack_id, caller| SiteKey {
            tgid: 1,
            stack_id,
            caller,
        };
        let sites = vec![
            (key(7, 0x10), stats(1_000, 10, 0, 0)),
            // Three blocks of the same call whose stack the kernel refused.
            (key(NO_STACK, 0x10), stats(300, 3, 0, 0)),
            // A caller never walked keeps its caller-only site.
            (key(NO_STACK, 0x30), stats(64, 1, 0, 0)),
        ];
        let totals = process_totals(1, &sites, &HashMap::new(), &HashMap::new(), 0);
        assert_eq!(totals.outstanding_bytes, 1_364);
        let keys: Vec<SiteKey> = totals.sites.iter().map(|s| s.key).collect();
        assert_eq!(keys, [key(7, 0x10), key(NO_STACK, 0x30)]);
        assert_eq!(totals.sites[0].counters.outstanding_bytes, 1_300);
        assert_eq!(totals.sites[0].counters.outstanding_count, 13);
    }

    #[test]
    fn splits_sum_to_the_total() {
        assert_eq!(split(10, &[1, 1, 1]).iter().sum::<u64>(), 10);
        assert_eq!(split(10, &[1, 2, 2]), vec![2, 4, 4]);
        assert_eq!(split(7, &[0, 5]), vec![0, 7]);
        assert_eq!(
            split(u64::MAX, &[u64::MAX, 1])
                .iter()
                .map(|&x| u128::from(x))
                .sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert_eq!(split(5, &[0, 0]), vec![0, 0]);
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
        assert_eq!(site.counters.outstanding_bytes, 0);
        assert_eq!(site.counters.outstanding_count, 0);
        assert_eq!(site.counters.oldest_age_s, None);
        assert_eq!(site.counters.aged_outstanding_bytes, 0);
    }

    /// A heap whose break two stacks grew: stack 1 by 0x5_0000 (two brks, at 10 and 30 s),
    /// stack 2 by 0x2_0000 (at 20 s), then a trim gave back stack 1's latest 0x1_0000.
    fn grown_heap() -> crate::heap::HeapTracker {
        use leaktrace_common::{HeapEvent, HeapEventKind};
        let base = 0x1000_0000u64;
        let brk = |stack: u32, to: u64, at_s: u64| HeapEvent {
            kind: HeapEventKind::Brk as u32,
            tgid: 100,
            tid: 1,
            stack_id: stack,
            caller: 0x1000 + u64::from(stack),
            args: [base + to, 0, 0, 0, 0],
            ret: (base + to) as i64,
            timestamp_ns: at_s * 1_000_000_000,
            ..HeapEvent::default()
        };
        let mut tracker = crate::heap::HeapTracker::new(4096);
        tracker.register(100, Some(base), Some(base));
        for event in [
            brk(1, 0x4_0000, 10),
            brk(2, 0x6_0000, 20),
            brk(1, 0x7_0000, 30),
            brk(3, 0x6_0000, 40),
        ] {
            tracker.apply(&event, crate::heap::AllocatorCalls::Untraced);
        }
        tracker
    }

    #[test]
    fn growth_sites_are_what_each_stack_grew_and_still_holds() {
        let tracker = grown_heap();
        let heap = tracker.get(100).expect("heap");
        let mut site_heap = heap.sites();
        let clock = GrowthClock {
            start_ns: 5_000_000_000,
            now_ns: 45_000_000_000,
            min_age_ns: 30_000_000_000,
        };
        let counters = Counters {
            lost_events: 2,
            ..Counters::default()
        };
        let totals = growth_totals(Some(heap), counters.clone(), clock, &mut site_heap);
        assert_eq!(totals.counters, counters);
        let stacks: Vec<u32> = totals.sites.iter().map(|s| s.key.stack_id).collect();
        assert_eq!(stacks, [1, 2], "largest still mapped first");
        let one = totals.sites[0].counters;
        assert_eq!(one.outstanding_bytes, 0x4_0000);
        assert_eq!(one.outstanding_count, 1);
        assert_eq!(one.allocated_bytes, 0x5_0000);
        assert_eq!(one.allocated_count, 2);
        assert_eq!(one.freed_bytes, 0x1_0000);
        assert_eq!(one.freed_count, 0);
        assert_eq!(one.oldest_age_s, Some(35.0));
        // First grown 35 s ago, at least --min-age (30 s): aged.
        assert_eq!(one.aged_outstanding_bytes, 0x4_0000);
        let two = totals.sites[1].counters;
        assert_eq!(two.outstanding_bytes, 0x2_0000);
        // First grown 25 s ago: not aged yet.
        assert_eq!(
            (two.aged_outstanding_bytes, two.aged_outstanding_count),
            (0, 0)
        );
        assert_eq!(totals.outstanding_bytes, 0x6_0000);
        assert_eq!(totals.outstanding_count, 2);
        assert_eq!(totals.allocated_bytes, 0x7_0000);
        assert_eq!(totals.allocated_count, 3);
        assert_eq!(totals.freed_count, 0);
        // Each site's heap attribution now says when it grew, in seconds since the start.
        let attribution = &site_heap[&totals.sites[0].key];
        assert_eq!(attribution.growth_events, 2);
        assert_eq!(attribution.first_seen_s, Some(5.0));
        assert_eq!(attribution.last_seen_s, Some(25.0));
    }

    #[test]
    fn without_a_heap_growth_mode_keeps_only_the_counters() {
        let counters = Counters {
            stack_errors: 1,
            ..Counters::default()
        };
        let clock = GrowthClock {
            start_ns: 0,
            now_ns: 0,
            min_age_ns: 0,
        };
        let totals = growth_totals(None, counters.clone(), clock, &mut HashMap::new());
        assert_eq!(totals.counters, counters);
        assert!(totals.sites.is_empty());
        assert_eq!(totals.outstanding_bytes, 0);
    }

    #[test]
    fn a_growth_site_is_written_under_the_exact_mode_names() {
        let counters = SiteCounters::from(GrowthSiteTotals {
            still_mapped_bytes: 4096,
            grown_bytes: 12_288,
            growth_events: 3,
            first_growth_age_s: Some(2.0),
            aged_still_mapped_bytes: 0,
        });
        assert_eq!(counters.outstanding_bytes, 4096);
        assert_eq!(counters.outstanding_count, 1);
        assert_eq!(counters.allocated_bytes, 12_288);
        assert_eq!(counters.allocated_count, 3);
        assert_eq!(counters.freed_bytes, 8192);
        assert_eq!(counters.freed_count, 0);
        assert_eq!(counters.oldest_age_s, Some(2.0));
        assert_eq!(counters.aged_outstanding_count, 0);
        let nothing_left = SiteCounters::from(GrowthSiteTotals {
            grown_bytes: 4096,
            growth_events: 1,
            ..GrowthSiteTotals::default()
        });
        assert_eq!(nothing_left.outstanding_count, 0);
        assert_eq!(nothing_left.freed_bytes, 4096);
    }
}
