//! The heap panel: the program break, malloc's mmap fallbacks and the sites that made them,
//! mappings and memory, for one process.
use super::prelude::*;

impl App {
    pub(super) fn draw_heap(&self, pid: Option<u32>, area: Rect, buf: &mut Buffer) {
        let shown = self.shown.as_ref();
        let process = pid.and_then(|pid| shown?.snapshot.processes.iter().find(|p| p.pid == pid));
        let title = match (pid, process) {
            // The process's allocator and container, after its pid.
            (Some(pid), Some(p)) => {
                let labels: String = p
                    .allocator
                    .iter()
                    .map(format::allocator_label)
                    .chain(p.cgroup.as_ref().and_then(format::container_label))
                    .map(|label| format!(" · {label}"))
                    .collect();
                format!(" heap · pid {pid}{labels} ")
            }
            (Some(pid), None) => format!(" heap · pid {pid} "),
            (None, _) => " heap ".to_string(),
        };
        let block = Block::bordered().title(Span::styled(title, TITLE));
        let Some((process, heap)) = process.and_then(|p| Some((p, p.heap.as_ref()?))) else {
            let lines = vec![
                Line::styled("brk/mmap: not available", DIM),
                Line::styled("(heap syscalls not traced)", DIM),
            ];
            Paragraph::new(lines).block(block).render(area, buf);
            return;
        };
        let totals = shown.and_then(|s| s.heap_totals.get(&process.pid));
        Paragraph::new(heap_lines(process, heap, totals))
            .block(block)
            .render(area, buf);
    }
}

/// "1.0 MiB, 132.0 KiB ×3": chunk sizes in the order first seen, with their counts.
fn chunk_sizes(sizes: &[ChunkSize]) -> String {
    sizes
        .iter()
        .map(|c| {
            if c.count > 1 {
                format!("{} ×{}", human_bytes(c.bytes), count(c.count))
            } else {
                human_bytes(c.bytes)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The heap panel's lines: the break, then malloc's mmap fallbacks and the sites that made
/// them (what the panel exists to show, so they come before the rest), then mappings and
/// memory.
fn heap_lines(
    process: &ProcessReport,
    heap: &HeapReport,
    totals: Option<&SiteHeapTotals>,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let failures = if heap.brk_failures > 0 {
        Span::styled(format!("{} failed", count(heap.brk_failures)), ALERT)
    } else {
        Span::styled("0 failed", DIM)
    };
    lines.push(Line::from(vec![
        Span::raw(format!("brk {} · ", human_bytes(heap.brk_bytes))),
        failures,
        Span::styled(format!(" of {} calls", count(heap.brk_calls)), DIM),
    ]));
    let fallbacks = &heap.fallback_mmaps;
    if fallbacks.count > 0 {
        lines.push(Line::styled(
            format!(
                "fallback mmaps {} = {}",
                count(fallbacks.count),
                human_bytes(fallbacks.bytes)
            ),
            ALERT,
        ));
        lines.push(Line::styled(
            format!(" chunks {}", chunk_sizes(&fallbacks.chunk_sizes)),
            WARN,
        ));
        for &i in totals.map_or(&[][..], |t| t.fallback_sites.as_slice()) {
            let Some(site) = process.sites.get(i) else {
                continue;
            };
            let name = frames::label_frame(&site.frames)
                .map(frame_name)
                .unwrap_or_else(|| {
                    // No frame to name it by: its innermost address, never the internal id.
                    site.frames.first().map_or_else(
                        || "an unnamed site".to_string(),
                        |f| format!("{:#x}", f.addr),
                    )
                });
            lines.push(Line::styled(
                format!(
                    " {} = {} ← {}",
                    count(site.heap.fallback_mmap_count),
                    human_bytes(site.heap.fallback_mmap_bytes),
                    name
                ),
                WARN,
            ));
        }
    } else {
        lines.push(Line::styled("fallback mmaps: none", DIM));
    }
    let direct = totals.map_or(0, |t| t.direct_mmap_bytes);
    lines.push(Line::raw(format!(
        "anon {} · direct {}",
        human_bytes(heap.anon_mmap_outstanding_bytes),
        human_bytes(direct)
    )));
    lines.push(Line::raw(format!(
        "reserved {} · VmData {}",
        human_bytes(heap.anon_reserved_bytes),
        optional_bytes(heap.vm_data_bytes)
    )));
    let mut memory = format!("RSS {}", optional_bytes(heap.rss_bytes));
    let growth = heap.rss_growth_bytes.map(format::signed_bytes);
    let share = heap
        .explained_share
        .filter(|s| s.is_finite())
        .map(|s| format!("{:.0}% explained", s * 100.0));
    match (growth, share) {
        (Some(g), Some(s)) => memory.push_str(&format!(" ({g}, {s})")),
        (Some(g), None) => memory.push_str(&format!(" ({g})")),
        (None, Some(s)) => memory.push_str(&format!(" ({s})")),
        (None, None) => {}
    }
    lines.push(Line::raw(memory));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_show_counts() {
        let sizes = [
            ChunkSize {
                bytes: 1 << 20,
                count: 1,
            },
            ChunkSize {
                bytes: 132 << 10,
                count: 3,
            },
        ];
        assert_eq!(chunk_sizes(&sizes), "1.0 MiB, 132.0 KiB ×3");
        assert_eq!(chunk_sizes(&[]), "");
    }
}
