//! The selected site's outstanding bytes over the last samples.
use super::prelude::*;

impl App {
    pub(super) fn draw_sparkline(
        &self,
        site: Option<(&ProcessReport, &SiteReport)>,
        area: Rect,
        buf: &mut Buffer,
    ) {
        let (Some(shown), Some((process, site))) = (&self.shown, site) else {
            draw_message(Block::bordered().title(" outstanding "), "-", area, buf);
            return;
        };
        let width = usize::from(area.width.saturating_sub(2));
        let series = self
            .history
            .series(process.pid, &site.id, shown.generation, width);
        let peak = series.iter().copied().max().unwrap_or(0);
        let title = Line::from(vec![
            Span::styled(
                format!(" {} ", human_bytes(site.counters.outstanding_bytes)),
                TITLE,
            ),
            Span::raw(format!("now · peak {} ", human_bytes(peak))),
        ]);
        let block = Block::bordered().title(title);
        if series.len() < 2 {
            draw_message(block, "collecting samples…", area, buf);
            return;
        }
        Sparkline::default()
            .block(block)
            .data(&series)
            .style(Style::new().fg(Color::Yellow))
            .render(area, buf);
    }
}
