//! Drawing: `impl Widget for &App`. Reads the state, formats only the rows on screen, and
//! never sorts or filters (the App keeps those results). One file per panel; this one lays the
//! screens out and holds what the panels share (styles, messages, column titles).
mod banner;
mod call_tree;
mod footer;
mod go;
mod header;
mod heap;
mod help;
mod process_table;
mod site_table;
mod sparkline;
mod stack;
mod summary;

/// What the panels use, imported in one place (the paths of the snapshot types change here
/// only).
mod prelude {
    pub(super) use ratatui::{
        buffer::Buffer,
        layout::{Alignment, Constraint, Rect},
        style::{Color, Modifier, Style},
        text::{Line, Span, Text},
        widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, Widget},
    };

    pub(super) use super::{
        super::{
            app::{App, ProcessSort, Screen, SiteSort},
            layout,
        },
        *,
    };
    pub(super) use crate::model::{
        dashboard::{HeaderTotals, SiteHeapTotals},
        heap_growth_bytes,
    };
    pub(super) use crate::{
        format::{
            self, count, cpu_share, frame_location, frame_name, human_bytes, optional_bytes,
            per_second, slope_cell, truncate_middle,
        },
        frames::{self, basename, StackFrame},
        schema::{
            ChunkSize, ExitStatus, Frame, GrowthClass, HeapReport, Mode, ProcessReport, SiteReport,
        },
    };
}

use prelude::*;

pub(super) const WARN: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
pub(super) const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub(super) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(super) const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
pub(super) const HEADING: Style = Style::new().add_modifier(Modifier::BOLD);
pub(super) const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
pub(super) const BANNER: Style = Style::new()
    .fg(Color::White)
    .bg(Color::Red)
    .add_modifier(Modifier::BOLD);
pub(super) const PAUSED: Style = Style::new()
    .fg(Color::Black)
    .bg(Color::Yellow)
    .add_modifier(Modifier::BOLD);
pub(super) const LOCATION: Style = Style::new().fg(Color::Cyan);
pub(super) const INLINED: Style = Style::new().fg(Color::Magenta);
pub(super) const STATUS: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);

/// The sort indicator next to a column title and in the table title.
pub(super) const SORT_MARK: &str = "▼";

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if layout::too_small(area) {
            Paragraph::new("terminal too small")
                .alignment(Alignment::Center)
                .render(area, buf);
            return;
        }
        match self.screen {
            Screen::Sites => self.draw_sites(area, buf),
            Screen::Processes => self.draw_processes(area, buf),
            Screen::SiteDetail => self.draw_detail(area, buf),
        }
        if self.help {
            help::draw_help(area, buf);
        }
    }
}

impl App {
    pub(super) fn draw_sites(&self, area: Rect, buf: &mut Buffer) {
        if self.tree_view().is_some() {
            self.draw_tree_screen(area, buf);
            return;
        }
        let exited = self.exited_processes();
        let l = layout::sites(area, !exited.is_empty(), self.site_rows.len());
        self.draw_header(l.header, buf);
        if let Some(banner) = l.banner {
            banner::draw_banner(&exited, banner, buf);
        }
        self.draw_site_table(l.table, l.footer.is_none(), buf);
        let selected = self.selected_site();
        if let Some(spark) = l.sparkline {
            self.draw_sparkline(selected, spark, buf);
        }
        if let Some(stack) = l.stack {
            stack::draw_stack(selected.map(|(_, s)| s), 0, stack, buf);
        }
        if let Some(heap) = l.heap {
            let pid = selected
                .map(|(p, _)| p.pid)
                .or(self.focus_pid)
                .or_else(|| self.snapshot()?.processes.first().map(|p| p.pid));
            // A Go process: its runtime's panel in the heap panel's place.
            match (pid, self.go_report(pid)) {
                (Some(pid), Some(go)) => self.draw_go(pid, go, heap, buf),
                _ => self.draw_heap(pid, heap, buf),
            }
        }
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }

    pub(super) fn draw_processes(&self, area: Rect, buf: &mut Buffer) {
        let l = layout::processes(area);
        self.draw_header(l.header, buf);
        self.draw_process_table(l.table, l.footer.is_none(), buf);
        if let Some(heap) = l.heap {
            self.draw_heap(self.selected_process().map(|p| p.pid), heap, buf);
        }
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }

    pub(super) fn draw_detail(&self, area: Rect, buf: &mut Buffer) {
        let exited = self.exited_processes();
        let l = layout::detail(area, !exited.is_empty());
        self.draw_header(l.header, buf);
        if let Some(banner) = l.banner {
            banner::draw_banner(&exited, banner, buf);
        }
        let site = self.detail_site();
        summary::draw_summary(site, l.summary, buf);
        if let Some(spark) = l.sparkline {
            self.draw_sparkline(site, spark, buf);
        }
        stack::draw_stack(site.map(|(_, s)| s), self.detail_scroll, l.stack, buf);
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }
}

/// How a column's title and cells are aligned: numbers to the right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Align {
    Left,
    Right,
}

pub(super) fn column_title(title: &'static str, sorted: bool, align: Align) -> Cell<'static> {
    let line = if sorted {
        Line::from(vec![
            Span::raw(title),
            Span::styled(SORT_MARK, Style::new().fg(Color::Yellow)),
        ])
    } else {
        Line::from(title)
    };
    Cell::from(if align == Align::Right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

/// Without a footer (small terminals), the table's bottom border says where help is.
pub(super) fn with_compact_hint(block: Block<'_>, compact: bool) -> Block<'_> {
    if compact {
        block.title_bottom(Line::styled(" ? help · q quit ", DIM).alignment(Alignment::Right))
    } else {
        block
    }
}

pub(super) fn draw_message(block: Block<'_>, message: &str, area: Rect, buf: &mut Buffer) {
    let inner = block.inner(area);
    block.render(area, buf);
    let y = inner.y + inner.height.saturating_sub(1) / 2;
    let line_area = Rect::new(inner.x, y, inner.width, inner.height.min(1));
    Paragraph::new(Span::styled(message.to_string(), DIM))
        .alignment(Alignment::Center)
        .render(line_area, buf);
}
