//! The dashboard's state and how keys and data change it. No I/O here: the session feeds
//! [`Event`]s in and acts on the [`Action`]s that come out.
use std::{cmp::Ordering, collections::HashMap};

use ratatui::layout::Rect;

pub use super::call_trees::SiteView;
pub(crate) use super::cursor::Cursor;
use super::{
    call_trees::TreeView,
    history::{GoroutineHistory, SiteHistory},
    layout,
    live::Live,
};
use crate::{
    format::contains_lowercase,
    model::{
        dashboard::{self, CallTotals, Rates, SiteHeapTotals},
        heap_growth_bytes, StackCost, TreeDirection,
    },
    schema::{Frame, ProcessReport, SiteReport, Snapshot},
};

/// Rows the mouse wheel moves per notch.
const WHEEL_ROWS: usize = 3;
/// Updates (sampling intervals) a status message stays in the footer.
const STATUS_UPDATES: u32 = 5;
/// Terminal size assumed until the first [`Event::Resize`].
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// A key press, reduced to what the dashboard distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// Control plus a letter (lower case), e.g. `Ctrl('c')`.
    Ctrl(char),
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    Tab,
    BackTab,
}

/// Everything that changes the dashboard: input, terminal size, new data.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Key(Key),
    /// Mouse wheel.
    ScrollUp,
    ScrollDown,
    /// The terminal's new size (also send the initial size once).
    Resize {
        width: u16,
        height: u16,
    },
    /// A new sample: the snapshot just built and the live numbers that go with it.
    Update(Box<Update>),
}

/// One sampling interval's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub snapshot: Snapshot,
    pub live: Live,
}

/// What the session must do in answer to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `q` or Ctrl-C: leave the dashboard and end the run (final JSON as usual).
    Quit,
    /// `e`: write a JSON snapshot now, then report the path with [`App::set_status`].
    WriteSnapshot,
    /// Enter on a process of the system-wide table: start exact malloc tracing of it. May be
    /// emitted again for a process already traced; the session ignores repeats.
    TraceProcess(u32),
    /// Ctrl-L: repaint the whole screen (after something else wrote to the terminal):
    /// `Dashboard::redraw_all`.
    Redraw,
}

/// Which screen is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// System-wide mode's per-process table.
    Processes,
    /// The allocation sites of the traced processes.
    Sites,
    /// One site in full.
    SiteDetail,
}

/// Orders of the site table; `s` cycles through them in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteSort {
    /// Outstanding bytes, largest first.
    Outstanding,
    /// Outstanding blocks, most first.
    Count,
    /// Growth per MiB processed, steepest first.
    PerMib,
    /// Growth per minute, steepest first.
    PerMin,
    /// Most likely leak first: the growth class, then slope and fit.
    LeakRank,
    /// Oldest outstanding block first.
    OldestAge,
    /// Anonymous mmap bytes still mapped (heap syscalls), most first.
    AnonMmap,
}

impl SiteSort {
    pub const ALL: [SiteSort; 7] = [
        SiteSort::Outstanding,
        SiteSort::Count,
        SiteSort::PerMib,
        SiteSort::PerMin,
        SiteSort::LeakRank,
        SiteSort::OldestAge,
        SiteSort::AnonMmap,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SiteSort::Outstanding => "outstanding",
            SiteSort::Count => "count",
            SiteSort::PerMib => "per MiB",
            SiteSort::PerMin => "per min",
            SiteSort::LeakRank => "leak rank",
            SiteSort::OldestAge => "oldest",
            SiteSort::AnonMmap => "mmap",
        }
    }

    fn cycle(self, direction: Direction) -> Self {
        cycle(&Self::ALL, self, direction)
    }

    /// How two sites compare in this order; ties go to the larger outstanding bytes.
    fn compare(self, a: &SiteReport, b: &SiteReport) -> Ordering {
        let primary = match self {
            SiteSort::Outstanding => Ordering::Equal,
            SiteSort::Count => b
                .counters
                .outstanding_count
                .cmp(&a.counters.outstanding_count),
            SiteSort::PerMib => descending(
                a.growth.bytes_per_mib_processed,
                b.growth.bytes_per_mib_processed,
            ),
            SiteSort::PerMin => descending(a.growth.bytes_per_min, b.growth.bytes_per_min),
            SiteSort::LeakRank => b
                .growth
                .rank_key()
                .total_cmp(&a.growth.rank_key())
                .then_with(|| a.leak_rank.cmp(&b.leak_rank)),
            SiteSort::OldestAge => descending(a.counters.oldest_age_s, b.counters.oldest_age_s),
            SiteSort::AnonMmap => b
                .heap
                .anon_mmap_bytes
                .cmp(&a.heap.anon_mmap_bytes)
                .then_with(|| b.heap.fallback_mmap_bytes.cmp(&a.heap.fallback_mmap_bytes)),
        };
        primary.then_with(|| {
            b.counters
                .outstanding_bytes
                .cmp(&a.counters.outstanding_bytes)
        })
    }
}

/// Orders of the system-wide process table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessSort {
    HeapGrowth,
    BrkFailures,
    Fallbacks,
    Rss,
    Processed,
}

impl ProcessSort {
    pub const ALL: [ProcessSort; 5] = [
        ProcessSort::HeapGrowth,
        ProcessSort::BrkFailures,
        ProcessSort::Fallbacks,
        ProcessSort::Rss,
        ProcessSort::Processed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProcessSort::HeapGrowth => "heap growth",
            ProcessSort::BrkFailures => "brk failures",
            ProcessSort::Fallbacks => "fallbacks",
            ProcessSort::Rss => "rss",
            ProcessSort::Processed => "processed",
        }
    }

    fn cycle(self, direction: Direction) -> Self {
        cycle(&Self::ALL, self, direction)
    }

    /// How two processes compare in this order; a process without heap data sorts last,
    /// ties go to the larger heap growth, then the lower pid.
    fn compare(self, a: &ProcessReport, b: &ProcessReport) -> Ordering {
        let growth = |p: &ProcessReport| p.heap.as_ref().map(heap_growth_bytes);
        let key = |p: &ProcessReport| -> Option<u64> {
            let heap = p.heap.as_ref();
            match self {
                ProcessSort::HeapGrowth => growth(p),
                ProcessSort::BrkFailures => heap.map(|h| h.brk_failures),
                ProcessSort::Fallbacks => heap.map(|h| h.fallback_mmaps.bytes),
                ProcessSort::Rss => heap.and_then(|h| h.rss_bytes),
                ProcessSort::Processed => p.bytes_processed,
            }
        };
        // Option's order puts None first: compare b with a for "largest first, None last".
        key(b)
            .cmp(&key(a))
            .then_with(|| growth(b).cmp(&growth(a)))
            .then_with(|| a.pid.cmp(&b.pid))
    }
}

/// Which way `s`/Tab and `S`/Shift-Tab step through the sort orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

fn cycle<T: Copy + PartialEq>(all: &[T], current: T, direction: Direction) -> T {
    let i = all.iter().position(|x| *x == current).unwrap_or(0);
    let n = all.len();
    let next = match direction {
        Direction::Forward => (i + 1) % n,
        Direction::Backward => (i + n - 1) % n,
    };
    all.get(next).copied().unwrap_or(current)
}

/// Larger first; a missing or non-finite value sorts after every number.
fn descending(a: Option<f64>, b: Option<f64>) -> Ordering {
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    match (finite(a), finite(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// One row of the site table: indices into the shown snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SiteRef {
    pub process: usize,
    pub site: usize,
}

/// The data on screen: one update and what was derived from it.
#[derive(Clone, Debug)]
pub(crate) struct Shown {
    pub snapshot: Snapshot,
    pub live: Live,
    pub rates: Rates,
    /// Per process: fallback sites and direct mmap bytes, for the heap panel.
    pub heap_totals: HashMap<u32, SiteHeapTotals>,
    /// Update number, for the sparkline history as of this update.
    pub generation: u64,
}

/// The dashboard: the latest data, the history the sparklines need, and the view state
/// (screen, sort, filter, selection, pause). Drawn by `impl Widget for &App`.
#[derive(Debug)]
pub struct App {
    pub(crate) size: (u16, u16),
    pub(crate) screen: Screen,
    /// A system-wide process table exists; Esc from the sites goes back to it.
    pub(crate) system_mode: bool,
    /// The process picked in the process table: the site table shows only its sites.
    pub(crate) focus_pid: Option<u32>,
    pub(crate) help: bool,
    pub(crate) paused: bool,
    pub(crate) status: Option<(String, u32)>,
    pub(crate) shown: Option<Shown>,
    /// The newest update received while paused, shown on resume.
    pending: Option<Shown>,
    generation: u64,
    pub(crate) history: SiteHistory,
    /// Goroutine group counts of Go processes, for the Go panel.
    pub(crate) go_history: GoroutineHistory,
    call_totals: CallTotals,
    pub(crate) sort: SiteSort,
    pub(crate) process_sort: ProcessSort,
    /// The applied filter (lower case).
    filter: String,
    /// While typing a filter: the text so far (the table already follows it).
    pub(crate) filter_input: Option<String>,
    /// Sorted, filtered rows of the site table (recomputed when data, sort or filter change,
    /// never while drawing).
    pub(crate) site_rows: Vec<SiteRef>,
    pub(crate) sites: Cursor,
    /// Sorted rows of the system-wide process table: indices into the snapshot's processes.
    pub(crate) process_rows: Vec<usize>,
    pub(crate) processes: Cursor,
    /// The site of the detail screen, by (pid, site id): it stays put while data changes.
    pub(crate) detail: Option<(u32, String)>,
    pub(crate) detail_scroll: usize,
    /// Sites, callers tree or callees tree (`v`).
    pub(crate) view: SiteView,
    /// The call trees of the site table's sites (same focus, same filter).
    pub(crate) callers: TreeView,
    pub(crate) callees: TreeView,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new() -> Self {
        Self {
            size: DEFAULT_SIZE,
            screen: Screen::Sites,
            system_mode: false,
            focus_pid: None,
            help: false,
            paused: false,
            status: None,
            shown: None,
            pending: None,
            generation: 0,
            history: SiteHistory::default(),
            go_history: GoroutineHistory::default(),
            call_totals: CallTotals::new(),
            sort: SiteSort::Outstanding,
            process_sort: ProcessSort::HeapGrowth,
            filter: String::new(),
            filter_input: None,
            site_rows: Vec::new(),
            sites: Cursor::default(),
            process_rows: Vec::new(),
            processes: Cursor::default(),
            detail: None,
            detail_scroll: 0,
            view: SiteView::Sites,
            callers: TreeView::new(TreeDirection::CallersFirst),
            callees: TreeView::new(TreeDirection::CalleesFirst),
        }
    }

    /// What the sites screen shows: the table or one of the call trees.
    pub fn view(&self) -> SiteView {
        self.view
    }

    /// The call tree on screen, when the sites screen shows one.
    pub(crate) fn tree_view(&self) -> Option<&TreeView> {
        match (self.screen, self.view) {
            (Screen::Sites, SiteView::Callers) => Some(&self.callers),
            (Screen::Sites, SiteView::Callees) => Some(&self.callees),
            _ => None,
        }
    }

    fn tree_view_mut(&mut self) -> Option<&mut TreeView> {
        match (self.screen, self.view) {
            (Screen::Sites, SiteView::Callers) => Some(&mut self.callers),
            (Screen::Sites, SiteView::Callees) => Some(&mut self.callees),
            _ => None,
        }
    }

    /// Rows a page of a call tree holds at the current terminal size.
    fn tree_page(&self) -> usize {
        layout::table_rows(layout::tree(self.area(), self.banner()).tree)
    }

    /// Mark both call trees out of date and rebuild the one on screen, if any: a tree is
    /// built only while it is looked at (10,000 sites make a tree of 80,000 nodes, several
    /// times the cost of the rest of an update), once per snapshot.
    fn rebuild_trees(&mut self) {
        self.callers.stale = true;
        self.callees.stale = true;
        self.build_shown_tree();
    }

    /// Build the call tree on screen from the site table's sites, when it is out of date.
    fn build_shown_tree(&mut self) {
        if !self.tree_view().is_some_and(|t| t.stale) {
            return;
        }
        let page = self.tree_page();
        let snapshot = self.shown.as_ref().map(|s| &s.snapshot);
        let stacks: Vec<StackCost<'_, Frame>> = self
            .site_rows
            .iter()
            .filter_map(|r| {
                let site = snapshot?.processes.get(r.process)?.sites.get(r.site)?;
                Some(site.stack_cost())
            })
            .collect();
        let tree = match self.view {
            SiteView::Callers => &mut self.callers,
            SiteView::Callees => &mut self.callees,
            SiteView::Sites => return,
        };
        tree.rebuild(stacks.iter().copied(), page);
    }

    /// Keys of a call tree; false when the key is not the tree's (the general keys apply).
    fn tree_key(&mut self, key: Key) -> bool {
        let page = self.tree_page();
        let step = page as isize;
        let next = match key {
            Key::Esc => Some(SiteView::Sites),
            Key::Char('v') => Some(self.view.next()),
            _ => None,
        };
        if let Some(view) = next {
            self.view = view;
            self.build_shown_tree();
            return true;
        }
        let Some(tree) = self.tree_view_mut() else {
            return false;
        };
        match key {
            Key::Up | Key::Char('k') => tree.move_by(-1, page),
            Key::Down | Key::Char('j') => tree.move_by(1, page),
            Key::PageUp => tree.move_by(-step, page),
            Key::PageDown | Key::Char(' ') => tree.move_by(step, page),
            Key::Home | Key::Char('g') => tree.go_to(false, page),
            Key::End | Key::Char('G') => tree.go_to(true, page),
            Key::Enter => tree.toggle(page),
            Key::Right | Key::Char('l') => tree.open(page),
            Key::Left | Key::Char('h') => tree.close(page),
            _ => return false,
        }
        true
    }

    /// Apply one event; returns what the session must do, if anything. Redraw after every
    /// call.
    pub fn handle(&mut self, event: Event) -> Option<Action> {
        match event {
            Event::Update(update) => {
                self.receive(*update);
                None
            }
            Event::Resize { width, height } => {
                self.size = (width, height);
                self.follow_all();
                None
            }
            Event::ScrollUp => {
                self.scroll(-(WHEEL_ROWS as isize));
                None
            }
            Event::ScrollDown => {
                self.scroll(WHEEL_ROWS as isize);
                None
            }
            Event::Key(key) => self.key(key),
        }
    }

    /// A message for the footer, e.g. "snapshot written to /tmp/leak.json". It stays for a
    /// few updates or until replaced.
    pub fn set_status(&mut self, message: impl Into<String>) {
        self.status = Some((message.into(), STATUS_UPDATES));
    }

    pub fn screen(&self) -> Screen {
        self.screen
    }

    pub fn sort(&self) -> SiteSort {
        self.sort
    }

    pub fn process_sort(&self) -> ProcessSort {
        self.process_sort
    }

    /// The filter in effect (what is being typed, while typing), lower case.
    pub fn filter(&self) -> &str {
        self.filter_input.as_deref().unwrap_or(&self.filter)
    }

    pub fn is_typing_filter(&self) -> bool {
        self.filter_input.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn is_help_open(&self) -> bool {
        self.help
    }

    /// The snapshot on screen (frozen while paused).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.shown.as_ref().map(|s| &s.snapshot)
    }

    /// The sites of the table, in table order.
    pub fn table_sites(&self) -> impl Iterator<Item = (&ProcessReport, &SiteReport)> + '_ {
        self.site_rows.iter().filter_map(|r| self.resolve(*r))
    }

    /// Index of the selected row of the site table (0 when it is empty).
    pub fn selected_row(&self) -> usize {
        self.sites.selected
    }

    /// The selected site of the table.
    pub fn selected_site(&self) -> Option<(&ProcessReport, &SiteReport)> {
        self.site_rows
            .get(self.sites.selected)
            .and_then(|r| self.resolve(*r))
    }

    /// The site of the detail screen.
    pub fn detail_site(&self) -> Option<(&ProcessReport, &SiteReport)> {
        let (pid, id) = self.detail.as_ref()?;
        let process = self.snapshot()?.processes.iter().find(|p| p.pid == *pid)?;
        let site = process.sites.iter().find(|s| s.id == *id)?;
        Some((process, site))
    }

    /// The processes of the system-wide table, in table order.
    pub fn table_processes(&self) -> impl Iterator<Item = &ProcessReport> + '_ {
        let processes = self.snapshot().map_or(&[][..], |s| s.processes.as_slice());
        self.process_rows
            .iter()
            .filter_map(move |&i| processes.get(i))
    }

    pub fn selected_process(&self) -> Option<&ProcessReport> {
        self.process_rows
            .get(self.processes.selected)
            .and_then(|&i| self.snapshot()?.processes.get(i))
    }

    pub(crate) fn resolve(&self, row: SiteRef) -> Option<(&ProcessReport, &SiteReport)> {
        let process = self.snapshot()?.processes.get(row.process)?;
        Some((process, process.sites.get(row.site)?))
    }

    /// The exited processes a banner must name (site screens only).
    pub(crate) fn exited_processes(&self) -> Vec<&ProcessReport> {
        if self.screen == Screen::Processes {
            return Vec::new();
        }
        self.snapshot()
            .map(|s| {
                s.processes
                    .iter()
                    .filter(|p| p.exact && !p.alive && self.focus_pid.is_none_or(|f| f == p.pid))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn area(&self) -> Rect {
        Rect::new(0, 0, self.size.0, self.size.1)
    }

    fn banner(&self) -> bool {
        !self.exited_processes().is_empty()
    }

    /// Rows a page of the site table holds at the current terminal size.
    fn site_page(&self) -> usize {
        let rows = self.site_rows.len();
        layout::table_rows(layout::sites(self.area(), self.banner(), rows).table)
    }

    fn process_page(&self) -> usize {
        layout::table_rows(layout::processes(self.area()).table)
    }

    fn detail_page(&self) -> usize {
        layout::stack_lines(layout::detail(self.area(), self.banner()).stack)
    }

    /// Rows a page of the current screen's list holds.
    fn page(&self) -> usize {
        match self.screen {
            Screen::Sites => self.site_page(),
            Screen::Processes => self.process_page(),
            Screen::SiteDetail => self.detail_page(),
        }
    }

    fn receive(&mut self, update: Update) {
        self.generation += 1;
        self.history.record(self.generation, &update.snapshot);
        self.go_history.record(self.generation, &update.snapshot);
        let rates = Rates::between(&self.call_totals, &update.snapshot);
        self.call_totals = Rates::totals(&update.snapshot);
        if let Some((_, left)) = &mut self.status {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.status = None;
            }
        }
        let shown = Shown {
            heap_totals: dashboard::site_heap_totals(&update.snapshot),
            snapshot: update.snapshot,
            live: update.live,
            rates,
            generation: self.generation,
        };
        if self.paused && self.shown.is_some() {
            self.pending = Some(shown);
        } else {
            self.show(shown);
        }
    }

    fn show(&mut self, shown: Shown) {
        if dashboard::is_system_wide(&shown.snapshot) && !self.system_mode {
            self.system_mode = true;
            if self.screen == Screen::Sites && self.focus_pid.is_none() {
                self.screen = Screen::Processes;
            }
        }
        self.shown = Some(shown);
        self.rebuild_sites();
        self.rebuild_processes();
    }

    fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            if let Some(pending) = self.pending.take() {
                self.show(pending);
            }
        }
    }

    /// Recompute the site table rows and the call trees (new data, focus or filter).
    fn rebuild_sites(&mut self) {
        self.rebuild_site_rows();
        self.rebuild_trees();
    }

    /// Recompute the site table rows. A selection on the first row stays on the first row
    /// (the top of a live table is what matters, as with `tail -f`); a selection further
    /// down follows its site, so what the user is reading does not move away.
    fn rebuild_site_rows(&mut self) {
        let keep = match self.sites.selected {
            0 => None,
            _ => self.selected_site().map(|(p, s)| (p.pid, s.id.clone())),
        };
        let rows = match &self.shown {
            Some(shown) => site_rows(&shown.snapshot, self.focus_pid, self.filter(), self.sort),
            None => Vec::new(),
        };
        self.site_rows = rows;
        if let Some((pid, id)) = keep {
            let found = self
                .table_sites()
                .position(|(p, s)| p.pid == pid && s.id == id);
            if let Some(i) = found {
                self.sites.selected = i;
            }
        }
        let (len, page) = (self.site_rows.len(), self.site_page());
        self.sites.follow(len, page);
    }

    /// As for sites: the first row stays first, a selection further down follows its pid.
    fn rebuild_processes(&mut self) {
        let keep = match self.processes.selected {
            0 => None,
            _ => self.selected_process().map(|p| p.pid),
        };
        let sort = self.process_sort;
        self.process_rows = match self.snapshot() {
            Some(snapshot) if self.system_mode => {
                let processes = &snapshot.processes;
                let mut order: Vec<usize> = (0..processes.len()).collect();
                order.sort_by(|&a, &b| match (processes.get(a), processes.get(b)) {
                    (Some(a), Some(b)) => sort.compare(a, b),
                    _ => Ordering::Equal,
                });
                order
            }
            _ => Vec::new(),
        };
        if let Some(pid) = keep {
            let found = self.table_processes().position(|p| p.pid == pid);
            if let Some(i) = found {
                self.processes.selected = i;
            }
        }
        let (len, page) = (self.process_rows.len(), self.process_page());
        self.processes.follow(len, page);
    }

    fn follow_all(&mut self) {
        let (sites, processes) = (self.site_page(), self.process_page());
        self.sites.follow(self.site_rows.len(), sites);
        self.processes.follow(self.process_rows.len(), processes);
        self.scroll_detail(0);
        let page = self.tree_page();
        self.callers.follow(page);
        self.callees.follow(page);
    }

    fn detail_frames(&self) -> usize {
        self.detail_site().map_or(0, |(_, s)| s.frames.len())
    }

    fn scroll_detail(&mut self, delta: isize) {
        let max = self.detail_frames().saturating_sub(self.detail_page());
        let target = if delta < 0 {
            self.detail_scroll.saturating_sub(delta.unsigned_abs())
        } else {
            self.detail_scroll.saturating_add(delta.unsigned_abs())
        };
        self.detail_scroll = target.min(max);
    }

    /// Move the current screen's selection (or the detail screen's stack) by `delta` rows.
    fn scroll(&mut self, delta: isize) {
        if self.tree_view().is_some() {
            let page = self.tree_page();
            if let Some(tree) = self.tree_view_mut() {
                tree.move_by(delta, page);
            }
            return;
        }
        let page = self.page();
        match self.screen {
            Screen::Sites => self.sites.move_by(delta, self.site_rows.len(), page),
            Screen::Processes => self.processes.move_by(delta, self.process_rows.len(), page),
            Screen::SiteDetail => self.scroll_detail(delta),
        }
    }

    fn go_to(&mut self, end: bool) {
        let page = self.page();
        match self.screen {
            Screen::Sites => {
                let len = self.site_rows.len();
                self.sites.go_to(if end { len } else { 0 }, len, page);
            }
            Screen::Processes => {
                let len = self.process_rows.len();
                self.processes.go_to(if end { len } else { 0 }, len, page);
            }
            Screen::SiteDetail => {
                self.detail_scroll = 0;
                if end {
                    self.scroll_detail(isize::MAX);
                }
            }
        }
    }

    fn key(&mut self, key: Key) -> Option<Action> {
        match key {
            Key::Ctrl('c') => return Some(Action::Quit),
            Key::Ctrl('l') => return Some(Action::Redraw),
            _ => {}
        }
        if self.help {
            if key == Key::Char('q') {
                return Some(Action::Quit);
            }
            self.help = false;
            return None;
        }
        if self.filter_input.is_some() {
            self.filter_key(key);
            return None;
        }
        if self.tree_view().is_some() && self.tree_key(key) {
            return None;
        }
        let page = self.page() as isize;
        match key {
            Key::Char('q') => return Some(Action::Quit),
            Key::Char('e') => return Some(Action::WriteSnapshot),
            Key::Char('?') => self.help = true,
            Key::Char('p') => self.toggle_pause(),
            Key::Char('s') | Key::Tab => self.cycle_sort(Direction::Forward),
            Key::Char('S') | Key::BackTab => self.cycle_sort(Direction::Backward),
            Key::Char('v') if self.screen == Screen::Sites => {
                self.view = self.view.next();
                self.build_shown_tree();
            }
            Key::Char('/') if self.screen == Screen::Sites => {
                self.filter_input = Some(self.filter.clone());
            }
            Key::Up | Key::Char('k') => self.scroll(-1),
            Key::Down | Key::Char('j') => self.scroll(1),
            Key::PageUp => self.scroll(-page),
            Key::PageDown | Key::Char(' ') => self.scroll(page),
            Key::Home | Key::Char('g') => self.go_to(false),
            Key::End | Key::Char('G') => self.go_to(true),
            Key::Enter | Key::Right | Key::Char('l') => return self.enter(),
            Key::Esc | Key::Left | Key::Char('h') => self.back(),
            _ => {}
        }
        None
    }

    fn filter_key(&mut self, key: Key) {
        let Some(input) = &mut self.filter_input else {
            return;
        };
        match key {
            Key::Char(c) => input.extend(c.to_lowercase()),
            Key::Backspace => {
                input.pop();
            }
            Key::Ctrl('u') => input.clear(),
            Key::Enter => {
                self.filter = self.filter_input.take().unwrap_or_default();
            }
            Key::Esc => self.filter_input = None,
            _ => return,
        }
        self.rebuild_sites();
    }

    fn cycle_sort(&mut self, direction: Direction) {
        match self.screen {
            Screen::Processes => {
                self.process_sort = self.process_sort.cycle(direction);
                self.rebuild_processes();
            }
            Screen::Sites => {
                self.sort = self.sort.cycle(direction);
                // The same sites in another order: the trees stay as they are.
                self.rebuild_site_rows();
            }
            // The table's order is not on screen there.
            Screen::SiteDetail => {}
        }
    }

    fn enter(&mut self) -> Option<Action> {
        match self.screen {
            Screen::Processes => {
                let pid = self.selected_process()?.pid;
                self.focus_pid = Some(pid);
                self.screen = Screen::Sites;
                self.sites = Cursor::default();
                self.rebuild_sites();
                Some(Action::TraceProcess(pid))
            }
            Screen::Sites => {
                let (process, site) = self.selected_site()?;
                self.detail = Some((process.pid, site.id.clone()));
                self.detail_scroll = 0;
                self.screen = Screen::SiteDetail;
                None
            }
            Screen::SiteDetail => None,
        }
    }

    fn back(&mut self) {
        match self.screen {
            Screen::SiteDetail => {
                self.screen = Screen::Sites;
                self.detail = None;
            }
            Screen::Sites if !self.filter.is_empty() => {
                self.filter.clear();
                self.rebuild_sites();
            }
            Screen::Sites if self.system_mode => {
                self.screen = Screen::Processes;
                self.focus_pid = None;
                self.rebuild_sites();
            }
            Screen::Sites | Screen::Processes => {}
        }
    }
}

/// Whether a site's stack mentions `needle` (lower case) in a function name or module path.
fn site_matches(site: &SiteReport, needle: &str) -> bool {
    needle.is_empty()
        || site.frames.iter().any(|f| {
            f.function
                .as_deref()
                .is_some_and(|name| contains_lowercase(name, needle))
                || f.module
                    .as_deref()
                    .is_some_and(|module| contains_lowercase(module, needle))
        })
}

/// The site table: sites holding memory, of the focused process if any, matching the
/// filter, in the chosen order.
fn site_rows(
    snapshot: &Snapshot,
    focus_pid: Option<u32>,
    filter: &str,
    sort: SiteSort,
) -> Vec<SiteRef> {
    let mut rows: Vec<(SiteRef, &SiteReport)> = Vec::new();
    for (pi, process) in snapshot.processes.iter().enumerate() {
        if focus_pid.is_some_and(|pid| pid != process.pid) {
            continue;
        }
        for (si, site) in process.sites.iter().enumerate() {
            let holds_memory = site.counters.outstanding_count > 0
                || site.counters.outstanding_bytes > 0
                || site.heap.anon_mmap_bytes > 0
                || site.heap.fallback_mmap_count > 0;
            if holds_memory && site_matches(site, filter) {
                rows.push((
                    SiteRef {
                        process: pi,
                        site: si,
                    },
                    site,
                ));
            }
        }
    }
    rows.sort_by(|(_, a), (_, b)| sort.compare(a, b));
    rows.into_iter().map(|(r, _)| r).collect()
}
