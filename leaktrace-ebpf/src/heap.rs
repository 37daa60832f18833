//! Heap syscalls (brk, mmap, munmap, mremap, mprotect) of traced processes, from the syscall
//! tracepoints. Each completed call becomes one ring-buffer record; userspace keeps the mapping
//! intervals, the program break and the fallback diagnosis. A syscall made inside an allocator
//! call is tagged with that call, whose site is sent when it returns (its stack is only known then).
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::{tracing::StackIdContext as _, TracePointContext},
};
use leaktrace_common::{
    HeapEvent, SyscallArgs, NO_STACK, SYS_BRK, SYS_MMAP, SYS_MPROTECT, SYS_MREMAP, SYS_MUNMAP,
};

use crate::{
    maps::{HEAP_EVENTS, INFLIGHT, STACKS, SYSCALLS, TRACED_PIDS},
    probes::bump_lost,
};

/// Set by userspace: report every process's heap syscalls (system-wide mode).
#[unsafe(no_mangle)]
static TRACE_ALL: u32 = 0;

const MAP_ANONYMOUS: u64 = 0x20;
/// Offsets in the syscalls:sys_enter_* / sys_exit_* records (see their `format` files).
const NR_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;

#[inline(always)]
fn trace_all() -> bool {
    // SAFETY: plain read of a global patched before load.
    unsafe { core::ptr::read_volatile(&TRACE_ALL) != 0 }
}

#[inline(always)]
fn traced(tgid: u32) -> bool {
    trace_all() || TRACED_PIDS.get_ptr(tgid).is_some()
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
    if call.nr == SYS_MMAP && call.args[3] & MAP_ANONYMOUS == 0 {
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
    if call.nr != SYS_BRK && ret < 0 {
        return; // a failed mmap/munmap/mremap/mprotect changed nothing
    }
    if !matches!(
        call.nr,
        SYS_MMAP | SYS_MUNMAP | SYS_MREMAP | SYS_MPROTECT | SYS_BRK
    ) {
        return;
    }

    let mut call_ns = 0;
    if let Some(inflight) = INFLIGHT.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread touches its own in-flight entry.
        let inflight = unsafe { &mut *inflight };
        inflight.heap_events += 1;
        call_ns = inflight.entry_ns;
    }
    // Outside allocator calls the syscall keeps its own stack (not in system-wide mode, where
    // stacks of every process would flood the stack map). glibc's syscall wrappers push nothing,
    // so the word at the user stack pointer is the wrapper's return address: the caller a
    // frame-pointer walk skips.
    let (stack_id, caller) = if call_ns == 0 && !trace_all() {
        let stack_id = match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
            Ok(id) => id as u32,
            Err(_) => NO_STACK,
        };
        (stack_id, user_return_address())
    } else {
        (NO_STACK, 0)
    };

    let Some(mut entry) = HEAP_EVENTS.reserve::<HeapEvent>(0) else {
        bump_lost(tgid);
        return;
    };
    let event = HeapEvent {
        kind: call.nr,
        tgid,
        tid: pid_tgid as u32,
        stack_id,
        call_ns,
        caller,
        args: [
            call.args[0],
            call.args[1],
            call.args[2],
            call.args[3],
            call.args[4],
        ],
        ret,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    entry.write(event);
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}

#[inline(always)]
fn user_return_address() -> u64 {
    // SAFETY: BTF task helpers on the current task; the register block is read through
    // bpf_probe_read_kernel-safe pointer arithmetic by the helper itself.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const aya_ebpf::bindings::pt_regs;
        if regs.is_null() {
            return 0;
        }
        let sp = (*regs).rsp;
        bpf_probe_read_user(sp as *const u64).unwrap_or(0)
    }
}

/// Send the site of an allocator call that made heap syscalls.
#[inline(always)]
pub fn send_call_site(tgid: u32, tid: u32, call_ns: u64, stack_id: u32, caller: u64) {
    let Some(mut entry) = HEAP_EVENTS.reserve::<HeapEvent>(0) else {
        bump_lost(tgid);
        return;
    };
    entry.write(HeapEvent {
        kind: leaktrace_common::HEAP_CALL_SITE,
        tgid,
        tid,
        stack_id,
        call_ns,
        caller,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..HeapEvent::default()
    });
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}
