//! The footer: the keys of the current screen, or the latest status message.
use super::prelude::*;

impl App {
    pub(super) fn draw_footer(&self, area: Rect, buf: &mut Buffer) {
        let hints = if self.filter_input.is_some() {
            "type a function or module · ⏎ apply · esc cancel · ^U clear"
        } else if self.tree_view().is_some() {
            "q quit  ↑↓ move  ⏎ open/close  → open  ← close  v next view  esc sites  ? help"
        } else {
            match self.screen {
                Screen::Sites => {
                    "q quit  ↑↓ move  ⏎ details  s sort  v trees  / filter  p pause  ? help"
                }
                Screen::Processes => {
                    "q quit  ↑↓ move  ⏎ trace  s sort  p pause  e snapshot  ? help"
                }
                Screen::SiteDetail => {
                    "q quit  ↑↓ scroll stack  esc back  p pause  e snapshot  ? help"
                }
            }
        };
        let line = match &self.status {
            Some((message, _)) => Line::from(vec![
                Span::styled(message.clone(), STATUS),
                Span::styled("  ? help  q quit", DIM),
            ]),
            None => Line::styled(hints, DIM),
        };
        Paragraph::new(line).render(area, buf);
    }
}
