//! Loading the eBPF programs, attaching them to a process's allocator, and draining the maps.
use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use leaktrace_common::{
    AllocFn, AllocInfo, AllocKey, GrowthEvent, HeapEvent, PidCounters, SiteKey, SiteStats, NO_STACK,
};

use crate::model::SiteAges;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// Map sizes and stack sampling, chosen by the user at load time.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub max_allocations: u32,
    pub max_stacks: u32,
    /// `--sample-bytes`: mean bytes between allocations whose stack is captured (0: all).
    pub sample_bytes: u64,
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

/// Heap ring buffer size: exact mode sends 104-byte records; growth mode about 16 KiB per
/// heap-growth event (a user stack copy), drained every 100 ms.
const HEAP_EVENTS_BYTES: u32 = 4 << 20;
const GROWTH_EVENTS_BYTES: u32 = 32 << 20;

/// A heap syscall from the ring buffer and, in growth mode for heap-growing calls, the user
/// registers and stack copied at the syscall (borrowed from the ring buffer: unwind in place).
pub struct HeapRecord<'a> {
    pub event: HeapEvent,
    pub stack: Option<StackCopy<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The stack from `sp` upwards.
    pub bytes: &'a [u8],
}

impl<'a> HeapRecord<'a> {
    /// Decode one ring-buffer record: a `HeapEvent`, or a `GrowthEvent` (told apart by length).
    pub fn parse(record: &'a [u8]) -> Option<Self> {
        use std::mem::{offset_of, size_of};
        if record.len() < size_of::<HeapEvent>() {
            return None;
        }
        // SAFETY: the record starts with a HeapEvent (#[repr(C)], plain integers);
        // read_unaligned copes with the ring buffer's 8-byte alignment.
        let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<HeapEvent>()) };
        if record.len() < size_of::<GrowthEvent>() {
            return Some(Self { event, stack: None });
        }
        let word = |offset: usize| -> u64 {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&record[offset..offset + 8]);
            u64::from_ne_bytes(bytes)
        };
        let len = word(offset_of!(GrowthEvent, stack_len)) as u32 as usize;
        let start = offset_of!(GrowthEvent, stack);
        let bytes = &record[start..start + len.min(leaktrace_common::STACK_COPY_BYTES)];
        Some(Self {
            event,
            stack: Some(StackCopy {
                ip: word(offset_of!(GrowthEvent, ip)),
                sp: word(offset_of!(GrowthEvent, sp)),
                bp: word(offset_of!(GrowthEvent, bp)),
                bytes,
            }),
        })
    }
}

/// The heap syscalls traced through `syscalls:sys_enter_*` / `sys_exit_*`.
const HEAP_SYSCALLS: [&str; 5] = ["brk", "mmap", "munmap", "mremap", "mprotect"];

/// Where tracefs is (mounting it if it is not, as root may).
fn ensure_tracefs() -> anyhow::Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events/syscalls").exists()
        || Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        return Ok(());
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(tracing)
        .status()
        .is_ok_and(|s| s.success());
    if mounted && tracing.join("events/syscalls").exists() {
        log::info!("mounted tracefs on /sys/kernel/tracing");
        return Ok(());
    }
    bail!(
        "tracefs with syscall tracepoints is not available: mount it (mount -t tracefs tracefs /sys/kernel/tracing) on a kernel with CONFIG_FTRACE_SYSCALLS"
    )
}

/// Check, before touching the kernel, what leaktrace needs from it and from the user.
pub fn preflight() -> anyhow::Result<()> {
    if !has_bpf_privileges() {
        bail!("leaktrace needs root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE: run it with sudo");
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        bail!(
            "this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): it needs CONFIG_UPROBE_EVENTS"
        );
    }
    Ok(())
}

fn has_bpf_privileges() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]
        .iter()
        .all(|cap| effective & (1 << cap) != 0)
}

/// Everything the maps say at one moment.
#[derive(Debug, Default)]
pub struct MapsReading {
    pub sites: Vec<(SiteKey, SiteStats)>,
    pub counters: HashMap<u32, PidCounters>,
    /// Per site, from the outstanding-allocation map itself.
    pub ages: HashMap<SiteKey, SiteAges>,
}

/// The aggregate maps, readable from any thread.
pub struct MapsReader {
    sites: aya::maps::Map,
    counters: aya::maps::Map,
    allocs: aya::maps::Map,
}

impl MapsReader {
    /// Read per-site totals, counters, and per site the age of the oldest outstanding block and
    /// the bytes outstanding for at least `min_age_ns` (at `now_ns`, CLOCK_MONOTONIC). The
    /// outstanding-allocation map costs two syscalls per entry: this is the slow part.
    pub fn read(&self, now_ns: u64, min_age_ns: u64) -> anyhow::Result<MapsReading> {
        let mut reading = MapsReading::default();

        let sites: PerCpuHashMap<&MapData, SiteKey, SiteStats> =
            PerCpuHashMap::try_from(&self.sites)?;
        for entry in sites.iter() {
            // An entry deleted while we iterate is simply skipped.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut total = SiteStats::default();
            for value in per_cpu.iter() {
                total.add(value);
            }
            reading.sites.push((key, total));
        }

        let counters: PerCpuHashMap<&MapData, u32, PidCounters> =
            PerCpuHashMap::try_from(&self.counters)?;
        for entry in counters.iter() {
            let Ok((tgid, per_cpu)) = entry else { continue };
            let total = reading.counters.entry(tgid).or_default();
            for value in per_cpu.iter() {
                total.add(value);
            }
        }

        let allocs: BpfHashMap<&MapData, AllocKey, AllocInfo> = BpfHashMap::try_from(&self.allocs)?;
        for entry in allocs.iter() {
            let Ok((_, info)) = entry else { continue };
            let ages = reading.ages.entry(info.site).or_default();
            ages.blocks += 1;
            ages.oldest_ns = ages.oldest_ns.min(info.timestamp_ns);
            if now_ns.saturating_sub(info.timestamp_ns) >= min_age_ns {
                ages.aged_bytes += info.size;
                ages.aged_blocks += 1;
            }
        }
        Ok(reading)
    }
}

pub struct Tracer {
    ebpf: Ebpf,
    /// Which functions are hooked in each process's libc.
    hooked: HashMap<u32, Vec<&'static str>>,
    heap_events: RingBuf<MapData>,
}

impl Tracer {
    /// Load the programs and attach the heap-syscall tracepoints. `system_wide`: report every
    /// process's heap syscalls, not only those of traced PIDs. `growth`: growth mode, where
    /// heap-growing syscalls carry a copy of the user stack.
    pub fn load(capacity: Capacity, system_wide: bool, growth: bool) -> anyhow::Result<Self> {
        ensure_tracefs()?;
        let page_size = crate::target::page_size();
        let max_sites = capacity.max_stacks.saturating_mul(2);
        let trace_all = u32::from(system_wide);
        let growth_mode = u32::from(growth);
        let ring_bytes = if growth {
            GROWTH_EVENTS_BYTES
        } else {
            HEAP_EVENTS_BYTES
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("PAGE_SIZE", &page_size, true)
            .override_global("TRACE_ALL", &trace_all, true)
            .override_global("GROWTH_MODE", &growth_mode, true)
            .override_global("SELF_TGID", &std::process::id(), true)
            .override_global("SAMPLE_BYTES", &capacity.sample_bytes, true)
            .map_max_entries("HEAP_EVENTS", ring_bytes)
            .map_max_entries("ALLOCS", capacity.max_allocations)
            .map_max_entries("STACKS", capacity.max_stacks)
            .map_max_entries("SITES", max_sites)
            .load(EBPF_OBJECT)
            .context("failed to load leaktrace's eBPF programs")?;
        let heap_events = RingBuf::try_from(
            ebpf.take_map("HEAP_EVENTS")
                .ok_or_else(|| anyhow!("eBPF object lacks map HEAP_EVENTS"))?,
        )?;
        if capacity.sample_bytes > 0 {
            let mut gaps: aya::maps::Array<&mut MapData, u64> = aya::maps::Array::try_from(
                ebpf.map_mut("SAMPLE_GAPS")
                    .ok_or_else(|| anyhow!("eBPF object lacks map SAMPLE_GAPS"))?,
            )?;
            let table = sample_gaps(capacity.sample_bytes);
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
            let mut countdown: PerCpuArray<&mut MapData, i64> = PerCpuArray::try_from(
                ebpf.map_mut("SAMPLE_COUNTDOWN")
                    .ok_or_else(|| anyhow!("eBPF object lacks map SAMPLE_COUNTDOWN"))?,
            )?;
            countdown
                .set(0, aya::maps::PerCpuValues::try_from(starts)?, 0)
                .context("cannot start the stack-sampling countdowns")?;
        }
        let mut tracer = Self {
            ebpf,
            hooked: HashMap::new(),
            heap_events,
        };
        for name in ["alloc_enter", "alloc_return", "free_enter"] {
            tracer
                .uprobe(name)?
                .load()
                .with_context(|| format!("the kernel refused the eBPF program {name}"))?;
        }
        for (program, prefix) in [
            ("heap_sys_enter", "sys_enter_"),
            ("heap_sys_exit", "sys_exit_"),
        ] {
            let tracepoint: &mut TracePoint = tracer
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("eBPF object lacks program {program}"))?
                .try_into()?;
            tracepoint
                .load()
                .with_context(|| format!("the kernel refused the eBPF program {program}"))?;
            for syscall in HEAP_SYSCALLS {
                let name = format!("{prefix}{syscall}");
                tracepoint
                    .attach("syscalls", &name)
                    .with_context(|| format!("cannot attach to tracepoint syscalls:{name}"))?;
            }
        }
        Ok(tracer)
    }

    /// Report this process's heap syscalls (exact mode; system-wide mode reports all).
    pub fn trace_heap_of(&mut self, pid: u32) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("TRACED_PIDS")
            .ok_or_else(|| anyhow!("eBPF object lacks map TRACED_PIDS"))?;
        let mut traced: BpfHashMap<&mut MapData, u32, u32> = BpfHashMap::try_from(map)?;
        traced
            .insert(pid, 1, 0)
            .with_context(|| format!("cannot register pid {pid} for heap tracing"))
    }

    /// Hand every heap record waiting in the ring buffer to `sink`, oldest first.
    pub fn drain_heap_events(&mut self, mut sink: impl FnMut(HeapRecord<'_>)) -> usize {
        let mut drained = 0;
        while let Some(item) = self.heap_events.next() {
            if let Some(record) = HeapRecord::parse(&item) {
                sink(record);
                drained += 1;
            }
        }
        drained
    }

    fn uprobe(&mut self, name: &str) -> anyhow::Result<&mut UProbe> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("eBPF object lacks program {name}"))?;
        Ok(program.try_into()?)
    }

    /// Hook the malloc family of `libc` (a path reachable from our namespace) for `pid` only.
    /// Returns the functions hooked; functions a libc does not export are skipped, but malloc and
    /// free must be there.
    pub fn attach(&mut self, pid: u32, libc: &Path) -> anyhow::Result<Vec<&'static str>> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?,
        );
        let exports = exported_functions(libc)?;
        let mut hooked = Vec::new();
        for function in AllocFn::ALL {
            let symbol = function.symbol();
            if !exports.iter().any(|e| e == symbol) {
                if function == AllocFn::Malloc {
                    bail!("{} does not export malloc", libc.display());
                }
                log::debug!("{} does not export {symbol}; not hooked", libc.display());
                continue;
            }
            let point = || UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(symbol),
                cookie: Some(function as u64),
            };
            self.uprobe("alloc_enter")?
                .attach(point(), libc, scope)
                .with_context(|| format!("failed to attach to {symbol} in {}", libc.display()))?;
            self.uprobe("alloc_return")?
                .attach(point(), libc, scope)
                .with_context(|| {
                    format!(
                        "failed to attach to {symbol}'s return in {}",
                        libc.display()
                    )
                })?;
            hooked.push(symbol);
        }
        if !exports.iter().any(|e| e == "free") {
            bail!("{} does not export free", libc.display());
        }
        let free_offset = entry_probe_skip(libc, "free").unwrap_or(0);
        self.uprobe("free_enter")?
            .attach(
                UProbeAttachLocation::SymbolOffset("free", free_offset),
                libc,
                scope,
            )
            .with_context(|| format!("failed to attach to free in {}", libc.display()))?;
        hooked.push("free");
        self.trace_heap_of(pid)?;
        self.hooked.insert(pid, hooked.clone());
        Ok(hooked)
    }

    pub fn hooked(&self, pid: u32) -> &[&'static str] {
        self.hooked.get(&pid).map_or(&[], Vec::as_slice)
    }

    fn map(&self, name: &str) -> anyhow::Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("eBPF object lacks map {name}"))
    }

    /// A reader of the aggregate maps that can run on another thread (its own descriptors of
    /// the same maps), so that a long read does not stall the dashboard.
    pub fn reader(&self) -> anyhow::Result<MapsReader> {
        let clone = |name: &str| -> anyhow::Result<aya::maps::Map> {
            use std::os::fd::AsFd as _;
            let map = self.map(name)?;
            let data = match map {
                aya::maps::Map::HashMap(data) | aya::maps::Map::PerCpuHashMap(data) => data,
                _ => bail!("map {name} is not a hash map"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            let data = MapData::from_fd(fd)?;
            Ok(match map {
                aya::maps::Map::HashMap(_) => aya::maps::Map::HashMap(data),
                _ => aya::maps::Map::PerCpuHashMap(data),
            })
        };
        Ok(MapsReader {
            sites: clone("SITES")?,
            counters: clone("COUNTERS")?,
            allocs: clone("ALLOCS")?,
        })
    }

    /// Uprobe hits so far, all CPUs.
    pub fn probe_hits(&self) -> u64 {
        let Ok(map) = self.map("PROBE_HITS") else {
            return 0;
        };
        let Ok(hits) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        hits.get(&0, 0)
            .map(|per_cpu| per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
            .unwrap_or(0)
    }

    /// The user stack of a site (instruction pointers, innermost first).
    pub fn stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        if stack_id == NO_STACK {
            return None;
        }
        let stacks = StackTraceMap::<&MapData>::try_from(self.map("STACKS").ok()?).ok()?;
        let trace = stacks.get(&stack_id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}

/// How many bytes into `function` its entry probe can go so that the kernel emulates the
/// probed instruction instead of single-stepping it out of line (a second trap per hit).
/// Only one pattern is recognized, glibc's `free`: it starts with `test %rdi,%rdi`
/// (48 85 ff), which must be single-stepped, followed by a conditional jump on it, which the
/// kernel emulates; %rdi, the argument, is untouched at +3. Anything else stays at +0.
fn entry_probe_skip(path: &Path, function: &str) -> Option<u64> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name().ok().and_then(|n| n.split('@').next()) == Some(function))?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (section_offset, _) = section.file_range()?;
    let offset = symbol.address().checked_sub(section.address())? + section_offset;
    let code = data.get(usize::try_from(offset).ok()?..usize::try_from(offset + 5).ok()?)?;
    let test_rdi = code.starts_with(&[0x48, 0x85, 0xff]);
    // je/jne rel8 (74/75) or rel32 (0f 84/0f 85).
    let jcc = matches!(code[3], 0x74 | 0x75) || (code[3] == 0x0f && matches!(code[4], 0x84 | 0x85));
    (test_rdi && jcc).then_some(3)
}

/// Names of the functions an ELF file exports (dynamic symbol table).
fn exported_functions(path: &Path) -> anyhow::Result<Vec<String>> {
    use object::{Object as _, ObjectSymbol as _};
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
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

/// CLOCK_MONOTONIC now, in the same time base as `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn free_probe_skips_glibc_s_leading_test_only_when_it_is_there() {
        let me = crate::target::inspect(std::process::id()).expect("inspect self");
        // Debian 12's glibc 2.36 starts free with test %rdi,%rdi; je.
        let skip = entry_probe_skip(&me.libc_host_path, "free");
        assert_eq!(skip, Some(3));
        // malloc starts differently: it stays at its entry.
        assert_eq!(entry_probe_skip(&me.libc_host_path, "malloc"), None);
        assert_eq!(
            entry_probe_skip(&me.libc_host_path, "no_such_function"),
            None
        );
    }
}
