//! Loading the eBPF programs, attaching them to a process's allocator, and draining the maps.
use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use leaktrace_common::{
    AllocFn, AllocInfo, AllocKey, GrowthEvent, HeapEvent, InflightCall, PidCounters, SiteKey,
    SiteStats, NO_STACK,
};

use crate::{cost, model::SiteAges, placement};

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
    let effective = crate::procfs::own_effective_capabilities().unwrap_or(0);
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

/// What one probe hit costs on this machine, measured by [`Tracer::calibrate`].
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// Extra CPU time per probe hit (median over the rounds).
    pub ns_per_hit: f64,
    /// Probe hits the calibration loops caused, all rounds.
    pub hits: u64,
    /// How long the whole calibration took, attaching and detaching included.
    pub took: std::time::Duration,
}

/// A child of leaktrace that, each time it is told to, revokes and grants write permission on
/// one page `events` times and reports how long that took (ns). Only async-signal-safe calls
/// happen in the child (leaktrace has threads).
struct GrowthLoop {
    pid: u32,
    go: std::fs::File,
    done: std::fs::File,
    exited: bool,
}

impl GrowthLoop {
    fn start(events: u32) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let pipe = || -> anyhow::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
            let mut fds = [0; 2];
            // SAFETY: valid out-array of two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                bail!("pipe: {}", std::io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just opened and are owned here only.
            Ok(unsafe {
                (
                    std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                    std::os::fd::OwnedFd::from_raw_fd(fds[1]),
                )
            })
        };
        let (go_read, go_write) = pipe()?;
        let (done_read, done_write) = pipe()?;
        let page = crate::target::page_size() as usize;
        // SAFETY: a fresh private anonymous mapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the child only makes async-signal-safe calls (read, write, mprotect,
        // clock_gettime, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            use std::os::fd::AsRawFd as _;
            let (input, output) = (go_read.as_raw_fd(), done_write.as_raw_fd());
            loop {
                let mut byte = 0u8;
                // SAFETY: a one-byte read into a local.
                if unsafe { libc::read(input, (&raw mut byte).cast(), 1) } != 1 {
                    // SAFETY: leaving the forked child without running any destructor.
                    unsafe { libc::_exit(0) };
                }
                let start = monotonic_ns();
                for _ in 0..events {
                    // SAFETY: our own page.
                    unsafe {
                        libc::mprotect(addr, page, libc::PROT_READ);
                        libc::mprotect(addr, page, libc::PROT_READ | libc::PROT_WRITE);
                    }
                }
                let took = monotonic_ns().saturating_sub(start).to_ne_bytes();
                // SAFETY: writes a local buffer.
                unsafe { libc::write(output, took.as_ptr().cast(), took.len()) };
            }
        }
        // SAFETY: the parent's copy of the page is not used.
        unsafe { libc::munmap(addr, page) };
        drop(go_read);
        drop(done_write);
        Ok(Self {
            pid: pid as u32,
            go: go_write.into(),
            done: done_read.into(),
            exited: false,
        })
    }

    /// One round; returns the child's time in ns.
    fn run(&mut self) -> anyhow::Result<u64> {
        use std::io::{Read as _, Write as _};
        self.go.write_all(&[1])?;
        let mut took = [0u8; 8];
        self.done
            .read_exact(&mut took)
            .context("the calibration child stopped")?;
        Ok(u64::from_ne_bytes(took))
    }

    fn finish(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if self.exited {
            return;
        }
        // SAFETY: our own child, not reaped yet: the pid cannot have been reused.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
        self.exited = true;
    }
}

impl Drop for GrowthLoop {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Time `pairs` x `malloc(64)` + `free` in this thread, in ns.
fn time_allocation_pairs(pairs: u32) -> u64 {
    let started = std::time::Instant::now();
    for _ in 0..pairs {
        // SAFETY: the block malloc returns (or NULL) is only handed back to free, once.
        unsafe {
            let block = libc::malloc(64);
            // Opaque to the optimizer, which would otherwise drop the pair.
            libc::free(std::hint::black_box(block));
        }
    }
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Probes attached for one process, with their links.
#[derive(Default)]
struct AttachedProbes {
    hooked: Vec<&'static str>,
    placements: Vec<(&'static str, u64)>,
    links: Vec<(&'static str, UProbeLinkId)>,
}

pub struct Tracer {
    ebpf: Ebpf,
    /// Which functions are hooked in each process's libc.
    hooked: HashMap<u32, Vec<&'static str>>,
    /// Per process, each hooked function's entry-probe offset.
    placements: HashMap<u32, Vec<(&'static str, u64)>>,
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
            placements: HashMap::new(),
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
        let attached = self.attach_probes(pid, libc, &AllocFn::ALL)?;
        self.trace_heap_of(pid)?;
        self.hooked.insert(pid, attached.hooked.clone());
        self.placements.insert(pid, attached.placements);
        Ok(attached.hooked)
    }

    /// Attach the allocator probes for `pid`, keeping their links so that they can be detached.
    /// `functions`: the allocating functions to hook (free always is).
    fn attach_probes(
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
            for program in ["alloc_enter", "alloc_return"] {
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
                    .with_context(|| {
                        format!(
                            "failed to attach {program} to {symbol} in {}",
                            libc.display()
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
            .uprobe("free_enter")?
            .attach(
                UProbeAttachLocation::SymbolOffset("free", free_offset),
                libc,
                scope,
            )
            .with_context(|| format!("failed to attach to free in {}", libc.display()))?;
        attached.links.push(("free_enter", link));
        attached.hooked.push("free");
        attached.placements.push(("free", free_offset));
        log::debug!(
            "pid {pid}: entry probes at {}",
            format_placements(&attached.placements)
        );
        Ok(attached)
    }

    /// Measure what one probe hit costs here, on leaktrace's own process: a loop of
    /// `malloc(64)` + `free` pairs timed without probes, then with the same probes the targets
    /// get, attached to our own pid. Call it before attaching any target, so that the hit
    /// counter only counts our own loop. The probes are detached and every map entry of ours is
    /// deleted before this returns, whatever happens in between.
    /// Growth mode's cost of one heap-growth event in the kernel (the tracepoints and the 16 KiB
    /// stack copy), measured on a child of leaktrace that grants write permission to a page
    /// `EVENTS` times, untraced and then traced, a few rounds. Its events are drained and
    /// dropped. Unwinding them in userspace is measured live (`UnwindStats`).
    pub fn calibrate_growth(&mut self) -> anyhow::Result<Calibration> {
        const ROUNDS: usize = 3;
        const EVENTS: u32 = 400;
        let started = std::time::Instant::now();
        let mut child = GrowthLoop::start(EVENTS)?;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let untraced_ns = child.run()?;
            self.trace_heap_of(child.pid)?;
            let traced_ns = child.run();
            self.untrace_heap_of(child.pid);
            let drained = self.drain_heap_events(|_| {});
            rounds.push(cost::Round {
                untraced_ns,
                traced_ns: traced_ns?,
                // Each round: one PROT_WRITE grant (with its stack copy) and one revocation.
                hits: (drained as u64 / 2).min(u64::from(EVENTS)),
            });
        }
        child.finish();
        let ns_per_hit = cost::ns_per_hit(&rounds)
            .ok_or_else(|| anyhow!("the calibration child's heap events never arrived"))?;
        Ok(Calibration {
            ns_per_hit,
            hits: rounds.iter().map(|r| r.hits).sum(),
            took: started.elapsed(),
        })
    }

    /// Stop reporting a process's heap syscalls.
    fn untrace_heap_of(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut("TRACED_PIDS") {
            if let Ok(mut traced) = BpfHashMap::<&mut MapData, u32, u32>::try_from(map) {
                let _ = traced.remove(&pid);
            }
        }
    }

    pub fn calibrate(&mut self) -> anyhow::Result<Calibration> {
        const ROUNDS: usize = 5;
        const PAIRS: u32 = 2_000;
        let started = std::time::Instant::now();
        let pid = std::process::id();
        let me = crate::target::inspect(pid).context("cannot find leaktrace's own libc")?;
        let untraced: Vec<u64> = (0..ROUNDS).map(|_| time_allocation_pairs(PAIRS)).collect();
        let attached = self
            .attach_probes(pid, &me.libc_host_path, &[AllocFn::Malloc])
            .context("cannot attach the calibration probes to leaktrace itself");
        let rounds = attached.as_ref().ok().map(|_| {
            untraced
                .iter()
                .map(|&untraced_ns| {
                    let before = self.probe_hits();
                    let traced_ns = time_allocation_pairs(PAIRS);
                    cost::Round {
                        untraced_ns,
                        traced_ns,
                        hits: self.probe_hits().saturating_sub(before),
                    }
                })
                .collect::<Vec<_>>()
        });
        let detached = match attached {
            Ok(probes) => self.detach_probes(probes.links),
            Err(err) => Err(err),
        };
        self.forget_process(pid);
        detached?;
        let rounds = rounds.unwrap_or_default();
        let ns_per_hit = cost::ns_per_hit(&rounds)
            .ok_or_else(|| anyhow!("the calibration loop caused no probe hits"))?;
        let calibration = Calibration {
            ns_per_hit,
            hits: rounds.iter().map(|r| r.hits).sum(),
            took: started.elapsed(),
        };
        log::debug!("calibration: {calibration:?} from {rounds:?}");
        Ok(calibration)
    }

    /// Detach probes, all at once: each detach waits for a grace period of its own (about
    /// 100 ms here), and waits on separate threads overlap.
    fn detach_probes(&mut self, links: Vec<(&'static str, UProbeLinkId)>) -> anyhow::Result<()> {
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
    fn forget_process(&mut self, tgid: u32) {
        /// Remove the keys of map `$name` (of aya type `$kind<_, $key, $value>`) that `$ours`.
        macro_rules! remove_where {
            ($kind:ident<$key:ty, $value:ty>, $name:literal, $ours:expr) => {
                (|| -> anyhow::Result<()> {
                    let map = self
                        .ebpf
                        .map_mut($name)
                        .ok_or_else(|| anyhow!("eBPF object lacks map {}", $name))?;
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
            remove_where!(BpfHashMap<AllocKey, AllocInfo>, "ALLOCS", |k, t| k.tgid == t),
            remove_where!(BpfHashMap<u64, InflightCall>, "INFLIGHT", |k, t| {
                k >> 32 == u64::from(t)
            }),
            remove_where!(PerCpuHashMap<SiteKey, SiteStats>, "SITES", |k, t| k.tgid == t),
            remove_where!(PerCpuHashMap<u32, PidCounters>, "COUNTERS", |k, t| *k == t),
        ];
        for err in results.into_iter().filter_map(Result::err) {
            log::warn!("cannot clear pid {tgid}'s entries: {err:#}");
        }
    }

    pub fn hooked(&self, pid: u32) -> &[&'static str] {
        self.hooked.get(&pid).map_or(&[], Vec::as_slice)
    }

    /// Where each hooked function's entry probe sits in `pid`'s libc, e.g. `("free", 3)`
    /// (a malloc-family function's return probe shares its instruction).
    pub fn entry_probe_offsets(&self, pid: u32) -> &[(&'static str, u64)] {
        self.placements.get(&pid).map_or(&[], Vec::as_slice)
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

/// `free+3 malloc+0 ...`: entry probe placements, for logs and the start-up line.
pub fn format_placements(placements: &[(&str, u64)]) -> String {
    placements
        .iter()
        .map(|(function, offset)| format!("{function}+{offset}"))
        .collect::<Vec<_>>()
        .join(" ")
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
    fn placements_read_as_function_plus_offset() {
        assert_eq!(
            format_placements(&[("malloc", 0), ("free", 3)]),
            "malloc+0 free+3"
        );
        assert_eq!(format_placements(&[]), "");
    }
}
