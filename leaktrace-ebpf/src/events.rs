//! Records of the heap ring buffer (`HEAP_EVENTS`), sent by the heap tracepoints and, for the
//! sites of allocator calls that made heap syscalls, by the allocator's return probe.
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
};
use leaktrace_common::{HeapEvent, HeapEventKind};

use crate::{counters::bump_lost, maps::HEAP_EVENTS};

/// Send one heap record; a full ring buffer counts as a lost event.
#[inline(always)]
pub fn send_heap_event(event: HeapEvent) {
    let Some(mut entry) = HEAP_EVENTS.reserve::<HeapEvent>(0) else {
        bump_lost(event.tgid);
        return;
    };
    entry.write(event);
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}

/// Send the site of an allocator call that made heap syscalls.
#[inline(always)]
pub fn send_call_site(tgid: u32, tid: u32, call_ns: u64, stack_id: u32, caller: u64) {
    send_heap_event(HeapEvent {
        kind: HeapEventKind::CallSite as u32,
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
}
