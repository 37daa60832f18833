//! Numbers the dashboard shows that it derives from the snapshots themselves: call rates
//! between two snapshots, the header's sums over the shown processes, each process's fallback
//! sites and direct-mmap bytes. Pure, like the rest of the model: the widgets only format them.
use std::collections::HashMap;

use crate::schema::{Counters, Mode, ProcessReport, Snapshot};

/// Whether the snapshot comes from system-wide mode (a process table exists).
pub fn is_system_wide(snapshot: &Snapshot) -> bool {
    snapshot.system_wide || snapshot.mode == Mode::SystemWide
}

/// Allocation and free calls per second, all exactly traced processes together, between the
/// two latest snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub alloc_per_s: Option<f64>,
    pub free_per_s: Option<f64>,
}

/// Per process at one snapshot: (seconds since start, allocations, frees).
pub type CallTotals = HashMap<u32, (f64, u64, u64)>;

fn exact(snapshot: &Snapshot) -> impl Iterator<Item = &ProcessReport> {
    snapshot.processes.iter().filter(|p| p.exact)
}

impl Rates {
    /// The totals of `snapshot`, to compute the next rates from.
    pub fn totals(snapshot: &Snapshot) -> CallTotals {
        exact(snapshot)
            .map(|p| {
                (
                    p.pid,
                    (snapshot.duration_s, p.allocated_count, p.freed_count),
                )
            })
            .collect()
    }

    /// Rates between `previous` totals and `snapshot`, over the processes present in both;
    /// `None` when no process has two readings apart in time.
    pub fn between(previous: &CallTotals, snapshot: &Snapshot) -> Rates {
        let mut allocs = None::<f64>;
        let mut frees = None::<f64>;
        for process in exact(snapshot) {
            let Some(&(t0, allocs0, frees0)) = previous.get(&process.pid) else {
                continue;
            };
            let dt = snapshot.duration_s - t0;
            if !(dt.is_finite() && dt > 0.0) {
                continue;
            }
            let a = process.allocated_count.saturating_sub(allocs0) as f64 / dt;
            let f = process.freed_count.saturating_sub(frees0) as f64 / dt;
            allocs = Some(allocs.unwrap_or(0.0) + a);
            frees = Some(frees.unwrap_or(0.0) + f);
        }
        Rates {
            alloc_per_s: allocs,
            free_per_s: frees,
        }
    }
}

/// Per process, what the heap panel needs from its sites: the sites that made mmap
/// fallbacks (indices, most bytes first) and the bytes of direct mmaps still mapped.
/// Computed once per snapshot shown, not per frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteHeapTotals {
    pub fallback_sites: Vec<usize>,
    pub direct_mmap_bytes: u64,
}

pub fn site_heap_totals(snapshot: &Snapshot) -> HashMap<u32, SiteHeapTotals> {
    snapshot
        .processes
        .iter()
        .filter(|p| !p.sites.is_empty())
        .map(|p| {
            let mut fallback_sites: Vec<usize> = p
                .sites
                .iter()
                .enumerate()
                .filter(|(_, s)| s.heap.fallback_mmap_count > 0)
                .map(|(i, _)| i)
                .collect();
            let bytes = |i: &usize| p.sites.get(*i).map_or(0, |s| s.heap.fallback_mmap_bytes);
            fallback_sites.sort_by_key(|i| std::cmp::Reverse(bytes(i)));
            let direct_mmap_bytes = p
                .sites
                .iter()
                .map(|s| s.heap.direct_mmap_bytes)
                .fold(0u64, u64::saturating_add);
            (
                p.pid,
                SiteHeapTotals {
                    fallback_sites,
                    direct_mmap_bytes,
                },
            )
        })
        .collect()
}

/// The processes the dashboard's header sums over: the focused one, else every traced one (in
/// a system-wide run, those traced exactly; the others have the process table).
pub fn header_processes(snapshot: &Snapshot, focus: Option<u32>) -> Vec<&ProcessReport> {
    let system_wide = is_system_wide(snapshot);
    snapshot
        .processes
        .iter()
        .filter(|p| (p.exact || !system_wide) && focus.is_none_or(|f| f == p.pid))
        .collect()
}

/// The header's sums over the processes it shows (saturating: a sum never wraps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderTotals {
    /// Exact: bytes of outstanding blocks; growth mode: heap growth still mapped.
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Growth mode (some shown process is traced through its heap syscalls only): heap growth
    /// seen, and in how many growth events. The header then reads these, not blocks.
    pub growth: bool,
    pub grown_bytes: u64,
    pub growth_events: u64,
    /// `None` when no shown process's /proc/PID/io was readable.
    pub bytes_processed: Option<u64>,
    /// `None` when no shown process's RSS is known.
    pub rss_bytes: Option<u64>,
    pub counters: Counters,
}

impl HeaderTotals {
    pub fn of<'a>(processes: impl IntoIterator<Item = &'a ProcessReport>) -> Self {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        };
        processes
            .into_iter()
            .fold(HeaderTotals::default(), |t, p| HeaderTotals {
                outstanding_bytes: t.outstanding_bytes.saturating_add(p.outstanding_bytes),
                outstanding_count: t.outstanding_count.saturating_add(p.outstanding_count),
                growth: t.growth || !p.exact,
                grown_bytes: t.grown_bytes.saturating_add(if p.exact {
                    0
                } else {
                    p.allocated_bytes
                }),
                growth_events: t.growth_events.saturating_add(if p.exact {
                    0
                } else {
                    p.allocated_count
                }),
                bytes_processed: add(t.bytes_processed, p.bytes_processed),
                rss_bytes: add(t.rss_bytes, p.heap.as_ref().and_then(|h| h.rss_bytes)),
                counters: t.counters.saturating_add(&p.counters),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic;

    #[test]
    fn header_totals_sum_what_is_known_and_never_wrap() {
        let mut a = synthetic::process(1, "a", vec![]);
        a.outstanding_bytes = u64::MAX;
        a.outstanding_count = 3;
        a.bytes_processed = None;
        let mut b = synthetic::process(2, "b", vec![]);
        b.outstanding_bytes = 10;
        b.outstanding_count = 4;
        b.bytes_processed = Some(7);
        b.counters.lost_events = 2;
        let totals = HeaderTotals::of([&a, &b]);
        assert_eq!(totals.outstanding_bytes, u64::MAX);
        assert_eq!(totals.outstanding_count, 7);
        assert_eq!(totals.bytes_processed, Some(7));
        assert_eq!(totals.rss_bytes, None);
        assert_eq!(totals.counters.lost_events, 2);
        assert_eq!(HeaderTotals::of([]), HeaderTotals::default());
    }

    #[test]
    fn a_launched_command_in_growth_mode_is_in_the_header_with_its_growth() {
        let mut growing = synthetic::process(7, "prog", vec![]);
        growing.exact = false;
        growing.outstanding_bytes = 330 << 20;
        growing.allocated_bytes = 400 << 20;
        growing.allocated_count = 12;
        let snapshot = synthetic::snapshot(1.0, vec![growing]);
        let shown = header_processes(&snapshot, None);
        assert_eq!(shown.len(), 1, "a growth-mode target is a target");
        let totals = HeaderTotals::of(shown);
        assert!(totals.growth);
        assert_eq!(totals.outstanding_bytes, 330 << 20);
        assert_eq!((totals.grown_bytes, totals.growth_events), (400 << 20, 12));
        // System-wide, the rows seen through heap syscalls belong to the process table.
        let mut system = snapshot.clone();
        system.system_wide = true;
        assert!(header_processes(&system, None).is_empty());
        assert!(header_processes(&snapshot, Some(8)).is_empty());
    }

    #[test]
    fn rates_are_per_second_between_two_readings_of_the_same_process() {
        let mut first = synthetic::process(1, "a", vec![]);
        first.allocated_count = 100;
        first.freed_count = 50;
        let before = synthetic::snapshot(1.0, vec![first.clone()]);
        let mut later = first;
        later.allocated_count = 300;
        later.freed_count = 90;
        let after = synthetic::snapshot(3.0, vec![later]);
        let rates = Rates::between(&Rates::totals(&before), &after);
        assert_eq!(rates.alloc_per_s, Some(100.0));
        assert_eq!(rates.free_per_s, Some(20.0));
        // Same time: no rate rather than a division by zero.
        let none = Rates::between(&Rates::totals(&after), &after);
        assert_eq!(none, Rates::default());
    }
}
