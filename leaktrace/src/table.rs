//! The periodic headless table: what leaktrace prints every interval without a terminal
//! (or with `--headless`), and once more at the end.
use std::fmt::Write as _;

use crate::{
    format::{self, human_bytes},
    schema::{ExitStatus, SiteReport, Snapshot},
};

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
                format::optional_bytes(heap.rss_bytes),
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
                format::slope(site.growth.bytes_per_mib_processed),
                format::slope(site.growth.bytes_per_min),
                format::best_r2(&site.growth),
                format::class_label(site.growth.class),
                format::age(site.counters.oldest_age_s),
                format::site_label(&site.frames)
            );
        }
    }
    if let Some(others) = snapshot.other_processes.filter(|o| o.processes > 0) {
        let _ = writeln!(
            out,
            "[{:>7.1}s] {} other processes ({} alive, {} exited): {} of heap growth",
            snapshot.duration_s,
            others.processes,
            others.alive,
            others.exited,
            human_bytes(others.heap_growth_bytes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        schema::{GrowthClass, ProbeCost},
        synthetic::{self, frame, EXE},
    };

    /// One leaking site behind two fallback mmaps, in a process with unknown frees.
    fn snapshot() -> Snapshot {
        let mut site = synthetic::site(
            "leak_exactly-site",
            50_000,
            500,
            synthetic::growth(Some(262_144.0), Some(1_048_576.0), GrowthClass::LeakSuspect),
            Some(3.25),
            vec![
                frame("leak_exactly", EXE, Some(("leaky.c", 42))),
                frame("main", EXE, None),
            ],
        );
        site.leak_rank = 1;
        site.heap = synthetic::site_heap_with_fallbacks();
        let mut process = synthetic::process(42, "leaky", vec![site]);
        process.heap = Some(synthetic::heap_with_fallbacks());
        process.counters.unknown_frees = 3;
        let mut snapshot = synthetic::snapshot(12.5, vec![process]);
        snapshot.cost = Some(ProbeCost::new(Some(1_200.0), Some(5_000.0)));
        snapshot
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
}
