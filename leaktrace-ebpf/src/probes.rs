//! The malloc-family probes. One entry program serves every allocating function (the attach
//! cookie says which one and how to read its arguments), one return program records the result,
//! one entry program handles `free`.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_send_signal},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use leaktrace_common::{
    mul_no_overflow, AllocFn, AllocInfo, AllocKey, InflightCall, SiteKey, SiteStats,
    INFLIGHT_HAS_OLD, SAMPLE_DRAWS, UNSAMPLED_STACK,
};

use crate::{
    counters::{bump, bump_lost as bump_lost_event},
    events::send_call_site,
    globals::{growth_mode, page_size, sample_bytes},
    maps::{ALLOCS, INFLIGHT, PROBE_HITS, SAMPLE_COUNTDOWN, SAMPLE_GAPS, SITES},
    unwind::user_stack_id,
};

/// A call whose entry and return did not pair up. Growth mode's bursts attach and detach the
/// probes while calls are in flight, so there unpaired calls are expected, not a loss (growth
/// mode's `lost_events` counts heap events lost in the ring buffer).
#[inline(always)]
fn bump_lost(tgid: u32) {
    if !growth_mode() {
        bump_lost_event(tgid);
    }
}

const E2BIG: i32 = -7;
const EEXIST: i32 = -17;

/// Whether this allocation's stack is captured: always without `--sample-bytes`; otherwise when
/// the allocation spans the next sampling point of a Poisson process over allocated bytes.
#[inline(always)]
fn sample_stack(size: u64) -> bool {
    if sample_bytes() == 0 {
        return true;
    }
    let Some(left) = SAMPLE_COUNTDOWN.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; probes do not nest on one CPU.
    let left = unsafe { &mut *left };
    *left -= size as i64;
    if *left > 0 {
        return false;
    }
    // SAFETY: helper without preconditions.
    let draw = unsafe { bpf_get_prandom_u32() } % SAMPLE_DRAWS;
    *left = SAMPLE_GAPS.get(draw).map_or(1, |gap| *gap as i64);
    true
}

#[inline(always)]
fn stack_pointer(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the probe context, valid for the whole program.
    unsafe { (*regs).rsp }
}

#[inline(always)]
fn count_hit() {
    if let Some(hits) = PROBE_HITS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; probes do not nest on one CPU.
        unsafe { *hits += 1 };
    }
}

#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    count_hit();
    try_alloc_enter(&ctx);
    0
}

#[inline(always)]
fn try_alloc_enter(ctx: &ProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let sp = stack_pointer(ctx.regs);

    if let Some(outer) = INFLIGHT.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread touches its own in-flight entry.
        let outer = unsafe { &mut *outer };
        if sp <= outer.entry_sp {
            // Called from inside another allocator call: that outer call is what the program asked for.
            outer.depth += 1;
            return;
        }
        // The outer call's return never came (its uretprobe could not be armed); replace it.
        if outer.flags & INFLIGHT_HAS_OLD != 0 {
            restore(outer);
        }
        bump_lost(tgid);
    }

    // SAFETY: the context pointer is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(function) = AllocFn::from_cookie(cookie) else {
        return;
    };
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    let mut call = InflightCall {
        function: function as u32,
        entry_sp: sp,
        // SAFETY: helper without preconditions.
        entry_ns: unsafe { bpf_ktime_get_ns() },
        ..InflightCall::default()
    };
    match function {
        AllocFn::Malloc | AllocFn::Valloc | AllocFn::Mallocx => call.size = arg(0),
        AllocFn::Pvalloc => {
            let page = page_size();
            let size = arg(0);
            call.size = size.div_ceil(page) * page;
        }
        AllocFn::Calloc => match mul_no_overflow(arg(0), arg(1)) {
            Some(size) => call.size = size,
            None => call.overflow = 1,
        },
        AllocFn::Realloc
        | AllocFn::Rallocx
        | AllocFn::Xallocx
        | AllocFn::Expand
        | AllocFn::Reallocf => {
            call.old_addr = arg(0);
            call.size = arg(1);
        }
        AllocFn::Reallocarray => {
            call.old_addr = arg(0);
            match mul_no_overflow(arg(1), arg(2)) {
                Some(size) => call.size = size,
                None => call.overflow = 1,
            }
        }
        AllocFn::PosixMemalign => {
            call.out_ptr = arg(0);
            call.size = arg(2);
        }
        AllocFn::AlignedAlloc | AllocFn::Memalign => call.size = arg(1),
    }

    if call.old_addr != 0 {
        // Take the old block out now, not at return: once realloc has freed it, another thread
        // may be handed the same address before our return probe runs.
        let key = AllocKey {
            tgid,
            _pad: 0,
            addr: call.old_addr,
        };
        // SAFETY: copied out at once; a concurrent delete of this key would be a double free.
        if let Some(old) = unsafe { ALLOCS.get(key) } {
            call.old = *old;
            call.flags |= INFLIGHT_HAS_OLD;
            let _ = ALLOCS.remove(key);
        }
    }

    if INFLIGHT.insert(pid_tgid, call, 0).is_err() {
        if call.flags & INFLIGHT_HAS_OLD != 0 {
            restore(&call);
        }
        bump_lost(tgid);
    }
}

/// Put a block taken out by a realloc entry back in the outstanding map.
#[inline(always)]
fn restore(call: &InflightCall) {
    let key = AllocKey {
        tgid: call.old.site.tgid,
        _pad: 0,
        addr: call.old_addr,
    };
    if ALLOCS.insert(key, call.old, 0).is_err() {
        bump(call.old.site.tgid, |c| c.dropped_allocations += 1);
    }
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    count_hit();
    try_alloc_return(&ctx);
    0
}

#[inline(always)]
fn try_alloc_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(call) = INFLIGHT.get_ptr_mut(pid_tgid) else {
        bump_lost(tgid);
        return;
    };
    // SAFETY: only this thread touches its own in-flight entry.
    let call = unsafe { &mut *call };
    if call.depth > 0 {
        call.depth -= 1;
        return;
    }
    let call = *call;
    let _ = INFLIGHT.remove(pid_tgid);

    let ret: u64 = ctx.ret();
    let function = AllocFn::try_from(call.function).ok();
    let mut size = call.size;
    let addr = match function {
        Some(AllocFn::PosixMemalign) => {
            if ret as u32 != 0 {
                0
            } else {
                // SAFETY: reads user memory through the checked helper.
                unsafe { bpf_probe_read_user(call.out_ptr as *const u64) }.unwrap_or(0)
            }
        }
        // xallocx returns the block's usable size: at least `size` when it was resized (the
        // block now holds that many bytes), less when it was left as it was.
        Some(AllocFn::Xallocx) => {
            if call.old_addr != 0 && ret >= call.size {
                size = ret;
                call.old_addr
            } else {
                0
            }
        }
        _ => ret,
    };

    if call.old_addr != 0 {
        // realloc(p, 0) frees p and returns NULL; any other NULL is a failure that keeps p,
        // except for reallocf, which frees p when it fails.
        let zero_size_frees = function.is_some_and(AllocFn::zero_size_frees);
        let old_freed = addr != 0
            || function == Some(AllocFn::Reallocf)
            || (zero_size_frees && call.size == 0 && call.overflow == 0);
        if !old_freed {
            if call.flags & INFLIGHT_HAS_OLD != 0 {
                restore(&call);
            }
        } else if call.flags & INFLIGHT_HAS_OLD != 0 {
            account_free(&call.old);
        } else {
            bump(tgid, |c| c.unknown_frees += 1);
        }
    }

    if addr == 0 && call.heap_events == 0 {
        return;
    }
    // At a uretprobe the registers are the caller's, just after its call returned: the walk
    // starts in the caller, and the first frame is the return address.
    // SAFETY: `regs` is the probe context.
    let (caller, sp, bp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    // A call that made heap syscalls always names its stack (the heap view needs it).
    let stack_id = if call.heap_events == 0 && !sample_stack(call.size) {
        UNSAMPLED_STACK
    } else {
        user_stack_id(tgid, caller, sp, bp)
    };
    let site = SiteKey {
        tgid,
        stack_id,
        caller,
    };
    if call.heap_events != 0 {
        send_call_site(tgid, pid_tgid as u32, call.entry_ns, stack_id, caller);
    }
    if addr != 0 {
        record_allocation(site, addr, size);
    }
}

#[inline(always)]
fn record_allocation(site: SiteKey, addr: u64, size: u64) {
    let tgid = site.tgid;
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    let info = AllocInfo {
        size,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        site,
    };
    match ALLOCS.insert(key, info, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(EEXIST) => {
            // The allocator handed out an address we still hold: its free escaped us (made from
            // a context we do not see). It is free now; settle it before recording the new block.
            // SAFETY: copied out at once.
            if let Some(stale) = unsafe { ALLOCS.get(key) } {
                let stale = *stale;
                account_free(&stale);
            }
            // Growth mode's bursts detach the free probe between bursts: an address handed out
            // again is the expected sign that the earlier block was freed, not a loss.
            bump_lost(tgid);
            if ALLOCS.insert(key, info, 0).is_err() {
                bump(tgid, |c| c.dropped_allocations += 1);
                return;
            }
        }
        Err(E2BIG) | Err(_) => {
            bump(tgid, |c| c.dropped_allocations += 1);
            return;
        }
    }
    let delta = SiteStats {
        allocated_bytes: size,
        allocated_count: 1,
        ..SiteStats::default()
    };
    if !update_site(&site, &delta) {
        let _ = ALLOCS.remove(key);
        bump(tgid, |c| c.dropped_allocations += 1);
    }
}

/// Add `delta` to this CPU's totals of `site`, creating the site on first use.
#[inline(always)]
fn update_site(site: &SiteKey, delta: &SiteStats) -> bool {
    if let Some(stats) = SITES.get_ptr_mut(site) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { (*stats).add(delta) };
        return true;
    }
    match SITES.insert(site, delta, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        // Another CPU created it between our lookup and insert; our CPU's slot is zeroed.
        Err(EEXIST) => match SITES.get_ptr_mut(site) {
            Some(stats) => {
                // SAFETY: per-CPU value of this CPU.
                unsafe { (*stats).add(delta) };
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

#[inline(always)]
fn account_free(info: &AllocInfo) {
    let delta = SiteStats {
        freed_bytes: info.size,
        freed_count: 1,
        ..SiteStats::default()
    };
    if !update_site(&info.site, &delta) {
        bump_lost(info.site.tgid);
    }
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    count_hit();
    try_free_enter(&ctx);
    0
}

#[inline(always)]
fn try_free_enter(ctx: &ProbeContext) {
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(outer) = INFLIGHT.get_ptr(pid_tgid) {
        // SAFETY: only this thread touches its own in-flight entry.
        if stack_pointer(ctx.regs) <= unsafe { (*outer).entry_sp } {
            // realloc(p, 0) freeing p: accounted by realloc's return.
            return;
        }
    }
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    // SAFETY: copied out at once.
    match unsafe { ALLOCS.get(key) } {
        Some(info) => {
            let info = *info;
            let _ = ALLOCS.remove(key);
            account_free(&info);
        }
        // Growth mode's bursts see frees of blocks allocated between bursts: expected.
        None if !growth_mode() => bump(tgid, |c| c.unknown_frees += 1),
        None => {}
    }
}

const SIGSTOP: u32 = 19;

/// At a launched program's entry point (ld.so has mapped its libraries): stop it until
/// userspace has loaded their unwind tables; userspace sends SIGCONT.
#[uprobe]
pub fn entry_stop(_ctx: ProbeContext) -> u32 {
    // SAFETY: helper without preconditions; signals the current process.
    unsafe { bpf_send_signal(SIGSTOP) };
    0
}
