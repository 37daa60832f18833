//! Per-process numbers besides the sites: work processed, RSS growth and the share of it the
//! traced allocations explain, the heap object, the order of system-wide rows, the probe cost.
use std::cmp::Ordering;

use crate::{
    cost,
    heap::ProcessHeap,
    schema::{HeapReport, ProbeCost, ProcessReport, Processed, UnwindStats},
};

/// A cumulative counter read at the start of tracing and again at every sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinceStart {
    pub baseline: Option<u64>,
    pub latest: Option<u64>,
}

impl SinceStart {
    /// Take a reading (the first one is the baseline).
    pub fn record(&mut self, value: u64) {
        self.baseline.get_or_insert(value);
        self.latest = Some(value);
    }

    /// How much it grew since the baseline; `None` before any reading.
    pub fn grown(&self) -> Option<u64> {
        Some(self.latest?.saturating_sub(self.baseline?))
    }
}

/// The work a process did, per `--processed`, from its /proc/PID/io counters.
pub fn work_done(read_bytes: u64, written_bytes: u64, measure: Processed) -> u64 {
    match measure {
        Processed::Read => read_bytes,
        Processed::Write => written_bytes,
        Processed::Both => read_bytes.saturating_add(written_bytes),
    }
}

/// A process's memory as /proc/PID/status reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// RSS when tracing started.
    pub rss_baseline: Option<u64>,
    /// RSS and VmData at the latest sample.
    pub latest: Option<(u64, u64)>,
}

impl ProcessMemory {
    /// A command leaktrace launched: traced from its exec on, so every resident page it has
    /// appeared while traced. Its baseline is 0, not a reading taken just after the exec, which
    /// would land before or after the dynamic loader mapped its libraries (184 KiB in one run,
    /// 1.5 MiB in the next) and make the explained share a coin toss.
    pub fn launched() -> Self {
        Self {
            rss_baseline: Some(0),
            latest: None,
        }
    }

    pub fn record(&mut self, rss: u64, vm_data: u64) {
        self.rss_baseline.get_or_insert(rss);
        self.latest = Some((rss, vm_data));
    }

    /// RSS now minus RSS when tracing started.
    pub fn rss_growth_bytes(&self) -> Option<i64> {
        let (rss, _) = self.latest?;
        let signed = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        Some(signed(rss).saturating_sub(signed(self.rss_baseline?)))
    }

    /// The share of the RSS growth that `outstanding` bytes account for, at most 1; `None`
    /// when RSS did not grow.
    pub fn explained_share(&self, outstanding: Option<u64>) -> Option<f64> {
        match (outstanding, self.rss_growth_bytes()) {
            (Some(out), Some(growth)) if growth > 0 => Some((out as f64 / growth as f64).min(1.0)),
            _ => None,
        }
    }
}

/// The heap object of a process. `outstanding`: its traced outstanding bytes.
pub fn heap_report(
    heap: &ProcessHeap,
    memory: &ProcessMemory,
    outstanding: Option<u64>,
) -> HeapReport {
    HeapReport {
        brk_bytes: heap.brk_bytes(),
        brk_calls: heap.brk_calls,
        brk_failures: heap.brk_failures,
        fallback_mmaps: heap.fallbacks(),
        anon_mmap_outstanding_bytes: heap.anon_committed_bytes(),
        anon_reserved_bytes: heap.anon_reserved_bytes(),
        rss_bytes: memory.latest.map(|m| m.0),
        vm_data_bytes: memory.latest.map(|m| m.1),
        rss_growth_bytes: memory.rss_growth_bytes(),
        explained_share: memory.explained_share(outstanding),
        events: heap.events,
    }
}

/// How much a process's heap grew since tracing started: program break plus writable
/// anonymous mappings. System-wide rows are sorted by it.
pub fn heap_growth_bytes(heap: &HeapReport) -> u64 {
    heap.brk_bytes
        .saturating_add(heap.anon_mmap_outstanding_bytes)
}

/// A process's growth slopes: the sums of its listed sites' slopes over the whole run (a least-
/// squares slope is linear in the series, so the sum is the slope of the sites' total where
/// they were sampled together). `None` when no site has one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSlopes {
    pub bytes_per_min: Option<f64>,
    pub bytes_per_mib_processed: Option<f64>,
}

pub fn process_slopes(process: &ProcessReport) -> ProcessSlopes {
    let sum = |slope: fn(&crate::schema::Growth) -> Option<f64>| {
        process
            .sites
            .iter()
            .filter_map(|s| slope(&s.growth))
            .filter(|v| v.is_finite())
            .fold(None, |sum: Option<f64>, v| Some(sum.unwrap_or(0.0) + v))
    };
    ProcessSlopes {
        bytes_per_min: sum(|g| g.bytes_per_min),
        bytes_per_mib_processed: sum(|g| g.bytes_per_mib_processed),
    }
}

/// [`heap_growth_bytes`] straight from the heap state, before any report is built (system-wide
/// mode picks the processes it reports in full by it).
pub fn process_heap_growth(heap: &crate::heap::ProcessHeap) -> u64 {
    heap.brk_bytes().saturating_add(heap.anon_committed_bytes())
}

/// System-wide rows: largest heap growth first, then by pid.
pub fn by_heap_growth(a: &ProcessReport, b: &ProcessReport) -> Ordering {
    let growth = |p: &ProcessReport| p.heap.as_ref().map_or(0, heap_growth_bytes);
    growth(b).cmp(&growth(a)).then(a.pid.cmp(&b.pid))
}

impl ProbeCost {
    pub fn new(ns_per_hit: Option<f64>, probe_hits_per_s: Option<f64>) -> Self {
        Self {
            ns_per_hit,
            probe_hits_per_s,
            estimated_overhead_pct: ns_per_hit
                .zip(probe_hits_per_s)
                .map(|(ns, rate)| cost::overhead_pct(rate, ns)),
        }
    }
}

/// The cost of one growth event: the kernel's (measured at start) plus the mean cost of
/// unwinding one in userspace so far.
pub fn growth_event_ns(kernel_ns: Option<f64>, unwinding: &UnwindStats) -> Option<f64> {
    match (kernel_ns, unwinding.ns_per_event()) {
        (Some(kernel), Some(unwind)) => Some(kernel + unwind),
        (kernel, _) => kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launched_command_s_rss_growth_is_all_of_its_rss() {
        let mut launched = ProcessMemory::launched();
        launched.record(188_416, 100);
        launched.record(1_953_792, 200);
        assert_eq!(launched.rss_growth_bytes(), Some(1_953_792));
        assert_eq!(
            launched.explained_share(Some(355_584)),
            Some(355_584.0 / 1_953_792.0)
        );
        // A process found running: growth since the first reading.
        let mut found = ProcessMemory::default();
        found.record(1_000_000, 100);
        found.record(1_500_000, 100);
        assert_eq!(found.rss_growth_bytes(), Some(500_000));
    }
    use crate::schema::Counters;

    #[test]
    fn since_start_counts_from_the_first_reading() {
        let mut work = SinceStart::default();
        assert_eq!(work.grown(), None);
        work.record(100);
        assert_eq!(work.grown(), Some(0));
        work.record(350);
        assert_eq!(work.grown(), Some(250));
        assert_eq!(work.baseline, Some(100));
    }

    #[test]
    fn work_is_what_processed_says() {
        assert_eq!(work_done(3, 4, Processed::Read), 3);
        assert_eq!(work_done(3, 4, Processed::Write), 4);
        assert_eq!(work_done(3, 4, Processed::Both), 7);
        assert_eq!(work_done(u64::MAX, 4, Processed::Both), u64::MAX);
    }

    #[test]
    fn rss_growth_may_be_negative_and_explains_only_growth() {
        let mut memory = ProcessMemory::default();
        assert_eq!(memory.rss_growth_bytes(), None);
        memory.record(1000, 5);
        memory.record(600, 5);
        assert_eq!(memory.rss_growth_bytes(), Some(-400));
        assert_eq!(memory.explained_share(Some(10)), None);
        memory.record(3000, 9);
        assert_eq!(memory.rss_growth_bytes(), Some(2000));
        assert_eq!(memory.explained_share(Some(500)), Some(0.25));
        assert_eq!(memory.explained_share(Some(5000)), Some(1.0));
        assert_eq!(memory.explained_share(None), None);
    }

    #[test]
    fn heap_report_reads_the_heap_and_the_memory() {
        let mut memory = ProcessMemory::default();
        memory.record(4096, 8192);
        memory.record(4096 * 3, 8192);
        let report = heap_report(&ProcessHeap::default(), &memory, Some(4096));
        assert_eq!(report.rss_bytes, Some(4096 * 3));
        assert_eq!(report.vm_data_bytes, Some(8192));
        assert_eq!(report.rss_growth_bytes, Some(8192));
        assert_eq!(report.explained_share, Some(0.5));
        assert_eq!(report.brk_bytes, 0);
    }

    fn row(pid: u32, brk_bytes: u64, anon_mmap_outstanding_bytes: u64) -> ProcessReport {
        ProcessReport {
            pid,
            comm: String::new(),
            exe: String::new(),
            alive: true,
            exit: None,
            exact: false,
            libc: String::new(),
            allocator: None,
            more_allocators: Vec::new(),
            allocator_not_hooked: None,
            cgroup: None,
            hooked_functions: Vec::new(),
            outstanding_bytes: 0,
            outstanding_count: 0,
            allocated_bytes: 0,
            allocated_count: 0,
            freed_count: 0,
            bytes_processed: None,
            heap: Some(HeapReport {
                brk_bytes,
                anon_mmap_outstanding_bytes,
                ..HeapReport::default()
            }),
            counters: Counters::default(),
            sites: Vec::new(),
            bursts: None,
            estimated_sites: Vec::new(),
            go: None,
            functions: Vec::new(),
        }
    }

    #[test]
    fn system_wide_rows_go_by_heap_growth_then_pid() {
        let mut rows = [row(3, 10, 0), row(1, 0, 5), row(2, 4, 6), row(9, 0, 0)];
        rows[3].heap = None;
        rows.sort_by(by_heap_growth);
        let pids: Vec<u32> = rows.iter().map(|r| r.pid).collect();
        assert_eq!(pids, [2, 3, 1, 9]);
        assert_eq!(
            heap_growth_bytes(&HeapReport {
                brk_bytes: u64::MAX,
                anon_mmap_outstanding_bytes: 1,
                ..HeapReport::default()
            }),
            u64::MAX
        );
    }

    #[test]
    fn probe_cost_needs_both_numbers() {
        let cost = ProbeCost::new(Some(1_000.0), Some(10_000.0));
        assert_eq!(cost.estimated_overhead_pct, Some(1.0));
        assert_eq!(ProbeCost::new(None, Some(1.0)).estimated_overhead_pct, None);
    }

    #[test]
    fn a_growth_event_costs_the_kernel_and_the_unwinding() {
        let stats = UnwindStats {
            events: 4,
            nanos: 400,
            ..UnwindStats::default()
        };
        assert_eq!(growth_event_ns(Some(1_000.0), &stats), Some(1_100.0));
        assert_eq!(growth_event_ns(None, &stats), None);
        assert_eq!(
            growth_event_ns(Some(1_000.0), &UnwindStats::default()),
            Some(1_000.0)
        );
    }
}
