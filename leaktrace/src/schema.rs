//! Every serialized type: the JSON snapshot (schema `leaktrace/1`, documented in
//! docs/json-schema.md and docs/leaktrace-1.schema.json) and the enums it shares with the
//! command line. Types only: numbers are computed elsewhere (docs/architecture.md says where),
//! text is made in the views. This module imports no other leaktrace module, so any module may
//! import it without a cycle.
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "leaktrace/1";

/// What is traced: every allocation, or only the syscalls that grow the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every malloc/free of the targets (uprobes).
    Exact,
    /// Only the syscalls that grow the heap, with stacks unwound from copies of the user stack.
    Growth,
    /// Written by versions before growth mode for system-wide runs without stacks; read back
    /// only, never chosen on the command line nor written.
    #[value(skip)]
    SystemWide,
}

impl Mode {
    /// The name written in snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Growth => "growth",
            Mode::SystemWide => "system_wide",
        }
    }
}

/// Which /proc/PID/io counters measure the work a process did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Processed {
    /// rchar: bytes read (files, sockets, pipes).
    Read,
    /// wchar: bytes written.
    Write,
    /// rchar + wchar.
    Both,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// Seconds since tracing started.
    pub duration_s: f64,
    pub mode: Mode,
    /// Every process's heap syscalls are watched (plus any --pid, in `mode`).
    #[serde(default)]
    pub system_wide: bool,
    /// Growth mode: the cost of unwinding the stack copies, so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinding: Option<UnwindStats>,
    /// Exact mode: the unwind tables the eBPF walk follows (memory, modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwind_tables: Option<UnwindTableStats>,
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
    /// leaktrace's own memory and CPU (`self`); absent from snapshots of older versions.
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub own_usage: Option<OwnUsage>,
    pub processes: Vec<ProcessReport>,
    /// System-wide mode: the processes beyond `--top-processes`, summarized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_processes: Option<OtherProcesses>,
}

/// What leaktrace itself uses (`self` in the JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnUsage {
    /// Resident memory now (VmRSS).
    pub rss_bytes: Option<u64>,
    /// The most resident memory so far (VmHWM).
    pub peak_rss_bytes: Option<u64>,
    /// CPU time (user + system) since start.
    pub cpu_seconds: f64,
    /// CPU over the latest interval, in percent of one core (null before the first one).
    pub cpu_pct: Option<f64>,
    /// CPU since start, in percent of one core.
    pub cpu_pct_since_start: Option<f64>,
}

/// System-wide mode: the processes left out of `processes` (beyond `--top-processes` by heap
/// growth), in one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OtherProcesses {
    pub processes: u64,
    pub alive: u64,
    /// Exited ones still remembered (see docs/architecture.md, "Bounds").
    pub exited: u64,
    /// Their heap growth (program break plus writable anonymous mappings), summed.
    pub heap_growth_bytes: u64,
    /// Their heap syscalls seen, summed.
    pub heap_events: u64,
}

/// What unwinding cost, for the report: growth mode must keep up with the events it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnwindStats {
    /// Stack copies unwound.
    pub events: u64,
    /// Frames they gave, in all.
    pub frames: u64,
    /// Events whose stack copy was empty (the eBPF program could not read the stack).
    pub empty_copies: u64,
    /// CPU time spent unwinding (including reading modules' unwind sections), in ns.
    pub nanos: u64,
}

/// Exact mode's unwind tables: the modules' CFI compiled into rows the eBPF program follows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnwindTableStats {
    /// Modules whose table is loaded (frame-pointer modules such as Go code included, 0 rows).
    pub modules: u64,
    /// Rows loaded, all modules.
    pub rows: u64,
    /// Bytes of rows loaded (16 per row).
    pub bytes: u64,
    /// The most bytes of rows loaded at once during the run.
    #[serde(default)]
    pub peak_bytes: u64,
    /// The bound on those bytes (`--unwind-table-mib`).
    pub capacity_bytes: u64,
    /// Modules whose table could not be loaded (unreadable, no room left): their code is
    /// walked with frame pointers and counted as `stack_no_table`.
    pub failed_modules: u64,
    /// The slowest table build so far (read, compile and load), in ms, and its module.
    pub slowest_build_ms: Option<f64>,
    pub slowest_build_module: Option<String>,
}

/// The CPU cost of tracing, all traced processes together (growth mode: a hit is a heap-growth
/// event).
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

/// How a launched child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// An allocator found in a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorReport {
    /// glibc, jemalloc, tcmalloc, tcmalloc_minimal, mimalloc, musl, or unknown.
    pub name: String,
    pub version: Option<String>,
    /// The module defining it, as the process names it.
    pub module: String,
    /// Linked into the executable (static binary, or a prefixed jemalloc) rather than a library.
    #[serde(default)]
    pub linked_into_executable: bool,
    /// Its symbols' prefix (`je_`), when not the standard names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A process's cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupReport {
    /// The cgroup v2 path (or the first v1 one), as /proc/PID/cgroup gives it.
    pub path: String,
    /// The container id the path holds (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// Whose naming the path follows: docker, containerd, cri-o, podman.
    pub runtime: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub alive: bool,
    /// How a launched command ended, when leaktrace saw it end.
    pub exit: Option<ExitStatus>,
    /// Whether its malloc family is traced (uprobes); false: growth mode (sites are stacks that
    /// grew the heap) or, in older snapshots, system-wide rows with heap data only.
    pub exact: bool,
    /// The module of the allocator serving malloc, as the process names it (empty: none).
    pub libc: String,
    /// The allocator serving malloc, found in the dynamic linker's search order.
    #[serde(default)]
    pub allocator: Option<AllocatorReport>,
    /// Allocators hooked beside it (a prefixed jemalloc linked into the executable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_allocators: Vec<AllocatorReport>,
    /// Why no allocator is hooked, when none is: one line naming what was found. Its heap
    /// syscalls are still traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator_not_hooked: Option<String>,
    /// Its cgroup, and the container the cgroup path names.
    #[serde(default)]
    pub cgroup: Option<CgroupReport>,
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
    /// Sorted by outstanding bytes, largest first. Growth mode: the stacks that grew the heap
    /// (growth-event attribution), never ranked as leaks.
    pub sites: Vec<SiteReport>,
    /// Growth mode: the short exact bursts behind `estimated_sites`, and what they cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bursts: Option<BurstReport>,
    /// Growth mode: sites estimated from the bursts' sampled allocations that survive, ranked
    /// by leak likelihood (`estimate_rank`). Kept apart from `sites`: never mixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimated_sites: Vec<EstimatedSite>,
    /// Go programs: goroutines, the runtime's heap profile and memory statistics, read from the
    /// process's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<GoReport>,
    /// Outstanding bytes by function over the reported sites (`model::function_totals`):
    /// largest cumulative first. Absent from older snapshots: read back as computed from sites.
    #[serde(default)]
    pub functions: Vec<FunctionReport>,
}

/// Growth mode's bursts of exact tracing on one process (`--overhead-budget`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstReport {
    /// Bursts harvested so far.
    pub bursts: u64,
    /// Seconds of allocations sampled (each burst but its last quarter).
    pub sampled_s: f64,
    /// Sampled blocks still followed.
    pub watched_blocks: u64,
    /// Probe hits of all the bursts.
    pub probe_hits: u64,
    /// Of `probe_hits`, those while a burst's probes were still being attached (they buy no
    /// sample: what attaching costs).
    #[serde(default)]
    pub attach_probe_hits: u64,
    /// The cost of one hit used (measured at start; a default when that failed).
    pub ns_per_hit: f64,
    /// `probe_hits × ns_per_hit` over the run's duration, in percent of one CPU: the bursts'
    /// cost from their measured hits and the measured cost of one.
    pub measured_overhead_pct: f64,
    /// The bursts' cost measured on the target itself, over the run's duration, in percent of
    /// one CPU: its CPU time from each burst's attaching to its detaching, beyond what its rates
    /// between bursts account for, each burst counted at no less than its hits × `ns_per_hit`.
    /// Absent before one burst could be measured. The budget
    /// holds the larger of this and `measured_overhead_pct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_overhead_pct: Option<f64>,
    /// `--overhead-budget`.
    pub budget_pct: f64,
    /// Why no (more) bursts run on this process (e.g. no C library to hook); absent when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A 95% confidence interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// One site's leak estimate from growth mode's bursts: sampled blocks that survive, scaled by
/// the sampled time. Every number is an estimate (`estimated: true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EstimatedSite {
    pub id: String,
    /// Always true: these numbers are extrapolated from samples.
    pub estimated: bool,
    /// 1 = the site of this process most likely to leak (leak suspects first, then by
    /// recent surviving bytes per second).
    pub estimate_rank: u32,
    /// `leak_suspect` (samples keep surviving), `plateau` (survivors only from earlier: a cache
    /// that filled), `churn` (seen allocating, nothing surviving), `unknown`.
    pub class: GrowthClass,
    /// Surviving sampled blocks the estimate rests on (confirmed by a later burst).
    pub samples: u64,
    /// Sampled blocks later seen freed.
    pub freed_samples: u64,
    /// Allocations the bursts saw from this site.
    pub allocations_seen: u64,
    pub surviving_sampled_bytes: u64,
    pub surviving_bytes_per_s: f64,
    pub surviving_bytes_per_s_interval: Interval,
    /// Over the bursts of the newer half of the run.
    pub recent_surviving_bytes_per_s: f64,
    pub recent_samples: u64,
    /// `surviving_bytes_per_s` per MiB the process processed per second.
    pub surviving_bytes_per_mib_processed: Option<f64>,
    pub surviving_bytes_per_mib_processed_interval: Option<Interval>,
    /// `surviving_bytes_per_s` times the run's duration.
    pub estimated_surviving_bytes: u64,
    /// Innermost first; the first frame is the allocator's caller.
    pub frames: Vec<Frame>,
}

/// What a Go program's runtime says of itself (`processes[].go`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoReport {
    /// The Go version from the build information, e.g. `go1.22.10`.
    pub version: String,
    /// The main module's path, from the build information.
    #[serde(default)]
    pub main_module: Option<String>,
    /// Live goroutines (every one not dead, the runtime's own included); `None` without a census.
    #[serde(default)]
    pub goroutines: Option<u64>,
    /// Why there is no census, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census_error: Option<String>,
    /// Where the `runtime.g` layout came from: `dwarf` or `table` (a `-w` binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// How long the census shown took to read and group, in seconds (it runs on its own
    /// thread: a snapshot waits for it at most 0.1 s, then shows the previous one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census_s: Option<f64>,
    /// How much older than this snapshot the census shown is, in seconds (0: read for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census_age_s: Option<f64>,
    /// Reads that changed under the census and were left out (or reused), this reading.
    #[serde(default)]
    pub torn_reads: u64,
    /// Goroutines grouped by creation site, state, wait reason and top frames; largest first.
    #[serde(default)]
    pub groups: Vec<GoroutineGroupReport>,
    /// `None` when they could not be read: `memstats_error` says why.
    #[serde(default)]
    pub memstats: Option<GoMemStats>,
    /// Why there are no memory statistics, in one line (no DWARF and no table for the version,
    /// a stripped symbol table, a failed read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memstats_error: Option<String>,
    #[serde(default)]
    pub heap_profile: GoHeapProfile,
}

/// One group of goroutines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoroutineGroupReport {
    pub count: u64,
    /// `waiting`, `runnable`, `running`, `syscall`, `preempted`...
    pub state: String,
    /// As Go's tracebacks write it (`chan send`), for waiting goroutines.
    pub wait_reason: Option<String>,
    /// The `go` statement that created them (the creating function's frame).
    pub created_by: Vec<Frame>,
    /// One member's stack, innermost first (empty for running goroutines).
    pub frames: Vec<Frame>,
    /// Longest time a member has been blocked, at least: `g.waitsince`, which a GC's stack scan
    /// sets to the previous GC's mark-termination time; `None` until a second GC saw it blocked.
    pub oldest_wait_s: Option<f64>,
    pub growth: GoroutineGrowth,
}

/// A goroutine group's count against time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoroutineGrowth {
    /// Goroutines gained per minute over the run (least squares).
    pub per_min: Option<f64>,
    pub r2: Option<f64>,
    /// The same over the recent half.
    pub recent_per_min: Option<f64>,
    /// `leak_suspect`: blocked goroutines of this group keep accumulating.
    pub class: GrowthClass,
    pub samples: usize,
}

/// The runtime's memory statistics (`runtime.MemStats` names, snake case).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoMemStats {
    /// Where the offsets came from: `dwarf`, or `table` (a `-w` binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    pub heap_alloc: u64,
    pub heap_inuse: u64,
    pub heap_sys: u64,
    pub heap_objects: u64,
    pub num_gc: u64,
    pub next_gc: u64,
    pub gc_cpu_fraction: f64,
    pub heap_alloc_per_min: Option<f64>,
    pub heap_objects_per_min: Option<f64>,
}

/// The runtime's own heap profile (what pprof's heap profile shows), unsampled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoHeapProfile {
    pub available: bool,
    /// Why it is not available.
    #[serde(default)]
    pub reason: Option<String>,
    /// `runtime.MemProfileRate`: one sample per this many bytes allocated (0: off).
    #[serde(default)]
    pub rate: Option<u64>,
    /// The runtime's profile cycle (GC cycles since start, wrapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<u32>,
    /// How far behind the live heap the numbers are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<String>,
    /// In-use bytes of every site together (not only those listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_bytes: Option<u64>,
    /// Sites in the profile (those listed are the largest by in-use bytes).
    #[serde(default)]
    pub total_sites: u64,
    #[serde(default)]
    pub torn_reads: u64,
    #[serde(default)]
    pub sites: Vec<GoHeapSite>,
}

/// One stack of the heap profile, scaled like runtime/pprof.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoHeapSite {
    pub inuse_bytes: u64,
    pub inuse_objects: u64,
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    /// Innermost first (the first frame is the allocating function's caller of mallocgc).
    pub frames: Vec<Frame>,
}

/// One function's share of a process's outstanding memory, as pprof counts it: `self` from
/// the stacks whose innermost frame it is, `cumulative` from the stacks it is on (once per
/// stack, recursion or not).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// The function's name, or `module+0xoffset` when it has none.
    pub function: String,
    /// The module's path, when known.
    pub module: Option<String>,
    pub self_bytes: u64,
    pub self_count: u64,
    pub cumulative_bytes: u64,
    pub cumulative_count: u64,
}

/// Per-process heap state (`leaktrace/1`, `heap` object).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapReport {
    /// Current program break minus the start of the heap.
    pub brk_bytes: u64,
    pub brk_calls: u64,
    /// brk calls that could not move the break (each failed heap extension costs one).
    pub brk_failures: u64,
    /// Anonymous mmaps malloc made after a failed brk in the same call (without uprobes: the
    /// thread's next heap syscall after a failed brk, when it is an anonymous mmap).
    pub fallback_mmaps: FallbackSummary,
    /// Writable anonymous mappings made since tracing started and still mapped.
    pub anon_mmap_outstanding_bytes: u64,
    /// Anonymous address space reserved without write permission (PROT_NONE arenas, Go heap).
    pub anon_reserved_bytes: u64,
    pub rss_bytes: Option<u64>,
    pub vm_data_bytes: Option<u64>,
    /// RSS now minus RSS when tracing started.
    pub rss_growth_bytes: Option<i64>,
    /// Share of the RSS growth that the process's outstanding bytes account for (growth mode:
    /// its heap growth still mapped).
    pub explained_share: Option<f64>,
    /// Heap-syscall records received: one per heap syscall, plus (exact mode) one per allocator
    /// call that made heap syscalls, naming its site.
    pub events: u64,
}

/// Chunk size and how many fallback mmaps had it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSize {
    pub bytes: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackSummary {
    pub count: u64,
    pub bytes: u64,
    /// Distinct chunk sizes in the order first seen (glibc 2.36: 1 MiB, then 132 KiB).
    /// Absent from what the post-mortem reader needs: read as none.
    #[serde(default)]
    pub chunk_sizes: Vec<ChunkSize>,
}

/// Anything that could make the numbers wrong, per process. All zero: the numbers are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub dropped_allocations: u64,
    /// Allocation stacks that are not whole: the sum of the four `stack_*` reasons below.
    pub stack_errors: u64,
    pub lost_events: u64,
    pub unknown_frees: u64,
    /// Stacks through code with no unwind table (walked with frame pointers from there).
    #[serde(default)]
    pub stack_no_table: u64,
    /// Stacks stopped by an unwind rule the kernel cannot follow or a failed stack read.
    #[serde(default)]
    pub stack_unwind_errors: u64,
    /// Stacks cut at 127 frames.
    #[serde(default)]
    pub stack_truncated: u64,
    /// Stacks not stored (stack map full): the site keeps its caller frame.
    #[serde(default)]
    pub stack_map_full: u64,
}

impl Counters {
    /// Both processes' counters together (saturating: a sum never wraps).
    pub fn saturating_add(self, other: &Counters) -> Counters {
        Counters {
            dropped_allocations: self
                .dropped_allocations
                .saturating_add(other.dropped_allocations),
            stack_errors: self.stack_errors.saturating_add(other.stack_errors),
            lost_events: self.lost_events.saturating_add(other.lost_events),
            unknown_frees: self.unknown_frees.saturating_add(other.unknown_frees),
            stack_no_table: self.stack_no_table.saturating_add(other.stack_no_table),
            stack_unwind_errors: self
                .stack_unwind_errors
                .saturating_add(other.stack_unwind_errors),
            stack_truncated: self.stack_truncated.saturating_add(other.stack_truncated),
            stack_map_full: self.stack_map_full.saturating_add(other.stack_map_full),
        }
    }

    pub fn any(&self) -> bool {
        self.dropped_allocations > 0
            || self.stack_errors > 0
            || self.lost_events > 0
            || self.unknown_frees > 0
    }
}

/// One site's allocation counters, as every view reads them. Exact mode: blocks of the malloc
/// family. Growth mode writes `model::GrowthSiteTotals` under these names (its `From` says how).
/// Only `outstanding_bytes` and `outstanding_count` are required of snapshots read back: the
/// others were not always written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteCounters {
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub allocated_count: u64,
    #[serde(default)]
    pub freed_bytes: u64,
    #[serde(default)]
    pub freed_count: u64,
    /// Age of the oldest allocation of this site still outstanding (None when none is).
    #[serde(default)]
    pub oldest_age_s: Option<f64>,
    /// Outstanding bytes and blocks allocated at least `min_age_s` ago.
    #[serde(default)]
    pub aged_outstanding_bytes: u64,
    #[serde(default)]
    pub aged_outstanding_count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteReport {
    pub id: String,
    #[serde(flatten)]
    pub counters: SiteCounters,
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

/// Per-site heap attribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteHeap {
    pub fallback_mmap_count: u64,
    pub fallback_mmap_bytes: u64,
    /// Writable bytes of mappings this site's allocator calls made without a fallback
    /// (large blocks), still mapped.
    pub direct_mmap_bytes: u64,
    /// Writable anonymous bytes still mapped that this site made, by any route.
    pub anon_mmap_bytes: u64,
    /// Program-break bytes this site's brk calls added and that are still below the break
    /// (growth mode, or the program's own brk calls).
    #[serde(default)]
    pub brk_bytes: u64,
    /// Growth mode: heap-growing syscalls made from this site's stack, and when the first and
    /// latest were seen (seconds since tracing started).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub growth_events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_s: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether a site leaks, as far as its series can tell.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum GrowthClass {
    /// Outstanding bytes grow steadily with time or with work, still grow recently, and
    /// old allocations keep surviving.
    LeakSuspect,
    /// Outstanding bytes grew materially, then stopped growing (a cache or pool that
    /// filled up).
    Plateau,
    /// The site allocated and freed much more than it holds, and what it holds stays
    /// bounded.
    Churn,
    /// Growth mode's growth-event sites: the heap this stack grew keeps growing. What grew the
    /// heap, which is no evidence of a leak (the allocation crossing the heap's top is usually
    /// a large temporary): leaks are ranked from the bursts' estimate instead.
    HeapGrowth,
    /// Too few samples, too little data, or a shape that fits none of the above
    /// (irregular growth, growth of young allocations only, growth slowing down).
    #[default]
    Unknown,
}

/// Growth verdict of one site: what goes into leaktrace's JSON per site as `"growth"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Growth {
    /// Outstanding bytes gained per MiB the process processed, over the whole run;
    /// `None` without enough samples or without any work processed.
    pub bytes_per_mib_processed: Option<f64>,
    /// Outstanding bytes gained per minute, over the whole run.
    pub bytes_per_min: Option<f64>,
    /// Fit quality (R²) of `bytes_per_mib_processed`; `None` when outstanding is flat.
    pub r2_processed: Option<f64>,
    /// Fit quality (R²) of `bytes_per_min`; `None` when outstanding is flat.
    pub r2_time: Option<f64>,
    /// Outstanding bytes gained per minute over the recent window.
    pub recent_bytes_per_min: Option<f64>,
    /// Outstanding bytes gained per MiB processed over the recent window; `None` when
    /// no work was processed in it.
    pub recent_bytes_per_mib_processed: Option<f64>,
    /// The verdict.
    pub class: GrowthClass,
    /// Samples the verdict is based on.
    pub samples: usize,
}

/// One frame of a call stack, innermost first. An address inside inlined code yields several
/// frames: the inlined functions (innermost first, `inlined: true`) and then the function they
/// were inlined into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub addr: u64,
    pub module: Option<String>,
    /// Offset of the address in the module file.
    pub offset: Option<u64>,
    pub build_id: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_written_as_before() {
        for mode in [Mode::Exact, Mode::Growth, Mode::SystemWide] {
            let json = serde_json::to_string(&mode).expect("serializes");
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            let back: Mode = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, mode);
        }
    }

    #[test]
    fn system_wide_is_no_mode_of_the_command_line() {
        use clap::ValueEnum as _;
        let names: Vec<String> = Mode::value_variants()
            .iter()
            .filter_map(|m| m.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(names, ["exact", "growth"]);
    }

    #[test]
    fn flattened_counters_are_top_level_fields() {
        let site = SiteReport {
            id: "1-2".to_string(),
            counters: SiteCounters {
                outstanding_bytes: 7,
                ..SiteCounters::default()
            },
            growth: Growth {
                bytes_per_mib_processed: None,
                bytes_per_min: None,
                r2_processed: None,
                r2_time: None,
                recent_bytes_per_min: None,
                recent_bytes_per_mib_processed: None,
                class: GrowthClass::Unknown,
                samples: 0,
            },
            leak_rank: 1,
            heap: SiteHeap::default(),
            frames: Vec::new(),
        };
        let value = serde_json::to_value(&site).expect("serializes");
        assert_eq!(value["outstanding_bytes"], 7);
        assert_eq!(value["aged_outstanding_count"], 0);
        assert!(value.get("counters").is_none());
        let back: SiteReport = serde_json::from_value(value).expect("parses");
        assert_eq!(back, site);
    }
}
