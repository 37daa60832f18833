//! The runtime's own heap profile, read from outside: the `mbuckets` list of
//! `runtime.bucket`s, each with its stack and `memRecord`, unsampled as runtime/pprof does.
//!
//! Cycle semantics (runtime/mprof.go): an allocation is recorded in `future[(cycle+2)%3]`, a
//! free in `future[(cycle+1)%3]`; GC mark termination advances the cycle and sweep termination
//! flushes `future[cycle%3]` into `active`. `runtime.MemProfile` adds `future[cycle%3]` to
//! `active` before reading it, and so does this reader: the profile is what the heap was at the
//! end of the latest completed GC cycle, up to two cycles behind the live heap.
use std::collections::{HashMap, HashSet};

use super::{
    layout::{RecordLayout, BUCKET_HEADER_BYTES},
    memory::{le_u64, Memory},
    GoRuntime,
};
use crate::{
    schema::{GoHeapProfile, GoHeapSite},
    symbolize::Symbols,
};

/// Buckets read at most (the runtime keeps one per (stack, size) ever sampled).
const MAX_BUCKETS: usize = 200_000;
/// Frames per bucket accepted (runtime/pprof allows up to 1024 since Go 1.23).
const MAX_STACK: u64 = 1024;
/// Sites reported, by in-use bytes.
pub const MAX_SITES: usize = 100;
/// `runtime.memProfile`: the bucket type of heap-profile buckets.
const MEM_PROFILE: u64 = 1;
/// Said wherever the profile's numbers are shown.
pub const LAG_NOTE: &str =
    "as of the last completed GC cycle (lags the live heap by up to two cycles)";

/// One bucket's counts (already `active + future[cycle%3]`), sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

impl Record {
    /// A `memRecordCycle` at `at`; `size`: the bucket's object size (Go 1.27 keeps counts only).
    fn parse(buf: &[u8], at: usize, layout: RecordLayout, size: u64) -> Record {
        let field = |i: usize| le_u64(buf, at + i * 8).unwrap_or(0);
        let (allocs, frees) = (field(0), field(1));
        let (alloc_bytes, free_bytes) = if layout.has_bytes {
            (field(2), field(3))
        } else {
            (allocs.wrapping_mul(size), frees.wrapping_mul(size))
        };
        Record {
            allocs,
            frees,
            alloc_bytes,
            free_bytes,
        }
    }

    fn add(self, other: Record) -> Record {
        Record {
            allocs: self.allocs.wrapping_add(other.allocs),
            frees: self.frees.wrapping_add(other.frees),
            alloc_bytes: self.alloc_bytes.wrapping_add(other.alloc_bytes),
            free_bytes: self.free_bytes.wrapping_add(other.free_bytes),
        }
    }

    /// A record read while the runtime updated it can be inconsistent.
    fn is_consistent(&self) -> bool {
        self.frees <= self.allocs && self.free_bytes <= self.alloc_bytes
    }
}

/// runtime/pprof's `scaleHeapSample`: a sample of `count` objects of `size` bytes in all, at
/// sampling rate `rate`, stands for `count/(1-exp(-avg/rate))` objects.
pub fn scale_heap_sample(count: u64, size: u64, rate: u64) -> (u64, u64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, size);
    }
    let avg = size as f64 / count as f64;
    let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * scale) as u64, (size as f64 * scale) as u64)
}

/// Read the profile, or say why there is none.
pub fn read(
    runtime: &GoRuntime,
    memory: &Memory,
    symbols: &mut Symbols,
    pid: u32,
) -> GoHeapProfile {
    let unavailable = |reason: String| GoHeapProfile {
        available: false,
        reason: Some(reason),
        ..GoHeapProfile::default()
    };
    let (Some((disable, _)), Some((rate_at, _)), Some((buckets_at, _)), Some((cycle_at, _))) = (
        runtime.symbol("runtime.disableMemoryProfiling"),
        runtime.symbol("runtime.MemProfileRate"),
        runtime.symbol("runtime.mbuckets"),
        runtime.symbol("runtime.mProfCycle"),
    ) else {
        return unavailable(
            "the binary's symbol table lacks the heap profile's variables (stripped with -s)"
                .to_string(),
        );
    };
    let (disabled, rate, head, cycle) = match (
        memory.u8(disable),
        memory.u64(rate_at),
        memory.u64(buckets_at),
        memory.u32(cycle_at),
    ) {
        (Ok(d), Ok(r), Ok(h), Ok(c)) => (d != 0, r, h, c >> 1),
        _ => return unavailable("cannot read the runtime's profile variables".to_string()),
    };
    if disabled {
        return GoHeapProfile {
            rate: Some(0),
            ..unavailable(
                "the linker disabled memory profiling: nothing in the program references \
                 runtime.MemProfile (runtime/pprof is not linked)"
                    .to_string(),
            )
        };
    }
    if rate == 0 {
        return GoHeapProfile {
            rate: Some(0),
            ..unavailable(
                "runtime.MemProfileRate is 0: the program turned memory profiling off".to_string(),
            )
        };
    }
    let (records, torn) = walk(memory, head, cycle, runtime.record_layout);
    let mut by_stack: HashMap<Vec<u64>, GoHeapSite> = HashMap::new();
    for (stack, record) in records {
        let (inuse_objects, inuse_bytes) = scale_heap_sample(
            record.allocs.saturating_sub(record.frees),
            record.alloc_bytes.saturating_sub(record.free_bytes),
            rate,
        );
        let (alloc_objects, alloc_bytes) =
            scale_heap_sample(record.allocs, record.alloc_bytes, rate);
        let site = by_stack.entry(stack).or_default();
        site.inuse_bytes += inuse_bytes;
        site.inuse_objects += inuse_objects;
        site.alloc_bytes += alloc_bytes;
        site.alloc_objects += alloc_objects;
    }
    let mut sites: Vec<(Vec<u64>, GoHeapSite)> = by_stack.into_iter().collect();
    sites.sort_by(|a, b| {
        b.1.inuse_bytes
            .cmp(&a.1.inuse_bytes)
            .then(b.1.alloc_bytes.cmp(&a.1.alloc_bytes))
            .then(a.0.cmp(&b.0))
    });
    let total_sites = sites.len();
    let inuse_bytes = sites.iter().map(|(_, s)| s.inuse_bytes).sum();
    let sites = sites
        .into_iter()
        .take(MAX_SITES)
        .map(|(stack, mut site)| {
            site.frames = symbols.stack_frames(pid, true, &stack);
            site
        })
        .collect();
    GoHeapProfile {
        available: true,
        reason: None,
        rate: Some(rate),
        cycle: Some(cycle),
        lag: Some(LAG_NOTE.to_string()),
        inuse_bytes: Some(inuse_bytes),
        total_sites: total_sites as u64,
        torn_reads: torn,
        sites,
    }
}

/// Every heap-profile bucket: its stack and record. Bounded by [`MAX_BUCKETS`], stops at a
/// repeated bucket (the list changed under us); inconsistent records are reread once, then
/// counted as torn and left out.
fn walk(
    memory: &Memory,
    head: u64,
    cycle: u32,
    layout: RecordLayout,
) -> (Vec<(Vec<u64>, Record)>, u64) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut torn = 0;
    let mut bucket = head;
    let future_index = (cycle % 3) as usize;
    while bucket != 0 && out.len() < MAX_BUCKETS && seen.insert(bucket) {
        let Ok(header) = memory.read(bucket, BUCKET_HEADER_BYTES) else {
            torn += 1;
            break;
        };
        let allnext = le_u64(&header, 8).unwrap_or(0);
        let kind = le_u64(&header, 16).unwrap_or(0);
        let size = le_u64(&header, 32).unwrap_or(0);
        let nstk = le_u64(&header, 40).unwrap_or(0);
        if kind != MEM_PROFILE || nstk > MAX_STACK {
            torn += u64::from(kind != MEM_PROFILE);
            bucket = allnext;
            continue;
        }
        let stack_bytes = nstk as usize * 8;
        let mut record = None;
        for _ in 0..2 {
            // The record: active, then future[3].
            let record_bytes = 4 * layout.cycle_bytes;
            let Ok(body) = memory.read(
                bucket + BUCKET_HEADER_BYTES as u64,
                stack_bytes + record_bytes,
            ) else {
                break;
            };
            let active = Record::parse(&body, stack_bytes, layout, size);
            let future = Record::parse(
                &body,
                stack_bytes + layout.cycle_bytes * (1 + future_index),
                layout,
                size,
            );
            let total = active.add(future);
            if total.is_consistent() {
                let stack = body[..stack_bytes]
                    .chunks_exact(8)
                    .filter_map(|c| le_u64(c, 0))
                    .collect();
                record = Some((stack, total));
                break;
            }
        }
        match record {
            Some(entry) => out.push(entry),
            None => torn += 1,
        }
        bucket = allnext;
    }
    (out, torn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_runtime_pprof() {
        // One sampled 512 KiB object at the default rate: scale = 1/(1-e^-1).
        let (count, size) = scale_heap_sample(1, 512 * 1024, 512 * 1024);
        let scale = 1.0 / (1.0 - (-1.0f64).exp());
        assert_eq!(count, scale as u64);
        assert_eq!(size, (512.0 * 1024.0 * scale) as u64);
        // Small objects are scaled up by about rate/size.
        let (count, size) = scale_heap_sample(100, 100 * 4096, 64 * 1024);
        assert!((count as f64 - 100.0 * 16.5).abs() < 100.0 * 0.1, "{count}");
        assert!(
            (size as f64 / count as f64 - 4096.0).abs() < 4.0,
            "truncation only"
        );
        assert_eq!(scale_heap_sample(0, 10, 512), (0, 0));
        assert_eq!(scale_heap_sample(5, 50, 1), (5, 50));
    }

    #[test]
    fn records_add_and_check() {
        let a = Record {
            allocs: 3,
            frees: 1,
            alloc_bytes: 30,
            free_bytes: 10,
        };
        assert!(a.is_consistent());
        let torn = Record {
            allocs: 1,
            frees: 2,
            alloc_bytes: 10,
            free_bytes: 20,
        };
        assert!(!torn.is_consistent());
        assert_eq!(a.add(a).alloc_bytes, 60);
    }

    #[test]
    fn the_bucket_walk_stops_at_a_cycle() {
        // Two fake buckets in our memory, pointing at each other through allnext.
        let mut buckets = [[0u64; 6 + 1 + 16]; 2];
        let base = buckets.as_ptr() as u64;
        let size = std::mem::size_of_val(&buckets[0]) as u64;
        for (i, b) in buckets.iter_mut().enumerate() {
            b[1] = base + size * ((i as u64 + 1) % 2); // allnext: the other one
            b[2] = MEM_PROFILE;
            b[5] = 1; // nstk
            b[6] = 0x4000 + i as u64; // the stack
            b[7] = 2; // active.allocs
            b[9] = 200; // active.alloc_bytes
        }
        let memory = Memory::new(std::process::id());
        let layout = RecordLayout::new(&Default::default(), Some((1, 22)));
        let (records, torn) = walk(&memory, base, 0, layout);
        assert_eq!(torn, 0);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].0, vec![0x4001]);
        assert_eq!(records[0].1.alloc_bytes, 200);
        std::hint::black_box(&mut buckets);
    }
}
