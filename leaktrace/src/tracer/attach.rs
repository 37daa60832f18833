//! Hooking a process's allocator (uprobes on its libc's malloc family), registering processes
//! for heap tracing, and undoing both.
use std::{num::NonZeroU32, path::Path};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
};
use leaktrace_common::{
    names::{maps, programs},
    AllocFn, AllocInfo, AllocKey, InflightCall, PidCounters, SiteKey, SiteStats,
};

use super::Tracer;
use crate::placement;

/// Probes attached for one process, with their links.
#[derive(Default)]
pub(super) struct AttachedProbes {
    hooked: Vec<&'static str>,
    placements: Vec<(&'static str, u64)>,
    pub(super) links: Vec<(&'static str, UProbeLinkId)>,
}

impl Tracer {
    /// Hook the malloc family of `libc` (a path reachable from our namespace) for `pid` only.
    /// Returns the functions hooked; functions a libc does not export are skipped, but malloc and
    /// free must be there.
    pub fn attach(&mut self, pid: u32, libc: &Path) -> anyhow::Result<Vec<&'static str>> {
        let attached = self.attach_probes(pid, libc, &AllocFn::ALL)?;
        self.trace_heap_of(pid)?;
        Ok(attached.hooked)
    }

    /// Stop a launched process at its entry point (`exe`'s ELF entry, reached once ld.so has
    /// mapped its libraries): the caller loads their unwind tables, detaches the probe with
    /// [`Tracer::remove_entry_stop`] and sends SIGCONT. `None` when `exe` has no ELF entry
    /// point we can probe (a script): its tables then load while it runs.
    pub fn stop_at_entry(&mut self, pid: u32, exe: &Path) -> Option<UProbeLinkId> {
        let offset = entry_file_offset(exe)?;
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid)?);
        let attached = self.uprobe(programs::ENTRY_STOP).and_then(|program| {
            program
                .attach(UProbeAttachLocation::AbsoluteOffset(offset), exe, scope)
                .map_err(anyhow::Error::from)
        });
        match attached {
            Ok(link) => Some(link),
            Err(err) => {
                log::warn!("cannot stop pid {pid} at its entry point: {err:#}");
                None
            }
        }
    }

    pub fn remove_entry_stop(&mut self, link: UProbeLinkId) {
        if let Err(err) = self
            .uprobe(programs::ENTRY_STOP)
            .and_then(|p| p.detach(link).map_err(anyhow::Error::from))
        {
            log::warn!("cannot detach the entry-point probe: {err:#}");
        }
    }

    /// Report this process's heap syscalls (exact mode, and growth mode's targets; system-wide
    /// mode reports every process's).
    pub fn trace_heap_of(&mut self, pid: u32) -> anyhow::Result<()> {
        let mut traced: BpfHashMap<&mut MapData, u32, u32> =
            BpfHashMap::try_from(self.map_mut(maps::TRACED_PIDS)?)?;
        traced
            .insert(pid, 1, 0)
            .with_context(|| format!("cannot register pid {pid} for heap tracing"))
    }

    /// Attach the allocator probes for `pid`, keeping their links so that they can be detached.
    /// `functions`: the allocating functions to hook (free always is).
    pub(super) fn attach_probes(
        &mut self,
        pid: u32,
        libc: &Path,
        functions: &[AllocFn],
    ) -> anyhow::Result<AttachedProbes> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?,
        );
        let exports = exported_functions(libc)?;
        let mut attached = AttachedProbes::default();
        for &function in functions {
            let symbol = function.symbol();
            if !exports.iter().any(|e| e == symbol) {
                if function == AllocFn::Malloc {
                    bail!("{} does not export malloc", libc.display());
                }
                log::debug!("{} does not export {symbol}; not hooked", libc.display());
                continue;
            }
            let offset = placement::entry_probe_offset_in(libc, symbol);
            // The return probe shares the entry probe's instruction: one breakpoint, emulated,
            // instead of a second one single-stepped at +0 (2.6x cheaper for the memalign
            // family). The instructions skipped write neither rsp nor memory, so `[rsp]` is
            // still the return address the kernel hijacks.
            for program in [programs::ALLOC_ENTER, programs::ALLOC_RETURN] {
                let link = self
                    .uprobe(program)?
                    .attach(
                        UProbeAttachPoint {
                            location: UProbeAttachLocation::SymbolOffset(symbol, offset),
                            cookie: Some(function as u64),
                        },
                        libc,
                        scope,
                    )
                    .map_err(|err| {
                        attach_error(
                            err,
                            format!(
                                "failed to attach {program} to {symbol} in {}",
                                libc.display()
                            ),
                        )
                    })?;
                attached.links.push((program, link));
            }
            attached.hooked.push(symbol);
            attached.placements.push((symbol, offset));
        }
        if !exports.iter().any(|e| e == "free") {
            bail!("{} does not export free", libc.display());
        }
        let free_offset = placement::entry_probe_offset_in(libc, "free");
        let link = self
            .uprobe(programs::FREE_ENTER)?
            .attach(
                UProbeAttachLocation::SymbolOffset("free", free_offset),
                libc,
                scope,
            )
            .map_err(|err| {
                attach_error(
                    err,
                    format!("failed to attach to free in {}", libc.display()),
                )
            })?;
        attached.links.push((programs::FREE_ENTER, link));
        attached.hooked.push("free");
        attached.placements.push(("free", free_offset));
        log::debug!(
            "pid {pid}: entry probes at {}",
            format_placements(&attached.placements)
        );
        Ok(attached)
    }

    /// Stop reporting a process's heap syscalls.
    pub(super) fn untrace_heap_of(&mut self, pid: u32) {
        if let Ok(map) = self.map_mut(maps::TRACED_PIDS) {
            if let Ok(mut traced) = BpfHashMap::<&mut MapData, u32, u32>::try_from(map) {
                let _ = traced.remove(&pid);
            }
        }
    }

    /// Detach probes, all at once: each detach waits for a grace period of its own (about
    /// 100 ms here), and waits on separate threads overlap.
    pub(super) fn detach_probes(
        &mut self,
        links: Vec<(&'static str, UProbeLinkId)>,
    ) -> anyhow::Result<()> {
        use aya::programs::Link as _;
        let mut taken = Vec::with_capacity(links.len());
        let mut first_error = None;
        for (program, link) in links {
            match self
                .uprobe(program)
                .and_then(|p| p.take_link(link).map_err(anyhow::Error::from))
            {
                Ok(link) => taken.push((program, link)),
                Err(err) => {
                    first_error.get_or_insert(err.context(format!("cannot detach {program}")));
                }
            }
        }
        std::thread::scope(|scope| {
            let detaching: Vec<_> = taken
                .into_iter()
                .map(|(program, link)| (program, scope.spawn(move || link.detach())))
                .collect();
            for (program, thread) in detaching {
                let detached = match thread.join() {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(_) => Err(anyhow!("the detaching thread panicked")),
                };
                if let Err(err) = detached {
                    first_error.get_or_insert(err.context(format!("cannot detach {program}")));
                }
            }
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Delete every map entry of process `tgid` (after its probes are gone).
    pub(super) fn forget_process(&mut self, tgid: u32) {
        /// Remove the keys of map `$name` (of aya type `$kind<_, $key, $value>`) that `$ours`.
        macro_rules! remove_where {
            ($kind:ident<$key:ty, $value:ty>, $name:expr, $ours:expr) => {
                (|| -> anyhow::Result<()> {
                    let map = self.map_mut($name)?;
                    let mut map: $kind<&mut MapData, $key, $value> = $kind::try_from(map)?;
                    let ours: fn(&$key, u32) -> bool = $ours;
                    let keys: Vec<$key> = map
                        .keys()
                        .filter_map(Result::ok)
                        .filter(|k| ours(k, tgid))
                        .collect();
                    for key in keys {
                        map.remove(&key)?;
                    }
                    Ok(())
                })()
            };
        }
        let results = [
            remove_where!(BpfHashMap<AllocKey, AllocInfo>, maps::ALLOCS, |k, t| k.tgid == t),
            remove_where!(BpfHashMap<u64, InflightCall>, maps::INFLIGHT, |k, t| {
                k >> 32 == u64::from(t)
            }),
            remove_where!(PerCpuHashMap<SiteKey, SiteStats>, maps::SITES, |k, t| k.tgid == t),
            remove_where!(PerCpuHashMap<u32, PidCounters>, maps::COUNTERS, |k, t| *k == t),
        ];
        for err in results.into_iter().filter_map(Result::err) {
            log::warn!("cannot clear pid {tgid}'s entries: {err:#}");
        }
    }
}

/// `free+3 malloc+0 ...`: entry probe placements, for logs and the start-up line.
pub fn format_placements(placements: &[(&str, u64)]) -> String {
    placements
        .iter()
        .map(|(function, offset)| format!("{function}+{offset}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Names of the functions an ELF file exports (dynamic symbol table).
/// The file offset of an executable's ELF entry point.
fn entry_file_offset(exe: &Path) -> Option<u64> {
    use object::{Object as _, ObjectSegment as _};
    let file = crate::target_files::open(exe).ok()?;
    let elf = crate::target_files::Elf::new(exe, file);
    let parsed = elf.parse().ok()?;
    let entry = parsed.entry();
    parsed.segments().find_map(|s| {
        let (offset, size) = s.file_range();
        (s.address() <= entry && entry < s.address() + size).then(|| entry - s.address() + offset)
    })
}

fn exported_functions(path: &Path) -> anyhow::Result<Vec<String>> {
    use object::{Object as _, ObjectSymbol as _};
    let data = crate::target_files::read(path)?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF file", path.display()))?;
    Ok(file
        .dynamic_symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok())
        // Versioned names ("malloc@@GLIBC_2.2.5") keep only the base name.
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

/// A uprobe the kernel refused for want of CAP_SYS_ADMIN (kernel 6.18 asks for it on
/// `perf_event_open` of a uprobe, CAP_PERFMON notwithstanding) is said as such: the user can act
/// on it. Anything else keeps its own message.
fn attach_error<E>(err: E, what: String) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut refused = false;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused |= matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM));
        }
        source = e.source();
    }
    if refused && !super::preflight::has_capability(super::preflight::CAP_SYS_ADMIN) {
        anyhow!(
            "the kernel refused a uprobe: exact mode needs CAP_SYS_ADMIN besides CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE (growth mode does not: --mode growth)"
        )
    } else {
        anyhow::Error::new(err).context(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_read_as_function_plus_offset() {
        assert_eq!(
            format_placements(&[("malloc", 0), ("free", 3)]),
            "malloc+0 free+3"
        );
        assert_eq!(format_placements(&[]), "");
    }
}
