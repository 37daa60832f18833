//! The header: targets, mode, uptime and memory; outstanding bytes and call rates; the
//! trust counters and the probes' cost.
use super::prelude::*;

impl App {
    /// The processes the header sums over: the focused one, else every traced one.
    fn header_processes(&self) -> Vec<&ProcessReport> {
        self.snapshot()
            .map(|s| crate::model::dashboard::header_processes(s, self.focus_pid))
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
        let totals = HeaderTotals::of(processes.iter().copied());
        first.push(Span::raw(format!(
            " · {targets} · {mode} · up {} · RSS {} · processed {}",
            format::uptime(uptime),
            optional_bytes(totals.rss_bytes),
            optional_bytes(totals.bytes_processed),
        )));
        let second = if totals.growth {
            // Growth mode has no blocks: what grew the heap, and what of it is still mapped.
            Line::from(vec![
                Span::raw("heap growth still mapped "),
                Span::styled(human_bytes(totals.outstanding_bytes), HEADING),
                Span::raw(format!(
                    " · grown {} in {} events · events {}",
                    human_bytes(totals.grown_bytes),
                    count(totals.growth_events),
                    per_second(shown.live.probe_hits_per_s),
                )),
            ])
        } else {
            Line::from(vec![
                Span::raw("outstanding "),
                Span::styled(human_bytes(totals.outstanding_bytes), HEADING),
                Span::raw(format!(
                    " in {} blocks · alloc {} · free {} · probes {}",
                    count(totals.outstanding_count),
                    per_second(shown.rates.alloc_per_s),
                    per_second(shown.rates.free_per_s),
                    per_second(shown.live.probe_hits_per_s),
                )),
            ])
        };

        let counter = |label: &'static str, value: u64| {
            let style = if value > 0 { WARN } else { DIM };
            Span::styled(format!("{label} {}", count(value)), style)
        };
        let sep = || Span::styled(" · ", DIM);
        let mut third = vec![
            counter("dropped", totals.counters.dropped_allocations),
            sep(),
            counter("lost", totals.counters.lost_events),
            sep(),
            counter("stack errors", totals.counters.stack_errors),
            sep(),
            counter("unknown frees", totals.counters.unknown_frees),
            sep(),
            // Last on the line: the short counter line has room for it on any width.
            Span::styled(
                format!(
                    "cost {}",
                    cpu_share(shown.snapshot.cost.and_then(|c| c.estimated_overhead_pct))
                ),
                DIM,
            ),
        ];
        if let Some((pct, budget)) = bursts_cost(&shown.snapshot.processes) {
            third.push(sep());
            third.push(Span::styled(
                format!("bursts {} (budget {budget}%)", cpu_share(Some(pct))),
                DIM,
            ));
        }
        let third = Line::from(third);
        Paragraph::new(vec![Line::from(first), second, third]).render(area, buf);
    }
}

/// Growth mode's bursts: the highest cost of a process's bursts (the larger of what its CPU
/// time and its hits say, as the budget holds it) and the per-process budget.
fn bursts_cost(processes: &[crate::schema::ProcessReport]) -> Option<(f64, f64)> {
    processes
        .iter()
        .filter_map(|p| p.bursts.as_ref())
        .map(|b| {
            let pct = b
                .target_cpu_overhead_pct
                .map_or(b.measured_overhead_pct, |t| t.max(b.measured_overhead_pct));
            (pct, b.budget_pct)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}
