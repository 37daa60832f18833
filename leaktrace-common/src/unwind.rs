//! In-kernel unwinding: the rows userspace compiles from a module's `.eh_frame` /
//! `.debug_frame`, where a process's code is mapped, and the stacks the walk stores.
//!
//! All rows of all loaded modules live in one BPF array (`UNWIND_ROWS`), each module's rows
//! sorted by address in a range of it; a process's executable mappings (`UNWIND_MAPPINGS`, by
//! tgid) say which range and which load bias apply to a pc. The eBPF program binary-searches the
//! mapping, then the row, for every frame (`leaktrace-ebpf/src/unwind.rs`).

/// Frames kept per stack (the kernel's own stack maps keep 127).
pub const MAX_STACK_FRAMES: usize = 127;

/// Executable mappings kept per process (sorted by start, binary-searched).
pub const MAX_EXEC_MAPPINGS: usize = 128;

/// Stack ids of stacks unwound with the tables have this bit set (and not the top one): they
/// live in `UNWOUND_STACKS`, not in the kernel's stack trace map, whose ids are small.
pub const UNWOUND_STACK_BIT: u32 = 1 << 30;

/// `UnwindRow::cfa_rule`: how the canonical frame address (the caller's stack pointer) is found
/// at a pc, or what else to do there.
pub mod cfa {
    /// No CFI covers this pc (a gap between functions, code without CFI).
    pub const NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const RBP: u8 = 2;
    /// CFA = *(rsp + offset) + addend (`DW_OP_breg7 off; DW_OP_deref[; DW_OP_plus_uconst]`,
    /// OpenSSL's assembly). `cfa_offset` packs both: offset in its low 16 bits (signed), addend
    /// in its high 16 ([`deref_parts`]).
    pub const RSP_DEREF: u8 = 3;
    /// CFA = *(rbp + offset) + addend (stack realignment: `DW_OP_breg6 -8; DW_OP_deref`).
    pub const RBP_DEREF: u8 = 4;
    /// A PLT stub: CFA = rsp + offset, plus 8 when `(pc & 15) >= param` (the CFA expression
    /// every x86-64 linker writes for `.plt`).
    pub const PLT: u8 = 5;
    /// A signal trampoline (`__restore_rt`, CIE augmentation "S"): rsp points at the
    /// `ucontext_t`'s register block; the interrupted rip, rsp and rbp are read from it.
    pub const SIGNAL: u8 = 6;
    /// The outermost frame (the return address is undefined: `_start`, a thread's start).
    pub const STOP: u8 = 7;
    /// A rule the kernel side cannot follow (another register, another expression): the walk
    /// stops there and counts an unwinding error.
    pub const UNSUPPORTED: u8 = 8;
    /// Code that keeps frame pointers and has no CFI the walk trusts (a Go binary's own code,
    /// between the FDEs of the C objects cgo linked in): the caller's frame through rbp, not
    /// counted as a missing table.
    pub const FRAME_POINTER: u8 = 9;
    /// The return from C into Go's `runtime.asmcgocall` when it keeps no frame pointer (Go
    /// before 1.21): the walk is on the system stack, where asmcgocall stored the goroutine
    /// (`g`) at `rsp + a` and the goroutine stack's depth at `rsp + param`; the goroutine's
    /// stack pointer is `*(g + b) - depth` (`g.stack.hi - depth`), and the return address into
    /// asmcgocall's caller is there. `cfa_offset` packs `a` in its low 16 bits and `b` in its
    /// high 16 ([`deref_parts`]); rbp is unchanged (the C code preserved it, asmcgocall did not
    /// touch it). Userspace takes the three offsets from asmcgocall's own machine code.
    pub const GO_CGO_RETURN: u8 = 10;
}

/// A dereferencing rule's (offset, addend) from its packed `cfa_offset`.
#[inline(always)]
pub fn deref_parts(cfa_offset: i32) -> (i64, i64) {
    (i64::from(cfa_offset as i16), i64::from(cfa_offset >> 16))
}

/// `UnwindRow::rbp_rule`: where the caller's rbp is.
pub mod rbp {
    /// rbp is the caller's (not saved, or restored already).
    pub const UNCHANGED: u8 = 0;
    /// The caller's rbp is saved at CFA + param.
    pub const SAVED: u8 = 1;
    /// Any other rule: the caller's rbp is unknown from here (a later frame whose CFA is
    /// rbp-based cannot be unwound).
    pub const UNKNOWN: u8 = 2;
}

/// Offsets in the x86-64 `ucontext_t`, from the stack pointer at a signal trampoline (glibc's
/// `__restore_rt` CFI uses the same: `oRBP`, `oRSP`, `oRIP` in `ucontext_i.sym`).
pub const SIGNAL_RBP_OFFSET: u64 = 120;
pub const SIGNAL_RSP_OFFSET: u64 = 160;
pub const SIGNAL_RIP_OFFSET: u64 = 168;

/// One row of a module's unwind table: from `pc` (a module address, before load bias) up to the
/// next row's, the caller's frame is found by this rule. The return address is always at CFA-8
/// (rows where it is not are `cfa::UNSUPPORTED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    pub pc: u64,
    pub cfa_offset: i32,
    /// `rbp::SAVED`: the caller's rbp is at CFA + param; `cfa::PLT`: the pc threshold.
    pub param: i16,
    pub cfa_rule: u8,
    pub rbp_rule: u8,
}

/// One executable mapping of a traced process: pcs in `start..end` are module address
/// `pc - bias`, unwound with rows `first_row..first_row + rows` of `UNWIND_ROWS` (0 rows:
/// the module has no table, or is pure Go code, which keeps frame pointers: walk those).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first_row: u32,
    pub rows: u32,
}

/// A process's executable mappings, sorted by start (`count` of them used).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMappings {
    pub count: u32,
    pub _pad: u32,
    pub mappings: [ExecMapping; MAX_EXEC_MAPPINGS],
}

impl Default for ProcessMappings {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            mappings: [ExecMapping::default(); MAX_EXEC_MAPPINGS],
        }
    }
}

/// A stack the walk stored: `len` return addresses, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwoundStack {
    pub len: u32,
    pub _pad: u32,
    pub frames: [u64; MAX_STACK_FRAMES],
}

/// The walk's state between two frames (one per CPU; too big for the eBPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindState {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// FNV-1a of the frames so far.
    pub hash: u64,
    pub tgid: u32,
    /// `UNWIND_*` flags below.
    pub flags: u32,
    /// The mapping of the previous frame (`end == 0`: none): consecutive frames are mostly in
    /// one module, and this saves the mapping search.
    pub last: ExecMapping,
    pub stack: UnwoundStack,
}

/// `UnwindState::flags`: `pc` is an interrupted instruction (after a signal frame), not a
/// return address: it is looked up as is, not as `pc - 1`.
pub const UNWIND_PC_EXACT: u32 = 1;
/// The caller's rbp is unknown.
pub const UNWIND_BP_UNKNOWN: u32 = 2;
/// Ended: the outermost frame was reached (or the stack ended at a zero return address).
pub const UNWIND_DONE: u32 = 4;
/// A frame was unwound with frame pointers because its code had no table.
pub const UNWIND_NO_TABLE: u32 = 8;
/// Stopped by an unsupported rule or a failed read.
pub const UNWIND_ERROR: u32 = 16;
/// More frames than `MAX_STACK_FRAMES`.
pub const UNWIND_TRUNCATED: u32 = 32;

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 16);
const _: () = assert!(core::mem::size_of::<ExecMapping>() == 32);
const _: () = assert!(core::mem::size_of::<ProcessMappings>() == 8 + 32 * MAX_EXEC_MAPPINGS);
const _: () = assert!(core::mem::size_of::<UnwoundStack>() == 8 + 8 * MAX_STACK_FRAMES);
const _: () = assert!(core::mem::size_of::<UnwindState>() == 40 + 32 + 8 + 8 * MAX_STACK_FRAMES);
