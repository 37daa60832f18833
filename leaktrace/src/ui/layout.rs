//! Where each panel goes for a given terminal size. Pure functions of the area, shared by the
//! drawing code and by [`super::App`] (which needs the table height for PgUp/PgDn).
use ratatui::layout::{Constraint, Layout, Rect};

/// Below this the dashboard only says that the terminal is too small.
pub const MIN_WIDTH: u16 = 20;
pub const MIN_HEIGHT: u16 = 6;
/// Below either of these the dashboard keeps to the header and the table (a terminal split
/// in four during an incident still shows what leaks).
pub const FULL_WIDTH: u16 = 60;
pub const FULL_HEIGHT: u16 = 18;
/// Lines of the header: who and what, totals, trust counters.
pub const HEADER_HEIGHT: u16 = 3;
/// Borders of a panel (top and bottom) and, for tables, the column header row.
const TABLE_CHROME: u16 = 3;

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

fn compact(area: Rect) -> bool {
    area.width < FULL_WIDTH || area.height < FULL_HEIGHT
}

/// Rows of data a table panel shows.
pub fn table_rows(table: Rect) -> usize {
    usize::from(table.height.saturating_sub(TABLE_CHROME))
}

/// Header, optional one-line banner, body, optional footer.
fn frame(area: Rect, banner: bool) -> (Rect, Option<Rect>, Rect, Option<Rect>) {
    let footer = !compact(area);
    let [header, banner_area, body, footer_area] = Layout::vertical([
        Constraint::Length(HEADER_HEIGHT),
        Constraint::Length(u16::from(banner)),
        Constraint::Min(0),
        Constraint::Length(u16::from(footer)),
    ])
    .areas(area);
    (
        header,
        banner.then_some(banner_area),
        body,
        footer.then_some(footer_area),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SitesLayout {
    pub header: Rect,
    pub banner: Option<Rect>,
    pub table: Rect,
    pub sparkline: Option<Rect>,
    pub stack: Option<Rect>,
    pub heap: Option<Rect>,
    pub footer: Option<Rect>,
}

/// The call-tree views: the tree takes the whole body.
pub struct TreeLayout {
    pub header: Rect,
    pub banner: Option<Rect>,
    pub tree: Rect,
    pub footer: Option<Rect>,
}

pub fn tree(area: Rect, banner: bool) -> TreeLayout {
    let (header, banner, tree, footer) = frame(area, banner);
    TreeLayout {
        header,
        banner,
        tree,
        footer,
    }
}

/// Smallest site table in the full layout: borders, column header, a few rows.
const MIN_TABLE_HEIGHT: u16 = 6;

/// The site table screen: the table on top (at most half the body; less when there are
/// few `rows`, so the stack gets the room); below it the stack of the selected site on the
/// left and, on the right, its sparkline over the heap panel.
pub fn sites(area: Rect, banner: bool, rows: usize) -> SitesLayout {
    let (header, banner, body, footer) = frame(area, banner);
    if compact(area) {
        return SitesLayout {
            header,
            banner,
            table: body,
            sparkline: None,
            stack: None,
            heap: None,
            footer,
        };
    }
    let wanted = u16::try_from(rows)
        .unwrap_or(u16::MAX)
        .saturating_add(TABLE_CHROME);
    let table_height = wanted.clamp(MIN_TABLE_HEIGHT, (body.height / 2).max(MIN_TABLE_HEIGHT));
    let [table, bottom] =
        Layout::vertical([Constraint::Length(table_height), Constraint::Min(0)]).areas(body);
    let [stack, right] =
        Layout::horizontal([Constraint::Percentage(56), Constraint::Min(0)]).areas(bottom);
    let [sparkline, heap] =
        Layout::vertical([Constraint::Length(4), Constraint::Min(0)]).areas(right);
    SitesLayout {
        header,
        banner,
        table,
        sparkline: Some(sparkline),
        stack: Some(stack),
        heap: Some(heap),
        footer,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessesLayout {
    pub header: Rect,
    pub table: Rect,
    pub heap: Option<Rect>,
    pub footer: Option<Rect>,
}

/// The system-wide process table, with the selected process's heap panel on the right when
/// the terminal is wide enough.
pub fn processes(area: Rect) -> ProcessesLayout {
    let (header, _, body, footer) = frame(area, false);
    if compact(area) || area.width < 130 {
        return ProcessesLayout {
            header,
            table: body,
            heap: None,
            footer,
        };
    }
    let [table, heap] =
        Layout::horizontal([Constraint::Min(70), Constraint::Length(40)]).areas(body);
    ProcessesLayout {
        header,
        table,
        heap: Some(heap),
        footer,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailLayout {
    pub header: Rect,
    pub banner: Option<Rect>,
    pub summary: Rect,
    pub sparkline: Option<Rect>,
    pub stack: Rect,
    pub footer: Option<Rect>,
}

/// Lines of the site summary in the detail screen (inside its borders).
pub const SUMMARY_LINES: u16 = 5;

/// One site in full: its numbers, a wide sparkline, and its whole stack (scrollable).
pub fn detail(area: Rect, banner: bool) -> DetailLayout {
    let (header, banner, body, footer) = frame(area, banner);
    let sparkline_height = if compact(area) { 0 } else { 6 };
    let [summary, sparkline, stack] = Layout::vertical([
        Constraint::Length(SUMMARY_LINES + 2),
        Constraint::Length(sparkline_height),
        Constraint::Min(0),
    ])
    .areas(body);
    DetailLayout {
        header,
        banner,
        summary,
        sparkline: (sparkline_height > 0).then_some(sparkline),
        stack,
        footer,
    }
}

/// Lines of frames the detail screen's stack panel shows.
pub fn stack_lines(stack: Rect) -> usize {
    usize::from(stack.height.saturating_sub(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_layout_at_80x24_has_every_panel() {
        let l = sites(Rect::new(0, 0, 80, 24), false, 1000);
        assert!(l.footer.is_some() && l.stack.is_some() && l.heap.is_some());
        assert!(table_rows(l.table) >= 5, "{l:?}");
        let few = sites(Rect::new(0, 0, 80, 24), false, 1);
        assert_eq!(table_rows(few.table), 3, "{few:?}");
        assert!(few
            .stack
            .is_some_and(|s| s.height > l.stack.map_or(0, |s| s.height)));
        assert!(l.heap.is_some_and(|h| h.height >= 5), "{l:?}");
    }

    #[test]
    fn small_terminals_keep_header_and_table() {
        let l = sites(Rect::new(0, 0, 40, 12), false, 1000);
        assert_eq!(l.stack, None);
        assert_eq!(l.footer, None);
        assert_eq!(l.table.height, 9);
        assert!(too_small(Rect::new(0, 0, 19, 12)));
    }
}
