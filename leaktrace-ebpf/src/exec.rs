//! A traced process exec'ing: its address space, program break and allocator are new. The
//! event goes through the heap ring buffer, in order with the heap syscalls around it.
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_send_signal,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use leaktrace_common::{HeapEvent, HeapEventKind, NO_STACK, STOP_ON_EXEC};

use crate::{
    counters::bump_lost,
    globals::{self_tgid, trace_all},
    maps::{BRK_TOPS, HEAP_EVENTS, TRACED_PIDS},
};

const SIGSTOP: u32 = 19;

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    try_process_exec();
    0
}

#[inline(always)]
fn try_process_exec() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == self_tgid() {
        return;
    }
    // SAFETY: copied out at once.
    let flags = unsafe { TRACED_PIDS.get(tgid) }.copied();
    if flags.is_none() && !trace_all() {
        return;
    }
    // The old program's break means nothing to the new one.
    let _ = BRK_TOPS.remove(tgid);
    let Some(mut entry) = HEAP_EVENTS.reserve::<HeapEvent>(0) else {
        // Not stopped without its record: nothing would ever continue it.
        bump_lost(tgid);
        return;
    };
    // Stopped before the record is sent: userspace continues it (SIGCONT) once it has read the
    // record, and a SIGSTOP queued after that SIGCONT would hold it stopped for good.
    if flags.is_some_and(|f| f & STOP_ON_EXEC != 0) {
        // SAFETY: signals the current process (now the new program, before its first
        // instruction); userspace continues it once its state is started afresh.
        unsafe { bpf_send_signal(SIGSTOP) };
    }
    entry.write(HeapEvent {
        kind: HeapEventKind::Exec as u32,
        tgid,
        tid: pid_tgid as u32,
        stack_id: NO_STACK,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..HeapEvent::default()
    });
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}
