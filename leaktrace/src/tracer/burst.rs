//! Growth mode's short exact bursts: the exact-mode allocator probes attached to one process
//! for a bounded time, then detached off the sampling thread. What the burst recorded stays in
//! the outstanding-allocation map (`ALLOCS`) for [`crate::model::SurvivalWatch`] to follow.
use std::{thread::JoinHandle, time::Duration};

use std::{num::NonZeroU32, path::Path};

use anyhow::anyhow;
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
};
use leaktrace_common::{
    names::{maps, programs},
    AllocFn, AllocInfo, AllocKey, InflightCall,
};

use super::{monotonic_ns, Tracer};
use crate::allocator::{Allocator, HookKind};

/// Detach every link at once, each on a thread of its own: each close waits for an RCU grace
/// period (70-120 ms here), and the waits overlap.
fn detach_all(links: Vec<UProbeLink>) {
    use aya::programs::Link as _;
    std::thread::scope(|scope| {
        for link in links {
            scope.spawn(move || {
                if let Err(err) = link.detach() {
                    log::warn!("cannot detach a burst probe: {err}");
                }
            });
        }
    });
}

/// The probes of a burst, in the order they are attached: the allocating functions programs
/// call (the rest of the family, the memalign group, valloc and reallocarray, would add links
/// to attach and detach on every burst for calls that are rare), the rarely called first and
/// malloc's last. Attaching a uprobe takes 15-150 ms here (the kernel visits every process
/// mapping the library) and each probe fires from the moment it is attached: a busy process's
/// hot probes attached first would cost more during the attaching than during the burst.
const BURST_PROBES: [(Option<AllocFn>, &str); 7] = [
    (Some(AllocFn::Calloc), programs::ALLOC_ENTER),
    (Some(AllocFn::Calloc), programs::ALLOC_RETURN),
    (Some(AllocFn::Realloc), programs::ALLOC_ENTER),
    (Some(AllocFn::Realloc), programs::ALLOC_RETURN),
    (None, programs::FREE_ENTER),
    (Some(AllocFn::Malloc), programs::ALLOC_RETURN),
    (Some(AllocFn::Malloc), programs::ALLOC_ENTER),
];

/// A burst in progress: probes attached to `pid` since `attached_ns`; a thread of its own
/// detaches them once the burst's time is up.
pub struct RunningBurst {
    pub pid: u32,
    /// CLOCK_MONOTONIC when every probe was attached: allocations from then on were all seen.
    pub attached_ns: u64,
    /// How long attaching took (on the calling thread).
    pub attach_took: Duration,
    /// Ends the burst: sleeps for its duration, notes the time (returned), then detaches every
    /// probe at once, each close on a thread of its own (each waits for an RCU grace period).
    detacher: Option<JoinHandle<u64>>,
}

impl RunningBurst {
    /// The time the burst's probes started to be detached, once they all are; `None` while the
    /// burst still runs or detaches.
    pub fn ended_ns(&mut self) -> Option<u64> {
        if !self.detacher.as_ref()?.is_finished() {
            return None;
        }
        let detacher = self.detacher.take()?;
        Some(detacher.join().unwrap_or_else(|_| monotonic_ns()))
    }
}

impl Tracer {
    /// Attach the probes of `allocator` (the process's, as discovery found it) to `pid` for
    /// `duration`. Only the
    /// attaching happens on this thread (about 15 ms for two probes here); the links are then
    /// owned by the burst's detaching thread, so detaching never stalls the caller.
    pub fn start_burst(
        &mut self,
        pid: u32,
        allocator: &Allocator,
        duration: Duration,
    ) -> anyhow::Result<RunningBurst> {
        let attaching = std::time::Instant::now();
        let attached = match self.attach_burst_probes(pid, allocator) {
            Ok(attached) => attached,
            Err((err, partial)) => {
                let links = self.take_links(pid, partial);
                std::thread::spawn(move || detach_all(links));
                return Err(err);
            }
        };
        // A call that entered while its function's return probe was still being attached left
        // an in-flight entry that no return will close: later calls would read as nested in it
        // (and go unrecorded) for the whole burst.
        self.clear_inflight(pid);
        let attached_ns = monotonic_ns();
        let attach_took = attaching.elapsed();
        let links = self.take_links(pid, attached);
        let detacher = std::thread::Builder::new()
            .name("leaktrace-burst".to_string())
            .spawn(move || {
                std::thread::sleep(duration);
                let ended_ns = monotonic_ns();
                let detaching = std::time::Instant::now();
                detach_all(links);
                log::debug!(
                    "burst on pid {pid}: probes detached in {:?}",
                    detaching.elapsed()
                );
                ended_ns
            })?;
        Ok(RunningBurst {
            pid,
            attached_ns,
            attach_took,
            detacher: Some(detacher),
        })
    }

    /// Attach [`BURST_PROBES`] in order; on failure, the error and the links attached so far.
    #[expect(
        clippy::type_complexity,
        reason = "the links attached before the failure go back with it"
    )]
    fn attach_burst_probes(
        &mut self,
        pid: u32,
        allocator: &Allocator,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>, (anyhow::Error, Vec<(&'static str, UProbeLinkId)>)>
    {
        let mut links = Vec::with_capacity(BURST_PROBES.len());
        let scope = match NonZeroU32::new(pid) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => return Err((anyhow!("pid 0 cannot be traced"), links)),
        };
        let file: &Path = &allocator.file;
        for (function, program) in BURST_PROBES {
            let wanted = match function {
                Some(f) => HookKind::Alloc(f),
                None => HookKind::Free,
            };
            // The allocator's own hook for that function: its file offset and the probe's
            // placement were worked out by discovery, for whichever allocator it is.
            let Some(hook) = allocator.hooks.iter().find(|h| h.kind == wanted) else {
                if matches!(function, None | Some(AllocFn::Malloc)) {
                    let symbol = function.map_or("free", AllocFn::symbol);
                    let err = anyhow!("{} has no {symbol} to hook", file.display());
                    return Err((err, links));
                }
                continue;
            };
            let attached = self.attach_hook(program, hook, function.map(|f| f as u64), file, scope);
            match attached {
                Ok(link) => links.push((program, link)),
                Err(err) => return Err((err, links)),
            }
        }
        Ok(links)
    }

    /// Take the links out of their programs, to detach them elsewhere.
    fn take_links(&mut self, pid: u32, ids: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
        let mut links = Vec::with_capacity(ids.len());
        for (program, id) in ids {
            match self.uprobe(program).and_then(|p| Ok(p.take_link(id)?)) {
                Ok(link) => links.push(link),
                Err(err) => {
                    log::warn!("burst on pid {pid}: cannot take the link of {program}: {err:#}")
                }
            }
        }
        links
    }

    /// The blocks of `pid` in the outstanding-allocation map: what bursts saw allocated and
    /// not (yet) freed, by address.
    pub fn burst_blocks(&self, pid: u32) -> anyhow::Result<Vec<(u64, AllocInfo)>> {
        let allocs: BpfHashMap<&MapData, AllocKey, AllocInfo> =
            BpfHashMap::try_from(self.map(maps::ALLOCS)?)?;
        Ok(allocs
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| key.tgid == pid)
            .map(|(key, info)| (key.addr, info))
            .collect())
    }

    /// Delete `pid`'s in-flight allocator calls: calls cut in two by attaching or detaching
    /// (their entry seen, their return not), which would swallow the next burst's calls.
    pub fn clear_inflight(&mut self, pid: u32) {
        let Ok(map) = self.map_mut(maps::INFLIGHT) else {
            return;
        };
        let Ok(mut inflight) = BpfHashMap::<&mut MapData, u64, InflightCall>::try_from(map) else {
            return;
        };
        let threads: Vec<u64> = inflight
            .keys()
            .filter_map(Result::ok)
            .filter(|pid_tgid| pid_tgid >> 32 == u64::from(pid))
            .collect();
        for thread in threads {
            let _ = inflight.remove(&thread);
        }
    }

    /// Stop following blocks of `pid` (no longer sampled, or known freed).
    pub fn forget_blocks(&mut self, pid: u32, addrs: &[u64]) {
        let Ok(map) = self.map_mut(maps::ALLOCS) else {
            return;
        };
        let Ok(mut allocs) = BpfHashMap::<&mut MapData, AllocKey, AllocInfo>::try_from(map) else {
            return;
        };
        for &addr in addrs {
            let _ = allocs.remove(&AllocKey {
                tgid: pid,
                _pad: 0,
                addr,
            });
        }
    }
}
