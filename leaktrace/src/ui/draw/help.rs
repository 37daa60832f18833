//! The help popup: every key and what it does.
use super::prelude::*;

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move (mouse wheel too)"),
    ("PgUp PgDn", "move a page"),
    ("Home End  g G", "first / last row"),
    ("Enter", "site: details, full stack; process: trace it"),
    ("Esc", "back; clear the filter"),
    ("s  S", "next / previous sort order"),
    (
        "v",
        "view: sites, callers tree (top-down), callees tree (bottom-up)",
    ),
    ("→ ←  l h", "tree: open / close a node (Enter toggles)"),
    ("/", "filter sites by function or module"),
    ("", "(Enter keeps it, Esc cancels)"),
    ("p", "pause / resume the display (sampling goes on)"),
    ("e", "write a JSON snapshot now"),
    ("q  Ctrl-C", "quit (final snapshot written with --json)"),
    ("Ctrl-L", "repaint the screen"),
    ("?", "this help; any key closes it"),
];

pub(super) fn draw_help(area: Rect, buf: &mut Buffer) {
    let width = area.width.min(78);
    let height = area.height.min(HELP.len() as u16 + 4);
    let popup = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    let mut lines: Vec<Line<'static>> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:>14}  "), WARN),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "PER MiB, PER MIN: outstanding growth per MiB processed, per minute",
        DIM,
    ));
    Clear.render(popup, buf);
    Paragraph::new(Text::from(lines))
        .block(Block::bordered().title(Span::styled(" keys ", TITLE)))
        .render(popup, buf);
}
