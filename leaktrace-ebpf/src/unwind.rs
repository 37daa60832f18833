//! The user stack of an allocation, unwound here from the tables userspace compiled out of each
//! module's `.eh_frame` / `.debug_frame` (the design of the OpenTelemetry eBPF profiler's "stack
//! deltas" and parca-agent's DWARF unwinder): frame by frame with `bpf_loop`, each frame a
//! binary search of the process's executable mappings, then of the module's rows. Frame pointers
//! where a module has no table (pure Go code, which keeps them; code with no CFI; a module
//! userspace has not loaded yet, counted as `stack_no_table`), and where a Go binary's rows say
//! so (its Go code between the FDEs of its cgo C code).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_probe_read_user, generated::bpf_loop},
};
use leaktrace_common::{
    unwind::{
        cfa, deref_parts, rbp, ExecMapping, UnwindRow, MAX_EXEC_MAPPINGS, MAX_STACK_FRAMES,
        SIGNAL_RBP_OFFSET, SIGNAL_RIP_OFFSET, SIGNAL_RSP_OFFSET, UNWIND_BP_UNKNOWN, UNWIND_DONE,
        UNWIND_ERROR, UNWIND_NO_TABLE, UNWIND_PC_EXACT, UNWIND_TRUNCATED, UNWOUND_STACK_BIT,
    },
    NO_STACK,
};

use crate::{
    counters::bump,
    maps::{
        UNWIND_MAPPINGS, UNWIND_ROWS, UNWIND_STATE, UNWOUND_NEXT_ID, UNWOUND_STACKS,
        UNWOUND_STACK_IDS,
    },
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const EEXIST: i32 = -17;
/// Steps of the row search: enough for 2^24 rows in one module.
const ROW_SEARCH_STEPS: u32 = 24;
/// Steps of the mapping search (`MAX_EXEC_MAPPINGS` = 2^7).
const MAPPING_SEARCH_STEPS: u32 = 8;
/// Stack ids per CPU (the low 8 bits of an id are the CPU).
const IDS_PER_CPU: u32 = 1 << 22;

/// Unwind the user stack whose innermost frame is at `pc` (a return address) with the stack
/// and frame pointers `sp`, `bp`; store it and return its stack id (`NO_STACK` if it could not
/// be stored). Incomplete stacks are stored with what was unwound, and counted by reason.
#[inline(always)]
pub fn user_stack_id(tgid: u32, pc: u64, sp: u64, bp: u64) -> u32 {
    let Some(state) = UNWIND_STATE.get_ptr_mut(0) else {
        return NO_STACK;
    };
    {
        // SAFETY: this CPU's slot; probes do not nest on one CPU.
        let state = unsafe { &mut *state };
        state.pc = pc;
        state.sp = sp;
        state.bp = bp;
        state.hash = FNV_OFFSET ^ u64::from(tgid);
        state.tgid = tgid;
        state.flags = 0;
        state.last.end = 0;
        state.stack.len = 0;
    }
    // SAFETY: `step` is a static function with bpf_loop's callback signature; it takes no
    // context (it finds the per-CPU state itself).
    unsafe {
        bpf_loop(
            MAX_STACK_FRAMES as u32 + 1,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let state = unsafe { &mut *state };
    let flags = state.flags;
    if flags & (UNWIND_NO_TABLE | UNWIND_ERROR | UNWIND_TRUNCATED) != 0 {
        bump(tgid, |c| {
            c.stack_errors += 1;
            if flags & UNWIND_ERROR != 0 {
                c.stack_unwind_errors += 1;
            } else if flags & UNWIND_TRUNCATED != 0 {
                c.stack_truncated += 1;
            } else {
                c.stack_no_table += 1;
            }
        });
    }
    if state.stack.len == 0 {
        return NO_STACK;
    }
    let hash = state.hash ^ u64::from(state.stack.len);
    // SAFETY: copied out at once.
    if let Some(id) = unsafe { UNWOUND_STACK_IDS.get(&hash) } {
        return *id;
    }
    let id = match next_id() {
        Some(id) => id,
        None => return map_full(tgid),
    };
    if UNWOUND_STACKS.insert(&id, &state.stack, 0).is_err() {
        return map_full(tgid);
    }
    match UNWOUND_STACK_IDS.insert(&hash, &id, u64::from(BPF_NOEXIST)) {
        Ok(()) => id,
        // Another CPU stored the same stack meanwhile: use its id.
        Err(EEXIST) => {
            let _ = UNWOUND_STACKS.remove(&id);
            // SAFETY: copied out at once.
            unsafe { UNWOUND_STACK_IDS.get(&hash) }.map_or(NO_STACK, |id| *id)
        }
        Err(_) => {
            let _ = UNWOUND_STACKS.remove(&id);
            map_full(tgid)
        }
    }
}

#[inline(always)]
fn map_full(tgid: u32) -> u32 {
    bump(tgid, |c| {
        c.stack_errors += 1;
        c.stack_map_full += 1;
    });
    NO_STACK
}

#[inline(always)]
fn next_id() -> Option<u32> {
    let next = UNWOUND_NEXT_ID.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; probes do not nest on one CPU.
    let next = unsafe { &mut *next };
    let n = *next;
    if n >= IDS_PER_CPU {
        return None;
    }
    *next = n + 1;
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } & 0xff;
    Some(UNWOUND_STACK_BIT | n << 8 | cpu)
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: reads user memory through the checked helper.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// One frame: record `pc`, then find the caller's pc, sp and bp. Returns 1 to end the loop.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(state) = UNWIND_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot; probes do not nest on one CPU.
    let state = unsafe { &mut *state };
    let len = state.stack.len as usize;
    let Some(slot) = state.stack.frames.get_mut(len) else {
        state.flags |= UNWIND_TRUNCATED;
        return 1;
    };
    let pc = state.pc;
    *slot = pc;
    state.stack.len = len as u32 + 1;
    state.hash = (state.hash ^ pc).wrapping_mul(FNV_PRIME);

    let mapping = if state.last.start <= pc && pc < state.last.end {
        state.last
    } else {
        let Some(mapping) = find_mapping(state.tgid, pc) else {
            state.flags |= UNWIND_NO_TABLE;
            return frame_pointer_step(state);
        };
        state.last = mapping;
        mapping
    };
    if mapping.rows == 0 {
        return frame_pointer_step(state);
    }
    // A return address is looked up one byte back: the call may be its function's last
    // instruction (a call to a noreturn function), and the next byte another function's.
    let back = u64::from(state.flags & UNWIND_PC_EXACT == 0);
    let target = pc.wrapping_sub(mapping.bias).wrapping_sub(back);
    let Some(row) = find_row(&mapping, target) else {
        state.flags |= UNWIND_NO_TABLE;
        return frame_pointer_step(state);
    };
    let bp_known = state.flags & UNWIND_BP_UNKNOWN == 0;
    let offset = row.cfa_offset as i64 as u64;
    let frame_cfa = match row.cfa_rule {
        cfa::RSP => state.sp.wrapping_add(offset),
        cfa::RBP if bp_known => state.bp.wrapping_add(offset),
        cfa::RSP_DEREF | cfa::RBP_DEREF => {
            let base = if row.cfa_rule == cfa::RSP_DEREF {
                state.sp
            } else if bp_known {
                state.bp
            } else {
                return error(state);
            };
            let (at, add) = deref_parts(row.cfa_offset);
            match read_user(base.wrapping_add(at as u64)) {
                Some(value) => value.wrapping_add(add as u64),
                None => return error(state),
            }
        }
        cfa::PLT => {
            let extra = if (pc & 15) as i64 >= i64::from(row.param) {
                8
            } else {
                0
            };
            state.sp.wrapping_add(offset).wrapping_add(extra)
        }
        cfa::SIGNAL => return signal_step(state),
        cfa::STOP => {
            state.flags |= UNWIND_DONE;
            return 1;
        }
        cfa::NONE => {
            state.flags |= UNWIND_NO_TABLE;
            return frame_pointer_step(state);
        }
        cfa::FRAME_POINTER => return frame_pointer_step(state),
        cfa::GO_CGO_RETURN => return go_cgo_return_step(state, &row),
        _ => return error(state),
    };
    let Some(return_address) = read_user(frame_cfa.wrapping_sub(8)) else {
        return error(state);
    };
    match row.rbp_rule {
        rbp::SAVED => {
            let Some(saved) = read_user(frame_cfa.wrapping_add(row.param as i64 as u64)) else {
                return error(state);
            };
            state.bp = saved;
            state.flags &= !UNWIND_BP_UNKNOWN;
        }
        rbp::UNKNOWN => state.flags |= UNWIND_BP_UNKNOWN,
        _ => {}
    }
    state.sp = frame_cfa;
    next_frame(state, return_address)
}

#[inline(always)]
fn next_frame(state: &mut leaktrace_common::unwind::UnwindState, return_address: u64) -> i64 {
    state.flags &= !UNWIND_PC_EXACT;
    if return_address == 0 {
        state.flags |= UNWIND_DONE;
        return 1;
    }
    state.pc = return_address;
    0
}

#[inline(always)]
fn error(state: &mut leaktrace_common::unwind::UnwindState) -> i64 {
    state.flags |= UNWIND_ERROR;
    1
}

/// The caller's frame through the frame-pointer chain: its rbp at [rbp], the return address at
/// [rbp + 8]. A zero rbp ends the chain (the outermost frame clears it).
#[inline(always)]
fn frame_pointer_step(state: &mut leaktrace_common::unwind::UnwindState) -> i64 {
    let bp = state.bp;
    if bp == 0 {
        state.flags |= UNWIND_DONE;
        return 1;
    }
    if state.flags & UNWIND_BP_UNKNOWN != 0 {
        return error(state);
    }
    let (Some(saved_bp), Some(return_address)) = (read_user(bp), read_user(bp.wrapping_add(8)))
    else {
        return error(state);
    };
    state.bp = saved_bp;
    state.sp = bp.wrapping_add(16);
    next_frame(state, return_address)
}

/// Back from C into Go's `runtime.asmcgocall` (a version that keeps no frame pointer): from
/// the system stack to the goroutine's, the way asmcgocall itself returns. It stored the
/// goroutine `g` and the stack's depth below `g.stack.hi` on the system stack before the call;
/// the goroutine's stack pointer is `g.stack.hi - depth`, and there is the return address into
/// asmcgocall's caller (`runtime.cgocall`). rbp is the Go caller's still.
#[inline(always)]
fn go_cgo_return_step(state: &mut leaktrace_common::unwind::UnwindState, row: &UnwindRow) -> i64 {
    let (g_at, stack_hi_at) = deref_parts(row.cfa_offset);
    let sp = state.sp;
    let (Some(g), Some(depth)) = (
        read_user(sp.wrapping_add(g_at as u64)),
        read_user(sp.wrapping_add(row.param as i64 as u64)),
    ) else {
        return error(state);
    };
    let Some(stack_hi) = read_user(g.wrapping_add(stack_hi_at as u64)) else {
        return error(state);
    };
    let goroutine_sp = stack_hi.wrapping_sub(depth);
    let Some(return_address) = read_user(goroutine_sp) else {
        return error(state);
    };
    state.sp = goroutine_sp.wrapping_add(8);
    next_frame(state, return_address)
}

/// A signal trampoline: the interrupted frame's registers are in the `ucontext_t` at rsp.
#[inline(always)]
fn signal_step(state: &mut leaktrace_common::unwind::UnwindState) -> i64 {
    let sp = state.sp;
    let (Some(pc), Some(new_sp), Some(bp)) = (
        read_user(sp.wrapping_add(SIGNAL_RIP_OFFSET)),
        read_user(sp.wrapping_add(SIGNAL_RSP_OFFSET)),
        read_user(sp.wrapping_add(SIGNAL_RBP_OFFSET)),
    ) else {
        return error(state);
    };
    state.sp = new_sp;
    state.bp = bp;
    state.flags &= !UNWIND_BP_UNKNOWN;
    if pc == 0 {
        state.flags |= UNWIND_DONE;
        return 1;
    }
    state.pc = pc;
    // The interrupted instruction itself, not a return address.
    state.flags |= UNWIND_PC_EXACT;
    0
}

/// The executable mapping of process `tgid` that holds `pc`.
#[inline(always)]
fn find_mapping(tgid: u32, pc: u64) -> Option<ExecMapping> {
    // SAFETY: copied out field by field below; userspace replaces the value whole.
    let mappings = unsafe { UNWIND_MAPPINGS.get(&tgid) }?;
    let count = (mappings.count as usize).min(MAX_EXEC_MAPPINGS);
    // The last mapping starting at or below pc.
    let (mut lo, mut hi) = (0usize, count);
    for _ in 0..MAPPING_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) / 2;
        let start = mappings.mappings.get(mid)?.start;
        if start <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let found = *mappings.mappings.get(lo.checked_sub(1)?)?;
    (pc < found.end).then_some(found)
}

/// The row of `mapping`'s module that covers module address `target`.
#[inline(always)]
fn find_row(mapping: &ExecMapping, target: u64) -> Option<UnwindRow> {
    let (mut lo, mut hi) = (
        mapping.first_row,
        mapping.first_row.wrapping_add(mapping.rows),
    );
    let mut found = None;
    for _ in 0..ROW_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let row_pc = UNWIND_ROWS.get(mid)?.pc;
        if row_pc <= target {
            found = Some(mid);
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    UNWIND_ROWS.get(found?).copied()
}
