//! The goroutine census: `runtime.allgs` read from outside, each goroutine's state, wait
//! reason, creation site and top frames (a frame-pointer walk from its saved `sched`), grouped,
//! and each group's count followed over time.
use std::collections::HashMap;

use super::{
    memory::{le_u32, le_u64, le_u8, Memory, ReadError},
    GoRuntime, LayoutSource,
};
use crate::{
    growth::{least_squares, MIN_FIT_SAMPLES},
    schema::{GoroutineGrowth, GrowthClass},
};

/// Most goroutines read (a census of more would be a read of garbage, or too slow).
pub const MAX_GOROUTINES: usize = 1_000_000;
/// Goroutines read per batch of `process_vm_readv` calls.
const READ_BATCH: usize = 4096;
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
    /// Return addresses from its saved context, innermost first (empty while it runs).
    pub pcs: Vec<u64>,
}

pub struct Census {
    pub goroutines: Vec<Goroutine>,
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
    let mut pointers = Vec::new();
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
    let mut goroutines = Vec::with_capacity(pointers.len());
    pointers.retain(|&g| g != 0);
    let size = layout.read_bytes;
    // Goroutines created at one place, parked at one pc at one stack depth have one stack:
    // walked once (a service with 100,000 blocked goroutines has a handful of such stacks).
    let mut walked: HashMap<(u64, u64, u64), Vec<u64>> = HashMap::new();
    // Read a batch at a time: a million goroutines would otherwise be 300 MB of copies at once.
    let mut batch = vec![0u8; READ_BATCH * size];
    for addrs in pointers.chunks(READ_BATCH) {
        let read_whole = memory.read_many(addrs, size, &mut batch);
        for (buf, whole) in batch.chunks_exact(size).zip(read_whole) {
            if !whole {
                torn += 1;
                continue;
            }
            let field = |offset| le_u64(buf, offset).unwrap_or(0);
            let status = le_u32(buf, layout.atomicstatus).unwrap_or(u32::MAX) & !GSCAN;
            if status >= G_MAX_STATE {
                torn += 1;
                continue;
            }
            if status == G_DEAD || status == G_IDLE {
                continue;
            }
            let (lo, hi) = (field(layout.stack_lo), field(layout.stack_hi));
            let (pc, sp) = (field(layout.sched_pc), field(layout.sched_sp));
            let pcs = match status {
                G_WAITING | G_RUNNABLE | G_PREEMPTED => walked
                    .entry((field(layout.gopc), pc, hi.wrapping_sub(sp)))
                    .or_insert_with(|| walk_frames(memory, pc, field(layout.sched_bp), lo..hi))
                    .clone(),
                _ => Vec::new(),
            };
            goroutines.push(Goroutine {
                goid: field(layout.goid),
                status,
                wait_reason: le_u8(buf, layout.waitreason).unwrap_or(0),
                gopc: field(layout.gopc),
                startpc: field(layout.startpc),
                waitsince: field(layout.waitsince) as i64,
                pcs,
            });
        }
    }
    Ok(Census {
        goroutines,
        torn,
        layout_source,
        wait_reasons,
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
        let mut groups: HashMap<GroupKey, Group> = HashMap::new();
        // Stacks repeat across goroutines: their non-runtime frames are found once per stack.
        let mut user_frames: HashMap<&[u64], Vec<u64>> = HashMap::new();
        for g in &census.goroutines {
            let user_pcs = user_frames
                .entry(g.pcs.as_slice())
                .or_insert_with(|| {
                    g.pcs
                        .iter()
                        .copied()
                        .filter(|pc| !runtime.is_runtime_pc(*pc))
                        .take(KEY_FRAMES)
                        .collect()
                })
                .clone();
            let key = GroupKey {
                gopc: g.gopc,
                status: g.status,
                wait_reason: if g.status == G_WAITING {
                    g.wait_reason
                } else {
                    0
                },
                user_pcs,
            };
            let waited_s = (g.status == G_WAITING && g.waitsince > 0 && now_ns > g.waitsince)
                .then(|| (now_ns - g.waitsince) as f64 / 1e9);
            let group = groups.entry(key.clone()).or_insert_with(|| Group {
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
                pcs: g.pcs.clone(),
                oldest_wait_s: None,
                growth: GoroutineGrowth::default(),
            });
            group.count += 1;
            if let Some(waited) = waited_s {
                group.oldest_wait_s = Some(group.oldest_wait_s.map_or(waited, |w| w.max(waited)));
            }
        }
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
