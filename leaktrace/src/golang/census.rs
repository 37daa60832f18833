//! The goroutine census: `runtime.allgs` read from outside, each goroutine's state, wait
//! reason, creation site and top frames (a frame-pointer walk from its saved `sched`), grouped,
//! and each group's count followed over time.
use std::collections::HashMap;

use super::{
    layout::GLayout,
    memory::{le_u32, le_u64, le_u8, Memory, ReadError},
    GoRuntime, LayoutSource,
};
use crate::{
    growth::{least_squares, MIN_FIT_SAMPLES},
    schema::{GoroutineGrowth, GrowthClass},
};

/// Most goroutines read (a census of more would be a read of garbage): their pointers are read
/// at once (32 MB at most), their g structs in 16 MiB chunks, on the census's own thread.
pub const MAX_GOROUTINES: usize = 4_000_000;
/// Frames walked per goroutine.
const MAX_FRAMES: usize = 32;
/// Non-runtime frames that tell groups apart.
const KEY_FRAMES: usize = 4;
/// Attempts at reading `allgs` consistently (its header unchanged around the read).
const READ_ATTEMPTS: usize = 3;
/// Groups followed over time (the rest are reported but have no series).
const MAX_GROUP_SERIES: usize = 10_000;
/// Points per group series; older ones are thinned by half when full.
const SERIES_POINTS: usize = 128;
/// Readings a group may be absent before its series is dropped.
const ABSENT_READINGS_KEPT: u32 = 30;
/// A growing group needs at least this fit of count against time to be called a leak.
const LEAK_MIN_R2: f64 = 0.8;
/// ... and to have gained at least this many goroutines.
const LEAK_MIN_GAIN: f64 = 3.0;

/// `runtime._Gscan`: set while the GC scans the stack; the state is in the low bits.
const GSCAN: u32 = 0x1000;
const G_IDLE: u32 = 0;
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
const G_PREEMPTED: u32 = 9;
const G_MAX_STATE: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("{0}")]
    Layout(String),
    #[error("no goroutine census: runtime.allgs is not in the symbol table (stripped binary)")]
    NoAllgs,
    #[error("no goroutine census: {0}")]
    Read(#[from] ReadError),
    #[error("no goroutine census: allgs holds {0} goroutines, more than {MAX_GOROUTINES}")]
    TooMany(u64),
}

/// One goroutine as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goroutine {
    pub goid: u64,
    pub status: u32,
    pub wait_reason: u8,
    pub gopc: u64,
    pub startpc: u64,
    /// Nanotime at which the GC found it blocked (0: not yet seen blocked by a GC).
    pub waitsince: i64,
    /// Its stack: an index into [`Census::stacks`] (0: none, while it runs).
    pub stack: u32,
}

pub struct Census {
    pub goroutines: Vec<Goroutine>,
    /// The distinct stacks, return addresses from the saved context, innermost first; the
    /// first one is empty (running goroutines). Shared: 100,000 goroutines blocked at one
    /// place have one stack.
    pub stacks: Vec<Vec<u64>>,
    /// Goroutines whose read did not make sense (changed while read), left out.
    pub torn: u64,
    pub layout_source: LayoutSource,
    /// `runtime.waitReasonStrings`, read from the process.
    pub wait_reasons: Vec<String>,
}

/// Read every live goroutine of the process.
pub fn read(runtime: &GoRuntime, memory: &Memory) -> Result<Census, CensusError> {
    let (layout, layout_source) = runtime.g_layout.clone().map_err(CensusError::Layout)?;
    let (allgs, _) = runtime
        .symbol("runtime.allgs")
        .ok_or(CensusError::NoAllgs)?;
    let mut torn = 0;
    let mut pointers: Vec<u64> = Vec::new();
    for attempt in 0..READ_ATTEMPTS {
        let header = memory.read(allgs, 24)?;
        let (ptr, len) = (
            le_u64(&header, 0).unwrap_or(0),
            le_u64(&header, 8).unwrap_or(0),
        );
        if len > MAX_GOROUTINES as u64 {
            return Err(CensusError::TooMany(len));
        }
        let bytes = memory.read(ptr, len as usize * 8)?;
        let again = memory.read(allgs, 24)?;
        pointers = bytes.chunks_exact(8).filter_map(|c| le_u64(c, 0)).collect();
        if again == header {
            break;
        }
        if attempt + 1 == READ_ATTEMPTS {
            // allgs keeps moving: use the last copy (its goroutines are still real ones).
            torn += 1;
        }
    }
    let wait_reasons = read_wait_reasons(runtime, memory);
    pointers.retain(|&g| g != 0);
    // Goroutines are never freed: allgs only grows, and its g structs sit one after another in
    // the runtime's spans. Read in address order, neighbours merged into one region (a few
    // large reads instead of one iovec per goroutine).
    pointers.sort_unstable();
    pointers.dedup();
    let size = layout.read_bytes;
    let mut goroutines = Vec::with_capacity(pointers.len());
    let mut stacks = Stacks::default();
    let mut buf = Vec::new();
    let chunks = regions(&pointers, size);
    log::debug!(
        "pid {}: {} goroutines in {} regions of {} bytes in all",
        memory.pid,
        pointers.len(),
        chunks.iter().map(|c| c.regions.len()).sum::<usize>(),
        chunks
            .iter()
            .flat_map(|c| c.regions.iter().map(|(_, len)| len))
            .sum::<usize>()
    );
    for chunk in chunks {
        let read_whole = read_chunk(memory, &chunk, &pointers, size, &mut buf);
        for (i, whole) in read_whole.into_iter().enumerate() {
            let offset = chunk.offsets[i];
            let Some(g) = buf.get(offset..offset + size).filter(|_| whole) else {
                torn += 1;
                continue;
            };
            match parse_goroutine(g, &layout, memory, &mut stacks) {
                Parsed::Live(goroutine) => goroutines.push(goroutine),
                Parsed::Gone => {}
                Parsed::Torn => torn += 1,
            }
        }
    }
    Ok(Census {
        goroutines,
        stacks: stacks.list,
        torn,
        layout_source,
        wait_reasons,
    })
}

/// Bytes between two goroutines' reads merged into one region (a span's other objects).
const MERGE_GAP: u64 = 4096;
/// The largest region read at once, and the most bytes one chunk of regions holds (a million
/// goroutines are 400 MB: read a chunk at a time, never all at once).
const MAX_REGION_BYTES: u64 = 1 << 20;
const CHUNK_BYTES: usize = 16 << 20;
/// Regions per `process_vm_readv` (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Regions read together, and where each goroutine of theirs lands in the chunk's buffer.
struct Chunk {
    /// (address, length) of each region, laid one after another in the buffer.
    regions: Vec<(u64, usize)>,
    /// Indices into the sorted pointers of the goroutines this chunk holds.
    goroutines: std::ops::Range<usize>,
    /// Each goroutine's offset in the buffer.
    offsets: Vec<usize>,
}

/// Group sorted goroutine addresses into merged regions, and the regions into chunks of at
/// most [`CHUNK_BYTES`].
fn regions(pointers: &[u64], size: usize) -> Vec<Chunk> {
    let size64 = size as u64;
    let mut chunks = Vec::new();
    let mut chunk = Chunk {
        regions: Vec::new(),
        goroutines: 0..0,
        offsets: Vec::new(),
    };
    let mut chunk_bytes = 0usize;
    for (i, &g) in pointers.iter().enumerate() {
        let merged = chunk.regions.last_mut().is_some_and(|(start, len)| {
            let end = *start + *len as u64;
            let new_len = g
                .saturating_add(size64)
                .saturating_sub(*start)
                .max(*len as u64);
            if g >= *start && g <= end + MERGE_GAP && new_len <= MAX_REGION_BYTES {
                chunk_bytes += (new_len - *len as u64) as usize;
                *len = new_len as usize;
                true
            } else {
                false
            }
        });
        if !merged {
            if chunk_bytes + size > CHUNK_BYTES && !chunk.regions.is_empty() {
                let next = Chunk {
                    regions: Vec::new(),
                    goroutines: i..i,
                    offsets: Vec::new(),
                };
                chunks.push(std::mem::replace(&mut chunk, next));
                chunk_bytes = 0;
            }
            chunk.regions.push((g, size));
            chunk_bytes += size;
        }
        let (start, len) = chunk.regions.last().copied().unwrap_or((g, size));
        chunk.offsets.push(chunk_bytes - len + (g - start) as usize);
        chunk.goroutines.end = i + 1;
    }
    if !chunk.regions.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Read a chunk's regions into `buf`; which of its goroutines were read whole. A region that
/// fails is read again goroutine by goroutine.
fn read_chunk(
    memory: &Memory,
    chunk: &Chunk,
    pointers: &[u64],
    size: usize,
    buf: &mut Vec<u8>,
) -> Vec<bool> {
    let total: usize = chunk.regions.iter().map(|(_, len)| len).sum();
    // Grown once, never cleared: every byte used is read (or its goroutine counted torn).
    if buf.len() < total {
        buf.resize(total, 0);
    }
    let mut regions_read = Vec::with_capacity(chunk.regions.len());
    let mut at = 0;
    for batch in chunk.regions.chunks(IOV_MAX) {
        let batch_bytes: usize = batch.iter().map(|(_, len)| len).sum();
        regions_read.extend(memory.read_regions(batch, &mut buf[at..at + batch_bytes]));
        at += batch_bytes;
    }
    // Each goroutine's region: the last region starting at or before its offset.
    let mut region_ends = Vec::with_capacity(chunk.regions.len());
    let mut end = 0;
    for (_, len) in &chunk.regions {
        end += len;
        region_ends.push(end);
    }
    let mut whole = Vec::with_capacity(chunk.offsets.len());
    for (i, &offset) in chunk.offsets.iter().enumerate() {
        let region = region_ends.partition_point(|&end| end <= offset);
        if regions_read.get(region).copied().unwrap_or(false) {
            whole.push(true);
        } else {
            let g = pointers[chunk.goroutines.start + i];
            whole.push(memory.read_into(g, &mut buf[offset..offset + size]).is_ok());
        }
    }
    whole
}

/// What one g struct's bytes say.
enum Parsed {
    Live(Goroutine),
    /// Dead or idle: not a goroutine of the program's now.
    Gone,
    /// Changed under the read (a state that does not exist).
    Torn,
}

/// Distinct stacks, walked once each: goroutines created at one place, parked at one pc at one
/// stack depth have one stack (a service with 100,000 blocked goroutines has a handful).
struct Stacks {
    list: Vec<Vec<u64>>,
    by_context: HashMap<(u64, u64, u64), u32>,
}

impl Default for Stacks {
    fn default() -> Self {
        Stacks {
            list: vec![Vec::new()],
            by_context: HashMap::new(),
        }
    }
}

fn parse_goroutine(g: &[u8], layout: &GLayout, memory: &Memory, stacks: &mut Stacks) -> Parsed {
    let field = |offset| le_u64(g, offset).unwrap_or(0);
    let status = le_u32(g, layout.atomicstatus).unwrap_or(u32::MAX) & !GSCAN;
    if status >= G_MAX_STATE {
        return Parsed::Torn;
    }
    if status == G_DEAD || status == G_IDLE {
        return Parsed::Gone;
    }
    let (lo, hi) = (field(layout.stack_lo), field(layout.stack_hi));
    let (pc, sp) = (field(layout.sched_pc), field(layout.sched_sp));
    let gopc = field(layout.gopc);
    let stack = match status {
        G_WAITING | G_RUNNABLE | G_PREEMPTED => {
            let context = (gopc, pc, hi.wrapping_sub(sp));
            match stacks.by_context.get(&context) {
                Some(&index) => index,
                None => {
                    let index = u32::try_from(stacks.list.len()).unwrap_or(0);
                    stacks
                        .list
                        .push(walk_frames(memory, pc, field(layout.sched_bp), lo..hi));
                    stacks.by_context.insert(context, index);
                    index
                }
            }
        }
        _ => 0,
    };
    Parsed::Live(Goroutine {
        goid: field(layout.goid),
        status,
        wait_reason: le_u8(g, layout.waitreason).unwrap_or(0),
        gopc,
        startpc: field(layout.startpc),
        waitsince: field(layout.waitsince) as i64,
        stack,
    })
}

/// Walk saved frame pointers from a parked goroutine's context: `[bp]` is the caller's frame
/// pointer, `[bp+8]` the return address. Stops outside the goroutine's stack, at a frame pointer
/// that does not grow (a cycle or garbage), or after [`MAX_FRAMES`].
fn walk_frames(memory: &Memory, pc: u64, bp: u64, stack: std::ops::Range<u64>) -> Vec<u64> {
    let mut pcs = Vec::new();
    if pc == 0 {
        return pcs;
    }
    pcs.push(pc);
    let mut fp = bp;
    while pcs.len() < MAX_FRAMES {
        if fp == 0 || fp < stack.start || fp.saturating_add(16) > stack.end {
            break;
        }
        let mut frame = [0u8; 16];
        if memory.read_into(fp, &mut frame).is_err() {
            break;
        }
        let (next, ret) = (
            le_u64(&frame, 0).unwrap_or(0),
            le_u64(&frame, 8).unwrap_or(0),
        );
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
    pcs
}

/// `runtime.waitReasonStrings` (an array of Go strings), index = wait reason.
fn read_wait_reasons(runtime: &GoRuntime, memory: &Memory) -> Vec<String> {
    let Some((addr, size)) = runtime.symbol("runtime.waitReasonStrings") else {
        return Vec::new();
    };
    let count = (size / 16).min(256);
    (0..count)
        .map(|i| memory.go_string(addr + i * 16, 128).unwrap_or_default())
        .collect()
}

/// A state's name, as Go's tracebacks write it.
pub fn state_name(status: u32) -> &'static str {
    match status {
        G_IDLE => "idle",
        G_RUNNABLE => "runnable",
        G_RUNNING => "running",
        G_SYSCALL => "syscall",
        G_WAITING => "waiting",
        G_DEAD => "dead",
        G_PREEMPTED => "preempted",
        8 => "copystack",
        _ => "other",
    }
}

/// What tells goroutine groups apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    gopc: u64,
    status: u32,
    wait_reason: u8,
    /// The first non-runtime frames of its stack.
    user_pcs: Vec<u64>,
}

/// One group of goroutines in a census.
#[derive(Clone, Debug)]
pub struct Group {
    pub count: u64,
    pub state: &'static str,
    pub wait_reason: Option<String>,
    pub gopc: u64,
    /// One member's stack.
    pub pcs: Vec<u64>,
    pub oldest_wait_s: Option<f64>,
    pub growth: GoroutineGrowth,
}

#[derive(Default)]
struct GroupSeries {
    points: Vec<(f64, f64)>,
    absent: u32,
}

impl GroupSeries {
    fn push(&mut self, t_s: f64, count: f64) {
        if self.points.len() >= SERIES_POINTS {
            // Keep every other point: the series still spans the whole run.
            let kept: Vec<_> = self.points.iter().copied().step_by(2).collect();
            self.points = kept;
        }
        self.points.push((t_s, count));
    }
}

/// Groups' counts over time.
#[derive(Default)]
pub struct CensusTracker {
    series: HashMap<GroupKey, GroupSeries>,
}

impl CensusTracker {
    /// Group a census, add a point to each group's series when `sampling`, and return the
    /// groups by count, largest first.
    pub fn record(
        &mut self,
        runtime: &GoRuntime,
        census: &Census,
        t_s: f64,
        sampling: bool,
    ) -> Vec<Group> {
        let now_ns = monotonic_ns();
        // Per stack, its first non-runtime frames, as an id: goroutines are then grouped by
        // small integers, not by a vector each (100,000 goroutines share a few stacks).
        let mut user_ids: HashMap<Vec<u64>, u32> = HashMap::new();
        let mut user_keys: Vec<Vec<u64>> = Vec::new();
        let stack_user: Vec<u32> = census
            .stacks
            .iter()
            .map(|pcs| {
                let user: Vec<u64> = pcs
                    .iter()
                    .copied()
                    .filter(|pc| !runtime.is_runtime_pc(*pc))
                    .take(KEY_FRAMES)
                    .collect();
                *user_ids.entry(user.clone()).or_insert_with(|| {
                    user_keys.push(user);
                    u32::try_from(user_keys.len() - 1).unwrap_or(0)
                })
            })
            .collect();
        let mut by_key: HashMap<(u64, u32, u8, u32), Group> = HashMap::new();
        for g in &census.goroutines {
            let wait_reason = if g.status == G_WAITING {
                g.wait_reason
            } else {
                0
            };
            let stack = usize::try_from(g.stack).unwrap_or(0);
            let user = stack_user.get(stack).copied().unwrap_or(0);
            let waited_s = (g.status == G_WAITING && g.waitsince > 0 && now_ns > g.waitsince)
                .then(|| (now_ns - g.waitsince) as f64 / 1e9);
            let group = by_key
                .entry((g.gopc, g.status, wait_reason, user))
                .or_insert_with(|| Group {
                    count: 0,
                    state: state_name(g.status),
                    wait_reason: (g.status == G_WAITING).then(|| {
                        census
                            .wait_reasons
                            .get(usize::from(g.wait_reason))
                            .filter(|s| !s.is_empty())
                            .cloned()
                            .unwrap_or_else(|| format!("reason {}", g.wait_reason))
                    }),
                    gopc: g.gopc,
                    pcs: census.stacks.get(stack).cloned().unwrap_or_default(),
                    oldest_wait_s: None,
                    growth: GoroutineGrowth::default(),
                });
            group.count += 1;
            if let Some(waited) = waited_s {
                group.oldest_wait_s = Some(group.oldest_wait_s.map_or(waited, |w| w.max(waited)));
            }
        }
        let groups: HashMap<GroupKey, Group> = by_key
            .into_iter()
            .map(|((gopc, status, wait_reason, user), group)| {
                let key = GroupKey {
                    gopc,
                    status,
                    wait_reason,
                    user_pcs: user_keys
                        .get(usize::try_from(user).unwrap_or(0))
                        .cloned()
                        .unwrap_or_default(),
                };
                (key, group)
            })
            .collect();
        if sampling {
            for series in self.series.values_mut() {
                series.absent += 1;
            }
            for (key, group) in &groups {
                if let Some(series) = self.series.get_mut(key) {
                    series.absent = 0;
                    series.push(t_s, group.count as f64);
                } else if self.series.len() < MAX_GROUP_SERIES {
                    let mut series = GroupSeries::default();
                    series.push(t_s, group.count as f64);
                    self.series.insert(key.clone(), series);
                }
            }
            for series in self.series.values_mut().filter(|s| s.absent > 0) {
                series.push(t_s, 0.0);
            }
            self.series.retain(|_, s| s.absent <= ABSENT_READINGS_KEPT);
        }
        let mut groups: Vec<Group> = groups
            .into_iter()
            .map(|(key, mut group)| {
                if let Some(series) = self.series.get(&key) {
                    group.growth = group_growth(&series.points, key.status == G_WAITING);
                }
                group
            })
            .collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.gopc.cmp(&b.gopc)));
        groups
    }
}

/// A group's count against time: slope per minute, fit, and whether it leaks (blocked and
/// growing steadily, still growing recently).
pub fn group_growth(points: &[(f64, f64)], blocked: bool) -> GoroutineGrowth {
    let minutes: Vec<f64> = points.iter().map(|(t, _)| t / 60.0).collect();
    let counts: Vec<f64> = points.iter().map(|(_, c)| *c).collect();
    let whole = least_squares(&minutes, &counts);
    let recent_start = points
        .len()
        .saturating_sub((points.len() / 2).max(MIN_FIT_SAMPLES));
    let recent = least_squares(&minutes[recent_start..], &counts[recent_start..]);
    let gain = match (counts.first(), counts.last()) {
        (Some(first), Some(last)) => last - first,
        _ => 0.0,
    };
    let steady = whole.is_some_and(|f| f.slope > 0.0 && f.r2.is_some_and(|r2| r2 >= LEAK_MIN_R2));
    let still_growing = recent.is_some_and(|f| f.slope > 0.0);
    let class = if whole.is_none() {
        GrowthClass::Unknown
    } else if blocked && steady && still_growing && gain >= LEAK_MIN_GAIN {
        GrowthClass::LeakSuspect
    } else if gain >= LEAK_MIN_GAIN && !still_growing {
        GrowthClass::Plateau
    } else {
        GrowthClass::Unknown
    };
    GoroutineGrowth {
        per_min: whole.map(|f| f.slope),
        r2: whole.and_then(|f| f.r2),
        recent_per_min: recent.map(|f| f.slope),
        class,
        samples: points.len(),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the Go runtime's `nanotime`, hence of `waitsince`.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_group_that_keeps_growing_is_a_leak() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 6.0, 100.0 + 10.0 * i as f64))
            .collect();
        let growth = group_growth(&points, true);
        assert_eq!(growth.class, GrowthClass::LeakSuspect);
        let per_min = growth.per_min.expect("fit");
        assert!((per_min - 100.0).abs() < 1e-6, "{per_min}");
        // The same counts in a running group are no goroutine leak.
        assert_eq!(group_growth(&points, false).class, GrowthClass::Unknown);
    }

    #[test]
    fn flat_and_stopped_groups_are_not_leaks() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 50.0)).collect();
        let growth = group_growth(&flat, true);
        assert_eq!(growth.class, GrowthClass::Unknown);
        assert_eq!(growth.per_min, Some(0.0));
        let stopped: Vec<(f64, f64)> = (0..12)
            .map(|i| (i as f64, if i < 6 { 10.0 * i as f64 } else { 50.0 }))
            .collect();
        assert_eq!(group_growth(&stopped, true).class, GrowthClass::Plateau);
        assert_eq!(
            group_growth(&[(0.0, 1.0)], true).class,
            GrowthClass::Unknown
        );
    }

    #[test]
    fn neighbouring_goroutines_are_read_as_one_region() {
        // Three in one span (416 bytes apart), one far away, read 320 bytes each.
        let pointers = [0x1000, 0x11a0, 0x1340, 0x9_0000];
        let chunks = regions(&pointers, 320);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert_eq!(chunk.regions, vec![(0x1000, 0x340 + 320), (0x9_0000, 320)]);
        assert_eq!(chunk.offsets, vec![0, 0x1a0, 0x340, 0x340 + 320]);
        assert_eq!(chunk.goroutines, 0..4);
        // A million goroutines spread apart: chunks stay bounded.
        let spread: Vec<u64> = (0..100_000u64).map(|i| 0x10_0000 + i * 8192).collect();
        let chunks = regions(&spread, 320);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let bytes: usize = chunk.regions.iter().map(|(_, len)| len).sum();
            assert!(bytes <= CHUNK_BYTES + MAX_REGION_BYTES as usize);
            assert_eq!(chunk.offsets.len(), chunk.goroutines.len());
        }
        assert_eq!(chunks.last().map(|c| c.goroutines.end), Some(100_000));
    }

    #[test]
    fn a_census_of_our_own_fake_goroutines_reads_each_once() {
        // Fake g structs in our own memory: status at 0, gopc at 8; one dead, one waiting.
        let layout = GLayout {
            read_bytes: 64,
            stack_lo: 16,
            stack_hi: 24,
            sched_sp: 32,
            sched_pc: 40,
            sched_bp: 48,
            atomicstatus: 0,
            goid: 56,
            waitsince: 56,
            waitreason: 4,
            gopc: 8,
            startpc: 8,
        };
        let mut gs = vec![0u64; 8 * 300];
        for i in 0..300 {
            gs[i * 8] = if i == 7 {
                u64::from(G_DEAD)
            } else {
                u64::from(G_RUNNING)
            };
            gs[i * 8 + 1] = 0x4000 + (i as u64 % 3);
            gs[i * 8 + 7] = i as u64;
        }
        let base = gs.as_ptr() as u64;
        let mut pointers: Vec<u64> = (0..300).rev().map(|i| base + i * 64).collect();
        pointers.sort_unstable();
        let memory = Memory::new(std::process::id());
        let mut stacks = Stacks::default();
        let mut buf = Vec::new();
        let mut live = Vec::new();
        for chunk in regions(&pointers, 64) {
            let whole = read_chunk(&memory, &chunk, &pointers, 64, &mut buf);
            assert!(whole.iter().all(|w| *w));
            for &offset in &chunk.offsets {
                if let Parsed::Live(g) =
                    parse_goroutine(&buf[offset..offset + 64], &layout, &memory, &mut stacks)
                {
                    live.push(g);
                }
            }
        }
        assert_eq!(
            chunks_goids(&live),
            (0..300).filter(|i| *i != 7).collect::<Vec<u64>>()
        );
        // 100 created at 0x4001, the dead one (7) among them.
        assert_eq!(live.iter().filter(|g| g.gopc == 0x4001).count(), 99);
        std::hint::black_box(&mut gs);
    }

    fn chunks_goids(live: &[Goroutine]) -> Vec<u64> {
        live.iter().map(|g| g.goid).collect()
    }

    #[test]
    fn frame_walk_stops_at_the_stack_end_and_at_cycles() {
        // A fake stack in our own memory: two frames, the second pointing back at the first.
        let mut stack = [0u64; 8];
        let base = stack.as_ptr() as u64;
        stack[0] = base + 32; // frame 0: next fp
        stack[1] = 0x1111; // return address
        stack[4] = base; // frame 1: points back (cycle)
        stack[5] = 0x2222;
        let memory = Memory::new(std::process::id());
        let pcs = walk_frames(&memory, 0x1000, base, base..base + 64);
        assert_eq!(pcs, vec![0x1000, 0x1111, 0x2222]);
        let outside = walk_frames(&memory, 0x1000, base, base + 8..base + 64);
        assert_eq!(outside, vec![0x1000]);
        std::hint::black_box(&mut stack);
    }
}
