//! The Go section of `leaktrace report`: goroutine groups, the runtime's heap profile (with its
//! lag said) and memory statistics, as lines both report styles print.
use super::read::{RecordedFrame, RecordedGo};
use crate::format;

/// Frames of the Go runtime itself, skipped when naming where goroutines or allocations are.
fn is_runtime(frame: &RecordedFrame) -> bool {
    frame.function.as_deref().is_some_and(|f| {
        f.starts_with("runtime.") || f.starts_with("internal/runtime/") || f.starts_with("runtime/")
    })
}

/// `main.handle (server.go:42)`: the first frame that is not the runtime's.
pub fn go_label(frames: &[RecordedFrame]) -> String {
    frames
        .iter()
        .find(|f| !is_runtime(f) && f.function.is_some())
        .or_else(|| frames.first())
        .map_or_else(|| "(no frames)".to_string(), format::frame_label)
}

/// The section's lines, unindented; `top`: groups and heap sites shown at most.
pub fn go_lines(go: &RecordedGo, top: usize) -> Vec<String> {
    let mut lines = Vec::new();
    match (go.goroutines, &go.census_error) {
        (Some(n), _) => lines.push(format!(
            "Go {}: {n} goroutines (layout from {})",
            go.version,
            go.layout.as_deref().unwrap_or("?")
        )),
        (None, Some(why)) => lines.push(format!("Go {}: {why}", go.version)),
        (None, None) => lines.push(format!("Go {}: no goroutine census", go.version)),
    }
    if !go.groups.is_empty() {
        lines.push("goroutine groups, largest first:".to_string());
    }
    for group in go.groups.iter().take(top) {
        let state = match &group.wait_reason {
            Some(reason) => format!("{} ({reason})", group.state),
            None => group.state.clone(),
        };
        let created = group
            .created_by
            .first()
            .map_or_else(|| "?".to_string(), format::frame_name);
        let mut line = format!(
            "  {:>7}  {state}, created by {created}, at {}",
            group.count,
            go_label(&group.frames)
        );
        if let Some(per_min) = group.growth.per_min {
            line.push_str(&format!(", {per_min:+.1}/min"));
        }
        if group.growth.class == "leak_suspect" {
            line.push_str(", GOROUTINE LEAK SUSPECT");
        }
        if let Some(waited) = group.oldest_wait_s {
            line.push_str(&format!(
                ", blocked for at least {}",
                format::age(Some(waited))
            ));
        }
        lines.push(line);
    }
    if go.groups.len() > top {
        lines.push(format!("  ... {} more groups", go.groups.len() - top));
    }
    let profile = &go.heap_profile;
    if profile.available {
        lines.push(format!(
            "heap profile (the runtime's, one sample per {} allocated; {}):",
            format::optional_bytes(profile.rate),
            profile.lag.as_deref().unwrap_or(crate::golang::LAG_NOTE)
        ));
        if let Some(total) = profile.inuse_bytes {
            lines.push(format!("  in use in all: {}", format::human_bytes(total)));
        }
        for site in profile.sites.iter().take(top) {
            lines.push(format!(
                "  {:>10} in use ({} objects), {:>10} allocated: {}",
                format::human_bytes(site.inuse_bytes),
                site.inuse_objects,
                format::human_bytes(site.alloc_bytes),
                go_label(&site.frames)
            ));
        }
    } else {
        lines.push(format!(
            "heap profile: unavailable ({})",
            profile.reason.as_deref().unwrap_or("reason unknown")
        ));
    }
    if let Some(stats) = &go.memstats {
        let bytes = format::optional_bytes;
        lines.push(format!(
            "memstats: HeapAlloc {} ({} per minute), HeapInuse {}, HeapSys {}, HeapObjects {}, NumGC {}, \
             NextGC {}, GC CPU {}",
            bytes(stats.heap_alloc),
            format::slope(stats.heap_alloc_per_min),
            bytes(stats.heap_inuse),
            bytes(stats.heap_sys),
            stats
                .heap_objects
                .map_or_else(|| format::NOT_AVAILABLE.to_string(), |n| n.to_string()),
            stats
                .num_gc
                .map_or_else(|| format::NOT_AVAILABLE.to_string(), |n| n.to_string()),
            bytes(stats.next_gc),
            stats.gc_cpu_fraction.map_or_else(
                || format::NOT_AVAILABLE.to_string(),
                |f| format!("{:.1}%", f * 100.0)
            ),
        ));
    } else {
        lines.push(format!(
            "memstats: unavailable ({})",
            go.memstats_error.as_deref().unwrap_or("reason unknown")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postmortem::read::{
        RecordedGoHeapProfile, RecordedGoHeapSite, RecordedGoMemStats, RecordedGoroutineGroup,
        RecordedGoroutineGrowth,
    };

    fn frame(function: &str) -> RecordedFrame {
        RecordedFrame {
            function: Some(function.to_string()),
            file: Some("/src/main.go".to_string()),
            line: Some(21),
            ..RecordedFrame::default()
        }
    }

    #[test]
    fn the_go_section_names_the_leak_the_profile_lag_and_the_stats() {
        let go = RecordedGo {
            version: "go1.22.10".to_string(),
            goroutines: Some(3007),
            layout: Some("dwarf".to_string()),
            groups: vec![RecordedGoroutineGroup {
                count: 3000,
                state: "waiting".to_string(),
                wait_reason: Some("chan send".to_string()),
                created_by: vec![frame("main.startSenders")],
                frames: vec![frame("runtime.gopark"), frame("main.startSenders.func1")],
                oldest_wait_s: Some(90.0),
                growth: RecordedGoroutineGrowth {
                    per_min: Some(120.0),
                    class: "leak_suspect".to_string(),
                },
            }],
            memstats: Some(RecordedGoMemStats {
                heap_alloc: Some(80 << 20),
                num_gc: Some(8),
                ..RecordedGoMemStats::default()
            }),
            heap_profile: RecordedGoHeapProfile {
                available: true,
                rate: Some(65536),
                sites: vec![RecordedGoHeapSite {
                    inuse_bytes: 78 << 20,
                    inuse_objects: 19971,
                    frames: vec![frame("runtime.makeslice"), frame("main.leakIntoMap")],
                    ..RecordedGoHeapSite::default()
                }],
                ..RecordedGoHeapProfile::default()
            },
            ..RecordedGo::default()
        };
        let text = go_lines(&go, 5).join("\n");
        for expected in [
            "Go go1.22.10: 3007 goroutines",
            "3000  waiting (chan send), created by main.startSenders, at main.startSenders.func1 (main.go:21), +120.0/min, GOROUTINE LEAK SUSPECT",
            "lags the live heap by up to two cycles",
            "78.0 MiB in use (19971 objects)",
            "main.leakIntoMap (main.go:21)",
            "HeapAlloc 80.0 MiB",
            "NumGC 8",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        let off = RecordedGo {
            heap_profile: RecordedGoHeapProfile {
                reason: Some("the linker disabled memory profiling".to_string()),
                ..RecordedGoHeapProfile::default()
            },
            census_error: Some("no goroutine census: stripped".to_string()),
            memstats_error: Some("no memory statistics: no table for go1.20.1".to_string()),
            ..RecordedGo::default()
        };
        let text = go_lines(&off, 5).join("\n");
        assert!(text.contains("no goroutine census: stripped"), "{text}");
        assert!(
            text.contains("heap profile: unavailable (the linker disabled"),
            "{text}"
        );
        assert!(
            text.contains("memstats: unavailable (no memory statistics: no table for go1.20.1)"),
            "{text}"
        );
    }
}
