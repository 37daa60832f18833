//! The detail screen's numbers for one site.
use super::prelude::*;

/// The detail screen's numbers for one site.
pub(super) fn draw_summary(
    site: Option<(&ProcessReport, &SiteReport)>,
    area: Rect,
    buf: &mut Buffer,
) {
    let Some((process, site)) = site else {
        draw_message(
            Block::bordered().title(" site "),
            "this site is no longer in the snapshot",
            area,
            buf,
        );
        return;
    };
    let name = format::site_label(&site.frames);
    let title = Line::from(vec![
        Span::styled(format!(" {} ", truncate_middle(&name, 60)), TITLE),
        Span::raw(format!("· pid {} ({}) ", process.pid, process.comm)),
    ]);
    let g = &site.growth;
    let lines = vec![
        Line::from(vec![
            Span::raw("outstanding "),
            Span::styled(human_bytes(site.counters.outstanding_bytes), HEADING),
            Span::raw(format!(
                " in {} blocks · allocated {} in {} · freed {} in {}",
                count(site.counters.outstanding_count),
                human_bytes(site.counters.allocated_bytes),
                count(site.counters.allocated_count),
                human_bytes(site.counters.freed_bytes),
                count(site.counters.freed_count)
            )),
        ]),
        Line::from(vec![
            Span::raw("class "),
            Span::styled(
                format::class_label(g.class),
                if g.class == GrowthClass::LeakSuspect {
                    ALERT
                } else {
                    HEADING
                },
            ),
            Span::raw(format!(
                " · leak rank {} · oldest {} · aged {} in {} blocks",
                site.leak_rank,
                format::age(site.counters.oldest_age_s),
                human_bytes(site.counters.aged_outstanding_bytes),
                count(site.counters.aged_outstanding_count)
            )),
        ]),
        Line::raw(format!(
            "growth per MiB processed {} (R² {}) · per min {} (R² {})",
            // A sentence, not a narrow cell: below 1 MiB of work the slope is `n/a`, as in
            // the reports.
            format::slope(g.bytes_per_mib_processed),
            format::r2(g.r2_processed),
            slope_cell(g.bytes_per_min),
            format::r2(g.r2_time)
        )),
        Line::raw(format!(
            "recent: per MiB {} · per min {} · {} samples",
            format::slope(g.recent_bytes_per_mib_processed),
            slope_cell(g.recent_bytes_per_min),
            g.samples
        )),
        Line::styled(
            format!(
                "heap: fallback mmaps {} = {} · direct mmaps {} · anon mmaps {}",
                count(site.heap.fallback_mmap_count),
                human_bytes(site.heap.fallback_mmap_bytes),
                human_bytes(site.heap.direct_mmap_bytes),
                human_bytes(site.heap.anon_mmap_bytes)
            ),
            if site.heap.fallback_mmap_count > 0 {
                WARN
            } else {
                Style::new()
            },
        ),
    ];
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .render(area, buf);
}
