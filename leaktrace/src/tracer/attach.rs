//! Hooking a process's allocator (uprobes on its malloc family, `allocator` says which), registering processes
//! for heap tracing, and undoing both.
use std::{num::NonZeroU32, path::Path};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
};
use leaktrace_common::{
    names::{maps, programs},
    AllocInfo, AllocKey, InflightCall, PidCounters, SiteKey, SiteStats, STOP_ON_EXEC, TRACED,
};

use super::{AttachedLink, LinkId, Tracer};
use crate::allocator::{Discovery, Hook, HookKind};

/// Probes attached for one process, with their links.
#[derive(Default)]
pub(super) struct AttachedProbes {
    hooked: Vec<String>,
    placements: Vec<(String, u64)>,
    pub(super) links: Vec<(&'static str, UProbeLinkId)>,
}

impl Tracer {
    /// Hook, for `pid` only, every allocator discovery found hookable (the one serving malloc,
    /// and a prefixed jemalloc linked in beside it). Returns the functions hooked.
    pub fn attach(&mut self, pid: u32, allocators: &Discovery) -> anyhow::Result<Vec<String>> {
        let mut hooked = Vec::new();
        let mut links = Vec::new();
        for allocator in allocators.hookable() {
            match self.attach_probes(pid, &allocator.file, &allocator.hooks) {
                Ok(attached) => {
                    hooked.extend(attached.hooked);
                    links.extend(attached.links);
                }
                Err(err) => {
                    // Leave nothing half attached.
                    let _ = self.detach_probes(links);
                    return Err(err);
                }
            }
        }
        self.links
            .extend(links.into_iter().map(|(program, id)| AttachedLink {
                pid: Some(pid),
                program,
                id: LinkId::UProbe(id),
            }));
        self.trace_heap_of(pid)?;
        Ok(hooked)
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
        self.register_pid(pid, TRACED)
    }

    /// Have the kernel stop `pid` when it execs, until userspace continues it (SIGCONT): for a
    /// command leaktrace launched, so that the program it becomes is traced from its first
    /// instruction (`STOP_ON_EXEC`).
    pub fn stop_on_exec(&mut self, pid: u32) -> anyhow::Result<()> {
        self.register_pid(pid, TRACED | STOP_ON_EXEC)
    }

    fn register_pid(&mut self, pid: u32, flags: u32) -> anyhow::Result<()> {
        let mut traced: BpfHashMap<&mut MapData, u32, u32> =
            BpfHashMap::try_from(self.map_mut(maps::TRACED_PIDS)?)?;
        traced
            .insert(pid, flags, 0)
            .with_context(|| format!("cannot register pid {pid} for heap tracing"))
    }

    /// Delete the kernel's entries of a process that exec'd: its blocks, sites and counters
    /// belonged to the old program.
    pub fn forget_old_program(&mut self, pid: u32) {
        self.forget_process(pid);
    }

    /// Attach the probes of `hooks` (functions of the ELF file at `file`, a path reachable from
    /// our namespace) for `pid`, keeping their links so that they can be detached. At least one
    /// allocating and one freeing function must be among them.
    pub(super) fn attach_probes(
        &mut self,
        pid: u32,
        file: &Path,
        hooks: &[Hook],
    ) -> anyhow::Result<AttachedProbes> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?,
        );
        if !hooks.iter().any(|h| matches!(h.kind, HookKind::Alloc(_))) {
            bail!("{} exports no allocating function", file.display());
        }
        if !hooks.iter().any(|h| h.kind == HookKind::Free) {
            bail!("{} exports no free", file.display());
        }
        let mut attached = AttachedProbes::default();
        let result = self.attach_each(scope, file, hooks, &mut attached);
        if let Err(err) = result {
            let _ = self.detach_probes(std::mem::take(&mut attached.links));
            return Err(err);
        }
        log::debug!(
            "pid {pid}: entry probes at {}",
            format_placements(&attached.placements)
        );
        Ok(attached)
    }

    /// Attach `program` at `hook`'s placed entry in `file` (the allocator probes of a run and
    /// of growth mode's bursts alike).
    pub(super) fn attach_hook(
        &mut self,
        program: &'static str,
        hook: &Hook,
        cookie: Option<u64>,
        file: &Path,
        scope: UProbeScope,
    ) -> anyhow::Result<UProbeLinkId> {
        self.uprobe(program)?
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(
                        hook.file_offset + hook.placed_at,
                    ),
                    cookie,
                },
                file,
                scope,
            )
            .map_err(|err| {
                attach_error(
                    err,
                    format!(
                        "failed to attach {program} to {} in {}",
                        hook.symbol,
                        file.display()
                    ),
                )
            })
    }

    fn attach_each(
        &mut self,
        scope: UProbeScope,
        file: &Path,
        hooks: &[Hook],
        attached: &mut AttachedProbes,
    ) -> anyhow::Result<()> {
        for hook in hooks {
            // The return probe shares the entry probe's instruction: one breakpoint, emulated,
            // instead of a second one single-stepped at +0 (2.6x cheaper for the memalign
            // family). The instructions skipped write neither rsp nor memory, so `[rsp]` is
            // still the return address the kernel hijacks.
            let (programs, cookie): (&[&'static str], _) = match hook.kind {
                HookKind::Alloc(function) => (
                    &[programs::ALLOC_ENTER, programs::ALLOC_RETURN],
                    Some(function as u64),
                ),
                HookKind::Free => (&[programs::FREE_ENTER], None),
            };
            for &program in programs {
                let link = self.attach_hook(program, hook, cookie, file, scope)?;
                attached.links.push((program, link));
            }
            attached.hooked.push(hook.symbol.clone());
            attached.hooked.extend(hook.aliases.iter().cloned());
            attached
                .placements
                .push((hook.symbol.clone(), hook.placed_at));
        }
        Ok(())
    }

    /// Stop reporting a process's heap syscalls.
    pub(super) fn untrace_heap_of(&mut self, pid: u32) {
        if let Ok(map) = self.map_mut(maps::TRACED_PIDS) {
            if let Ok(mut traced) = BpfHashMap::<&mut MapData, u32, u32>::try_from(map) {
                let _ = traced.remove(&pid);
            }
        }
    }

    /// Detach probes, all at once (see [`detach_in_parallel`]).
    pub(super) fn detach_probes(
        &mut self,
        links: Vec<(&'static str, UProbeLinkId)>,
    ) -> anyhow::Result<()> {
        let links = links
            .into_iter()
            .map(|(program, id)| AttachedLink {
                pid: None,
                program,
                id: LinkId::UProbe(id),
            })
            .collect();
        self.detach_links(links)
    }

    /// Detach the allocator probes attached for `pid` (its program changed on exec, or it is
    /// no longer traced).
    pub fn detach_process(&mut self, pid: u32) -> anyhow::Result<()> {
        let (ours, others) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|link| link.pid == Some(pid));
        self.links = others;
        self.detach_links(ours)
    }

    /// Detach every program, all at once: the end of a run takes one grace period, not one per
    /// probe.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let links = std::mem::take(&mut self.links);
        self.detach_links(links)
    }

    fn detach_links(&mut self, links: Vec<AttachedLink>) -> anyhow::Result<()> {
        let mut taken = Vec::with_capacity(links.len());
        let mut first_error = None;
        for link in links {
            let program = link.program;
            match self.take_link(link) {
                Ok(link) => taken.push((program, link)),
                Err(err) => {
                    first_error.get_or_insert(err.context(format!("cannot detach {program}")));
                }
            }
        }
        if let Err(err) = detach_in_parallel(taken) {
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Take a link out of its program, so that it can be detached on another thread.
    fn take_link(&mut self, link: AttachedLink) -> anyhow::Result<TakenLink> {
        let program = self
            .ebpf
            .program_mut(link.program)
            .ok_or_else(|| anyhow!("eBPF object lacks program {}", link.program))?;
        Ok(match link.id {
            LinkId::UProbe(id) => {
                let uprobe: &mut aya::programs::UProbe = program.try_into()?;
                TakenLink::UProbe(uprobe.take_link(id)?)
            }
            LinkId::TracePoint(id) => {
                let tracepoint: &mut aya::programs::TracePoint = program.try_into()?;
                TakenLink::TracePoint(tracepoint.take_link(id)?)
            }
        })
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

/// A link out of its program: detaching it is closing its perf event.
pub enum TakenLink {
    UProbe(aya::programs::uprobe::UProbeLink),
    TracePoint(aya::programs::trace_point::TracePointLink),
}

impl TakenLink {
    fn detach(self) -> Result<(), aya::programs::ProgramError> {
        use aya::programs::Link as _;
        match self {
            TakenLink::UProbe(link) => link.detach(),
            TakenLink::TracePoint(link) => link.detach(),
        }
    }
}

/// Detach links on a thread each. Closing a uprobe or tracepoint perf event waits for an RCU
/// grace period (70-120 ms here, docs EBPF-NOTES.md); the waits overlap when they run on
/// separate threads, so 29 links take about one grace period instead of 3 s.
pub fn detach_in_parallel(links: Vec<(&'static str, TakenLink)>) -> anyhow::Result<()> {
    let mut first_error = None;
    std::thread::scope(|scope| {
        let detaching: Vec<_> = links
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

/// `free+3 malloc+0 ...`: entry probe placements, for logs and the start-up line.
pub fn format_placements<S: AsRef<str>>(placements: &[(S, u64)]) -> String {
    placements
        .iter()
        .map(|(function, offset)| format!("{}+{offset}", function.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

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

/// A uprobe the kernel refused for want of CAP_SYS_ADMIN (kernel 6.18 asks for it on
/// `perf_event_open` of a uprobe, CAP_PERFMON notwithstanding) is said as such: the user can act
/// on it. Anything else keeps its own message.
pub(super) fn attach_error<E>(err: E, what: String) -> anyhow::Error
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
        assert_eq!(format_placements::<&str>(&[]), "");
    }
}
