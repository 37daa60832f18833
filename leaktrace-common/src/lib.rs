//! The contract between the eBPF programs and userspace: every type that crosses the
//! kernel/user boundary lives here, `#[repr(C)]`, without implicit padding, with the names
//! userspace finds the object's maps, globals and programs by and the arithmetic both sides share.
#![cfg_attr(not(test), no_std)]

pub mod names;

/// A `#[repr(u32)]` enum of kinds that cross the kernel/user boundary as `u32`, with the list
/// of its variants and a `TryFrom<u32>` that refuses values this build does not know.
macro_rules! kind_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident $(= $value:literal)?,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant $(= $value)?,)+
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];
        }

        impl TryFrom<u32> for $name {
            type Error = UnknownKind;

            fn try_from(value: u32) -> Result<Self, UnknownKind> {
                $(if value == $name::$variant as u32 {
                    return Ok($name::$variant);
                })+
                Err(UnknownKind(value))
            }
        }
    };
}

kind_enum! {
    /// Which allocator function a uprobe is attached to. Passed as the BPF attach cookie so that
    /// one entry program and one return program serve the whole malloc family (0, 1, ... in
    /// this order).
    pub enum AllocFn {
        Malloc,
        Calloc,
        Realloc,
        Reallocarray,
        PosixMemalign,
        AlignedAlloc,
        Memalign,
        Valloc,
        Pvalloc,
        /// jemalloc `mallocx(size, flags)`: malloc's size, flags (alignment, zeroing, arena)
        /// change no byte count.
        Mallocx,
        /// jemalloc `rallocx(ptr, size, flags)`: realloc, except that NULL always means failure
        /// (the block is kept), whatever the size.
        Rallocx,
        /// jemalloc `xallocx(ptr, size, extra, flags)`: resizes in place and returns the block's
        /// usable size; a result below `size` means the block was left as it was.
        Xallocx,
        /// mimalloc `mi_expand(p, newsize)`: grows in place, returns `p`, or NULL leaving the
        /// block as it was.
        Expand,
        /// `reallocf(p, size)` (mimalloc, BSD): realloc that frees `p` when it fails.
        Reallocf,
    }
}

impl AllocFn {
    /// The libc symbol this function is exported as.
    pub const fn symbol(self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::Reallocarray => "reallocarray",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
            AllocFn::Valloc => "valloc",
            AllocFn::Pvalloc => "pvalloc",
            AllocFn::Mallocx => "mallocx",
            AllocFn::Rallocx => "rallocx",
            AllocFn::Xallocx => "xallocx",
            AllocFn::Expand => "mi_expand",
            AllocFn::Reallocf => "reallocf",
        }
    }

    pub fn from_cookie(cookie: u64) -> Option<AllocFn> {
        u32::try_from(cookie)
            .ok()
            .and_then(|value| AllocFn::try_from(value).ok())
    }

    /// Whether the function frees its first argument when it succeeds (realloc family).
    pub const fn moves_block(self) -> bool {
        matches!(
            self,
            AllocFn::Realloc
                | AllocFn::Reallocarray
                | AllocFn::Rallocx
                | AllocFn::Xallocx
                | AllocFn::Expand
                | AllocFn::Reallocf
        )
    }

    /// Whether a NULL result with a size of 0 means the block was freed (glibc's and musl's
    /// `realloc(p, 0)`); for the others NULL is a failure that keeps the block (or, for
    /// `reallocf`, frees it whatever the size).
    pub const fn zero_size_frees(self) -> bool {
        matches!(self, AllocFn::Realloc | AllocFn::Reallocarray)
    }
}

/// A kind number (allocator function, heap event) this build does not know: the kernel and
/// userspace sides come from different builds, or a record is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownKind(pub u32);

impl core::fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unknown kind {}", self.0)
    }
}

/// `a * b` unless it overflows (calloc/reallocarray then fail). Done in 32-bit halves: LLVM
/// turns `checked_mul` and the `b > MAX / a` idiom into a 128-bit multiply BPF cannot do.
#[inline(always)]
pub fn mul_no_overflow(a: u64, b: u64) -> Option<u64> {
    let (a_hi, a_lo, b_hi, b_lo) = (a >> 32, a & 0xffff_ffff, b >> 32, b & 0xffff_ffff);
    if a_hi != 0 && b_hi != 0 {
        return None;
    }
    let low = a_lo * b_lo;
    let cross = a_hi * b_lo + b_hi * a_lo;
    if cross >> 32 != 0 {
        return None;
    }
    let product = (cross << 32).wrapping_add(low);
    if product < low {
        None
    } else {
        Some(product)
    }
}

/// `stack_id` of a site whose stack could not be captured (the caller address is still known).
pub const NO_STACK: u32 = u32::MAX;

/// `stack_id` of allocations whose stack was not sampled (`--sample-bytes`): counted under their
/// caller alone, exactly; userspace shares them among the caller's sampled stacks.
pub const UNSAMPLED_STACK: u32 = u32::MAX - 1;

/// Entries of the table of exponential draws for stack sampling.
pub const SAMPLE_DRAWS: u32 = 256;

/// An allocation site: one user call stack in one process. `caller` is the instruction the
/// allocator returns to, which is also the first frame of the stack; it is kept apart so that a
/// site stays attributable to its caller when the stack map refuses the stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub tgid: u32,
    pub stack_id: u32,
    pub caller: u64,
}

/// Key of an outstanding allocation: addresses are only unique within one address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// One outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the allocation returned.
    pub timestamp_ns: u64,
    pub site: SiteKey,
}

/// Per-site totals, kept per CPU and summed in userspace (no atomics on the hot path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_bytes: u64,
    pub freed_count: u64,
}

impl SiteStats {
    pub fn add(&mut self, other: &SiteStats) {
        self.allocated_bytes = self.allocated_bytes.wrapping_add(other.allocated_bytes);
        self.allocated_count = self.allocated_count.wrapping_add(other.allocated_count);
        self.freed_bytes = self.freed_bytes.wrapping_add(other.freed_bytes);
        self.freed_count = self.freed_count.wrapping_add(other.freed_count);
    }
}

/// Everything that can make the numbers wrong, per process, kept per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidCounters {
    /// Successful allocations not recorded because a map was full.
    pub dropped_allocations: u64,
    /// Allocation stacks that are not whole: the sum of the four reasons below.
    pub stack_errors: u64,
    /// Entry/return probes that did not pair up (in-flight map full, a return without its
    /// entry, an entry whose return never came), frees missed (an address handed out again, a
    /// free not accounted), and heap-syscall records lost to a full ring buffer.
    pub lost_events: u64,
    /// Frees of addresses leaktrace never saw allocated (allocated before attach, or dropped).
    pub unknown_frees: u64,
    /// Stacks that went through code with no unwind table (a module not loaded yet, or code
    /// without CFI): unwound with frame pointers from there, which may be wrong or stop early.
    pub stack_no_table: u64,
    /// Stacks stopped by a rule the kernel side cannot follow, or a read of the user stack that
    /// failed.
    pub stack_unwind_errors: u64,
    /// Stacks deeper than `MAX_STACK_FRAMES`: the outer frames are cut.
    pub stack_truncated: u64,
    /// Stacks not stored: the stack map was full (the site keeps its caller frame).
    pub stack_map_full: u64,
}

impl PidCounters {
    pub fn add(&mut self, other: &PidCounters) {
        self.dropped_allocations = self
            .dropped_allocations
            .wrapping_add(other.dropped_allocations);
        self.stack_errors = self.stack_errors.wrapping_add(other.stack_errors);
        self.lost_events = self.lost_events.wrapping_add(other.lost_events);
        self.unknown_frees = self.unknown_frees.wrapping_add(other.unknown_frees);
        self.stack_no_table = self.stack_no_table.wrapping_add(other.stack_no_table);
        self.stack_unwind_errors = self
            .stack_unwind_errors
            .wrapping_add(other.stack_unwind_errors);
        self.stack_truncated = self.stack_truncated.wrapping_add(other.stack_truncated);
        self.stack_map_full = self.stack_map_full.wrapping_add(other.stack_map_full);
    }
}

/// `InflightCall::flags`: the block being reallocated was known and is held in `old`.
pub const INFLIGHT_HAS_OLD: u32 = 1;

/// An allocator call between its entry and its return, keyed by the thread's full pid_tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightCall {
    /// Bytes requested (already multiplied/rounded per function).
    pub size: u64,
    /// realloc/reallocarray: the block being resized (0 for NULL).
    pub old_addr: u64,
    /// posix_memalign: where the result pointer is stored.
    pub out_ptr: u64,
    /// Stack pointer at entry: a call entered with a lower or equal stack pointer while this one
    /// is in flight is nested inside it (glibc's reallocarray calls realloc, memalign calls
    /// malloc, realloc(p, 0) calls free) and is not counted twice.
    pub entry_sp: u64,
    /// `AllocFn` as u32.
    pub function: u32,
    /// Nested allocator calls entered and not yet returned.
    pub depth: u32,
    pub flags: u32,
    /// Whether `size` overflowed (calloc/reallocarray): the call must fail.
    pub overflow: u32,
    /// Heap syscalls (brk, mmap, ...) this call made; its site is reported if non-zero.
    pub heap_events: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at entry: identifies the call in heap events.
    pub entry_ns: u64,
    /// The block being reallocated, removed from the outstanding map at entry so that a
    /// concurrent allocation reusing its address is not mistaken for it; restored on failure.
    pub old: AllocInfo,
}

kind_enum! {
    /// `HeapEvent::kind`: a completed heap syscall (its x86-64 number, which is also
    /// `SyscallArgs::nr`) or the site of an allocator call that made heap syscalls.
    pub enum HeapEventKind {
        Mmap = 9,
        Mprotect = 10,
        Munmap = 11,
        Brk = 12,
        Mremap = 25,
        /// Names the site of an allocator call which made heap syscalls (sent at the call's
        /// return, when its stack is known).
        CallSite = 1000,
        /// The process exec'd a new program (`sched:sched_process_exec`): everything known of
        /// its address space is void. Only `tgid`, `tid`, `timestamp_ns` and `comm` (the new
        /// program's) are set.
        Exec = 1001,
    }
}

/// `TRACED_PIDS` values: flags. The process's heap syscalls (and exec) are reported.
pub const TRACED: u32 = 1;
/// The process is stopped (SIGSTOP, from the kernel) when it execs, before the new program runs
/// its first instruction, until userspace has started its state afresh and continues it
/// (SIGCONT): nothing of the new program is missed or mixed with the old one's. Only for
/// commands leaktrace launched (their lifetime is the run's).
pub const STOP_ON_EXEC: u32 = 2;

/// A heap syscall's arguments between its entry and exit tracepoints, by thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    pub nr: u32,
    pub _pad: u32,
    pub args: [u64; 6],
}

/// One record of the heap ring buffer: a completed heap syscall of a traced process, or
/// (`kind == HeapEventKind::CallSite`) the site of an allocator call that made heap syscalls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapEvent {
    /// `HeapEventKind` as u32.
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// The user stack: the syscall's own (outside allocator calls) or the call's site.
    pub stack_id: u32,
    /// `entry_ns` of the allocator call the syscall was made in (0: none).
    pub call_ns: u64,
    /// The return address at the top of the user stack (the syscall wrapper's caller) or, for
    /// `HeapEventKind::CallSite`, the allocator's caller.
    pub caller: u64,
    /// mmap: addr, len, prot, flags, fd; munmap: addr, len; mprotect: start, len, prot;
    /// mremap: addr, old_len, new_len, flags, new_addr; brk: requested break.
    pub args: [u64; 5],
    /// The syscall's return value (brk: the new break, equal to the old one on failure).
    pub ret: i64,
    pub timestamp_ns: u64,
    pub comm: [u8; 16],
}

/// Bytes of user stack copied at each heap-growth event in growth mode (16 KiB held 53 frames
/// on this kind of machine; 8 KiB lost the outer frames of deep stacks).
pub const STACK_COPY_BYTES: usize = 16 * 1024;

/// Growth mode: a heap-growing syscall with what userspace needs to unwind the thread's stack
/// with the modules' `.eh_frame` (no frame pointers needed). Sent in the heap ring buffer after
/// its `HeapEvent` header; told apart from plain `HeapEvent` records by its length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GrowthEvent {
    pub event: HeapEvent,
    /// User registers at the syscall.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of `stack` copied from `sp` upwards (0: the stack could not be read).
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u8; STACK_COPY_BYTES],
}

pub mod unwind;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers without padding (size assertions below).
    unsafe impl aya::Pod for super::SyscallArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HeapEvent {}
    // SAFETY: all of these are #[repr(C)] integers with no padding (checked by the size
    // assertions below), so any bit pattern is valid.
    unsafe impl aya::Pod for super::SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SiteStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PidCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InflightCall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::unwind::UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::unwind::ExecMapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::unwind::ProcessMappings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::unwind::UnwoundStack {}
}

// No implicit padding: a field added without its explicit padding breaks the build.
const _: () = assert!(core::mem::size_of::<SiteKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllocInfo>() == 32);
const _: () = assert!(core::mem::size_of::<SiteStats>() == 32);
const _: () = assert!(core::mem::size_of::<PidCounters>() == 64);
const _: () = assert!(core::mem::size_of::<InflightCall>() == 64 + 32);
const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 56);
const _: () = assert!(core::mem::size_of::<HeapEvent>() == 104);
const _: () = assert!(core::mem::size_of::<GrowthEvent>() == 104 + 32 + STACK_COPY_BYTES);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn mul_no_overflow_agrees_with_checked_mul(a: u64, b: u64) {
            prop_assert_eq!(mul_no_overflow(a, b), a.checked_mul(b));
        }

        #[test]
        fn mul_no_overflow_agrees_with_checked_mul_near_32_bits(
            a in 0u64..1 << 34,
            b in 0u64..1 << 34,
        ) {
            prop_assert_eq!(mul_no_overflow(a, b), a.checked_mul(b));
        }
    }

    #[test]
    fn mul_no_overflow_at_the_edges() {
        for (a, b) in [
            (0, u64::MAX),
            (1, u64::MAX),
            (2, u64::MAX / 2),
            (2, u64::MAX / 2 + 1),
            (1 << 32, 1 << 31),
            (1 << 32, 1 << 32),
            (u64::from(u32::MAX), u64::from(u32::MAX)),
            (u64::from(u32::MAX) + 1, u64::from(u32::MAX)),
        ] {
            assert_eq!(mul_no_overflow(a, b), a.checked_mul(b), "{a} * {b}");
            assert_eq!(mul_no_overflow(b, a), b.checked_mul(a), "{b} * {a}");
        }
    }

    #[test]
    fn kinds_round_trip_through_u32() {
        for function in AllocFn::ALL {
            assert_eq!(AllocFn::try_from(function as u32), Ok(function));
            assert_eq!(AllocFn::from_cookie(function as u64), Some(function));
        }
        // The first value past every kind (kinds are numbered from 1 without gaps).
        let unknown = AllocFn::ALL.len() as u32 + 1;
        assert!(AllocFn::ALL.iter().all(|f| (*f as u32) < unknown));
        assert_eq!(AllocFn::try_from(unknown), Err(UnknownKind(unknown)));
        assert_eq!(AllocFn::from_cookie(1 << 32), None);
        for kind in HeapEventKind::ALL {
            assert_eq!(HeapEventKind::try_from(kind as u32), Ok(kind));
        }
        assert_eq!(HeapEventKind::try_from(0), Err(UnknownKind(0)));
    }
}
