//! The JSON snapshot (schema `leaktrace/1`, documented in docs/json-schema.md and
//! docs/leaktrace-1.schema.json) and its serialization.
use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    cli::Processed,
    growth::Growth,
    heap::{FallbackSummary, SiteHeap},
    output::{write_atomically, Access, OutputError},
    symbolize::Frame,
    target::ExitStatus,
};

pub const SCHEMA: &str = "leaktrace/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// Seconds since tracing started.
    pub duration_s: f64,
    /// `exact`: every allocation of the malloc family of the targets is traced (uprobes);
    /// `growth`: only heap-growing syscalls, with stacks unwound from copies of the user stack
    /// (no uprobes: near-zero overhead); `system_wide`: written by older versions for
    /// system-wide runs without stacks.
    pub mode: String,
    /// Every process's heap syscalls are watched (plus any --pid, in `mode`).
    #[serde(default)]
    pub system_wide: bool,
    /// Growth mode: the cost of unwinding the stack copies, so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinding: Option<crate::unwind::UnwindStats>,
    pub interval_s: f64,
    /// `--min-age`: sites' aged outstanding bytes count only blocks at least this old.
    pub min_age_s: f64,
    /// `--processed`: what `bytes_processed` and the per-MiB slopes measure.
    pub processed: Processed,
    /// Whether this is the last snapshot of the run.
    pub complete: bool,
    /// What the probes cost the traced programs; absent from snapshots of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ProbeCost>,
    pub processes: Vec<ProcessReport>,
}

/// The CPU cost of tracing, all exactly traced processes together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeCost {
    /// CPU time one probe hit costs, measured at start on leaktrace's own process; `None` when
    /// that measurement failed.
    pub ns_per_hit: Option<f64>,
    /// Probe hits per second over the latest interval; `None` before the first interval.
    pub probe_hits_per_s: Option<f64>,
    /// `probe_hits_per_s × ns_per_hit`, in percent of one CPU.
    pub estimated_overhead_pct: Option<f64>,
}

impl ProbeCost {
    pub fn new(ns_per_hit: Option<f64>, probe_hits_per_s: Option<f64>) -> Self {
        Self {
            ns_per_hit,
            probe_hits_per_s,
            estimated_overhead_pct: ns_per_hit
                .zip(probe_hits_per_s)
                .map(|(ns, rate)| crate::cost::overhead_pct(rate, ns)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub alive: bool,
    /// How a launched command ended, when leaktrace saw it end.
    pub exit: Option<ExitStatus>,
    /// Whether its malloc family is traced (uprobes); system-wide rows have heap data only.
    pub exact: bool,
    /// The allocator library hooked, as the process names it.
    pub libc: String,
    pub hooked_functions: Vec<String>,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_count: u64,
    /// Bytes read and/or written (per `processed`) since tracing started; None when
    /// /proc/PID/io could not be read.
    pub bytes_processed: Option<u64>,
    /// The heap as the kernel sees it: program break, anonymous mappings, fallbacks, RSS.
    pub heap: Option<HeapReport>,
    pub counters: Counters,
    /// Sorted by outstanding bytes, largest first.
    pub sites: Vec<SiteReport>,
}

/// Per-process heap state (`leaktrace/1`, `heap` object).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapReport {
    /// Current program break minus the start of the heap.
    pub brk_bytes: u64,
    pub brk_calls: u64,
    /// brk calls that could not move the break (each failed heap extension costs one).
    pub brk_failures: u64,
    /// Anonymous mmaps malloc made after a failed brk in the same call.
    pub fallback_mmaps: FallbackSummary,
    /// Writable anonymous mappings made since tracing started and still mapped.
    pub anon_mmap_outstanding_bytes: u64,
    /// Anonymous address space reserved without write permission (PROT_NONE arenas, Go heap).
    pub anon_reserved_bytes: u64,
    pub rss_bytes: Option<u64>,
    pub vm_data_bytes: Option<u64>,
    /// RSS now minus RSS when tracing started.
    pub rss_growth_bytes: Option<i64>,
    /// Share of the RSS growth that outstanding traced allocations account for (exact mode).
    pub explained_share: Option<f64>,
    /// Heap syscalls seen.
    pub events: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub dropped_allocations: u64,
    pub stack_errors: u64,
    pub lost_events: u64,
    pub unknown_frees: u64,
}

impl Counters {
    pub fn any(&self) -> bool {
        self.dropped_allocations + self.stack_errors + self.lost_events + self.unknown_frees > 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteReport {
    pub id: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_bytes: u64,
    pub freed_count: u64,
    /// Age of the oldest allocation of this site still outstanding (None when none is).
    pub oldest_age_s: Option<f64>,
    /// Outstanding bytes and blocks allocated at least `min_age_s` ago.
    pub aged_outstanding_bytes: u64,
    pub aged_outstanding_count: u64,
    /// Growth of outstanding bytes against time and work, and the verdict.
    pub growth: Growth,
    /// 1 = the site of this process most likely to leak (by class, slope and fit).
    pub leak_rank: u32,
    /// fallback_mmap_count, fallback_mmap_bytes, direct_mmap_bytes, anon_mmap_bytes.
    #[serde(flatten)]
    pub heap: SiteHeap,
    /// Innermost first; the first frame is the allocator's caller.
    pub frames: Vec<Frame>,
}

impl SiteReport {
    /// A site that made heap syscalls but holds no allocations of the malloc family (the
    /// program's own mmaps, or allocator calls whose only effect was a syscall).
    pub fn heap_only(id: String, heap: SiteHeap, leak_rank: u32, frames: Vec<Frame>) -> Self {
        Self {
            id,
            outstanding_bytes: 0,
            outstanding_count: 0,
            allocated_bytes: 0,
            allocated_count: 0,
            freed_bytes: 0,
            freed_count: 0,
            oldest_age_s: None,
            aged_outstanding_bytes: 0,
            aged_outstanding_count: 0,
            growth: crate::growth::analyze(&[], 0, crate::growth::DEFAULT_RECENT_WINDOW),
            leak_rank,
            heap,
            frames,
        }
    }

    /// The frame to name the site by: the innermost frame with a function name.
    pub fn top_function(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.function.is_some())
    }
}

/// The snapshot as written to disk: pretty JSON and a final newline.
pub fn snapshot_json(snapshot: &Snapshot) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

/// Write a snapshot atomically (crate::output's rules).
pub fn write_snapshot(path: &Path, snapshot: &Snapshot, access: Access) -> Result<(), OutputError> {
    write_atomically(path, &snapshot_json(snapshot)?, access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::growth::GrowthClass;

    #[test]
    fn snapshot_round_trips_through_json() {
        use crate::synthetic::{frame, growth, site, EXE};
        let leak = site(
            "leak_exactly-site",
            50_000,
            500,
            growth(Some(262_144.0), Some(1_048_576.0), GrowthClass::LeakSuspect),
            Some(3.25),
            vec![frame("leak_exactly", EXE, Some(("leaky.c", 42)))],
        );
        let mut process = crate::synthetic::process(42, "leaky", vec![leak]);
        process.heap = Some(crate::synthetic::heap_with_fallbacks());
        let mut snap = crate::synthetic::snapshot(12.5, vec![process]);
        snap.cost = Some(ProbeCost::new(Some(1_200.0), Some(5_000.0)));
        let json = serde_json::to_string(&snap).expect("serializes");
        let back: Snapshot = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, snap);
    }
}
