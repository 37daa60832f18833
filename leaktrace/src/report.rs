//! Writing the JSON snapshot (its types are in `schema`), and the periodic text table.
use std::{fmt::Write as _, io, path::Path};

use crate::{
    output::{write_atomically, Access, OutputError},
    schema::{ExitStatus, Frame, Growth, GrowthClass, SiteReport, Snapshot},
};

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
            .filter(|s| s.counters.outstanding_count > 0)
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
                human_bytes(site.counters.outstanding_bytes),
                if process.exact {
                    site.counters.outstanding_count
                } else {
                    site.counters.allocated_count
                },
                human_rate(site.growth.bytes_per_mib_processed),
                human_rate(site.growth.bytes_per_min),
                best_r2(&site.growth),
                class_label(site.growth.class),
                human_age(site.counters.oldest_age_s),
                site_label(site)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{
        ChunkSize, Counters, FallbackSummary, HeapReport, Mode, ProbeCost, ProcessReport,
        Processed, SiteCounters, SiteHeap, SCHEMA,
    };

    fn site(function: &str, outstanding: u64) -> SiteReport {
        SiteReport {
            id: format!("{function}-site"),
            counters: SiteCounters {
                outstanding_bytes: outstanding,
                outstanding_count: outstanding / 100,
                allocated_bytes: outstanding * 2,
                allocated_count: outstanding / 50,
                freed_bytes: outstanding,
                freed_count: outstanding / 100,
                oldest_age_s: Some(3.25),
                aged_outstanding_bytes: outstanding,
                aged_outstanding_count: outstanding / 100,
            },
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
            mode: Mode::Exact,
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
                            ChunkSize {
                                bytes: 1 << 20,
                                count: 1,
                            },
                            ChunkSize {
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
