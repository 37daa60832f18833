//! Per-process error counters (`PidCounters`), bumped by the probes and the heap tracepoints.
use aya_ebpf::bindings::BPF_NOEXIST;
use leaktrace_common::PidCounters;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(tgid: u32, update: impl FnOnce(&mut PidCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(tgid) {
        // SAFETY: per-CPU value of this CPU; probes do not nest on one CPU.
        update(unsafe { &mut *counters });
        return;
    }
    let mut counters = PidCounters::default();
    update(&mut counters);
    // A full counters map loses the count; nothing better can be done from here.
    let _ = COUNTERS.insert(tgid, counters, u64::from(BPF_NOEXIST));
}

#[inline(always)]
pub fn bump_lost(tgid: u32) {
    bump(tgid, |c| c.lost_events += 1);
}
