//! The Go panel: a Go process's goroutine groups (count, a sparkline of the count, leak
//! verdict), the top of the runtime's heap profile (which lags up to two GC cycles) and its
//! memory statistics. Shown in the heap panel's place for a Go process.
use super::prelude::*;
use crate::{schema::GoReport, ui::history::group_key};

/// Width of a group's inline sparkline.
const SPARK_WIDTH: usize = 12;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

impl App {
    /// Whether `pid` is a Go process with a runtime report.
    pub(super) fn go_report(&self, pid: Option<u32>) -> Option<&GoReport> {
        let pid = pid?;
        let process = self
            .shown
            .as_ref()?
            .snapshot
            .processes
            .iter()
            .find(|p| p.pid == pid)?;
        process.go.as_ref()
    }

    pub(super) fn draw_go(&self, pid: u32, go: &GoReport, area: Rect, buf: &mut Buffer) {
        let title = match go.goroutines {
            Some(n) => format!(" {} · {} goroutines · pid {pid} ", go.version, count(n)),
            None => format!(" {} · pid {pid} ", go.version),
        };
        let block = Block::bordered().title(Span::styled(title, TITLE));
        let generation = self.shown.as_ref().map_or(0, |s| s.generation);
        let width = usize::from(area.width.saturating_sub(2));
        let mut lines = Vec::new();
        if let Some(why) = &go.census_error {
            lines.push(Line::styled(why.clone(), WARN));
        }
        for group in go
            .groups
            .iter()
            .take(usize::from(area.height.saturating_sub(5)).max(1))
        {
            let series = self
                .go_history
                .series(pid, &group_key(group), generation, SPARK_WIDTH);
            let what = group.wait_reason.as_deref().unwrap_or(&group.state);
            let created = group
                .created_by
                .first()
                .map_or_else(|| "?".to_string(), frame_name);
            let leak = group.growth.class == GrowthClass::LeakSuspect;
            let mut spans = vec![
                Span::styled(
                    format!("{:>7} ", count(group.count)),
                    if leak { ALERT } else { HEADING },
                ),
                Span::styled(
                    format!("{:<width$} ", bars(&series), width = SPARK_WIDTH),
                    WARN,
                ),
                Span::raw(format!("{what} · {created}")),
            ];
            if leak {
                spans.push(Span::styled(" LEAK", ALERT));
            }
            lines.push(Line::from(spans));
        }
        let profile = &go.heap_profile;
        if profile.available {
            let top = profile.sites.first();
            lines.push(Line::from(vec![
                Span::styled("heap profile ", HEADING),
                Span::styled("(lags ≤2 GC) ", DIM),
                Span::raw(match top {
                    Some(site) => format!(
                        "{} {}",
                        human_bytes(site.inuse_bytes),
                        go_site_name(&site.frames)
                    ),
                    None => "empty".to_string(),
                }),
            ]));
        } else {
            lines.push(Line::styled(
                truncate_middle(
                    &format!(
                        "heap profile off: {}",
                        profile.reason.as_deref().unwrap_or("?")
                    ),
                    width,
                ),
                DIM,
            ));
        }
        if let Some(stats) = &go.memstats {
            lines.push(Line::raw(format!(
                "HeapAlloc {} {}/min · GC {} · next {}",
                human_bytes(stats.heap_alloc),
                slope_cell(stats.heap_alloc_per_min),
                count(stats.num_gc),
                human_bytes(stats.next_gc),
            )));
        } else if let Some(why) = &go.memstats_error {
            lines.push(Line::styled(truncate_middle(why, width), DIM));
        }
        Paragraph::new(lines).block(block).render(area, buf);
    }
}

/// The first frame outside the runtime, for a heap-profile site.
fn go_site_name(frames: &[Frame]) -> String {
    frames
        .iter()
        .find(|f| {
            f.function.as_deref().is_some_and(|name| {
                !name.starts_with("runtime.") && !name.starts_with("internal/runtime/")
            })
        })
        .or_else(|| frames.first())
        .map_or_else(|| format::NO_FRAMES.to_string(), frame_name)
}

/// A text sparkline of `series` scaled to its own peak.
fn bars(series: &[u64]) -> String {
    let peak = series.iter().copied().max().unwrap_or(0);
    if peak == 0 {
        return String::new();
    }
    series
        .iter()
        .map(|&n| {
            let level = (n.saturating_mul(7) / peak) as usize;
            BARS[level.min(BARS.len() - 1)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_peak() {
        assert_eq!(bars(&[]), "");
        assert_eq!(bars(&[0, 0]), "");
        assert_eq!(bars(&[1, 4, 8]), "▁▄█");
    }
}
