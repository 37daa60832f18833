//! The JSON snapshot (schema `leaktrace/1`, documented in docs/json-schema.md and
//! docs/leaktrace-1.schema.json), its serialization, and the periodic text table.
use std::{fmt::Write as _, io, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    cli::Processed,
    growth::{Growth, GrowthClass},
    heap::{FallbackSummary, SiteHeap},
    output::{write_atomically, Access, OutputError},
    symbolize::Frame,
    target::ExitStatus,
};

pub const SCHEMA: &str = "leaktrace/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// Seconds since tracing started.
    pub duration_s: f64,
    /// `exact`: every allocation of the malloc family of the targets is traced (uprobes);
    /// `growth`: only heap-growing syscalls, with stacks unwound from copies of the user stack
    /// (no uprobes: near-zero overhead); `system_wide`: written by older versions for
    /// system-wide runs without stacks.
    pub mode: String,
    /// Every process's heap syscalls are watched (plus any --pid, in `mode`).
    #[serde(default)]
    pub system_wide: bool,
    /// Growth mode: the cost of unwinding the stack copies, so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinding: Option<crate::unwind::UnwindStats>,
    pub interval_s: f64,
    /// `--min-age`: sites' aged outstanding bytes count only blocks at least this old.
    pub min_age_s: f64,
    /// `--processed`: what `bytes_processed` and the per-MiB slopes measure.
    pub processed: Processed,
    /// Whether this is the last snapshot of the run.
    pub complete: bool,
    /// What the probes cost the traced programs; absent from snapshots of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ProbeCost>,
    pub processes: Vec<ProcessReport>,
}

/// The CPU cost of tracing, all exactly traced processes together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeCost {
    /// CPU time one probe hit costs, measured at start on leaktrace's own process; `None` when
    /// that measurement failed.
    pub ns_per_hit: Option<f64>,
    /// Probe hits per second over the latest interval; `None` before the first interval.
    pub probe_hits_per_s: Option<f64>,
    /// `probe_hits_per_s × ns_per_hit`, in percent of one CPU.
    pub estimated_overhead_pct: Option<f64>,
}

impl ProbeCost {
    pub fn new(ns_per_hit: Option<f64>, probe_hits_per_s: Option<f64>) -> Self {
        Self {
            ns_per_hit,
            probe_hits_per_s,
            estimated_overhead_pct: ns_per_hit
                .zip(probe_hits_per_s)
                .map(|(ns, rate)| crate::cost::overhead_pct(rate, ns)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub alive: bool,
    /// How a launched command ended, when leaktrace saw it end.
    pub exit: Option<ExitStatus>,
    /// Whether its malloc family is traced (uprobes); system-wide rows have heap data only.
    pub exact: bool,
    /// The allocator library hooked, as the process names it.
    pub libc: String,
    pub hooked_functions: Vec<String>,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_count: u64,
    /// Bytes read and/or written (per `processed`) since tracing started; None when
    /// /proc/PID/io could not be read.
    pub bytes_processed: Option<u64>,
    /// The heap as the kernel sees it: program break, anonymous mappings, fallbacks, RSS.
    pub heap: Option<HeapReport>,
    pub counters: Counters,
    /// Sorted by outstanding bytes, largest first.
    pub sites: Vec<SiteReport>,
}

/// Per-process heap state (`leaktrace/1`, `heap` object).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapReport {
    /// Current program break minus the start of the heap.
    pub brk_bytes: u64,
    pub brk_calls: u64,
    /// brk calls that could not move the break (each failed heap extension costs one).
    pub brk_failures: u64,
    /// Anonymous mmaps malloc made after a failed brk in the same call.
    pub fallback_mmaps: FallbackSummary,
    /// Writable anonymous mappings made since tracing started and still mapped.
    pub anon_mmap_outstanding_bytes: u64,
    /// Anonymous address space reserved without write permission (PROT_NONE arenas, Go heap).
    pub anon_reserved_bytes: u64,
    pub rss_bytes: Option<u64>,
    pub vm_data_bytes: Option<u64>,
    /// RSS now minus RSS when tracing started.
    pub rss_growth_bytes: Option<i64>,
    /// Share of the RSS growth that outstanding traced allocations account for (exact mode).
    pub explained_share: Option<f64>,
    /// Heap syscalls seen.
    pub events: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub dropped_allocations: u64,
    pub stack_errors: u64,
    pub lost_events: u64,
    pub unknown_frees: u64,
}

impl Counters {
    pub fn any(&self) -> bool {
        self.dropped_allocations + self.stack_errors + self.lost_events + self.unknown_frees > 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteReport {
    pub id: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_bytes: u64,
    pub freed_count: u64,
    /// Age of the oldest allocation of this site still outstanding (None when none is).
    pub oldest_age_s: Option<f64>,
    /// Outstanding bytes and blocks allocated at least `min_age_s` ago.
    pub aged_outstanding_bytes: u64,
    pub aged_outstanding_count: u64,
    /// Growth of outstanding bytes against time and work, and the verdict.
    pub growth: Growth,
    /// 1 = the site of this process most likely to leak (by class, slope and fit).
    pub leak_rank: u32,
    /// fallback_mmap_count, fallback_mmap_bytes, direct_mmap_bytes, anon_mmap_bytes.
    #[serde(flatten)]
    pub heap: SiteHeap,
    /// Innermost first; the first frame is the allocator's caller.
    pub frames: Vec<Frame>,
}

impl SiteReport {
    /// A site that made heap syscalls but holds no allocations of the malloc family (the
    /// program's own mmaps, or allocator calls whose only effect was a syscall).
    pub fn heap_only(id: String, heap: SiteHeap, leak_rank: u32, frames: Vec<Frame>) -> Self {
        Self {
            id,
            outstanding_bytes: 0,
            outstanding_count: 0,
            allocated_bytes: 0,
            allocated_count: 0,
            freed_bytes: 0,
            freed_count: 0,
            oldest_age_s: None,
            aged_outstanding_bytes: 0,
            aged_outstanding_count: 0,
            growth: crate::growth::analyze(&[], 0, crate::growth::DEFAULT_RECENT_WINDOW),
            leak_rank,
            heap,
            frames,
        }
    }

    /// The frame to name the site by: the innermost frame with a function name.
    pub fn top_function(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.function.is_some())
    }
}

/// The snapshot as written to disk: pretty JSON and a final newline.
pub fn snapshot_json(snapshot: &Snapshot) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

/// Write a snapshot atomically (crate::output's rules).
pub fn write_snapshot(path: &Path, snapshot: &Snapshot, access: Access) -> Result<(), OutputError> {
    write_atomically(path, &snapshot_json(snapshot)?, access)
}

/// "1.5 MiB", "512 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn human_age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// A frame as one short string: `function (file:line)` or `module+0xoffset`.
pub fn frame_label(frame: &Frame) -> String {
    let file = |f: &Frame| match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            let short = file.rsplit('/').next().unwrap_or(file);
            format!(" ({short}:{line})")
        }
        _ => String::new(),
    };
    match (&frame.function, &frame.module, frame.offset) {
        (Some(function), _, _) => format!("{function}{}", file(frame)),
        (None, Some(module), Some(offset)) => {
            let short = module.rsplit('/').next().unwrap_or(module);
            format!("{short}+{offset:#x}")
        }
        _ => format!("{:#x}", frame.addr),
    }
}

/// The site column: the innermost named frame and up to two callers.
fn site_label(site: &SiteReport) -> String {
    let named: Vec<String> = site
        .frames
        .iter()
        .filter(|f| f.function.is_some())
        .take(3)
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                frame_label(f)
            } else {
                f.function.clone().unwrap_or_default()
            }
        })
        .collect();
    if named.is_empty() {
        site.frames
            .first()
            .map(frame_label)
            .unwrap_or_else(|| "?".to_string())
    } else {
        named.join(" <- ")
    }
}

/// "+1.5 MiB", "-512 B", "n/a".
fn human_rate(value: Option<f64>) -> String {
    match value {
        None => "n/a".to_string(),
        Some(v) if v < 0.0 => format!("-{}", human_bytes((-v).round() as u64)),
        Some(v) => format!("+{}", human_bytes(v.round() as u64)),
    }
}

fn class_label(class: GrowthClass) -> &'static str {
    match class {
        GrowthClass::LeakSuspect => "LEAK?",
        GrowthClass::Plateau => "plateau",
        GrowthClass::Churn => "churn",
        GrowthClass::Unknown => "-",
    }
}

/// The better fit quality of the two slopes, for one narrow column.
fn best_r2(growth: &Growth) -> String {
    match (growth.r2_processed, growth.r2_time) {
        (None, None) => "-".to_string(),
        (a, b) => format!("{:.2}", a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
    }
}

/// The periodic headless table: per process a summary, then its sites ranked by how likely
/// they leak (class, slope, fit), not only by size.
pub fn render_table(snapshot: &Snapshot, top: usize) -> String {
    let mut out = String::new();
    for process in &snapshot.processes {
        let state = match (process.alive, process.exit) {
            (true, _) => String::new(),
            (false, Some(ExitStatus::Code(code))) => format!(" [exited, status {code}]"),
            (false, Some(ExitStatus::Signal(sig))) => format!(" [killed by signal {sig}]"),
            (false, None) => " [exited]".to_string(),
        };
        let processed = process
            .bytes_processed
            .map(|b| format!(", {} processed", human_bytes(b)))
            .unwrap_or_default();
        if process.exact {
            let _ = writeln!(
                out,
                "[{:>7.1}s] pid {} ({}){state}: {} outstanding in {} blocks, {} allocations, {} frees{processed}",
                snapshot.duration_s,
                process.pid,
                process.comm,
                human_bytes(process.outstanding_bytes),
                process.outstanding_count,
                process.allocated_count,
                process.freed_count,
            );
        } else {
            // Growth mode: sites are the stacks that grew the heap (no uprobes).
            let _ = writeln!(
                out,
                "[{:>7.1}s] pid {} ({}){state}: {} of heap growth still mapped, {} grown in {} growth events{processed}",
                snapshot.duration_s,
                process.pid,
                process.comm,
                human_bytes(process.outstanding_bytes),
                human_bytes(process.allocated_bytes),
                process.allocated_count,
            );
        }
        if let Some(heap) = &process.heap {
            let fallbacks = &heap.fallback_mmaps;
            let _ = writeln!(
                out,
                "  heap: brk {} ({} calls, {} failed), anon mmaps {} (+{} reserved), RSS {}{}",
                human_bytes(heap.brk_bytes),
                heap.brk_calls,
                heap.brk_failures,
                human_bytes(heap.anon_mmap_outstanding_bytes),
                human_bytes(heap.anon_reserved_bytes),
                heap.rss_bytes
                    .map_or_else(|| "n/a".to_string(), human_bytes),
                heap.explained_share
                    .map(|s| format!(
                        ", {:.0}% of its growth explained by outstanding blocks",
                        s * 100.0
                    ))
                    .unwrap_or_default(),
            );
            if fallbacks.count > 0 {
                let sizes: Vec<String> = fallbacks
                    .chunk_sizes
                    .iter()
                    .map(|c| format!("{} x {}", c.count, human_bytes(c.bytes)))
                    .collect();
                let _ = writeln!(
                    out,
                    "  WARNING: malloc mmap fallback: {} chunks, {} ({}) after {} failed brk calls: something is mapped above the program break",
                    fallbacks.count,
                    human_bytes(fallbacks.bytes),
                    sizes.join(", "),
                    heap.brk_failures
                );
            }
        }
        let c = &process.counters;
        if c.any() {
            let _ = writeln!(
                out,
                "  warning: dropped allocations {}, stack errors {}, lost events {}, unknown frees {}",
                c.dropped_allocations, c.stack_errors, c.lost_events, c.unknown_frees
            );
        }
        let mut shown: Vec<&SiteReport> = process
            .sites
            .iter()
            .filter(|s| s.outstanding_count > 0)
            .collect();
        if shown.is_empty() {
            let _ = writeln!(
                out,
                "  {}",
                if process.exact {
                    "no outstanding allocations"
                } else {
                    "no heap growth seen with a stack"
                }
            );
            continue;
        }
        shown.sort_by_key(|s| s.leak_rank);
        shown.truncate(top);
        let (size_column, count_column) = if process.exact {
            ("OUTSTANDING", "BLOCKS")
        } else {
            ("GROWTH", "EVENTS")
        };
        let _ = writeln!(
            out,
            "  {:>11} {:>8} {:>11} {:>11} {:>4} {:>7} {:>7}  SITE",
            size_column, count_column, "PER MiB", "PER MIN", "R2", "CLASS", "OLDEST"
        );
        for site in shown {
            let _ = writeln!(
                out,
                "  {:>11} {:>8} {:>11} {:>11} {:>4} {:>7} {:>7}  {}",
                human_bytes(site.outstanding_bytes),
                if process.exact {
                    site.outstanding_count
                } else {
                    site.allocated_count
                },
                human_rate(site.growth.bytes_per_mib_processed),
                human_rate(site.growth.bytes_per_min),
                best_r2(&site.growth),
                class_label(site.growth.class),
                human_age(site.oldest_age_s),
                site_label(site)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(function: &str, outstanding: u64) -> SiteReport {
        SiteReport {
            id: format!("{function}-site"),
            outstanding_bytes: outstanding,
            outstanding_count: outstanding / 100,
            allocated_bytes: outstanding * 2,
            allocated_count: outstanding / 50,
            freed_bytes: outstanding,
            freed_count: outstanding / 100,
            oldest_age_s: Some(3.25),
            aged_outstanding_bytes: outstanding,
            aged_outstanding_count: outstanding / 100,
            growth: Growth {
                bytes_per_mib_processed: Some(262_144.0),
                bytes_per_min: Some(1_048_576.0),
                r2_processed: Some(0.991),
                r2_time: Some(0.97),
                recent_bytes_per_min: Some(1_048_576.0),
                recent_bytes_per_mib_processed: Some(262_144.0),
                class: GrowthClass::LeakSuspect,
                samples: 12,
            },
            leak_rank: 1,
            heap: SiteHeap {
                fallback_mmap_count: 2,
                fallback_mmap_bytes: (1 << 20) + 135_168,
                ..SiteHeap::default()
            },
            frames: vec![
                Frame {
                    addr: 0x1234,
                    function: Some(function.to_string()),
                    file: Some("/src/leaky.c".to_string()),
                    line: Some(42),
                    ..Frame::default()
                },
                Frame {
                    addr: 0x5678,
                    function: Some("main".to_string()),
                    ..Frame::default()
                },
            ],
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            schema: SCHEMA.to_string(),
            generated_at: "2026-11-23T18:00:00Z".to_string(),
            duration_s: 12.5,
            mode: "exact".to_string(),
            system_wide: false,
            unwinding: None,
            interval_s: 5.0,
            min_age_s: 0.0,
            processed: Processed::Both,
            complete: false,
            cost: Some(ProbeCost::new(Some(1_200.0), Some(5_000.0))),
            processes: vec![ProcessReport {
                pid: 42,
                comm: "leaky".to_string(),
                exe: "/usr/bin/leaky".to_string(),
                alive: true,
                exit: None,
                exact: true,
                libc: "/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                hooked_functions: vec!["malloc".to_string(), "free".to_string()],
                outstanding_bytes: 50_000,
                outstanding_count: 500,
                allocated_bytes: 100_000,
                allocated_count: 1000,
                freed_count: 500,
                bytes_processed: Some(3 << 20),
                heap: Some(HeapReport {
                    brk_bytes: 135_168,
                    brk_calls: 9,
                    brk_failures: 2,
                    fallback_mmaps: FallbackSummary {
                        count: 2,
                        bytes: (1 << 20) + 135_168,
                        chunk_sizes: vec![
                            crate::heap::ChunkSize {
                                bytes: 1 << 20,
                                count: 1,
                            },
                            crate::heap::ChunkSize {
                                bytes: 135_168,
                                count: 1,
                            },
                        ],
                    },
                    anon_mmap_outstanding_bytes: (1 << 20) + 135_168,
                    rss_bytes: Some(4 << 20),
                    ..HeapReport::default()
                }),
                counters: Counters {
                    unknown_frees: 3,
                    ..Counters::default()
                },
                sites: vec![site("leak_exactly", 50_000)],
            }],
        }
    }

    #[test]
    fn bytes_are_humanized_with_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(50_000), "48.8 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn table_names_the_site_its_caller_and_the_warnings() {
        let table = render_table(&snapshot(), 10);
        assert!(
            table.contains("pid 42 (leaky): 48.8 KiB outstanding in 500 blocks"),
            "{table}"
        );
        assert!(
            table.contains("leak_exactly (leaky.c:42) <- main"),
            "{table}"
        );
        assert!(table.contains("unknown frees 3"), "{table}");
        assert!(table.contains("3.2s"), "{table}");
        assert!(table.contains("+256.0 KiB"), "{table}");
        assert!(table.contains("+1.0 MiB"), "{table}");
        assert!(table.contains("0.99"), "{table}");
        assert!(table.contains("LEAK?"), "{table}");
        assert!(table.contains("3.0 MiB processed"), "{table}");
        assert!(
            table.contains("WARNING: malloc mmap fallback: 2 chunks, 1.1 MiB (1 x 1.0 MiB, 1 x 132.0 KiB) after 2 failed brk calls"),
            "{table}"
        );
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let snap = snapshot();
        let json = serde_json::to_string(&snap).expect("serializes");
        let back: Snapshot = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, snap);
    }
}
