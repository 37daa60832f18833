//! Globals that userspace patches at load time (their names: `leaktrace_common::names::globals`).
//! Read volatile, so that the compiler does not fold the defaults.

/// Page size of the traced machine (pvalloc's rounding, the stack copy's page boundaries).
#[unsafe(no_mangle)]
static PAGE_SIZE: u64 = 4096;

/// `--sample-bytes`: capture a stack only for sampled allocations (0: for every allocation).
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

/// Report every process's heap syscalls (system-wide mode).
#[unsafe(no_mangle)]
static TRACE_ALL: u32 = 0;

/// leaktrace's own process, never traced (system-wide, its own heap growth would feed back into
/// the events it handles).
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

/// Growth mode (no uprobes). Heap-growing syscalls carry the user registers and a copy of the
/// top of the user stack, for unwinding with `.eh_frame` in userspace.
#[unsafe(no_mangle)]
static GROWTH_MODE: u32 = 0;

#[inline(always)]
pub fn page_size() -> u64 {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&PAGE_SIZE) }
}

#[inline(always)]
pub fn sample_bytes() -> u64 {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&SAMPLE_BYTES) }
}

#[inline(always)]
pub fn trace_all() -> bool {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&TRACE_ALL) != 0 }
}

#[inline(always)]
pub fn self_tgid() -> u32 {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

#[inline(always)]
pub fn growth_mode() -> bool {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&GROWTH_MODE) != 0 }
}
