//! Every map of the kernel side. Sizes here are placeholders: userspace sets the real ones at
//! load time (`--max-allocations`, `--max-stacks`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use leaktrace_common::{
    unwind::{ProcessMappings, UnwindRow, UnwindState, UnwoundStack},
    AllocInfo, AllocKey, InflightCall, PidCounters, SiteKey, SiteStats, SyscallArgs,
};

/// Outstanding allocations: (process, address) -> size, site, time.
#[map]
pub static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1 << 20, 0);

/// Allocator calls between entry and return, by thread (full pid_tgid).
#[map]
pub static INFLIGHT: HashMap<u64, InflightCall> = HashMap::with_max_entries(1 << 14, 0);

/// User stacks of allocation sites.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1 << 14, 0);

/// Per-site totals, per CPU.
#[map]
pub static SITES: PerCpuHashMap<SiteKey, SiteStats> = PerCpuHashMap::with_max_entries(1 << 15, 0);

/// Per-process error counters, per CPU.
#[map]
pub static COUNTERS: PerCpuHashMap<u32, PidCounters> = PerCpuHashMap::with_max_entries(1 << 12, 0);

/// Processes whose heap syscalls are reported (unless `TRACE_ALL` is set): tgid -> 1.
#[map]
pub static TRACED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(1 << 10, 0);

/// Heap syscalls between their entry and exit tracepoints, by thread.
#[map]
pub static SYSCALLS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(1 << 14, 0);

/// Completed heap syscalls and allocator-call sites, for userspace (polled on a timer).
#[map]
pub static HEAP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Uprobe hits (all programs, all traced processes), per CPU: the cost meter.
#[map]
pub static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Growth mode: each process's program break after its last brk, to tell growth from shrinks.
#[map]
pub static BRK_TOPS: HashMap<u32, u64> = HashMap::with_max_entries(1 << 14, 0);

/// `--sample-bytes`: per CPU, bytes still to allocate before the next allocation whose stack is
/// captured (a Poisson process over allocated bytes, as jemalloc and Go's pprof sample).
#[map]
pub static SAMPLE_COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// `--sample-bytes`: exponentially distributed byte gaps with the chosen mean, filled by
/// userspace; one is drawn at random after each sample.
#[map]
pub static SAMPLE_GAPS: Array<u64> = Array::with_max_entries(leaktrace_common::SAMPLE_DRAWS, 0);

/// Every loaded module's unwind rows, each module's sorted by pc in a range userspace allocates
/// (`--unwind-table-mib` sizes it).
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

/// Each traced process's executable mappings: which rows and load bias apply to a pc.
#[map]
pub static UNWIND_MAPPINGS: HashMap<u32, ProcessMappings> = HashMap::with_max_entries(1 << 10, 0);

/// The walk's state, per CPU (frames and registers between two `bpf_loop` steps).
#[map]
pub static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);

/// Stacks unwound with the tables: stack id -> frames (`--max-stacks` entries).
#[map]
pub static UNWOUND_STACKS: HashMap<u32, UnwoundStack> = HashMap::with_max_entries(1 << 14, 0);

/// 64-bit hash of a stack's frames (and its process) -> its stack id.
#[map]
pub static UNWOUND_STACK_IDS: HashMap<u64, u32> = HashMap::with_max_entries(1 << 14, 0);

/// Per CPU: the next stack id this CPU hands out (ids are `UNWOUND_STACK_BIT | n << 8 | cpu`).
#[map]
pub static UNWOUND_NEXT_ID: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
