//! From totals to reported sites: each site's growth series and verdict, its leak rank, and the
//! heap-only sites (stacks that made heap syscalls but hold no allocation of the malloc family).
use std::collections::HashMap;

use leaktrace_common::SiteKey;

use super::totals::{ProcessTotals, SiteTotals};
use crate::{
    growth::{self, SeriesBuffer},
    schema::{Frame, Growth, SiteCounters, SiteHeap, SiteReport},
};

/// Every site's outstanding bytes at every interval, for the growth slopes.
#[derive(Debug)]
pub struct SiteSeries {
    /// Samples kept per site (older ones are downsampled evenly).
    capacity: usize,
    by_site: HashMap<SiteKey, SeriesBuffer>,
}

impl SiteSeries {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_site: HashMap::new(),
        }
    }

    /// Add a sample to the series of each of `sites`, taken `t_s` seconds into the run, after
    /// the process processed `processed_bytes`.
    pub fn record(&mut self, sites: &[SiteTotals], t_s: f64, processed_bytes: u64) {
        for site in sites {
            self.by_site
                .entry(site.key)
                .or_insert_with(|| SeriesBuffer::new(self.capacity))
                .push(growth::Sample {
                    t_s,
                    processed_bytes,
                    outstanding_bytes: site.counters.outstanding_bytes,
                    aged_outstanding_bytes: site.counters.aged_outstanding_bytes,
                });
        }
    }

    /// The growth verdict of a site, from its series so far.
    pub fn growth(&self, site: &SiteTotals) -> Growth {
        let samples = self
            .by_site
            .get(&site.key)
            .map_or(&[][..], SeriesBuffer::samples);
        growth::analyze(
            samples,
            site.counters.allocated_bytes,
            growth::DEFAULT_RECENT_WINDOW,
        )
    }

    /// Drop the series of a process's sites.
    pub fn forget(&mut self, pid: u32) {
        self.by_site.retain(|key, _| key.tgid != pid);
    }
}

/// Leak rank of each of `growths` (1 = most likely to leak), in the same order.
pub fn leak_ranks(growths: &[Growth]) -> Vec<u32> {
    let mut by_likelihood: Vec<usize> = (0..growths.len()).collect();
    growth::sort_by_leak_likelihood(&mut by_likelihood, |&i| growths.get(i));
    let mut ranks = vec![0u32; growths.len()];
    for (rank, &i) in by_likelihood.iter().enumerate() {
        ranks[i] = rank_number(rank);
    }
    ranks
}

/// Growth-event sites in order of the heap bytes they grew and still hold (largest first).
fn heap_growth_ranks(sites: &[SiteTotals]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&sites[a], &sites[b]);
        b.counters
            .outstanding_bytes
            .cmp(&a.counters.outstanding_bytes)
            .then(b.counters.allocated_bytes.cmp(&a.counters.allocated_bytes))
            .then(a.key.caller.cmp(&b.key.caller))
    });
    let mut ranks = vec![0u32; sites.len()];
    for (rank, &i) in order.iter().enumerate() {
        ranks[i] = rank_number(rank);
    }
    ranks
}

/// The 1-based rank of the site at `index` in leak order.
fn rank_number(index: usize) -> u32 {
    u32::try_from(index).map_or(u32::MAX, |i| i.saturating_add(1))
}

/// What a process's sites are evidence of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteEvidence {
    /// Exact mode: blocks of the malloc family, ranked by leak likelihood.
    Allocations,
    /// Growth mode: the stacks whose allocation crossed the heap's top. That is what grew the
    /// heap, nearly always a large temporary rather than a small leaked block (issue 13), so
    /// such a site is never classed a leak suspect (a steady one is `heap_growth`) and the sites
    /// are ordered by the heap bytes they grew; growth mode's leak ranking is the bursts'
    /// estimate (`model::SurvivalWatch`).
    HeapGrowth,
}

/// A process's reported sites, at most `max_sites`, each with the key of its stack (frames are
/// left for the caller to name): allocation sites by leak rank (growth-event sites by heap
/// bytes grown, see [`SiteEvidence`]), then heap-only sites (those of `site_heap` that are no
/// allocation site), largest anonymous mappings first, ranked after.
/// `site_heap`: the heap attribution of the process's stacks (`ProcessHeap::sites`).
pub fn site_reports(
    totals: &ProcessTotals,
    series: &SiteSeries,
    mut site_heap: HashMap<SiteKey, SiteHeap>,
    max_sites: usize,
    evidence: SiteEvidence,
) -> Vec<(SiteKey, SiteReport)> {
    let mut growths: Vec<Growth> = totals.sites.iter().map(|s| series.growth(s)).collect();
    let ranks = match evidence {
        SiteEvidence::Allocations => leak_ranks(&growths),
        SiteEvidence::HeapGrowth => {
            for growth in &mut growths {
                if growth.class == crate::schema::GrowthClass::LeakSuspect {
                    growth.class = crate::schema::GrowthClass::HeapGrowth;
                }
            }
            heap_growth_ranks(&totals.sites)
        }
    };
    let mut sites: Vec<(SiteKey, SiteReport)> = totals
        .sites
        .iter()
        .zip(growths)
        .zip(ranks)
        .filter(|(_, rank)| usize::try_from(*rank).is_ok_and(|r| r <= max_sites))
        .map(|((site, growth), leak_rank)| {
            let report = SiteReport {
                heap: site_heap.remove(&site.key).unwrap_or_default(),
                id: site.id(),
                counters: site.counters,
                growth,
                leak_rank,
                frames: Vec::new(),
            };
            (site.key, report)
        })
        .collect();
    let mut heap_only: Vec<(SiteKey, SiteHeap)> = site_heap.into_iter().collect();
    heap_only.sort_by(|a, b| {
        b.1.anon_mmap_bytes
            .cmp(&a.1.anon_mmap_bytes)
            .then(a.0.caller.cmp(&b.0.caller))
    });
    let ranked = totals.sites.len();
    let room = max_sites.saturating_sub(ranked);
    for (n, (key, heap)) in heap_only.into_iter().take(room).enumerate() {
        let id = format!("{:x}-{}-heap", key.caller, key.stack_id);
        let leak_rank = rank_number(ranked.saturating_add(n));
        sites.push((key, SiteReport::heap_only(id, heap, leak_rank, Vec::new())));
    }
    sites
}

impl SiteReport {
    /// What the site adds to its process's functions and call trees.
    pub fn stack_cost(&self) -> super::StackCost<'_, Frame> {
        super::StackCost {
            frames: &self.frames,
            bytes: self.counters.outstanding_bytes,
            count: self.counters.outstanding_count,
        }
    }

    /// A site that made heap syscalls but holds no allocations of the malloc family (the
    /// program's own mmaps, or allocator calls whose only effect was a syscall).
    pub fn heap_only(id: String, heap: SiteHeap, leak_rank: u32, frames: Vec<Frame>) -> Self {
        Self {
            id,
            counters: SiteCounters::default(),
            growth: growth::analyze(&[], 0, growth::DEFAULT_RECENT_WINDOW),
            leak_rank,
            heap,
            frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::GrowthClass;

    fn key(caller: u64) -> SiteKey {
        SiteKey {
            tgid: 1,
            stack_id: 7,
            caller,
        }
    }

    fn site(caller: u64, outstanding_bytes: u64) -> SiteTotals {
        SiteTotals {
            key: key(caller),
            counters: SiteCounters {
                outstanding_bytes,
                outstanding_count: 1,
                allocated_bytes: outstanding_bytes,
                allocated_count: 1,
                aged_outstanding_bytes: outstanding_bytes,
                ..SiteCounters::default()
            },
        }
    }

    fn totals(sites: Vec<SiteTotals>) -> ProcessTotals {
        ProcessTotals {
            sites,
            ..ProcessTotals::default()
        }
    }

    /// Two sites sampled 20 times, 10 s and 1 MiB of work apart: caller 0x10 flat at 1 MiB,
    /// caller 0x20 growing by 4 KiB a sample; reported as `evidence`.
    fn flat_and_growing_sites(evidence: SiteEvidence) -> Vec<(SiteKey, SiteReport)> {
        let mut series = SiteSeries::new(64);
        for i in 0..20u64 {
            let sites = [site(0x10, 1 << 20), site(0x20, 4096 * (i + 1))];
            series.record(&sites, i as f64 * 10.0, i << 20);
        }
        let last = totals(vec![site(0x10, 1 << 20), site(0x20, 4096 * 20)]);
        site_reports(&last, &series, HashMap::new(), usize::MAX, evidence)
    }

    #[test]
    fn growth_event_sites_are_never_leak_suspects_and_go_by_heap_bytes() {
        // The same series that makes an allocation site a leak suspect (see below), as growth
        // events: what grew the heap, ranked by the heap bytes it holds, not by its slope.
        let reports = flat_and_growing_sites(SiteEvidence::HeapGrowth);
        let report = |caller| {
            &reports
                .iter()
                .find(|(k, _)| k.caller == caller)
                .expect("site")
                .1
        };
        assert_eq!(report(0x20).growth.class, GrowthClass::HeapGrowth);
        assert_eq!(report(0x10).leak_rank, 1);
        assert_eq!(report(0x20).leak_rank, 2);
        assert!(reports
            .iter()
            .all(|(_, r)| r.growth.class != GrowthClass::LeakSuspect));
    }

    #[test]
    fn a_steadily_growing_site_outranks_a_bigger_flat_one() {
        let reports = flat_and_growing_sites(SiteEvidence::Allocations);
        let rank_of = |caller| {
            reports
                .iter()
                .find(|(k, _)| k.caller == caller)
                .map(|(_, r)| r.leak_rank)
        };
        assert_eq!(rank_of(0x20), Some(1));
        assert_eq!(rank_of(0x10), Some(2));
        let growing = &reports
            .iter()
            .find(|(k, _)| k.caller == 0x20)
            .expect("site")
            .1;
        assert_eq!(growing.growth.class, GrowthClass::LeakSuspect);
        assert_eq!(growing.counters.outstanding_bytes, 4096 * 20);
    }

    #[test]
    fn ranks_are_a_permutation_starting_at_one() {
        let series = SiteSeries::new(8);
        let growths: Vec<Growth> = (0..5).map(|c| series.growth(&site(c, 1))).collect();
        let mut ranks = leak_ranks(&growths);
        ranks.sort_unstable();
        assert_eq!(ranks, [1, 2, 3, 4, 5]);
        assert!(leak_ranks(&[]).is_empty());
    }

    #[test]
    fn heap_only_sites_come_after_the_allocation_sites_largest_first_within_max() {
        let series = SiteSeries::new(8);
        let mapped = |anon_mmap_bytes| SiteHeap {
            anon_mmap_bytes,
            ..SiteHeap::default()
        };
        let site_heap = HashMap::from([
            (key(0x10), mapped(1)),
            (key(0xa0), mapped(100)),
            (key(0xb0), mapped(300)),
            (key(0xc0), mapped(200)),
        ]);
        let reports = site_reports(
            &totals(vec![site(0x10, 64)]),
            &series,
            site_heap,
            3,
            SiteEvidence::Allocations,
        );
        let summary: Vec<(u64, u32, &str)> = reports
            .iter()
            .map(|(k, r)| (k.caller, r.leak_rank, r.id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (0x10, 1, "10-7"),
                (0xb0, 2, "b0-7-heap"),
                (0xc0, 3, "c0-7-heap")
            ]
        );
        // The allocation site keeps its own heap attribution.
        assert_eq!(reports[0].1.heap.anon_mmap_bytes, 1);
        assert_eq!(reports[1].1.counters, SiteCounters::default());
    }

    #[test]
    fn sites_beyond_max_are_left_out_by_rank() {
        let series = SiteSeries::new(8);
        let all = totals((0..5).map(|c| site(c, 10)).collect());
        let reports = site_reports(&all, &series, HashMap::new(), 2, SiteEvidence::Allocations);
        let mut ranks: Vec<u32> = reports.iter().map(|(_, r)| r.leak_rank).collect();
        ranks.sort_unstable();
        assert_eq!(ranks, [1, 2]);
    }

    #[test]
    fn forgetting_a_process_drops_only_its_series() {
        let mut series = SiteSeries::new(8);
        let other = SiteTotals {
            key: SiteKey { tgid: 2, ..key(1) },
            ..site(1, 5)
        };
        for i in 0..8 {
            series.record(&[site(1, 5 + i), other], f64::from(i as u32), 0);
        }
        series.forget(1);
        assert_eq!(series.growth(&site(1, 5)).samples, 0);
        assert_eq!(series.growth(&other).samples, 8);
    }
}
