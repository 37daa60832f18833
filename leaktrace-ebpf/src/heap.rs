//! Heap syscalls (brk, mmap, munmap, mremap, mprotect) of traced processes, from the syscall
//! tracepoints. Each completed call becomes one ring-buffer record; userspace keeps the mapping
//! intervals, the program break and the fallback diagnosis. A syscall made inside an allocator
//! call is tagged with that call, whose site is sent when it returns (its stack is only known then).
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::tracepoint,
    programs::{tracing::StackIdContext as _, TracePointContext},
};
use leaktrace_common::{
    GrowthEvent, HeapEvent, HeapEventKind, SyscallArgs, NO_STACK, STACK_COPY_BYTES,
};

use crate::{
    counters::bump_lost,
    events::send_heap_event,
    globals::{growth_mode, page_size, self_tgid, trace_all},
    maps::{BRK_TOPS, HEAP_EVENTS, INFLIGHT, STACKS, SYSCALLS, TRACED_PIDS},
};

const MAP_ANONYMOUS: u64 = 0x20;
const PROT_WRITE: u64 = 0x2;
/// The smallest page size (x86-64): bounds the retries of `copy_user_stack`.
const MIN_PAGE: u64 = 4096;
/// Offsets in the syscalls:sys_enter_* / sys_exit_* records (see their `format` files).
const NR_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;

#[inline(always)]
fn traced(tgid: u32) -> bool {
    tgid != self_tgid() && (trace_all() || TRACED_PIDS.get_ptr(tgid).is_some())
}

#[tracepoint]
pub fn heap_sys_enter(ctx: TracePointContext) -> u32 {
    try_heap_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_heap_sys_enter(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: offsets from the tracepoint format; read_at checks bounds.
    let Ok(nr) = (unsafe { ctx.read_at::<i32>(NR_OFFSET) }) else {
        return;
    };
    let mut call = SyscallArgs {
        nr: nr as u32,
        ..SyscallArgs::default()
    };
    for i in 0..6 {
        // SAFETY: as above; syscalls with fewer arguments leave zeros or garbage we ignore.
        call.args[i] = unsafe { ctx.read_at::<u64>(ARGS_OFFSET + 8 * i) }.unwrap_or(0);
    }
    if call.nr == HeapEventKind::Mmap as u32 && call.args[3] & MAP_ANONYMOUS == 0 {
        return; // file mappings are not heap
    }
    let _ = SYSCALLS.insert(pid_tgid, call, 0);
}

#[tracepoint]
pub fn heap_sys_exit(ctx: TracePointContext) -> u32 {
    try_heap_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_heap_sys_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once; only this thread writes its entry.
    let Some(call) = (unsafe { SYSCALLS.get(pid_tgid) }).copied() else {
        return;
    };
    let _ = SYSCALLS.remove(pid_tgid);
    // SAFETY: offset from the tracepoint format.
    let ret = unsafe { ctx.read_at::<i64>(ARGS_OFFSET) }.unwrap_or(-1);
    let kind = match HeapEventKind::try_from(call.nr) {
        Ok(HeapEventKind::CallSite | HeapEventKind::Exec) | Err(_) => return,
        Ok(kind) => kind,
    };
    if kind != HeapEventKind::Brk && ret < 0 {
        return; // a failed mmap/munmap/mremap/mprotect changed nothing
    }

    let mut call_ns = 0;
    if let Some(inflight) = INFLIGHT.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread touches its own in-flight entry.
        let inflight = unsafe { &mut *inflight };
        inflight.heap_events += 1;
        call_ns = inflight.entry_ns;
    }
    let args = [
        call.args[0],
        call.args[1],
        call.args[2],
        call.args[3],
        call.args[4],
    ];
    let mut event = HeapEvent {
        kind: kind as u32,
        tgid,
        tid: pid_tgid as u32,
        stack_id: NO_STACK,
        call_ns,
        caller: 0,
        args,
        ret,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if growth_mode() {
        if grows_heap(tgid, kind, &call, ret) {
            // The frame-pointer walk as well: it reaches a Go program's goroutine frames,
            // which the copied system stack does not.
            event.stack_id = user_stack_id(ctx);
            send_growth(&event);
            return;
        }
    } else if call_ns == 0 && !trace_all() {
        // Outside allocator calls the syscall keeps its own stack (not in system-wide mode,
        // where stacks of every process would flood the stack map). glibc's syscall wrappers
        // push nothing, so the word at the user stack pointer is the wrapper's return address:
        // the caller a frame-pointer walk skips.
        event.stack_id = user_stack_id(ctx);
        event.caller = user_return_address();
    }
    send_heap_event(event);
}

/// Whether a completed heap syscall grew the process's writable memory: a break moved up, a
/// writable anonymous mapping, write permission granted (threads' arenas grow that way), a
/// mapping enlarged. Shrinks and failures need no stack: userspace credits them back to the
/// sites that grew those bytes.
#[inline(always)]
fn grows_heap(tgid: u32, kind: HeapEventKind, call: &SyscallArgs, ret: i64) -> bool {
    match kind {
        HeapEventKind::Brk => {
            let new_brk = ret as u64;
            // SAFETY: copied out at once.
            let previous = unsafe { BRK_TOPS.get(tgid) }.copied();
            let _ = BRK_TOPS.insert(tgid, new_brk, 0);
            // brk(0) queries; a refused brk returns the old break.
            call.args[0] != 0 && new_brk == call.args[0] && previous.is_none_or(|p| new_brk > p)
        }
        HeapEventKind::Mmap | HeapEventKind::Mprotect => ret >= 0 && call.args[2] & PROT_WRITE != 0,
        HeapEventKind::Mremap => ret >= 0 && call.args[2] > call.args[1],
        HeapEventKind::Munmap | HeapEventKind::CallSite | HeapEventKind::Exec => false,
    }
}

/// Send a growth event with the user registers and up to `STACK_COPY_BYTES` of user stack.
#[inline(always)]
fn send_growth(event: &HeapEvent) {
    let Some(mut entry) = HEAP_EVENTS.reserve::<GrowthEvent>(0) else {
        bump_lost(event.tgid);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved ring-buffer record of the right size; every field
    // is written before submit (the stack bytes by the read helper, which zero-fills on error).
    unsafe {
        core::ptr::addr_of_mut!((*record).event).write(*event);
        let (ip, sp, bp) = match user_regs() {
            Some(regs) => ((*regs).rip, (*regs).rsp, (*regs).rbp),
            None => (0, 0, 0),
        };
        core::ptr::addr_of_mut!((*record).ip).write(ip);
        core::ptr::addr_of_mut!((*record).sp).write(sp);
        core::ptr::addr_of_mut!((*record).bp).write(bp);
        core::ptr::addr_of_mut!((*record)._pad).write(0);
        let dst = core::ptr::addr_of_mut!((*record).stack).cast::<core::ffi::c_void>();
        let copied = copy_user_stack(dst, sp);
        core::ptr::addr_of_mut!((*record).stack_len).write(copied);
    }
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}

/// Copy the user stack from `sp` up into `dst` (`STACK_COPY_BYTES` long). The read fails whole
/// when the stack ends less than that above `sp` (a shallow main thread, the top of a thread's
/// stack); stacks end on a page boundary, so the longest read that ends on one of the next few
/// page boundaries is retried. Returns the bytes copied (0: none).
///
/// # Safety
/// `dst` must be valid for `STACK_COPY_BYTES` bytes.
#[inline(always)]
unsafe fn copy_user_stack(dst: *mut core::ffi::c_void, sp: u64) -> u32 {
    const FULL: u64 = STACK_COPY_BYTES as u64;
    if sp == 0 {
        return 0;
    }
    let src = sp as *const core::ffi::c_void;
    // SAFETY: per this function's contract.
    if unsafe { probe_read_user_raw(dst, FULL as u32, src) } == 0 {
        return FULL as u32;
    }
    let page = page_size();
    let page_end = (sp | (page - 1)) + 1;
    // A constant bound for the verifier; with larger pages the longer reads are skipped below.
    let mut pages = FULL / MIN_PAGE;
    while pages > 0 {
        pages -= 1;
        let len = page_end + pages * page - sp;
        if len == 0 || len > FULL {
            continue;
        }
        // SAFETY: as above, `len` is at most `FULL`.
        if unsafe { probe_read_user_raw(dst, len as u32, src) } == 0 {
            return len as u32;
        }
    }
    0
}

#[inline(always)]
fn user_return_address() -> u64 {
    let Some(regs) = user_regs() else {
        return 0;
    };
    // SAFETY: the register block of the current task (see `user_regs`); the user stack is read
    // through the checked helper.
    unsafe { bpf_probe_read_user((*regs).rsp as *const u64).unwrap_or(0) }
}

/// The current task's user registers, as saved at syscall entry.
#[inline(always)]
fn user_regs() -> Option<*const aya_ebpf::bindings::pt_regs> {
    // SAFETY: BTF task helpers on the current task; the verifier checks the returned pointer's
    // use as a trusted kernel pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) }
        as *const aya_ebpf::bindings::pt_regs;
    (!regs.is_null()).then_some(regs)
}

/// The user stack's frame-pointer walk, in the stack map (`NO_STACK` when refused).
#[inline(always)]
fn user_stack_id(ctx: &TracePointContext) -> u32 {
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as u32,
        Err(_) => NO_STACK,
    }
}
