//! The banner that says a traced process exited (its data stays browsable).
use super::prelude::*;

pub(super) fn draw_banner(exited: &[&ProcessReport], area: Rect, buf: &mut Buffer) {
    let describe = |p: &ProcessReport| {
        let how = match p.exit {
            Some(ExitStatus::Code(code)) => format!(", status {code}"),
            Some(ExitStatus::Signal(sig)) => format!(", signal {sig}"),
            None => String::new(),
        };
        format!("pid {} ({}){how}", p.pid, p.comm)
    };
    let who = exited
        .iter()
        .map(|p| describe(p))
        .collect::<Vec<_>>()
        .join("; ");
    let text = if exited.len() == 1 {
        format!(" process exited: {who} · data kept, still browsable ")
    } else {
        format!(" {} processes exited: {who} · data kept ", exited.len())
    };
    Paragraph::new(Line::styled(text, BANNER))
        .style(BANNER)
        .render(area, buf);
}
