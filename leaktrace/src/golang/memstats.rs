//! The runtime's memory statistics, read as `runtime.ReadMemStats` computes them but from
//! outside: heap objects and bytes from `memstats.heapStats` (three generations of
//! `heapStatsDelta`, summed as `consistentHeapStats.unsafeRead` does, with `class_to_size`),
//! in-use/free/released from `gcController`, GC counts from `memstats`. ReadMemStats flushes
//! every P's local counts first (it stops the world); a reader from outside sees them as of each
//! P's latest flush, so HeapAlloc and HeapObjects can trail by what the Ps hold locally.
use super::{
    memory::{le_u32, le_u64, Memory, ReadError},
    GoRuntime,
};
use crate::{growth::least_squares, schema::GoMemStats};

/// Points kept for the slopes.
const SERIES_POINTS: usize = 128;

#[derive(Default)]
pub struct StatsTracker {
    /// (seconds, HeapAlloc, HeapObjects)
    points: Vec<(f64, f64, f64)>,
}

impl StatsTracker {
    pub fn read(
        &mut self,
        runtime: &GoRuntime,
        memory: &Memory,
        t_s: f64,
        sampling: bool,
    ) -> Result<GoMemStats, String> {
        let mut stats = read_once(runtime, memory)?;
        if sampling {
            if self.points.len() >= SERIES_POINTS {
                self.points = self.points.iter().copied().step_by(2).collect();
            }
            self.points
                .push((t_s, stats.heap_alloc as f64, stats.heap_objects as f64));
        }
        let minutes: Vec<f64> = self.points.iter().map(|p| p.0 / 60.0).collect();
        let bytes: Vec<f64> = self.points.iter().map(|p| p.1).collect();
        let objects: Vec<f64> = self.points.iter().map(|p| p.2).collect();
        stats.heap_alloc_per_min = least_squares(&minutes, &bytes).map(|f| f.slope);
        stats.heap_objects_per_min = least_squares(&minutes, &objects).map(|f| f.slope);
        Ok(stats)
    }
}

/// Why there are no statistics, in one line.
fn read_once(runtime: &GoRuntime, memory: &Memory) -> Result<GoMemStats, String> {
    let (layout, source) = runtime.stats_layout.clone()?;
    let symbol = |name: &str| {
        runtime.symbol(name).ok_or_else(|| {
            format!("no memory statistics: {name} is not in the symbol table (stripped binary)")
        })
    };
    let (mstats_at, _) = symbol("runtime.memstats")?;
    let (controller_at, _) = symbol("runtime.gcController")?;
    let (sizes_at, sizes_len) = symbol("runtime.class_to_size")
        .or_else(|_| symbol("internal/runtime/gc.SizeClassToSize"))?;
    let unreadable = |err: ReadError| format!("no memory statistics: {err}");
    let mstats = memory
        .read(mstats_at, layout.mstats_bytes)
        .map_err(unreadable)?;
    let controller = memory
        .read(controller_at, layout.controller_bytes)
        .map_err(unreadable)?;
    let classes = layout
        .size_classes
        .min(usize::try_from(sizes_len / 2).unwrap_or(0));
    let sizes = memory.read(sizes_at, classes * 2).map_err(unreadable)?;
    let class_size = |i: usize| {
        u64::from(u16::from_le_bytes([
            sizes.get(2 * i).copied().unwrap_or(0),
            sizes.get(2 * i + 1).copied().unwrap_or(0),
        ]))
    };
    let (mut allocated, mut freed, mut mallocs, mut frees) = (0u64, 0u64, 0u64, 0u64);
    for generation in 0..3 {
        let base = layout.heap_stats + generation * layout.delta_size;
        let field = |offset: usize| le_u64(&mstats, base + offset).unwrap_or(0);
        // largeAlloc/largeFree (bytes) sit right before their counts.
        allocated = allocated.wrapping_add(field(layout.large_alloc_count - 8));
        freed = freed.wrapping_add(field(layout.large_free_count - 8));
        mallocs = mallocs.wrapping_add(field(layout.large_alloc_count));
        frees = frees.wrapping_add(field(layout.large_free_count));
        for class in 0..classes {
            let a = field(layout.small_alloc_count + class * 8);
            let f = field(layout.small_free_count + class * 8);
            mallocs = mallocs.wrapping_add(a);
            frees = frees.wrapping_add(f);
            allocated = allocated.wrapping_add(a.wrapping_mul(class_size(class)));
            freed = freed.wrapping_add(f.wrapping_mul(class_size(class)));
        }
    }
    let _ = layout.tiny_alloc_count; // counted in both Mallocs and Frees: cancels out
    let controller_field = |offset: usize| le_u64(&controller, offset).unwrap_or(0);
    let heap_inuse = controller_field(layout.heap_in_use);
    let heap_idle = controller_field(layout.heap_free) + controller_field(layout.heap_released);
    Ok(GoMemStats {
        layout: Some(source.as_str().to_string()),
        heap_alloc: allocated.saturating_sub(freed),
        heap_inuse,
        heap_sys: heap_inuse + heap_idle,
        heap_objects: mallocs.saturating_sub(frees),
        num_gc: u64::from(le_u32(&mstats, layout.numgc).unwrap_or(0)),
        next_gc: controller_field(layout.heap_goal),
        gc_cpu_fraction: f64::from_bits(le_u64(&mstats, layout.gc_cpu_fraction).unwrap_or(0)),
        heap_alloc_per_min: None,
        heap_objects_per_min: None,
    })
}
