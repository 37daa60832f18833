//! Loading the eBPF object with the user's sizes and mode, and attaching the heap-syscall
//! tracepoints every mode uses.
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    EbpfLoader,
};
use leaktrace_common::names::{globals, maps, programs};

use super::{missing_map, monotonic_ns, preflight::ensure_tracefs, Tracer};
use crate::schema::Mode;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// Map sizes and stack sampling, chosen by the user at load time.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub max_allocations: u32,
    pub max_stacks: u32,
    /// `--sample-bytes`: mean bytes between allocations whose stack is captured (0: all).
    pub sample_bytes: u64,
    /// `--unwind-table-mib` as rows of the unwind-table array.
    pub unwind_rows: u32,
}

/// Exponentially distributed gaps with mean `mean`, one per equal-probability slice of (0, 1):
/// the eBPF side draws one at random after each stack sample.
pub fn sample_gaps(mean: u64) -> Vec<u64> {
    let n = f64::from(leaktrace_common::SAMPLE_DRAWS);
    (0..leaktrace_common::SAMPLE_DRAWS)
        .map(|i| {
            let u = (f64::from(i) + 0.5) / n;
            ((-u.ln() * mean as f64).round() as u64).max(1)
        })
        .collect()
}

/// Whose heap syscalls are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the processes registered with [`Tracer::trace_heap_of`].
    Targets,
    /// Every process but leaktrace itself.
    SystemWide,
}

/// Heap ring buffer size: exact mode sends 104-byte records; growth mode about 16 KiB per
/// heap-growth event (a user stack copy), drained every 100 ms.
const HEAP_EVENTS_BYTES: u32 = 4 << 20;
const GROWTH_EVENTS_BYTES: u32 = 32 << 20;
/// System-wide growth mode: half as much. The ring buffer's pages are mapped twice (for
/// records that wrap), so it counts twice in leaktrace's RSS; 16 MiB still holds 1,000 stack
/// copies per 100 ms drain, and what overflows is counted as lost.
const SYSTEM_WIDE_EVENTS_BYTES: u32 = 16 << 20;

/// The heap syscalls traced through `syscalls:sys_enter_*` / `sys_exit_*`.
const HEAP_SYSCALLS: [&str; 5] = ["brk", "mmap", "munmap", "mremap", "mprotect"];

impl Tracer {
    /// Load the programs and attach the heap-syscall tracepoints. `scope`: whose heap syscalls
    /// are reported. `mode`: in growth mode, heap-growing syscalls carry a copy of the user stack.
    pub fn load(capacity: Capacity, scope: Scope, mode: Mode) -> anyhow::Result<Self> {
        ensure_tracefs()?;
        let page_size = crate::target::page_size();
        let max_sites = capacity.max_stacks.saturating_mul(2);
        let trace_all = u32::from(scope == Scope::SystemWide);
        let growth_mode = u32::from(mode == Mode::Growth);
        let ring_bytes = match (mode, scope) {
            (Mode::Exact, _) => HEAP_EVENTS_BYTES,
            (_, Scope::SystemWide) => SYSTEM_WIDE_EVENTS_BYTES,
            // SystemWide names only old snapshots' mode; a run is never loaded with it.
            (Mode::Growth | Mode::SystemWide, Scope::Targets) => GROWTH_EVENTS_BYTES,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::PAGE_SIZE, &page_size, true)
            .override_global(globals::TRACE_ALL, &trace_all, true)
            .override_global(globals::GROWTH_MODE, &growth_mode, true)
            .override_global(globals::SELF_TGID, &std::process::id(), true)
            .override_global(globals::SAMPLE_BYTES, &capacity.sample_bytes, true)
            .map_max_entries(maps::HEAP_EVENTS, ring_bytes)
            .map_max_entries(maps::ALLOCS, capacity.max_allocations)
            .map_max_entries(maps::STACKS, capacity.max_stacks)
            .map_max_entries(maps::SITES, max_sites)
            .map_max_entries(maps::UNWIND_ROWS, capacity.unwind_rows.max(1))
            .map_max_entries(maps::UNWOUND_STACKS, capacity.max_stacks)
            .map_max_entries(maps::UNWOUND_STACK_IDS, capacity.max_stacks)
            .load(EBPF_OBJECT)
            .context("failed to load leaktrace's eBPF programs")?;
        let heap_events = RingBuf::try_from(
            ebpf.take_map(maps::HEAP_EVENTS)
                .ok_or_else(|| missing_map(maps::HEAP_EVENTS))?,
        )?;
        let mut tracer = Self {
            ebpf,
            heap_events,
            links: Vec::new(),
        };
        if capacity.sample_bytes > 0 {
            tracer.start_stack_sampling(capacity.sample_bytes)?;
        }
        for name in [
            programs::ALLOC_ENTER,
            programs::ALLOC_RETURN,
            programs::FREE_ENTER,
            programs::ENTRY_STOP,
        ] {
            tracer
                .uprobe(name)?
                .load()
                .with_context(|| format!("the kernel refused the eBPF program {name}"))?;
        }
        tracer.attach_heap_tracepoints()?;
        Ok(tracer)
    }

    /// Fill the table of sampling gaps and start each CPU's countdown at a random point.
    fn start_stack_sampling(&mut self, sample_bytes: u64) -> anyhow::Result<()> {
        let mut gaps: aya::maps::Array<&mut MapData, u64> =
            aya::maps::Array::try_from(self.map_mut(maps::SAMPLE_GAPS)?)?;
        let table = sample_gaps(sample_bytes);
        for (i, gap) in (0u32..).zip(&table) {
            gaps.set(i, *gap, 0)
                .context("cannot fill the stack-sampling table")?;
        }
        // Each CPU starts at a random point of the process too, not with a sample.
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
        let mut seed = monotonic_ns();
        let starts: Vec<i64> = (0..cpus)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let gap = table[(seed >> 33) as usize % table.len()];
                i64::try_from(gap).unwrap_or(i64::MAX)
            })
            .collect();
        let mut countdown: PerCpuArray<&mut MapData, i64> =
            PerCpuArray::try_from(self.map_mut(maps::SAMPLE_COUNTDOWN)?)?;
        countdown
            .set(0, aya::maps::PerCpuValues::try_from(starts)?, 0)
            .context("cannot start the stack-sampling countdowns")
    }

    fn attach_heap_tracepoints(&mut self) -> anyhow::Result<()> {
        for (program, prefix) in [
            (programs::HEAP_SYS_ENTER, "sys_enter_"),
            (programs::HEAP_SYS_EXIT, "sys_exit_"),
        ] {
            let tracepoint: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("eBPF object lacks program {program}"))?
                .try_into()?;
            tracepoint
                .load()
                .with_context(|| format!("the kernel refused the eBPF program {program}"))?;
            for syscall in HEAP_SYSCALLS {
                let name = format!("{prefix}{syscall}");
                let link = tracepoint
                    .attach("syscalls", &name)
                    .with_context(|| format!("cannot attach to tracepoint syscalls:{name}"))?;
                self.links.push(super::AttachedLink {
                    pid: None,
                    program,
                    id: super::LinkId::TracePoint(link),
                });
            }
        }
        let exec: &mut TracePoint = self
            .ebpf
            .program_mut(programs::PROCESS_EXEC)
            .ok_or_else(|| anyhow!("eBPF object lacks program {}", programs::PROCESS_EXEC))?
            .try_into()?;
        exec.load().with_context(|| {
            format!(
                "the kernel refused the eBPF program {}",
                programs::PROCESS_EXEC
            )
        })?;
        let link = exec
            .attach("sched", "sched_process_exec")
            .context("cannot attach to tracepoint sched:sched_process_exec")?;
        self.links.push(super::AttachedLink {
            pid: None,
            program: programs::PROCESS_EXEC,
            id: super::LinkId::TracePoint(link),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn sampling_gaps_are_exponential_with_the_chosen_mean() {
        let mean = 524_288;
        let gaps = sample_gaps(mean);
        assert_eq!(gaps.len(), leaktrace_common::SAMPLE_DRAWS as usize);
        let average = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        assert!((average / mean as f64 - 1.0).abs() < 0.01, "mean {average}");
        // Exponential: the median gap is ln 2 of the mean, and small gaps are common.
        let mut sorted = gaps.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2] as f64 / mean as f64;
        assert!(
            (median - std::f64::consts::LN_2).abs() < 0.01,
            "median {median}"
        );
        assert!(sorted[0] < mean / 100);
        assert!(gaps.iter().all(|g| *g >= 1));
    }

    /// The built eBPF object's global symbols, by kind: maps, globals userspace sets, programs.
    fn object_names() -> [BTreeSet<String>; 3] {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object is ELF");
        let mut names: [BTreeSet<String>; 3] = Default::default();
        for symbol in file
            .symbols()
            .filter(|s| s.is_global() && s.is_definition())
        {
            let Some(section) = symbol
                .section_index()
                .and_then(|index| file.section_by_index(index).ok())
            else {
                continue;
            };
            let section = section.name().expect("section name");
            let slot = match (symbol.kind(), section) {
                (SymbolKind::Data, "maps") => 0,
                (SymbolKind::Data, ".rodata" | ".data" | ".bss") => 1,
                (SymbolKind::Text, "uprobe" | "uretprobe" | "tracepoint") => 2,
                _ => continue,
            };
            names[slot].insert(symbol.name().expect("symbol name").to_string());
        }
        names
    }

    #[test]
    fn every_map_global_and_program_of_the_ebpf_object_has_its_name_constant() {
        let [object_maps, object_globals, object_programs] = object_names();
        let constants = |all: &[&str]| all.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(object_maps, constants(&maps::ALL), "maps");
        assert_eq!(object_globals, constants(&globals::ALL), "globals");
        assert_eq!(object_programs, constants(&programs::ALL), "programs");
    }

    #[test]
    fn heap_event_kinds_of_syscalls_are_their_x86_64_numbers() {
        use leaktrace_common::HeapEventKind;
        // The kernel side sends a syscall's own number as its event kind.
        for (kind, number) in [
            (HeapEventKind::Brk, libc::SYS_brk),
            (HeapEventKind::Mmap, libc::SYS_mmap),
            (HeapEventKind::Munmap, libc::SYS_munmap),
            (HeapEventKind::Mremap, libc::SYS_mremap),
            (HeapEventKind::Mprotect, libc::SYS_mprotect),
        ] {
            assert_eq!(i64::from(kind as u32), number, "{kind:?}");
        }
    }
}
