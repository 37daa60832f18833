//! The stack pane: every frame of a site, innermost first, the user's top frame bold and
//! the C library, allocator and runtime frames dimmed.
use super::prelude::*;

/// One frame in `width` columns: index, inlined mark, function (cut in the middle when the
/// line is too long), file:line, module.
fn frame_line(index: usize, frame: &Frame, is_user_top: bool, width: usize) -> Line<'static> {
    let prefix = format!("{index:>2} ");
    let mark = if frame.inlined { "inl " } else { "" };
    let location = frame_location(frame)
        .map(|l| format!("  {l}"))
        .unwrap_or_default();
    let module = frame
        .module
        .as_deref()
        .map(|m| format!("  {}", basename(m)))
        .unwrap_or_default();
    let fixed = prefix.chars().count() + mark.chars().count();
    let tail = location.chars().count() + module.chars().count();
    let room = width.saturating_sub(fixed + tail).max(16);
    let runtime = !frame.class().is_user();
    let name_style = if is_user_top {
        HEADING.fg(Color::White)
    } else if runtime {
        DIM
    } else {
        Style::new()
    };
    Line::from(vec![
        Span::styled(prefix, DIM),
        Span::styled(mark, INLINED),
        Span::styled(truncate_middle(&frame_name(frame), room), name_style),
        Span::styled(location, LOCATION),
        Span::styled(module, DIM),
    ])
}

/// The stack pane: every frame of the site, innermost first, from frame `scroll` on.
pub(super) fn draw_stack(site: Option<&SiteReport>, scroll: usize, area: Rect, buf: &mut Buffer) {
    let Some(site) = site else {
        draw_message(
            Block::bordered().title(" stack "),
            "no site selected",
            area,
            buf,
        );
        return;
    };
    let total = site.frames.len();
    let lines_shown = layout::stack_lines(area);
    let first = scroll.min(total.saturating_sub(1));
    let last = (first + lines_shown).min(total);
    let title = if total > lines_shown {
        format!(" stack · frames {}-{last} of {total} ", first + 1)
    } else {
        format!(
            " stack · {total} frame{} ",
            if total == 1 { "" } else { "s" }
        )
    };
    let block = Block::bordered().title(Span::styled(title, TITLE));
    let width = usize::from(area.width.saturating_sub(2));
    let user_top = frames::label_frame(&site.frames);
    let lines: Vec<Line<'static>> = site
        .frames
        .iter()
        .enumerate()
        .skip(first)
        .take(lines_shown)
        .map(|(i, f)| {
            let is_user_top = user_top.is_some_and(|top| std::ptr::eq(top, f));
            frame_line(i, f, is_user_top, width)
        })
        .collect();
    Paragraph::new(lines).block(block).render(area, buf);
}
