//! Snapshots built in code with exactly known numbers, for the unit tests, the `ui_draw`
//! bench and the `dashboard` example: no eBPF, no root. Every builder fills the fields the
//! caller does not care about with plausible, mutually consistent values (a site's
//! allocations are its outstanding blocks plus its frees; a process's outstanding bytes are
//! its sites' sum; failed brk calls are some of the brk calls); callers change the rest with
//! struct update syntax.
use crate::schema::{
    ChunkSize, Counters, FallbackSummary, Frame, Growth, GrowthClass, HeapReport, Mode,
    ProcessReport, Processed, SiteCounters, SiteHeap, SiteReport, Snapshot, SCHEMA,
};

/// The traced program of the synthetic snapshots.
pub const EXE: &str = "/usr/bin/leaky-service";
/// Its C library.
pub const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

/// A symbolized frame of `module`, with a source location `/src/FILE:LINE` when given.
pub fn frame(function: &str, module: &str, file: Option<(&str, u32)>) -> Frame {
    Frame {
        addr: 0x5555_0000_1000,
        module: Some(module.to_string()),
        offset: Some(0x1000),
        build_id: None,
        function: Some(function.to_string()),
        file: file.map(|(f, _)| format!("/src/{f}")),
        line: file.map(|(_, l)| l),
        inlined: false,
    }
}

/// Growth with the given slopes (good fits where there is a slope), the same recently, over
/// 12 samples.
pub fn growth(per_mib: Option<f64>, per_min: Option<f64>, class: GrowthClass) -> Growth {
    Growth {
        bytes_per_mib_processed: per_mib,
        bytes_per_min: per_min,
        r2_processed: per_mib.map(|_| 0.99),
        r2_time: per_min.map(|_| 0.98),
        recent_bytes_per_min: per_min,
        recent_bytes_per_mib_processed: per_mib,
        class,
        samples: 12,
    }
}

/// A site holding `outstanding_bytes` in `outstanding_count` blocks, which allocated three
/// times that and freed twice that; half of it is older than `--min-age`.
pub fn site(
    id: &str,
    outstanding_bytes: u64,
    outstanding_count: u64,
    growth: Growth,
    oldest_age_s: Option<f64>,
    frames: Vec<Frame>,
) -> SiteReport {
    SiteReport {
        id: id.to_string(),
        counters: SiteCounters {
            outstanding_bytes,
            outstanding_count,
            allocated_bytes: outstanding_bytes * 3,
            allocated_count: outstanding_count * 3,
            freed_bytes: outstanding_bytes * 2,
            freed_count: outstanding_count * 2,
            oldest_age_s,
            aged_outstanding_bytes: outstanding_bytes / 2,
            aged_outstanding_count: outstanding_count / 2,
        },
        growth,
        leak_rank: 0,
        heap: SiteHeap::default(),
        frames,
    }
}

/// An exactly traced, live process of [`EXE`] holding what its `sites` hold.
pub fn process(pid: u32, comm: &str, sites: Vec<SiteReport>) -> ProcessReport {
    ProcessReport {
        pid,
        comm: comm.to_string(),
        exe: EXE.to_string(),
        alive: true,
        exit: None,
        exact: true,
        libc: LIBC.to_string(),
        allocator: Some(crate::schema::AllocatorReport {
            name: "glibc".to_string(),
            version: Some("2.36".to_string()),
            module: LIBC.to_string(),
            linked_into_executable: false,
            prefix: None,
        }),
        more_allocators: Vec::new(),
        allocator_not_hooked: None,
        cgroup: None,
        hooked_functions: vec!["malloc".to_string(), "free".to_string()],
        outstanding_bytes: sites.iter().map(|s| s.counters.outstanding_bytes).sum(),
        outstanding_count: sites.iter().map(|s| s.counters.outstanding_count).sum(),
        allocated_bytes: 10_000_000,
        allocated_count: 100_000,
        freed_count: 40_000,
        bytes_processed: Some(3 << 20),
        heap: None,
        counters: Counters::default(),
        functions: crate::model::function_totals(sites.iter().map(SiteReport::stack_cost)),
        sites,
        bursts: None,
        estimated_sites: Vec::new(),
        go: None,
    }
}

/// An exact-mode snapshot taken `duration_s` into tracing, every second.
pub fn snapshot(duration_s: f64, processes: Vec<ProcessReport>) -> Snapshot {
    Snapshot {
        schema: SCHEMA.to_string(),
        generated_at: "2026-11-23T18:00:00Z".to_string(),
        duration_s,
        mode: Mode::Exact,
        system_wide: false,
        unwinding: None,
        unwind_tables: None,
        interval_s: 1.0,
        min_age_s: 0.0,
        processed: Processed::Both,
        complete: false,
        cost: None,
        own_usage: None,
        processes,
        other_processes: None,
    }
}

/// malloc's mmap fallbacks of the given `(bytes, count)` chunk sizes, in that order; the
/// totals add up.
pub fn fallbacks(chunks: &[(u64, u64)]) -> FallbackSummary {
    FallbackSummary {
        count: chunks.iter().map(|(_, count)| count).sum(),
        bytes: chunks.iter().map(|(bytes, count)| bytes * count).sum(),
        chunk_sizes: chunks
            .iter()
            .map(|&(bytes, count)| ChunkSize { bytes, count })
            .collect(),
    }
}

/// The bytes of [`heap_with_fallbacks`]'s two fallback chunks: 1 MiB and 132 KiB.
pub const FALLBACK_BYTES: u64 = (1 << 20) + 135_168;

/// A heap whose break could not grow twice, in 9 brk calls, after which malloc mapped two
/// chunks (1 MiB and 132 KiB) instead; RSS grew by 2 MiB, half of it explained.
pub fn heap_with_fallbacks() -> HeapReport {
    HeapReport {
        brk_bytes: 135_168,
        brk_calls: 9,
        brk_failures: 2,
        fallback_mmaps: fallbacks(&[(1 << 20, 1), (135_168, 1)]),
        anon_mmap_outstanding_bytes: FALLBACK_BYTES,
        anon_reserved_bytes: 0,
        rss_bytes: Some(4 << 20),
        vm_data_bytes: Some(8 << 20),
        rss_growth_bytes: Some(2 << 20),
        explained_share: Some(0.5),
        events: 20,
    }
}

/// The share of [`heap_with_fallbacks`]'s fallbacks one site made: all of them.
pub fn site_heap_with_fallbacks() -> SiteHeap {
    SiteHeap {
        fallback_mmap_count: 2,
        fallback_mmap_bytes: FALLBACK_BYTES,
        direct_mmap_bytes: 0,
        anon_mmap_bytes: FALLBACK_BYTES,
        ..SiteHeap::default()
    }
}
