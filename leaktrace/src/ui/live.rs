//! What the dashboard shows besides the JSON snapshot, and the numbers it derives from
//! successive snapshots (rates) or from one (heap growth, fallback sites).
//!
//! The snapshot already carries the heap (`ProcessReport::heap`, `SiteReport::heap`) and, in
//! system-wide mode, one `exact: false` process per process seen: the dashboard reads them
//! there. [`Live`] holds only what no snapshot has.
use std::collections::HashMap;

use crate::schema::{Mode, ProcessReport, Snapshot};

/// Live data delivered with each snapshot ([`super::Update`]). `Live::default()` is valid:
/// it only says that nothing beyond the snapshot is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Live {
    /// Seconds since tracing started when this update was made; `None` uses the snapshot's
    /// `duration_s`.
    pub uptime_s: Option<f64>,
    /// eBPF probe hits per second over the last interval, all targets together; `None` until
    /// the tracer counts them (the header then says "n/a").
    pub probe_hits_per_s: Option<f64>,
}

/// The heap-growth sort key, owned by the model (the session sorts system-wide rows by it).
pub use crate::model::heap_growth_bytes;

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
pub(crate) type CallTotals = HashMap<u32, (f64, u64, u64)>;

fn exact(snapshot: &Snapshot) -> impl Iterator<Item = &ProcessReport> {
    snapshot.processes.iter().filter(|p| p.exact)
}

impl Rates {
    /// The totals of `snapshot`, to compute the next rates from.
    pub(crate) fn totals(snapshot: &Snapshot) -> CallTotals {
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
    pub(crate) fn between(previous: &CallTotals, snapshot: &Snapshot) -> Rates {
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
pub(crate) struct SiteHeapTotals {
    pub fallback_sites: Vec<usize>,
    pub direct_mmap_bytes: u64,
}

pub(crate) fn site_heap_totals(snapshot: &Snapshot) -> HashMap<u32, SiteHeapTotals> {
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
