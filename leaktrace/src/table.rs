//! The periodic headless table: what leaktrace prints every interval without a terminal
//! (or with `--headless`), and once more at the end.
use std::fmt::Write as _;

use crate::{
    format::{self, human_bytes},
    schema::{EstimatedSite, ExitStatus, ProcessReport, SiteReport, Snapshot},
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
        let mut labels = Vec::new();
        match (&process.allocator, &process.allocator_not_hooked) {
            (_, Some(why)) => labels.push(format!("allocator not hooked: {why}")),
            (Some(allocator), None) => labels.push(format!(
                "allocator {} in {}",
                format::allocator_label(allocator),
                allocator.module
            )),
            (None, None) => {}
        }
        for more in &process.more_allocators {
            labels.push(format!(
                "also {} in {}",
                format::allocator_label(more),
                more.module
            ));
        }
        if let Some(cgroup) = &process.cgroup {
            labels.push(match format::container_label(cgroup) {
                Some(container) => format!("container {container}"),
                None => format!("cgroup {}", cgroup.path),
            });
        }
        if !labels.is_empty() {
            let _ = writeln!(out, "  {}", labels.join(" · "));
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
        if let Some(go) = &process.go {
            out.push_str(&go_lines(go));
        }
        let c = &process.counters;
        if c.any() {
            let _ = writeln!(
                out,
                "  warning: dropped allocations {}, stack errors {}, lost events {}, unknown frees {}",
                c.dropped_allocations, c.stack_errors, c.lost_events, c.unknown_frees
            );
        }
        if !process.exact {
            out.push_str(&estimate_lines(process, top));
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
        if !process.exact {
            let _ = writeln!(
                out,
                "  what grew the heap (the allocations that crossed its top: often large temporaries, no leak verdict):"
            );
        }
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

/// Growth mode: the bursts' estimate, ranked (leak suspects first), and what the bursts cost.
fn estimate_lines(process: &ProcessReport, top: usize) -> String {
    let mut out = String::new();
    let Some(bursts) = &process.bursts else {
        return out;
    };
    let _ = writeln!(
        out,
        "  leak estimate from {} bursts ({:.2} s of allocations sampled; cost {:.2}% of a CPU from probe hits, {} on the target's CPU time; budget {}%){}:",
        bursts.bursts,
        bursts.sampled_s,
        bursts.measured_overhead_pct,
        bursts
            .target_cpu_overhead_pct
            .map_or_else(|| "not yet measured".to_string(), |pct| format!("{pct:.2}%")),
        bursts.budget_pct,
        bursts
            .unavailable
            .as_ref()
            .map(|why| format!(" [no bursts: {why}]"))
            .unwrap_or_default()
    );
    let mut sites: Vec<&EstimatedSite> = process.estimated_sites.iter().collect();
    sites.sort_by_key(|s| s.estimate_rank);
    sites.truncate(top);
    if sites.is_empty() {
        let _ = writeln!(out, "  no sampled allocation yet");
        return out;
    }
    let _ = writeln!(
        out,
        "  {:>13} {:>23} {:>7} {:>9} {:>7}  SITE",
        "SURVIVING/s", "95% INTERVAL", "SAMPLES", "SEEN", "CLASS"
    );
    for site in sites {
        let per_s = |rate: f64| format!("{}/s", human_bytes(rate.max(0.0) as u64));
        let interval = &site.surviving_bytes_per_s_interval;
        let _ = writeln!(
            out,
            "  {:>13} {:>23} {:>7} {:>9} {:>7}  {}",
            format!("~{}", per_s(site.surviving_bytes_per_s)),
            format!("{}..{}", per_s(interval.low), per_s(interval.high)),
            site.samples,
            site.allocations_seen,
            format::class_label(site.class),
            format::site_label(&site.frames)
        );
    }
    out
}

/// A Go process's runtime in three lines: goroutines and the largest group, the heap profile's
/// top (and its lag), memstats.
fn go_lines(go: &crate::schema::GoReport) -> String {
    let mut out = String::new();
    let census = match (go.goroutines, &go.census_error) {
        (Some(n), _) => {
            let largest = go.groups.first().map(|g| {
                format!(
                    "; largest group {} {}{} created by {}{}",
                    g.count,
                    g.state,
                    g.wait_reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    g.created_by
                        .first()
                        .map_or_else(|| "?".to_string(), format::frame_name),
                    if g.growth.class == crate::schema::GrowthClass::LeakSuspect {
                        ", GOROUTINE LEAK SUSPECT"
                    } else {
                        ""
                    }
                )
            });
            format!("{n} goroutines{}", largest.unwrap_or_default())
        }
        (None, why) => why
            .clone()
            .unwrap_or_else(|| "no goroutine census".to_string()),
    };
    let _ = writeln!(out, "  go: {} · {census}", go.version);
    let profile = &go.heap_profile;
    match (profile.available, profile.sites.first()) {
        (true, Some(site)) => {
            let _ = writeln!(
                out,
                "  go heap profile (lags up to two GC cycles): top {} in use at {}",
                human_bytes(site.inuse_bytes),
                format::site_label(&site.frames)
            );
        }
        (true, None) => {
            let _ = writeln!(out, "  go heap profile: empty so far");
        }
        (false, _) => {
            let _ = writeln!(
                out,
                "  go heap profile: unavailable ({})",
                profile.reason.as_deref().unwrap_or("?")
            );
        }
    }
    if let Some(m) = &go.memstats {
        let _ = writeln!(
            out,
            "  go memstats: HeapAlloc {} ({}/min), HeapInuse {}, HeapObjects {}, NumGC {}, NextGC {}",
            human_bytes(m.heap_alloc),
            format::slope(m.heap_alloc_per_min),
            human_bytes(m.heap_inuse),
            m.heap_objects,
            m.num_gc,
            human_bytes(m.next_gc)
        );
    } else if let Some(why) = &go.memstats_error {
        let _ = writeln!(out, "  go memstats: unavailable ({why})");
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
        process.cgroup = Some(crate::schema::CgroupReport {
            path: format!("/system.slice/docker-{}.scope", "4f3c2b1a".repeat(8)),
            container_id: Some("4f3c2b1a".repeat(8)),
            runtime: Some("docker".to_string()),
        });
        let mut snapshot = synthetic::snapshot(12.5, vec![process]);
        snapshot.cost = Some(ProbeCost::new(Some(1_200.0), Some(5_000.0)));
        snapshot
    }

    #[test]
    fn growth_mode_shows_the_estimate_ranking_and_what_grew_the_heap() {
        let mut snapshot = snapshot();
        let process = &mut snapshot.processes[0];
        process.exact = false;
        process.bursts = Some(crate::schema::BurstReport {
            bursts: 3,
            sampled_s: 0.25,
            budget_pct: 1.0,
            measured_overhead_pct: 0.5,
            ..Default::default()
        });
        process.estimated_sites = vec![EstimatedSite {
            id: "a-1-est".to_string(),
            estimated: true,
            estimate_rank: 1,
            class: GrowthClass::LeakSuspect,
            samples: 300,
            freed_samples: 0,
            allocations_seen: 900,
            surviving_sampled_bytes: 54_000,
            surviving_bytes_per_s: 2048.0,
            surviving_bytes_per_s_interval: crate::schema::Interval {
                low: 1024.0,
                high: 3072.0,
            },
            recent_surviving_bytes_per_s: 2048.0,
            recent_samples: 150,
            surviving_bytes_per_mib_processed: None,
            surviving_bytes_per_mib_processed_interval: None,
            estimated_surviving_bytes: 25_600,
            frames: vec![frame("remember_request", EXE, Some(("leaky.c", 7)))],
        }];
        let table = render_table(&snapshot, 10);
        let estimate = table.find("leak estimate from 3 bursts").expect(&table);
        let grew = table.find("what grew the heap").expect(&table);
        assert!(estimate < grew, "{table}");
        assert!(
            table.contains("~2.0 KiB/s") && table.contains("1.0 KiB/s..3.0 KiB/s"),
            "{table}"
        );
        assert!(
            table.contains("LEAK?  remember_request (leaky.c:7)"),
            "{table}"
        );
    }

    #[test]
    fn table_names_the_site_its_caller_and_the_warnings() {
        let table = render_table(&snapshot(), 10);
        assert!(
            table.contains("pid 42 (leaky): 48.8 KiB outstanding in 500 blocks"),
            "{table}"
        );
        assert!(table.contains("  leak_exactly (leaky.c:42)\n"), "{table}");
        assert!(table.contains("unknown frees 3"), "{table}");
        assert!(
            table.contains("allocator glibc 2.36 in /usr/lib/x86_64-linux-gnu/libc.so.6 · container docker 4f3c2b1a4f3c"),
            "{table}"
        );
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
