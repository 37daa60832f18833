//! Growth mode's short exact bursts: the exact-mode allocator probes attached to one process
//! for a bounded time, then detached off the sampling thread. What the burst recorded stays in
//! the outstanding-allocation map (`ALLOCS`) for [`crate::model::SurvivalWatch`] to follow.
use std::{thread::JoinHandle, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData};
use leaktrace_common::{names::maps, AllocFn, AllocInfo, AllocKey};

use super::{monotonic_ns, Tracer};

/// The allocating functions a burst hooks (free always is): the ones programs call. The rest
/// of the family (the memalign group, valloc, reallocarray) would add links to attach and
/// detach on every burst for calls that are rare.
const BURST_FUNCTIONS: [AllocFn; 3] = [AllocFn::Malloc, AllocFn::Calloc, AllocFn::Realloc];

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
    /// Attach the allocator probes to `pid` (whose libc is `libc`) for `duration`. Only the
    /// attaching happens on this thread (about 15 ms for two probes here); the links are then
    /// owned by the burst's detaching thread, so detaching never stalls the caller.
    pub fn start_burst(
        &mut self,
        pid: u32,
        libc: &std::path::Path,
        duration: Duration,
    ) -> anyhow::Result<RunningBurst> {
        use aya::programs::Link as _;
        let attaching = std::time::Instant::now();
        let attached = self.attach_probes(pid, libc, &BURST_FUNCTIONS)?;
        let attached_ns = monotonic_ns();
        let attach_took = attaching.elapsed();
        let mut links = Vec::with_capacity(attached.links.len());
        for (program, id) in attached.links {
            match self.uprobe(program).and_then(|p| Ok(p.take_link(id)?)) {
                Ok(link) => links.push(link),
                Err(err) => log::warn!("burst on pid {pid}: cannot take the link of {program}: {err:#}"),
            }
        }
        let detacher = std::thread::Builder::new()
            .name("leaktrace-burst".to_string())
            .spawn(move || {
                std::thread::sleep(duration);
                let ended_ns = monotonic_ns();
                std::thread::scope(|scope| {
                    for link in links {
                        scope.spawn(move || {
                            if let Err(err) = link.detach() {
                                log::warn!("cannot detach a burst probe: {err}");
                            }
                        });
                    }
                });
                ended_ns
            })?;
        Ok(RunningBurst {
            pid,
            attached_ns,
            attach_took,
            detacher: Some(detacher),
        })
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
