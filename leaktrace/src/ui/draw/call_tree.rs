//! The call-tree views of the sites screen: callers first (top-down) or callees first
//! (bottom-up), one row per node, indented by depth, with its cumulative bytes, its share of
//! the tree and (callers first) its self bytes. The tree and what is open are `ui::call_trees`' state.
use super::prelude::*;
use crate::ui::{app::SiteView, call_trees::TreeView};

/// Columns before the function: cumulative bytes, share, self bytes.
const BYTES_WIDTH: u16 = 11;
const SHARE_WIDTH: u16 = 6;
/// The self column is dropped below this width.
const SELF_MIN_WIDTH: u16 = 60;

impl App {
    pub(super) fn draw_tree_screen(&self, area: Rect, buf: &mut Buffer) {
        let exited = self.exited_processes();
        let l = layout::tree(area, !exited.is_empty());
        self.draw_header(l.header, buf);
        if let Some(banner) = l.banner {
            banner::draw_banner(&exited, banner, buf);
        }
        if let Some(tree) = self.tree_view() {
            self.draw_call_tree(tree, l.tree, l.footer.is_none(), buf);
        }
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }

    fn draw_call_tree(&self, view: &TreeView, area: Rect, compact: bool, buf: &mut Buffer) {
        let tree = &view.tree;
        let mut title = vec![
            Span::styled(format!(" {} ", self.view.label()), TITLE),
            Span::raw(format!("· {} in all ", human_bytes(tree.total_bytes))),
        ];
        if !self.filter().is_empty() {
            title.push(Span::styled(format!("· filter: {} ", self.filter()), WARN));
        }
        let next = match self.view.next() {
            SiteView::Sites => "sites",
            SiteView::Callers => "callers",
            SiteView::Callees => "callees",
        };
        title.push(Span::styled(format!("· v: {next} "), DIM));
        let block = with_compact_hint(Block::bordered().title(Line::from(title)), compact);
        if view.rows.is_empty() {
            let message = if self.filter().is_empty() {
                "no outstanding memory with a stack yet"
            } else {
                "no site matches the filter"
            };
            draw_message(block, message, area, buf);
            return;
        }
        let inner_width = area.width.saturating_sub(2);
        // Self bytes say something top-down only: bottom-up, a root's are all its bytes.
        let with_self = inner_width >= SELF_MIN_WIDTH && self.view == SiteView::Callers;
        let fixed = BYTES_WIDTH + 1 + SHARE_WIDTH + 1 + if with_self { BYTES_WIDTH + 1 } else { 0 };
        let name_width = usize::from(inner_width.saturating_sub(fixed));
        let page = layout::table_rows(area);
        let window = view.cursor.window(view.rows.len(), page);
        let rows = view.rows[window.offset..(window.offset + page).min(view.rows.len())]
            .iter()
            .enumerate()
            .map(|(i, &node)| {
                let n = &tree.nodes[node];
                let marker = if n.children.is_empty() {
                    "  "
                } else if view.is_open(node) {
                    "▾ "
                } else {
                    "▸ "
                };
                let indent = "  ".repeat(n.depth);
                let module = n
                    .module
                    .as_deref()
                    .map(|m| format!("  {m}"))
                    .unwrap_or_default();
                let room = name_width
                    .saturating_sub(indent.chars().count() + marker.chars().count())
                    .max(8);
                let name = truncate_middle(&n.function, room);
                // The module only when it fits whole: a cut file name says nothing.
                let module_room = room.saturating_sub(name.chars().count());
                let module = if module.chars().count() <= module_room {
                    module
                } else {
                    String::new()
                };
                let mut cells = vec![
                    Cell::from(Line::from(human_bytes(n.bytes)).alignment(Alignment::Right)),
                    Cell::from(
                        Line::from(format!("{:.1}%", tree.share(node) * 100.0))
                            .alignment(Alignment::Right),
                    ),
                ];
                if with_self {
                    cells.push(Cell::from(
                        Line::from(human_bytes(tree.self_bytes(node))).alignment(Alignment::Right),
                    ));
                }
                cells.push(Cell::from(Line::from(vec![
                    Span::styled(format!("{indent}{marker}"), DIM),
                    Span::raw(name),
                    Span::styled(module, DIM),
                ])));
                let row = Row::new(cells);
                if window.offset + i == window.selected {
                    row.style(SELECTED)
                } else {
                    row
                }
            });
        let mut header = vec![
            column_title("CUMULATIVE", true, Align::Right),
            column_title("SHARE", false, Align::Right),
        ];
        let mut widths = vec![
            Constraint::Length(BYTES_WIDTH),
            Constraint::Length(SHARE_WIDTH),
        ];
        if with_self {
            header.push(column_title("SELF", false, Align::Right));
            widths.push(Constraint::Length(BYTES_WIDTH));
        }
        header.push(Cell::from("FUNCTION"));
        widths.push(Constraint::Min(0));
        Table::new(rows, widths)
            .header(Row::new(header).style(HEADING))
            .column_spacing(1)
            .block(block)
            .render(area, buf);
    }
}
