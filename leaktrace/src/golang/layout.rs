//! Where the runtime keeps what leaktrace reads: field offsets of `runtime.g`, the heap
//! profile's buckets, `runtime.memstats` and `runtime.gcController`. Taken from the binary's
//! DWARF (gimli) when it has some; for binaries built with `-ldflags=-w`, from tables measured
//! on each Go release's DWARF (a test checks every table against the DWARF of a fixture built
//! with that release).
use std::{borrow::Cow, collections::HashMap};

use gimli::{EndianSlice, LittleEndian};

/// DWARF structs leaktrace needs, by Go type name.
const WANTED: &[&str] = &[
    "runtime.g",
    "runtime.gobuf",
    "runtime.stack",
    "runtime.bucket",
    "runtime.memRecordCycle",
    "runtime.mstats",
    "runtime.consistentHeapStats",
    "runtime.heapStatsDelta",
    "runtime.gcControllerState",
];

/// DIEs read at most while looking for the structs: Go binaries have a few hundred thousand.
const MAX_DIES: usize = 20_000_000;

/// A struct's size and its members' offsets.
#[derive(Clone, Debug, Default)]
pub struct StructLayout {
    pub size: u64,
    pub members: HashMap<String, u64>,
}

impl StructLayout {
    fn member(&self, name: &str) -> Option<usize> {
        self.members
            .get(name)
            .and_then(|o| usize::try_from(*o).ok())
    }
}

/// The DWARF structs found, by name.
pub type Structs = HashMap<String, StructLayout>;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
}

/// Read the wanted structs from DWARF sections given by name (decompressed).
pub fn read_structs(section: impl Fn(&str) -> Option<Vec<u8>>) -> Result<Structs, LayoutError> {
    let sections = gimli::DwarfSections::load(|id: gimli::SectionId| {
        Ok::<_, gimli::Error>(Cow::Owned(section(id.name()).unwrap_or_default()))
    })?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    let mut structs = Structs::new();
    let mut units = dwarf.units();
    let mut dies = 0usize;
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        // The struct being read: its name and the depth of its members.
        let mut current: Option<(String, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            dies += 1;
            if dies > MAX_DIES {
                return Ok(structs);
            }
            let depth = entry.depth();
            if let Some((name, member_depth)) = &current {
                if depth == *member_depth && entry.tag() == gimli::DW_TAG_member {
                    let member = entry
                        .attr_value(gimli::DW_AT_name)
                        .and_then(|v| dwarf.attr_string(&unit, v).ok())
                        .map(|s| String::from_utf8_lossy(s.slice()).into_owned());
                    let offset = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value());
                    if let (Some(member), Some(offset), Some(layout)) =
                        (member, offset, structs.get_mut(name))
                    {
                        layout.members.entry(member).or_insert(offset);
                    }
                    continue;
                }
                if depth < *member_depth {
                    current = None;
                }
            }
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry
                .attr_value(gimli::DW_AT_name)
                .and_then(|v| dwarf.attr_string(&unit, v).ok())
            else {
                continue;
            };
            let name = String::from_utf8_lossy(name.slice());
            if !WANTED.contains(&&*name) || structs.contains_key(&*name) {
                continue;
            }
            let size = entry
                .attr_value(gimli::DW_AT_byte_size)
                .and_then(|v| v.udata_value())
                .unwrap_or(0);
            structs.insert(
                name.to_string(),
                StructLayout {
                    size,
                    members: HashMap::new(),
                },
            );
            current = Some((name.into_owned(), depth + 1));
        }
    }
    Ok(structs)
}

/// Offsets in `runtime.g` of what the census reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GLayout {
    /// Bytes read per goroutine (up to the last field needed).
    pub read_bytes: usize,
    pub stack_lo: usize,
    pub stack_hi: usize,
    pub sched_sp: usize,
    pub sched_pc: usize,
    pub sched_bp: usize,
    pub atomicstatus: usize,
    pub goid: usize,
    pub waitsince: usize,
    pub waitreason: usize,
    pub gopc: usize,
    pub startpc: usize,
}

impl GLayout {
    /// From DWARF: `None` when a field is missing.
    pub fn from_dwarf(structs: &Structs) -> Option<GLayout> {
        let g = structs.get("runtime.g")?;
        let gobuf = structs.get("runtime.gobuf")?;
        let stack = structs.get("runtime.stack")?;
        let sched = g.member("sched")?;
        let stack_at = g.member("stack")?;
        let mut layout = GLayout {
            read_bytes: 0,
            stack_lo: stack_at + stack.member("lo")?,
            stack_hi: stack_at + stack.member("hi")?,
            sched_sp: sched + gobuf.member("sp")?,
            sched_pc: sched + gobuf.member("pc")?,
            sched_bp: sched + gobuf.member("bp")?,
            atomicstatus: g.member("atomicstatus")?,
            goid: g.member("goid")?,
            waitsince: g.member("waitsince")?,
            waitreason: g.member("waitreason")?,
            gopc: g.member("gopc")?,
            startpc: g.member("startpc")?,
        };
        layout.read_bytes = layout.last_field_end();
        Some(layout)
    }

    /// Measured tables for binaries without DWARF, by (major, minor) Go version.
    pub fn for_version(version: (u32, u32)) -> Option<GLayout> {
        let table = |stack_lo, sched, atomicstatus, goid, waitsince, waitreason, gopc, startpc| {
            let mut layout = GLayout {
                read_bytes: 0,
                stack_lo,
                stack_hi: stack_lo + 8,
                sched_sp: sched,
                sched_pc: sched + 8,
                sched_bp: sched + GOBUF_BP,
                atomicstatus,
                goid,
                waitsince,
                waitreason,
                gopc,
                startpc,
            };
            layout.read_bytes = layout.last_field_end();
            layout
        };
        // gobuf is (sp, pc, g, ctxt, ret, lr, bp) in 1.19-1.24 and (sp, pc, g, ctxt, lr, bp)
        // from 1.25 (ret removed); the tables hold the whole g offsets.
        const GOBUF_BP: usize = 48;
        // Measured on each release's own DWARF (runtime.g, runtime.gobuf); 1.20 unmeasured.
        match version {
            (1, 19) => Some(table(0, 56, 144, 152, 168, 176, 296, 312)),
            (1, 21) | (1, 22) => Some(table(0, 56, 144, 152, 168, 176, 280, 296)),
            // 1.23 added g.syscallbp.
            (1, 23) | (1, 24) => Some(table(0, 56, 152, 160, 176, 184, 288, 304)),
            // 1.25 dropped gobuf.ret (bp 8 bytes earlier, g shorter by 8).
            (1, 25) => Some(GLayout {
                sched_bp: 56 + 40,
                ..table(0, 56, 144, 152, 168, 176, 280, 296)
            }),
            (1, 26) | (1, 27) => Some(GLayout {
                sched_bp: 56 + 40,
                ..table(0, 56, 144, 152, 168, 176, 288, 304)
            }),
            _ => None,
        }
    }

    fn last_field_end(&self) -> usize {
        [
            self.stack_hi,
            self.sched_sp,
            self.sched_pc,
            self.sched_bp,
            self.atomicstatus + 4,
            self.goid,
            self.waitsince,
            self.waitreason + 1,
            self.gopc,
            self.startpc,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8
    }
}

/// Size of a heap-profile bucket header (`runtime.bucket`: next, allnext, typ, hash, size,
/// nstk), the same in every release leaktrace knows.
pub const BUCKET_HEADER_BYTES: usize = 48;

/// The shape of a heap-profile record (`memRecordCycle`): allocs, frees and, before Go 1.27,
/// alloc_bytes and free_bytes. From 1.27 the bytes are the counts times the bucket's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLayout {
    /// Bytes of one `memRecordCycle`.
    pub cycle_bytes: usize,
    /// Whether the cycle holds byte totals (else: count x bucket size).
    pub has_bytes: bool,
}

impl RecordLayout {
    const WITH_BYTES: RecordLayout = RecordLayout {
        cycle_bytes: 32,
        has_bytes: true,
    };
    const COUNTS_ONLY: RecordLayout = RecordLayout {
        cycle_bytes: 16,
        has_bytes: false,
    };

    /// From DWARF, else by version (measured on 1.19-1.26: with bytes; 1.27: counts only).
    pub fn new(structs: &Structs, version: Option<(u32, u32)>) -> RecordLayout {
        if let Some(cycle) = structs.get("runtime.memRecordCycle") {
            let has_bytes = cycle.members.contains_key("alloc_bytes");
            return RecordLayout {
                cycle_bytes: usize::try_from(cycle.size).unwrap_or(0).clamp(16, 64),
                has_bytes,
            };
        }
        match version {
            Some(v) if v >= (1, 27) => RecordLayout::COUNTS_ONLY,
            _ => RecordLayout::WITH_BYTES,
        }
    }
}

/// Offsets of the memory statistics leaktrace reads: `runtime.memstats` (`mstats`, whose
/// `heapStats` holds the counts `ReadMemStats` sums) and `runtime.gcController`
/// (`gcControllerState`: in-use, free and released heap, the GOGC goal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsLayout {
    pub numgc: usize,
    pub gc_cpu_fraction: usize,
    /// `mstats.heapStats.stats`: three `heapStatsDelta` generations.
    pub heap_stats: usize,
    pub delta_size: usize,
    pub tiny_alloc_count: usize,
    pub large_alloc_count: usize,
    pub small_alloc_count: usize,
    pub large_free_count: usize,
    pub small_free_count: usize,
    /// Size classes (entries of `smallAllocCount`).
    pub size_classes: usize,
    pub heap_in_use: usize,
    pub heap_free: usize,
    pub heap_released: usize,
    pub total_alloc: usize,
    pub total_free: usize,
    pub heap_goal: usize,
    pub heap_live: usize,
    /// Bytes of `runtime.gcController` read.
    pub controller_bytes: usize,
    /// Bytes of `runtime.memstats` read.
    pub mstats_bytes: usize,
}

impl StatsLayout {
    pub fn from_dwarf(structs: &Structs) -> Option<StatsLayout> {
        let mstats = structs.get("runtime.mstats")?;
        let consistent = structs.get("runtime.consistentHeapStats")?;
        let delta = structs.get("runtime.heapStatsDelta")?;
        let controller = structs.get("runtime.gcControllerState")?;
        let small_alloc_count = delta.member("smallAllocCount")?;
        let large_free = delta.member("largeFree")?;
        let layout = StatsLayout {
            numgc: mstats.member("numgc")?,
            gc_cpu_fraction: mstats.member("gc_cpu_fraction")?,
            heap_stats: mstats.member("heapStats")? + consistent.member("stats")?,
            delta_size: usize::try_from(delta.size).ok()?,
            tiny_alloc_count: delta.member("tinyAllocCount")?,
            large_alloc_count: delta.member("largeAllocCount")?,
            small_alloc_count,
            large_free_count: delta.member("largeFreeCount")?,
            small_free_count: delta.member("smallFreeCount")?,
            size_classes: large_free.checked_sub(small_alloc_count)? / 8,
            heap_in_use: controller.member("heapInUse")?,
            heap_free: controller.member("heapFree")?,
            heap_released: controller.member("heapReleased")?,
            total_alloc: controller.member("totalAlloc")?,
            total_free: controller.member("totalFree")?,
            heap_goal: controller.member("gcPercentHeapGoal")?,
            heap_live: controller.member("heapLive")?,
            controller_bytes: usize::try_from(controller.size).ok()?,
            mstats_bytes: mstats.member("gc_cpu_fraction")? + 8,
        };
        (layout.size_classes <= 256 && layout.controller_bytes <= 4096 && layout.is_within_reads())
            .then_some(layout)
    }

    /// Measured tables for binaries without DWARF, by (major, minor) Go version: 1.19 and
    /// 1.21-1.27 each measured on that release's DWARF (1.19.8, 1.21.13, 1.22.10, 1.23.9,
    /// 1.24.11, 1.25.5, 1.26.6, 1.27.3); none for 1.20 (no toolchain to measure) nor past 1.27.
    pub fn for_version(version: (u32, u32)) -> Option<StatsLayout> {
        // mstats: heapStats first (three heapStatsDelta generations), then the *_sys fields,
        // the pause rings (256 x 2 x 8 bytes), numgc, numforcedgc, gc_cpu_fraction.
        const GO_1_19: StatsLayout = StatsLayout {
            numgc: 7704,
            gc_cpu_fraction: 7712,
            heap_stats: 0,
            delta_size: 1176,
            tiny_alloc_count: 48,
            large_alloc_count: 64,
            small_alloc_count: 72,
            large_free_count: 624,
            small_free_count: 632,
            size_classes: 68,
            heap_in_use: 304,
            heap_free: 320,
            heap_released: 312,
            total_alloc: 328,
            total_free: 336,
            heap_goal: 104,
            heap_live: 136,
            controller_bytes: 424,
            mstats_bytes: 7720,
        };
        // 1.21 shrank gcControllerState (consMarkController gone, lastConsMark added).
        const GO_1_21: StatsLayout = StatsLayout {
            heap_in_use: 272,
            heap_free: 288,
            heap_released: 280,
            total_alloc: 296,
            total_free: 304,
            heap_goal: 72,
            heap_live: 104,
            controller_bytes: 392,
            ..GO_1_19
        };
        // 1.25 dropped heapStatsDelta.inPtrScalarBits: the deltas are 8 bytes shorter, and
        // everything in mstats after its three copies 24 bytes earlier.
        const GO_1_25: StatsLayout = StatsLayout {
            numgc: 7680,
            gc_cpu_fraction: 7688,
            delta_size: 1168,
            tiny_alloc_count: 40,
            large_alloc_count: 56,
            small_alloc_count: 64,
            large_free_count: 616,
            small_free_count: 624,
            mstats_bytes: 7696,
            ..GO_1_21
        };
        match version {
            (1, 19) => Some(GO_1_19),
            (1, 21..=24) => Some(GO_1_21),
            (1, 25..=27) => Some(GO_1_25),
            _ => None,
        }
    }

    /// Whether every field read lies inside the bytes read (a table or DWARF gone wrong would
    /// read past them and give zeros).
    pub fn is_within_reads(&self) -> bool {
        let generations_end = self.heap_stats + 3 * self.delta_size;
        let delta_end = self.small_free_count + self.size_classes * 8;
        delta_end <= self.delta_size
            && generations_end <= self.mstats_bytes
            && self.numgc + 4 <= self.mstats_bytes
            && self.gc_cpu_fraction + 8 <= self.mstats_bytes
            && [
                self.heap_in_use,
                self.heap_free,
                self.heap_released,
                self.total_alloc,
                self.total_free,
                self.heap_goal,
                self.heap_live,
            ]
            .iter()
            .all(|&offset| offset + 8 <= self.controller_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_the_fields_they_read() {
        for version in [
            (1, 19),
            (1, 21),
            (1, 22),
            (1, 23),
            (1, 24),
            (1, 25),
            (1, 26),
            (1, 27),
        ] {
            let layout = GLayout::for_version(version).expect("measured");
            assert!(layout.read_bytes > layout.startpc, "{version:?}");
            assert!(layout.read_bytes < 1024, "{version:?}");
        }
        assert_eq!(GLayout::for_version((1, 12)), None);
        assert_eq!(GLayout::for_version((1, 20)), None);
    }

    #[test]
    fn stats_tables_read_inside_their_structs() {
        for minor in [19, 21, 22, 23, 24, 25, 26, 27] {
            let layout = StatsLayout::for_version((1, minor)).expect("measured");
            assert!(layout.is_within_reads(), "1.{minor}: {layout:?}");
            assert_eq!(layout.size_classes, 68, "1.{minor}");
        }
        for unmeasured in [(1, 18), (1, 20), (1, 28), (2, 0)] {
            assert_eq!(StatsLayout::for_version(unmeasured), None, "{unmeasured:?}");
        }
    }

    #[test]
    fn records_lost_their_byte_totals_in_go_1_27() {
        let none = Structs::new();
        assert_eq!(
            RecordLayout::new(&none, Some((1, 26))),
            RecordLayout::WITH_BYTES
        );
        assert_eq!(
            RecordLayout::new(&none, Some((1, 27))),
            RecordLayout::COUNTS_ONLY
        );
        let mut dwarf = Structs::new();
        dwarf.insert(
            "runtime.memRecordCycle".to_string(),
            StructLayout {
                size: 16,
                members: [("allocs".to_string(), 0), ("frees".to_string(), 8)].into(),
            },
        );
        assert_eq!(
            RecordLayout::new(&dwarf, Some((1, 26))),
            RecordLayout::COUNTS_ONLY
        );
    }

    #[test]
    fn no_dwarf_no_layout() {
        let structs = read_structs(|_| None).expect("empty DWARF is no error");
        assert!(structs.is_empty());
        assert_eq!(GLayout::from_dwarf(&structs), None);
        assert_eq!(StatsLayout::from_dwarf(&structs), None);
    }
}
