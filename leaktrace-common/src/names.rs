//! The names userspace finds the eBPF object's maps, globals and programs by. The kernel side
//! cannot use these constants (aya-ebpf names a map or a global after its static, and
//! `#[map(name = ...)]` takes a literal only), so leaktrace's tests open the built object and
//! check that each name is there and that nothing there lacks a name here.

/// Maps (`leaktrace-ebpf/src/maps.rs`).
pub mod maps {
    pub const ALLOCS: &str = "ALLOCS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const STACKS: &str = "STACKS";
    pub const SITES: &str = "SITES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const TRACED_PIDS: &str = "TRACED_PIDS";
    pub const SYSCALLS: &str = "SYSCALLS";
    pub const HEAP_EVENTS: &str = "HEAP_EVENTS";
    pub const PROBE_HITS: &str = "PROBE_HITS";
    pub const BRK_TOPS: &str = "BRK_TOPS";
    pub const SAMPLE_COUNTDOWN: &str = "SAMPLE_COUNTDOWN";
    pub const SAMPLE_GAPS: &str = "SAMPLE_GAPS";

    pub const ALL: [&str; 12] = [
        ALLOCS,
        INFLIGHT,
        STACKS,
        SITES,
        COUNTERS,
        TRACED_PIDS,
        SYSCALLS,
        HEAP_EVENTS,
        PROBE_HITS,
        BRK_TOPS,
        SAMPLE_COUNTDOWN,
        SAMPLE_GAPS,
    ];
}

/// Globals that userspace sets at load time (`leaktrace-ebpf/src/globals.rs`).
pub mod globals {
    /// The traced machine's page size (u64).
    pub const PAGE_SIZE: &str = "PAGE_SIZE";
    /// `--sample-bytes` (u64, 0: every stack captured).
    pub const SAMPLE_BYTES: &str = "SAMPLE_BYTES";
    /// System-wide mode: every process's heap syscalls are reported (u32, 0 or 1).
    pub const TRACE_ALL: &str = "TRACE_ALL";
    /// leaktrace's own process, never traced (u32).
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Growth mode (u32, 0 or 1).
    pub const GROWTH_MODE: &str = "GROWTH_MODE";

    pub const ALL: [&str; 5] = [PAGE_SIZE, SAMPLE_BYTES, TRACE_ALL, SELF_TGID, GROWTH_MODE];
}

/// Programs.
pub mod programs {
    /// Uprobe at the entry of every malloc-family function (the attach cookie says which).
    pub const ALLOC_ENTER: &str = "alloc_enter";
    /// Uretprobe of every malloc-family function.
    pub const ALLOC_RETURN: &str = "alloc_return";
    /// Uprobe at the entry of `free`.
    pub const FREE_ENTER: &str = "free_enter";
    /// Tracepoint `syscalls:sys_enter_*` of the heap syscalls.
    pub const HEAP_SYS_ENTER: &str = "heap_sys_enter";
    /// Tracepoint `syscalls:sys_exit_*` of the heap syscalls.
    pub const HEAP_SYS_EXIT: &str = "heap_sys_exit";

    pub const ALL: [&str; 5] = [
        ALLOC_ENTER,
        ALLOC_RETURN,
        FREE_ENTER,
        HEAP_SYS_ENTER,
        HEAP_SYS_EXIT,
    ];
}
