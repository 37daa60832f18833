//! The names userspace finds the eBPF object's maps, globals and programs by. The kernel side
//! cannot use these constants (aya-ebpf names a map or a global after its static, and
//! `#[map(name = ...)]` takes a literal only), so leaktrace's tests open the built object and
//! check that each name is there and that nothing there lacks a name here.

/// One `&str` constant per name (the constant's own name unless another is given), and `ALL`
/// of them.
macro_rules! names {
    ($($(#[$meta:meta])* $name:ident $(= $value:literal)?,)+) => {
        $($(#[$meta])* pub const $name: &str = names!(@value $name $($value)?);)+

        pub const ALL: [&str; [$($name),+].len()] = [$($name),+];
    };
    (@value $name:ident) => {
        stringify!($name)
    };
    (@value $name:ident $value:literal) => {
        $value
    };
}

/// Maps (`leaktrace-ebpf/src/maps.rs`).
pub mod maps {
    names! {
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
        UNWIND_ROWS,
        UNWIND_MAPPINGS,
        UNWIND_STATE,
        UNWOUND_STACKS,
        UNWOUND_STACK_IDS,
        UNWOUND_NEXT_ID,
    }
}

/// Globals that userspace sets at load time (`leaktrace-ebpf/src/globals.rs`).
pub mod globals {
    names! {
        /// The traced machine's page size (u64).
        PAGE_SIZE,
        /// `--sample-bytes` (u64, 0: every stack captured).
        SAMPLE_BYTES,
        /// System-wide mode: every process's heap syscalls are reported (u32, 0 or 1).
        TRACE_ALL,
        /// leaktrace's own process, never traced (u32).
        SELF_TGID,
        /// Growth mode (u32, 0 or 1).
        GROWTH_MODE,
    }
}

/// Programs (`leaktrace-ebpf/src/probes.rs` and `heap.rs`).
pub mod programs {
    names! {
        /// Uprobe at the entry of every malloc-family function (the attach cookie says which).
        ALLOC_ENTER = "alloc_enter",
        /// Uretprobe of every malloc-family function.
        ALLOC_RETURN = "alloc_return",
        /// Uprobe at the entry of `free`.
        FREE_ENTER = "free_enter",
        /// Uprobe at a launched program's entry point: stops it (SIGSTOP) until the unwind
        /// tables of the modules ld.so mapped are loaded.
        ENTRY_STOP = "entry_stop",
        /// Tracepoint `syscalls:sys_enter_*` of the heap syscalls.
        HEAP_SYS_ENTER = "heap_sys_enter",
        /// Tracepoint `syscalls:sys_exit_*` of the heap syscalls.
        HEAP_SYS_EXIT = "heap_sys_exit",
        /// Tracepoint `sched:sched_process_exec`.
        PROCESS_EXEC = "process_exec",
    }
}
