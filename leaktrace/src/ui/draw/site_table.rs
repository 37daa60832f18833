//! The site table: one row per allocation site on screen, its optional columns dropped on
//! narrow terminals (least useful first) but never the sorted one.
use super::prelude::*;

/// The site column keeps at least this many characters before optional columns are dropped.
const MIN_FRAME_WIDTH: u16 = 24;

impl App {
    pub(super) fn draw_site_table(&self, area: Rect, compact: bool, buf: &mut Buffer) {
        let multi_process = self.focus_pid.is_none()
            && self
                .snapshot()
                .is_some_and(|s| s.processes.iter().filter(|p| p.exact).count() > 1);
        let heap_traced = self
            .snapshot()
            .is_some_and(|s| s.processes.iter().any(|p| p.heap.is_some()));
        let columns = site_columns(
            area.width.saturating_sub(2),
            self.sort,
            multi_process,
            heap_traced,
        );
        let total = self.site_rows.len();
        // Growth mode's sites say what grew the heap; its leak ranking is the bursts' estimate,
        // whose best-ranked site the title names (the headless table and `report` list them).
        let growth_mode = self.snapshot().is_some_and(|s| s.mode == Mode::Growth);
        let mut title = vec![Span::styled(
            if growth_mode {
                format!(" what grew the heap: {} sites ", count(total as u64))
            } else {
                format!(" sites {} ", count(total as u64))
            },
            TITLE,
        )];
        let estimated = self
            .selected_process()
            .or_else(|| self.snapshot().and_then(|s| s.processes.first()))
            .and_then(|p| p.estimated_sites.iter().find(|e| e.estimate_rank == 1));
        if let Some(best) = estimated {
            title.push(Span::styled(
                format!(
                    "· leak estimate #1: {} ~{}/s {} ",
                    crate::format::site_name(&best.frames),
                    human_bytes(best.surviving_bytes_per_s.max(0.0) as u64),
                    crate::format::class_label(best.class)
                ),
                if best.class == crate::schema::GrowthClass::LeakSuspect {
                    ALERT
                } else {
                    HEADING
                },
            ));
        }
        title.push(Span::raw(format!(
            "· sort: {} {SORT_MARK} ",
            self.sort.label()
        )));
        if let Some(input) = &self.filter_input {
            title.push(Span::styled(format!("· filter: {input}█ "), WARN));
        } else if !self.filter().is_empty() {
            title.push(Span::styled(format!("· filter: {} ", self.filter()), WARN));
        }
        let block = with_compact_hint(Block::bordered().title(Line::from(title)), compact);

        if total == 0 {
            let message = if !self.filter().is_empty() {
                format!("no site matches \"{}\"", self.filter())
            } else if self.snapshot().is_some_and(|s| {
                let mut exact = s
                    .processes
                    .iter()
                    .filter(|p| p.exact && self.focus_pid.is_none_or(|f| f == p.pid))
                    .peekable();
                exact.peek().is_some() && exact.all(|p| !p.alive)
            }) {
                "no outstanding allocations".to_string()
            } else {
                "waiting for allocations".to_string()
            };
            draw_message(block, &message, area, buf);
            return;
        }

        let page = layout::table_rows(area);
        let window = self.sites.window(total, page);
        let frame_width = usize::from(columns.frame_width);
        let rows = self.site_rows[window.offset..(window.offset + page).min(total)]
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let (process, site) = self.resolve(*r)?;
                let cells = columns
                    .shown
                    .iter()
                    .map(|c| site_cell(*c, process, site))
                    .chain(std::iter::once(Cell::from(format::site_label_in_width(
                        &site.frames,
                        frame_width,
                    ))));
                let row = Row::new(cells);
                Some(if window.offset + i == window.selected {
                    row.style(SELECTED)
                } else {
                    row
                })
            });
        // Growth mode's sites are stacks that grew the heap: their bytes are heap growth still
        // there and their count is growth events (the headless table says the same).
        let growth = self.snapshot().is_some_and(|s| s.mode == Mode::Growth);
        let header = Row::new(
            columns
                .shown
                .iter()
                .map(|c| {
                    column_title(
                        growth_title(c.title, growth),
                        c.sort == Some(self.sort),
                        Align::Right,
                    )
                })
                .chain(std::iter::once(Cell::from("SITE (USER CODE FIRST)"))),
        )
        .style(HEADING);
        let widths = columns
            .shown
            .iter()
            .map(|c| Constraint::Length(c.width))
            .chain(std::iter::once(Constraint::Min(0)));
        Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .block(block)
            .render(area, buf);
    }
}

/// An optional column of the site table.
#[derive(Clone, Copy, Debug)]
struct SiteColumn {
    title: &'static str,
    width: u16,
    sort: Option<SiteSort>,
    /// Dropped first when space runs out: lower goes first; `None` is never dropped.
    drop_rank: Option<u8>,
    value: SiteValue,
}

#[derive(Clone, Copy, Debug)]
enum SiteValue {
    Outstanding,
    Count,
    PerMib,
    PerMin,
    Class,
    Oldest,
    AnonMmap,
    Pid,
}

const SITE_COLUMNS: [SiteColumn; 8] = [
    SiteColumn {
        title: "OUTSTANDING",
        width: 12,
        sort: Some(SiteSort::Outstanding),
        drop_rank: None,
        value: SiteValue::Outstanding,
    },
    SiteColumn {
        title: "COUNT",
        width: 8,
        sort: Some(SiteSort::Count),
        drop_rank: Some(3),
        value: SiteValue::Count,
    },
    SiteColumn {
        title: "PER MiB",
        width: 10,
        sort: Some(SiteSort::PerMib),
        drop_rank: Some(1),
        value: SiteValue::PerMib,
    },
    SiteColumn {
        title: "PER MIN",
        width: 10,
        sort: Some(SiteSort::PerMin),
        drop_rank: Some(4),
        value: SiteValue::PerMin,
    },
    SiteColumn {
        title: "CLASS",
        width: 7,
        sort: Some(SiteSort::LeakRank),
        drop_rank: Some(5),
        value: SiteValue::Class,
    },
    SiteColumn {
        title: "OLDEST",
        width: 7,
        sort: Some(SiteSort::OldestAge),
        drop_rank: Some(2),
        value: SiteValue::Oldest,
    },
    SiteColumn {
        title: "MMAP",
        width: 10,
        sort: Some(SiteSort::AnonMmap),
        drop_rank: Some(0),
        value: SiteValue::AnonMmap,
    },
    SiteColumn {
        title: "PID",
        width: 7,
        sort: None,
        drop_rank: Some(6),
        value: SiteValue::Pid,
    },
];

struct SiteColumns {
    shown: Vec<SiteColumn>,
    /// Characters left for the top frame column.
    frame_width: u16,
}

/// The columns that fit `width`: optional ones are dropped (least useful first) until the
/// site column has room, but the sorted column always stays. The pid column only appears
/// with several processes, the mmap column only when heap syscalls are traced (or sorted on).
fn site_columns(width: u16, sort: SiteSort, multi_process: bool, heap: bool) -> SiteColumns {
    let mut shown: Vec<SiteColumn> = SITE_COLUMNS
        .iter()
        .copied()
        .filter(|c| match c.value {
            SiteValue::Pid => multi_process,
            SiteValue::AnonMmap => heap || c.sort == Some(sort),
            _ => true,
        })
        .collect();
    let frame_width = |cols: &[SiteColumn]| {
        let used: u16 = cols.iter().map(|c| c.width + 1).sum();
        width.saturating_sub(used)
    };
    while frame_width(&shown) < MIN_FRAME_WIDTH {
        let droppable = shown
            .iter()
            .enumerate()
            .filter(|(_, c)| c.sort != Some(sort))
            .filter_map(|(i, c)| Some((i, c.drop_rank?)))
            .min_by_key(|(_, rank)| *rank);
        match droppable {
            Some((i, _)) => {
                shown.remove(i);
            }
            None => break,
        }
    }
    let frame_width = frame_width(&shown);
    SiteColumns { shown, frame_width }
}

/// A site column's title in growth mode.
fn growth_title(title: &'static str, growth: bool) -> &'static str {
    match (growth, title) {
        (true, "OUTSTANDING") => "GROWTH",
        (true, "COUNT") => "EVENTS",
        _ => title,
    }
}

fn site_cell(column: SiteColumn, process: &ProcessReport, site: &SiteReport) -> Cell<'static> {
    let text = match column.value {
        SiteValue::Outstanding => human_bytes(site.counters.outstanding_bytes),
        SiteValue::Count if !process.exact => count(site.counters.allocated_count),
        SiteValue::Count => count(site.counters.outstanding_count),
        SiteValue::PerMib => slope_cell(site.growth.bytes_per_mib_processed),
        SiteValue::PerMin => slope_cell(site.growth.bytes_per_min),
        SiteValue::Oldest => format::age(site.counters.oldest_age_s),
        SiteValue::Pid => process.pid.to_string(),
        SiteValue::AnonMmap => {
            let text = human_bytes(site.heap.anon_mmap_bytes);
            let line = Line::from(text).alignment(Alignment::Right);
            return Cell::from(if site.heap.fallback_mmap_count > 0 {
                line.style(WARN)
            } else {
                line
            });
        }
        SiteValue::Class => {
            let class = site.growth.class;
            let style = match class {
                GrowthClass::LeakSuspect => ALERT,
                GrowthClass::Plateau => Style::new().fg(Color::Yellow),
                GrowthClass::Churn => DIM,
                GrowthClass::Unknown | GrowthClass::HeapGrowth => Style::new(),
            };
            return Cell::from(Span::styled(format::class_label(class), style));
        }
    };
    Cell::from(Line::from(text).alignment(Alignment::Right))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_column_is_never_dropped() {
        let narrow = site_columns(38, SiteSort::PerMib, false, true);
        assert!(narrow
            .shown
            .iter()
            .any(|c| c.sort == Some(SiteSort::PerMib)));
        assert!(narrow
            .shown
            .iter()
            .any(|c| c.sort == Some(SiteSort::Outstanding)));
        let wide = site_columns(200, SiteSort::Outstanding, false, true);
        assert_eq!(wide.shown.len(), 7);
        let no_heap = site_columns(200, SiteSort::Outstanding, true, false);
        assert!(no_heap
            .shown
            .iter()
            .any(|c| matches!(c.value, SiteValue::Pid)));
        assert!(!no_heap
            .shown
            .iter()
            .any(|c| matches!(c.value, SiteValue::AnonMmap)));
        assert!(wide.frame_width > 100);
    }
}
