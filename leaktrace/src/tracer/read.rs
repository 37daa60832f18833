//! Reading the maps: per-site totals, counters, outstanding blocks, stacks, the probe-hit meter
//! and the heap ring buffer.
use std::collections::HashMap;

use anyhow::bail;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap};
use leaktrace_common::{
    names::maps,
    unwind::{ProcessMappings, UnwindRow, UnwoundStack, UNWOUND_STACK_BIT},
    AllocInfo, AllocKey, PidCounters, SiteKey, SiteStats, NO_STACK,
};

use super::{HeapRecord, Tracer};
use crate::model::SiteAges;

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

impl Tracer {
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
            sites: clone(maps::SITES)?,
            counters: clone(maps::COUNTERS)?,
            allocs: clone(maps::ALLOCS)?,
        })
    }

    /// Uprobe hits so far, all CPUs.
    pub fn probe_hits(&self) -> u64 {
        let Ok(map) = self.map(maps::PROBE_HITS) else {
            return 0;
        };
        let Ok(hits) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        hits.get(&0, 0)
            .map(|per_cpu| per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
            .unwrap_or(0)
    }

    /// The user stack of a site (instruction pointers, innermost first): unwound with the
    /// tables (`UNWOUND_STACKS`) or walked with frame pointers (the kernel's stack map).
    pub fn stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        if stack_id == NO_STACK {
            return None;
        }
        if stack_id & UNWOUND_STACK_BIT != 0 && stack_id < 1 << 31 {
            let stacks: BpfHashMap<&MapData, u32, UnwoundStack> =
                BpfHashMap::try_from(self.map(maps::UNWOUND_STACKS).ok()?).ok()?;
            let stack = stacks.get(&stack_id, 0).ok()?;
            let len = (stack.len as usize).min(stack.frames.len());
            return Some(stack.frames[..len].to_vec());
        }
        let stacks = StackTraceMap::<&MapData>::try_from(self.map(maps::STACKS).ok()?).ok()?;
        let trace = stacks.get(&stack_id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}

impl Tracer {
    /// The unwind-table maps on descriptors of their own, for the table worker's thread.
    #[expect(
        clippy::type_complexity,
        reason = "three handles, named by their types"
    )]
    pub fn unwind_table_maps(
        &self,
    ) -> anyhow::Result<(
        Array<MapData, UnwindRow>,
        std::os::fd::OwnedFd,
        BpfHashMap<MapData, u32, ProcessMappings>,
    )> {
        use std::os::fd::AsFd as _;
        let clone = |name: &str| -> anyhow::Result<MapData> {
            let data = match self.map(name)? {
                aya::maps::Map::Array(data) | aya::maps::Map::HashMap(data) => data,
                _ => bail!("map {name} is not an array or a hash map"),
            };
            Ok(MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?)
        };
        let rows_data = clone(maps::UNWIND_ROWS)?;
        let rows_fd = rows_data.fd().as_fd().try_clone_to_owned()?;
        let rows = Array::try_from(aya::maps::Map::Array(rows_data))?;
        let mappings =
            BpfHashMap::try_from(aya::maps::Map::HashMap(clone(maps::UNWIND_MAPPINGS)?))?;
        Ok((rows, rows_fd, mappings))
    }
}
