//! The process table of system-wide mode: one row per process with its heap growth.
use super::prelude::*;

impl App {
    pub(super) fn draw_process_table(&self, area: Rect, compact: bool, buf: &mut Buffer) {
        let total = self.process_rows.len();
        let title = vec![
            Span::styled(format!(" processes {} ", count(total as u64)), TITLE),
            Span::raw(format!(
                "· sort: {} {SORT_MARK} · ⏎ trace exactly ",
                self.process_sort.label()
            )),
        ];
        let block = with_compact_hint(Block::bordered().title(Line::from(title)), compact);
        if total == 0 {
            draw_message(block, "waiting for processes", area, buf);
            return;
        }
        let page = layout::table_rows(area);
        let window = self.processes.window(total, page);
        let rows = self
            .table_processes()
            .enumerate()
            .skip(window.offset)
            .take(page)
            .map(|(i, p)| {
                let row = Row::new(process_cells(p));
                let row = if p.alive { row } else { row.style(DIM) };
                if i == window.selected {
                    row.style(SELECTED)
                } else {
                    row
                }
            });
        let sorted = |s: ProcessSort| self.process_sort == s;
        let header = Row::new([
            column_title("PID", false, Align::Right),
            column_title("COMM", false, Align::Left),
            column_title("HEAP GROWTH", sorted(ProcessSort::HeapGrowth), Align::Right),
            column_title("BRK FAIL", sorted(ProcessSort::BrkFailures), Align::Right),
            column_title("FALLBACKS", sorted(ProcessSort::Fallbacks), Align::Right),
            column_title("RSS", sorted(ProcessSort::Rss), Align::Right),
            column_title("PROCESSED", sorted(ProcessSort::Processed), Align::Right),
            column_title("STATE", false, Align::Left),
        ])
        .style(HEADING);
        let widths = [7, 12, 12, 9, 14, 10, 10, 6].map(Constraint::Length);
        Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .block(block)
            .render(area, buf);
    }
}

fn process_cells(p: &ProcessReport) -> Vec<Cell<'static>> {
    const NA: &str = "n/a";
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let warn_if = |value: u64, text: String| {
        let line = Line::from(text).alignment(Alignment::Right);
        Cell::from(if value > 0 { line.style(WARN) } else { line })
    };
    let heap = p.heap.as_ref();
    let state = match (p.alive, p.exact) {
        (false, _) => "exited",
        (true, true) => "exact",
        (true, false) => "",
    };
    vec![
        right(p.pid.to_string()),
        Cell::from(p.comm.clone()),
        right(heap.map_or_else(
            || NA.to_string(),
            |h| format!("+{}", human_bytes(heap_growth_bytes(h))),
        )),
        match heap {
            Some(h) => warn_if(h.brk_failures, count(h.brk_failures)),
            None => right(NA.to_string()),
        },
        match heap {
            Some(h) => {
                let f = &h.fallback_mmaps;
                warn_if(
                    f.count,
                    format!("{} / {}", count(f.count), human_bytes(f.bytes)),
                )
            }
            None => right(NA.to_string()),
        },
        right(optional_bytes(heap.and_then(|h| h.rss_bytes))),
        right(optional_bytes(p.bytes_processed)),
        Cell::from(state),
    ]
}
