//! Drawing: `impl Widget for &App`. Reads the state, formats only the rows on screen, and
//! never sorts or filters (the App keeps those results).
use ratatui::{
    buffer::Buffer,
    layout::{Alignment, Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, Widget},
};

use super::{
    app::{App, Screen, SiteSort},
    format::{
        self, basename, count, cpu_share, frame_in_width, frame_location, frame_name, human_bytes,
        is_runtime_module, per_second, signed_bytes, truncate_middle, user_frame,
    },
    layout,
    live::{heap_growth_bytes, SiteHeapTotals},
    ProcessSort,
};
use crate::schema::{
    ChunkSize, ExitStatus, Frame, GrowthClass, HeapReport, Mode, ProcessReport, SiteReport,
};

const WARN: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);
const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const HEADING: Style = Style::new().add_modifier(Modifier::BOLD);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
const BANNER: Style = Style::new()
    .fg(Color::White)
    .bg(Color::Red)
    .add_modifier(Modifier::BOLD);
const PAUSED: Style = Style::new()
    .fg(Color::Black)
    .bg(Color::Yellow)
    .add_modifier(Modifier::BOLD);
const LOCATION: Style = Style::new().fg(Color::Cyan);
const INLINED: Style = Style::new().fg(Color::Magenta);
const STATUS: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);

/// The sort indicator next to a column title and in the table title.
const SORT_MARK: &str = "▼";
/// The site column keeps at least this many characters before optional columns are dropped.
const MIN_FRAME_WIDTH: u16 = 24;

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
            draw_help(area, buf);
        }
    }
}

impl App {
    fn draw_sites(&self, area: Rect, buf: &mut Buffer) {
        let exited = self.exited_processes();
        let l = layout::sites(area, !exited.is_empty(), self.site_rows.len());
        self.draw_header(l.header, buf);
        if let Some(banner) = l.banner {
            draw_banner(&exited, banner, buf);
        }
        self.draw_site_table(l.table, l.footer.is_none(), buf);
        let selected = self.selected_site();
        if let Some(spark) = l.sparkline {
            self.draw_sparkline(selected, spark, buf);
        }
        if let Some(stack) = l.stack {
            draw_stack(selected.map(|(_, s)| s), 0, stack, buf);
        }
        if let Some(heap) = l.heap {
            let pid = selected
                .map(|(p, _)| p.pid)
                .or(self.focus_pid)
                .or_else(|| self.snapshot()?.processes.first().map(|p| p.pid));
            self.draw_heap(pid, heap, buf);
        }
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }

    fn draw_processes(&self, area: Rect, buf: &mut Buffer) {
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

    fn draw_detail(&self, area: Rect, buf: &mut Buffer) {
        let exited = self.exited_processes();
        let l = layout::detail(area, !exited.is_empty());
        self.draw_header(l.header, buf);
        if let Some(banner) = l.banner {
            draw_banner(&exited, banner, buf);
        }
        let site = self.detail_site();
        draw_summary(site, l.summary, buf);
        if let Some(spark) = l.sparkline {
            self.draw_sparkline(site, spark, buf);
        }
        draw_stack(site.map(|(_, s)| s), self.detail_scroll, l.stack, buf);
        if let Some(footer) = l.footer {
            self.draw_footer(footer, buf);
        }
    }

    /// The processes the header sums over: the focused one, else every traced one.
    fn header_processes(&self) -> Vec<&ProcessReport> {
        self.snapshot()
            .map(|s| {
                s.processes
                    .iter()
                    .filter(|p| p.exact && self.focus_pid.is_none_or(|f| f == p.pid))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn draw_header(&self, area: Rect, buf: &mut Buffer) {
        let mut first = vec![Span::styled("leaktrace", TITLE)];
        // First on the line, so that no terminal width can cut it off.
        if self.paused {
            first.push(Span::raw(" "));
            first.push(Span::styled(" PAUSED ", PAUSED));
        }
        let Some(shown) = &self.shown else {
            first.push(Span::raw(" · waiting for the first sample"));
            Paragraph::new(Line::from(first)).render(area, buf);
            return;
        };
        let processes = self.header_processes();
        let targets = match processes.len() {
            0 if self.system_mode => "all processes".to_string(),
            0 => "no target".to_string(),
            1..=3 => processes
                .iter()
                .map(|p| format!("pid {} {}", p.pid, p.comm))
                .collect::<Vec<_>>()
                .join(", "),
            n => format!("{n} processes"),
        };
        let mode = match (shown.snapshot.mode.as_str(), shown.snapshot.system_wide) {
            ("system_wide", _) | ("exact", true) => "system-wide",
            ("growth", true) => "system-wide growth",
            (other, _) => other,
        };
        let uptime = shown.live.uptime_s.unwrap_or(shown.snapshot.duration_s);
        let sum = |f: fn(&ProcessReport) -> u64| {
            processes
                .iter()
                .map(|p| f(p))
                .fold(0u64, u64::saturating_add)
        };
        let processed = processes
            .iter()
            .filter_map(|p| p.bytes_processed)
            .reduce(u64::saturating_add);
        let rss = processes
            .iter()
            .filter_map(|p| p.heap.as_ref()?.rss_bytes)
            .reduce(u64::saturating_add);
        let opt_bytes = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), human_bytes);
        first.push(Span::raw(format!(
            " · {targets} · {mode} · up {} · RSS {} · processed {}",
            format::uptime(uptime),
            opt_bytes(rss),
            opt_bytes(processed),
        )));
        let second = Line::from(vec![
            Span::raw("outstanding "),
            Span::styled(human_bytes(sum(|p| p.outstanding_bytes)), HEADING),
            Span::raw(format!(
                " in {} blocks · alloc {} · free {} · probes {}",
                count(sum(|p| p.outstanding_count)),
                per_second(shown.rates.alloc_per_s),
                per_second(shown.rates.free_per_s),
                per_second(shown.live.probe_hits_per_s),
            )),
        ]);

        let counter = |label: &'static str, value: u64| {
            let style = if value > 0 { WARN } else { DIM };
            Span::styled(format!("{label} {}", count(value)), style)
        };
        let sep = || Span::styled(" · ", DIM);
        let third = Line::from(vec![
            counter("dropped", sum(|p| p.counters.dropped_allocations)),
            sep(),
            counter("lost", sum(|p| p.counters.lost_events)),
            sep(),
            counter("stack errors", sum(|p| p.counters.stack_errors)),
            sep(),
            counter("unknown frees", sum(|p| p.counters.unknown_frees)),
            sep(),
            // Last on the line: the short counter line has room for it on any width.
            Span::styled(
                format!(
                    "cost {}",
                    cpu_share(shown.snapshot.cost.and_then(|c| c.estimated_overhead_pct))
                ),
                DIM,
            ),
        ]);
        Paragraph::new(vec![Line::from(first), second, third]).render(area, buf);
    }

    fn draw_site_table(&self, area: Rect, compact: bool, buf: &mut Buffer) {
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
        let mut title = vec![Span::styled(
            format!(" sites {} ", count(total as u64)),
            TITLE,
        )];
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
                    .chain(std::iter::once(Cell::from(
                        user_frame(site)
                            .map(|f| frame_in_width(f, frame_width))
                            .unwrap_or_else(|| "?".to_string()),
                    )));
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
                        true,
                    )
                })
                .chain(std::iter::once(Cell::from("TOP FRAME (USER CODE)"))),
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

    fn draw_process_table(&self, area: Rect, compact: bool, buf: &mut Buffer) {
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
            column_title("PID", false, true),
            column_title("COMM", false, false),
            column_title("HEAP GROWTH", sorted(ProcessSort::HeapGrowth), true),
            column_title("BRK FAIL", sorted(ProcessSort::BrkFailures), true),
            column_title("FALLBACKS", sorted(ProcessSort::Fallbacks), true),
            column_title("RSS", sorted(ProcessSort::Rss), true),
            column_title("PROCESSED", sorted(ProcessSort::Processed), true),
            column_title("STATE", false, false),
        ])
        .style(HEADING);
        let widths = [7, 12, 12, 9, 14, 10, 10, 6].map(Constraint::Length);
        Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .block(block)
            .render(area, buf);
    }

    fn draw_sparkline(
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

    fn draw_heap(&self, pid: Option<u32>, area: Rect, buf: &mut Buffer) {
        let title = match pid {
            Some(pid) => format!(" heap · pid {pid} "),
            None => " heap ".to_string(),
        };
        let block = Block::bordered().title(Span::styled(title, TITLE));
        let shown = self.shown.as_ref();
        let process = pid.and_then(|pid| shown?.snapshot.processes.iter().find(|p| p.pid == pid));
        let Some((process, heap)) = process.and_then(|p| Some((p, p.heap.as_ref()?))) else {
            let lines = vec![
                Line::styled("brk/mmap: not available", DIM),
                Line::styled("(heap syscalls not traced)", DIM),
            ];
            Paragraph::new(lines).block(block).render(area, buf);
            return;
        };
        let totals = shown.and_then(|s| s.heap_totals.get(&process.pid));
        Paragraph::new(heap_lines(process, heap, totals))
            .block(block)
            .render(area, buf);
    }

    fn draw_footer(&self, area: Rect, buf: &mut Buffer) {
        let hints = if self.filter_input.is_some() {
            "type a function or module · ⏎ apply · esc cancel · ^U clear"
        } else {
            match self.screen {
                Screen::Sites => {
                    "q quit  ↑↓ move  ⏎ details  s sort  / filter  p pause  e snapshot  ? help"
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
        SiteValue::PerMib => signed_bytes(site.growth.bytes_per_mib_processed),
        SiteValue::PerMin => signed_bytes(site.growth.bytes_per_min),
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
                GrowthClass::Unknown => Style::new(),
            };
            return Cell::from(Span::styled(format::class_label(class), style));
        }
    };
    Cell::from(Line::from(text).alignment(Alignment::Right))
}

fn column_title(title: &'static str, sorted: bool, right: bool) -> Cell<'static> {
    let line = if sorted {
        Line::from(vec![
            Span::raw(title),
            Span::styled(SORT_MARK, Style::new().fg(Color::Yellow)),
        ])
    } else {
        Line::from(title)
    };
    Cell::from(if right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

fn process_cells(p: &ProcessReport) -> Vec<Cell<'static>> {
    const NA: &str = "n/a";
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let opt = |v: Option<u64>| v.map_or_else(|| NA.to_string(), human_bytes);
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
        right(opt(heap.and_then(|h| h.rss_bytes))),
        right(opt(p.bytes_processed)),
        Cell::from(state),
    ]
}

/// "1.0 MiB, 132.0 KiB ×3": chunk sizes in the order first seen, with their counts.
fn chunk_sizes(sizes: &[ChunkSize]) -> String {
    sizes
        .iter()
        .map(|c| {
            if c.count > 1 {
                format!("{} ×{}", human_bytes(c.bytes), count(c.count))
            } else {
                human_bytes(c.bytes)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The heap panel's lines: the break, then malloc's mmap fallbacks and the sites that made
/// them (what the panel exists to show, so they come before the rest), then mappings and
/// memory.
fn heap_lines(
    process: &ProcessReport,
    heap: &HeapReport,
    totals: Option<&SiteHeapTotals>,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let failures = if heap.brk_failures > 0 {
        Span::styled(format!("{} failed", count(heap.brk_failures)), ALERT)
    } else {
        Span::styled("0 failed", DIM)
    };
    lines.push(Line::from(vec![
        Span::raw(format!("brk {} · ", human_bytes(heap.brk_bytes))),
        failures,
        Span::styled(format!(" of {} calls", count(heap.brk_calls)), DIM),
    ]));
    let fallbacks = &heap.fallback_mmaps;
    if fallbacks.count > 0 {
        lines.push(Line::styled(
            format!(
                "fallback mmaps {} = {}",
                count(fallbacks.count),
                human_bytes(fallbacks.bytes)
            ),
            ALERT,
        ));
        lines.push(Line::styled(
            format!(" chunks {}", chunk_sizes(&fallbacks.chunk_sizes)),
            WARN,
        ));
        for &i in totals.map_or(&[][..], |t| t.fallback_sites.as_slice()) {
            let Some(site) = process.sites.get(i) else {
                continue;
            };
            let name = user_frame(site)
                .map(frame_name)
                .unwrap_or_else(|| site.id.clone());
            lines.push(Line::styled(
                format!(
                    " {} = {} ← {}",
                    count(site.heap.fallback_mmap_count),
                    human_bytes(site.heap.fallback_mmap_bytes),
                    name
                ),
                WARN,
            ));
        }
    } else {
        lines.push(Line::styled("fallback mmaps: none", DIM));
    }
    let direct = totals.map_or(0, |t| t.direct_mmap_bytes);
    lines.push(Line::raw(format!(
        "anon {} · direct {}",
        human_bytes(heap.anon_mmap_outstanding_bytes),
        human_bytes(direct)
    )));
    let opt = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), human_bytes);
    lines.push(Line::raw(format!(
        "reserved {} · VmData {}",
        human_bytes(heap.anon_reserved_bytes),
        opt(heap.vm_data_bytes)
    )));
    let mut memory = format!("RSS {}", opt(heap.rss_bytes));
    let growth = heap.rss_growth_bytes.map(|g| {
        let sign = if g < 0 { "-" } else { "+" };
        format!("{sign}{}", human_bytes(g.unsigned_abs()))
    });
    let share = heap
        .explained_share
        .filter(|s| s.is_finite())
        .map(|s| format!("{:.0}% explained", s * 100.0));
    match (growth, share) {
        (Some(g), Some(s)) => memory.push_str(&format!(" ({g}, {s})")),
        (Some(g), None) => memory.push_str(&format!(" ({g})")),
        (None, Some(s)) => memory.push_str(&format!(" ({s})")),
        (None, None) => {}
    }
    lines.push(Line::raw(memory));
    lines
}

/// Without a footer (small terminals), the table's bottom border says where help is.
fn with_compact_hint(block: Block<'_>, compact: bool) -> Block<'_> {
    if compact {
        block.title_bottom(Line::styled(" ? help · q quit ", DIM).alignment(Alignment::Right))
    } else {
        block
    }
}

fn draw_message(block: Block<'_>, message: &str, area: Rect, buf: &mut Buffer) {
    let inner = block.inner(area);
    block.render(area, buf);
    let y = inner.y + inner.height.saturating_sub(1) / 2;
    let line_area = Rect::new(inner.x, y, inner.width, inner.height.min(1));
    Paragraph::new(Span::styled(message.to_string(), DIM))
        .alignment(Alignment::Center)
        .render(line_area, buf);
}

fn draw_banner(exited: &[&ProcessReport], area: Rect, buf: &mut Buffer) {
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
    let runtime = frame.module.as_deref().is_some_and(is_runtime_module);
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
fn draw_stack(site: Option<&SiteReport>, scroll: usize, area: Rect, buf: &mut Buffer) {
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
    let user_top = user_frame(site);
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

/// The detail screen's numbers for one site.
fn draw_summary(site: Option<(&ProcessReport, &SiteReport)>, area: Rect, buf: &mut Buffer) {
    let Some((process, site)) = site else {
        draw_message(
            Block::bordered().title(" site "),
            "this site is no longer in the snapshot",
            area,
            buf,
        );
        return;
    };
    let name = user_frame(site).map(frame_name).unwrap_or_default();
    let title = Line::from(vec![
        Span::styled(format!(" {} ", truncate_middle(&name, 60)), TITLE),
        Span::raw(format!(
            "· pid {} ({}) · site {} ",
            process.pid, process.comm, site.id
        )),
    ]);
    let g = &site.growth;
    let r2 = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
    let lines = vec![
        Line::from(vec![
            Span::raw("outstanding "),
            Span::styled(human_bytes(site.counters.outstanding_bytes), HEADING),
            Span::raw(format!(
                " in {} blocks · allocated {} in {} · freed {} in {}",
                count(site.counters.outstanding_count),
                human_bytes(site.counters.allocated_bytes),
                count(site.counters.allocated_count),
                human_bytes(site.counters.freed_bytes),
                count(site.counters.freed_count)
            )),
        ]),
        Line::from(vec![
            Span::raw("class "),
            Span::styled(
                format::class_label(g.class),
                if g.class == GrowthClass::LeakSuspect {
                    ALERT
                } else {
                    HEADING
                },
            ),
            Span::raw(format!(
                " · leak rank {} · oldest {} · aged {} in {} blocks",
                site.leak_rank,
                format::age(site.counters.oldest_age_s),
                human_bytes(site.counters.aged_outstanding_bytes),
                count(site.counters.aged_outstanding_count)
            )),
        ]),
        Line::raw(format!(
            "growth per MiB processed {} (R² {}) · per min {} (R² {})",
            signed_bytes(g.bytes_per_mib_processed),
            r2(g.r2_processed),
            signed_bytes(g.bytes_per_min),
            r2(g.r2_time)
        )),
        Line::raw(format!(
            "recent: per MiB {} · per min {} · {} samples",
            signed_bytes(g.recent_bytes_per_mib_processed),
            signed_bytes(g.recent_bytes_per_min),
            g.samples
        )),
        Line::styled(
            format!(
                "heap: fallback mmaps {} = {} · direct mmaps {} · anon mmaps {}",
                count(site.heap.fallback_mmap_count),
                human_bytes(site.heap.fallback_mmap_bytes),
                human_bytes(site.heap.direct_mmap_bytes),
                human_bytes(site.heap.anon_mmap_bytes)
            ),
            if site.heap.fallback_mmap_count > 0 {
                WARN
            } else {
                Style::new()
            },
        ),
    ];
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .render(area, buf);
}

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move (mouse wheel too)"),
    ("PgUp PgDn", "move a page"),
    ("Home End  g G", "first / last row"),
    ("Enter", "site: details, full stack; process: trace it"),
    ("Esc", "back; clear the filter"),
    ("s  S", "next / previous sort order"),
    ("/", "filter sites by function or module"),
    ("", "(Enter keeps it, Esc cancels)"),
    ("p", "pause / resume the display (sampling goes on)"),
    ("e", "write a JSON snapshot now"),
    ("q  Ctrl-C", "quit (final snapshot written with --json)"),
    ("Ctrl-L", "repaint the screen"),
    ("?", "this help; any key closes it"),
];

fn draw_help(area: Rect, buf: &mut Buffer) {
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

    #[test]
    fn chunk_sizes_show_counts() {
        let sizes = [
            ChunkSize {
                bytes: 1 << 20,
                count: 1,
            },
            ChunkSize {
                bytes: 132 << 10,
                count: 3,
            },
        ];
        assert_eq!(chunk_sizes(&sizes), "1.0 MiB, 132.0 KiB ×3");
        assert_eq!(chunk_sizes(&[]), "");
    }
}
