//! The header: targets, mode, uptime and memory; outstanding bytes and call rates; the
//! trust counters and the probes' cost.
use super::prelude::*;

impl App {
    /// The processes the header sums over: the focused one, else every traced one.
    fn header_processes(&self) -> Vec<&ProcessReport> {
        self.snapshot()
            .map(|s| {
                s.processes
                    .iter()
                    .filter(|p| p.exact && self.focus_pid.is_none_or(|f| f == p.pid))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn draw_header(&self, area: Rect, buf: &mut Buffer) {
        let mut first = vec![Span::styled("leaktrace", TITLE)];
        // First on the line, so that no terminal width can cut it off.
        if self.paused {
            first.push(Span::raw(" "));
            first.push(Span::styled(" PAUSED ", PAUSED));
        }
        let Some(shown) = &self.shown else {
            first.push(Span::raw(" · waiting for the first sample"));
            Paragraph::new(Line::from(first)).render(area, buf);
            return;
        };
        let processes = self.header_processes();
        let targets = match processes.len() {
            0 if self.system_mode => "all processes".to_string(),
            0 => "no target".to_string(),
            1..=3 => processes
                .iter()
                .map(|p| format!("pid {} {}", p.pid, p.comm))
                .collect::<Vec<_>>()
                .join(", "),
            n => format!("{n} processes"),
        };
        let mode = match (shown.snapshot.mode, shown.snapshot.system_wide) {
            (Mode::SystemWide, _) | (Mode::Exact, true) => "system-wide",
            (Mode::Growth, true) => "system-wide growth",
            (mode, false) => mode.as_str(),
        };
        let uptime = shown.live.uptime_s.unwrap_or(shown.snapshot.duration_s);
        let sum = |f: fn(&ProcessReport) -> u64| {
            processes
                .iter()
                .map(|p| f(p))
                .fold(0u64, u64::saturating_add)
        };
        let processed = processes
            .iter()
            .filter_map(|p| p.bytes_processed)
            .reduce(u64::saturating_add);
        let rss = processes
            .iter()
            .filter_map(|p| p.heap.as_ref()?.rss_bytes)
            .reduce(u64::saturating_add);
        first.push(Span::raw(format!(
            " · {targets} · {mode} · up {} · RSS {} · processed {}",
            format::uptime(uptime),
            optional_bytes(rss),
            optional_bytes(processed),
        )));
        let second = Line::from(vec![
            Span::raw("outstanding "),
            Span::styled(human_bytes(sum(|p| p.outstanding_bytes)), HEADING),
            Span::raw(format!(
                " in {} blocks · alloc {} · free {} · probes {}",
                count(sum(|p| p.outstanding_count)),
                per_second(shown.rates.alloc_per_s),
                per_second(shown.rates.free_per_s),
                per_second(shown.live.probe_hits_per_s),
            )),
        ]);

        let counter = |label: &'static str, value: u64| {
            let style = if value > 0 { WARN } else { DIM };
            Span::styled(format!("{label} {}", count(value)), style)
        };
        let sep = || Span::styled(" · ", DIM);
        let third = Line::from(vec![
            counter("dropped", sum(|p| p.counters.dropped_allocations)),
            sep(),
            counter("lost", sum(|p| p.counters.lost_events)),
            sep(),
            counter("stack errors", sum(|p| p.counters.stack_errors)),
            sep(),
            counter("unknown frees", sum(|p| p.counters.unknown_frees)),
            sep(),
            // Last on the line: the short counter line has room for it on any width.
            Span::styled(
                format!(
                    "cost {}",
                    cpu_share(shown.snapshot.cost.and_then(|c| c.estimated_overhead_pct))
                ),
                DIM,
            ),
        ]);
        Paragraph::new(vec![Line::from(first), second, third]).render(area, buf);
    }
}
