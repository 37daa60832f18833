//! The contract between the eBPF programs and userspace: every type that crosses the
//! kernel/user boundary lives here, `#[repr(C)]`, without implicit padding.
#![no_std]

/// Which allocator function a uprobe is attached to. Passed as the BPF attach cookie so that one
/// entry program and one return program serve the whole malloc family.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFn {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Memalign = 6,
    Valloc = 7,
    Pvalloc = 8,
}

impl AllocFn {
    pub const ALL: [AllocFn; 9] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Reallocarray,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
        AllocFn::Valloc,
        AllocFn::Pvalloc,
    ];

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
        }
    }

    pub const fn from_cookie(cookie: u64) -> Option<AllocFn> {
        match cookie {
            0 => Some(AllocFn::Malloc),
            1 => Some(AllocFn::Calloc),
            2 => Some(AllocFn::Realloc),
            3 => Some(AllocFn::Reallocarray),
            4 => Some(AllocFn::PosixMemalign),
            5 => Some(AllocFn::AlignedAlloc),
            6 => Some(AllocFn::Memalign),
            7 => Some(AllocFn::Valloc),
            8 => Some(AllocFn::Pvalloc),
            _ => None,
        }
    }

    /// Whether the function frees its first argument when it succeeds (realloc family).
    pub const fn moves_block(self) -> bool {
        matches!(self, AllocFn::Realloc | AllocFn::Reallocarray)
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
    /// `bpf_get_stackid` failures (-EEXIST hash collision, -ENOMEM map full, -EFAULT).
    pub stack_errors: u64,
    /// Entry/return probes that did not pair up (in-flight map full, a return without its
    /// entry, an entry whose return never came).
    pub lost_events: u64,
    /// Frees of addresses leaktrace never saw allocated (allocated before attach, or dropped).
    pub unknown_frees: u64,
}

impl PidCounters {
    pub fn add(&mut self, other: &PidCounters) {
        self.dropped_allocations = self
            .dropped_allocations
            .wrapping_add(other.dropped_allocations);
        self.stack_errors = self.stack_errors.wrapping_add(other.stack_errors);
        self.lost_events = self.lost_events.wrapping_add(other.lost_events);
        self.unknown_frees = self.unknown_frees.wrapping_add(other.unknown_frees);
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

/// x86-64 numbers of the heap syscalls traced.
pub const SYS_MMAP: u32 = 9;
pub const SYS_MPROTECT: u32 = 10;
pub const SYS_MUNMAP: u32 = 11;
pub const SYS_BRK: u32 = 12;
pub const SYS_MREMAP: u32 = 25;

/// `HeapEvent::kind` of a record that names the site of an allocator call which made heap
/// syscalls (sent at the call's return, when its stack is known).
pub const HEAP_CALL_SITE: u32 = 1000;

/// A heap syscall's arguments between its entry and exit tracepoints, by thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    pub nr: u32,
    pub _pad: u32,
    pub args: [u64; 6],
}

/// One record of the heap ring buffer: a completed heap syscall of a traced process, or
/// (`kind == HEAP_CALL_SITE`) the site of an allocator call that made heap syscalls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapEvent {
    /// Syscall number (`SYS_*`) or `HEAP_CALL_SITE`.
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// The user stack: the syscall's own (outside allocator calls) or the call's site.
    pub stack_id: u32,
    /// `entry_ns` of the allocator call the syscall was made in (0: none).
    pub call_ns: u64,
    /// The return address at the top of the user stack (the syscall wrapper's caller) or, for
    /// `HEAP_CALL_SITE`, the allocator's caller.
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
}

// No implicit padding: a field added without its explicit padding breaks the build.
const _: () = assert!(core::mem::size_of::<SiteKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllocKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllocInfo>() == 32);
const _: () = assert!(core::mem::size_of::<SiteStats>() == 32);
const _: () = assert!(core::mem::size_of::<PidCounters>() == 32);
const _: () = assert!(core::mem::size_of::<InflightCall>() == 64 + 32);
const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 56);
const _: () = assert!(core::mem::size_of::<HeapEvent>() == 104);
const _: () = assert!(core::mem::size_of::<GrowthEvent>() == 104 + 32 + STACK_COPY_BYTES);
