//! Dashboard tests: App state under keys and data, and rendering on ratatui's TestBackend.
//! Snapshots are built in code with exactly known numbers.
use ratatui::{backend::TestBackend, buffer::Buffer, style::Color, Terminal};

use super::{
    app::{ProcessSort, Screen, SiteSort, SiteView},
    *,
};
use crate::model::dashboard::Rates;
use crate::{
    frames,
    schema::{
        ExitStatus, GrowthClass, HeapReport, Mode, ProbeCost, ProcessReport, SiteReport, Snapshot,
    },
    synthetic::{self, frame, growth, heap_with_fallbacks, process, site, EXE, LIBC},
};

const LONG_RUST_NAME: &str = "<alloc::vec::Vec<T,A> as alloc::vec::spec_extend::SpecExtend<T,I>>::spec_extend::hd81fa1e2b3c4d5e6";

/// A leak (biggest slope, not biggest size), a big plateau reached through libc's strdup,
/// and a churning Rust site with an inlined frame and a very long symbol name.
fn sites() -> Vec<SiteReport> {
    let mut leak = site(
        "a-1",
        300_000,
        3_000,
        growth(Some(262_144.0), Some(1_048_576.0), GrowthClass::LeakSuspect),
        Some(11.9),
        vec![
            frame("remember_session", EXE, Some(("leaky_service.c", 26))),
            frame("handle_request", EXE, Some(("leaky_service.c", 40))),
            frame("main", EXE, Some(("leaky_service.c", 70))),
            frame("__libc_start_call_main", LIBC, None),
        ],
    );
    leak.leak_rank = 1;
    let mut plateau = site(
        "b-2",
        900_000,
        10,
        growth(Some(1_000.0), Some(2_000.0), GrowthClass::Plateau),
        Some(30.0),
        vec![
            frame("strdup", LIBC, None),
            frame("load_config", EXE, Some(("config.c", 12))),
            frame("main", EXE, Some(("leaky_service.c", 66))),
        ],
    );
    plateau.leak_rank = 2;
    let mut inlined = frame("core::ptr::write", EXE, Some(("ptr.rs", 1)));
    inlined.inlined = true;
    let mut churn = site(
        "c-3",
        4_096,
        50_000,
        growth(None, Some(-10.0), GrowthClass::Churn),
        Some(0.5),
        vec![
            inlined,
            frame(LONG_RUST_NAME, EXE, Some(("spec_extend.rs", 9))),
        ],
    );
    churn.leak_rank = 3;
    vec![leak, plateau, churn]
}

fn snapshot_at(duration_s: f64, processes: Vec<ProcessReport>) -> Snapshot {
    synthetic::snapshot(duration_s, processes)
}

fn snapshot(processes: Vec<ProcessReport>) -> Snapshot {
    snapshot_at(12.0, processes)
}

fn update(snapshot: Snapshot) -> Event {
    Event::Update(Box::new(Update {
        snapshot,
        live: Live::default(),
    }))
}

fn key(c: char) -> Event {
    Event::Key(Key::Char(c))
}

/// An App showing `snapshot`, sized `width` x `height`.
fn app_with(snapshot: Snapshot, width: u16, height: u16) -> App {
    let mut app = App::new();
    app.handle(Event::Resize { width, height });
    app.handle(update(snapshot));
    app
}

fn table_functions(app: &App) -> Vec<String> {
    app.table_sites()
        .map(|(_, s)| {
            frames::label_frame(&s.frames)
                .and_then(|f| f.function.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn draw(app: &App, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|frame| frame.render_widget(app, frame.area()))
        .expect("draw");
    terminal.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    let width = usize::from(buf.area.width);
    buf.content
        .chunks(width)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect()
}

fn text(buf: &Buffer) -> String {
    lines(buf).join("\n")
}

/// Position of the first occurrence of `needle` on screen (columns count characters: every
/// character the dashboard draws is one cell wide).
fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
    lines(buf).iter().enumerate().find_map(|(y, line)| {
        let byte = line.find(needle)?;
        let x = line[..byte].chars().count();
        Some((u16::try_from(x).ok()?, u16::try_from(y).ok()?))
    })
}

fn fg_at(buf: &Buffer, needle: &str) -> Option<Color> {
    let (x, y) = find(buf, needle)?;
    Some(buf[(x, y)].fg)
}

fn fallback_snapshot() -> Snapshot {
    let mut sites = sites();
    sites[0].heap = synthetic::site_heap_with_fallbacks();
    let mut p = process(42, "leaky", sites);
    p.heap = Some(heap_with_fallbacks());
    snapshot(vec![p])
}

// ---- App state ------------------------------------------------------------------------

#[test]
fn each_sort_orders_the_table_and_s_cycles_through_all() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    let expect = [
        (
            SiteSort::Outstanding,
            ["load_config", "remember_session", "core::ptr::write"],
        ),
        (
            SiteSort::Count,
            ["core::ptr::write", "remember_session", "load_config"],
        ),
        (
            SiteSort::PerMib,
            ["remember_session", "load_config", "core::ptr::write"],
        ),
        (
            SiteSort::PerMin,
            ["remember_session", "load_config", "core::ptr::write"],
        ),
        (
            SiteSort::LeakRank,
            ["remember_session", "load_config", "core::ptr::write"],
        ),
        (
            SiteSort::OldestAge,
            ["load_config", "remember_session", "core::ptr::write"],
        ),
        (
            SiteSort::AnonMmap,
            ["load_config", "remember_session", "core::ptr::write"],
        ),
    ];
    for (sort, order) in expect {
        assert_eq!(app.sort(), sort);
        assert_eq!(table_functions(&app), order, "sorted by {sort:?}");
        app.handle(key('s'));
    }
    assert_eq!(app.sort(), SiteSort::Outstanding, "s wraps around");
    app.handle(key('S'));
    assert_eq!(app.sort(), SiteSort::AnonMmap, "S goes backwards");
}

#[test]
fn missing_slopes_sort_after_every_number() {
    let mut sites = sites();
    sites[0].growth.bytes_per_mib_processed = None;
    sites[1].growth.bytes_per_mib_processed = Some(-5.0);
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites)]), 120, 40);
    while app.sort() != SiteSort::PerMib {
        app.handle(key('s'));
    }
    let order = table_functions(&app);
    assert_eq!(order[0], "load_config", "a negative slope still beats none");
    assert_eq!(order.len(), 3);
}

#[test]
fn filter_matches_functions_and_modules_and_escape_undoes_it() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    app.handle(key('/'));
    assert!(app.is_typing_filter());
    for c in "REMEMBER".chars() {
        app.handle(key(c));
    }
    assert_eq!(app.filter(), "remember");
    assert_eq!(
        table_functions(&app),
        ["remember_session"],
        "live while typing"
    );
    // q is text while typing, not quit.
    assert_eq!(app.handle(key('q')), None);
    app.handle(Event::Key(Key::Backspace));
    app.handle(Event::Key(Key::Enter));
    assert!(!app.is_typing_filter());
    assert_eq!(app.filter(), "remember");
    assert_eq!(table_functions(&app).len(), 1);

    // A module matches too: every site has a frame in the executable, one also in libc.
    app.handle(key('/'));
    app.handle(Event::Key(Key::Ctrl('u')));
    for c in "libc.so".chars() {
        app.handle(key(c));
    }
    assert_eq!(table_functions(&app), ["load_config", "remember_session"]);
    // Esc while typing restores the filter that was applied before.
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.filter(), "remember");
    // Esc outside typing clears it.
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.filter(), "");
    assert_eq!(table_functions(&app).len(), 3);
}

#[test]
fn selection_stays_in_bounds() {
    // Empty table: nothing moves, nothing panics, nothing is selected.
    let mut app = app_with(snapshot(vec![process(42, "leaky", Vec::new())]), 80, 24);
    for k in [
        Key::Down,
        Key::End,
        Key::PageDown,
        Key::Up,
        Key::Home,
        Key::Enter,
    ] {
        app.handle(Event::Key(k));
        assert_eq!(app.selected_row(), 0);
        assert!(app.selected_site().is_none());
    }
    assert_eq!(
        app.screen(),
        Screen::Sites,
        "Enter on nothing opens nothing"
    );

    // 100 sites at 80x24: past the end stops at the last row; PgDn at the end stays there.
    let many: Vec<SiteReport> = (0..100u32)
        .map(|i| {
            site(
                &format!("s{i}"),
                u64::from(1000 - i),
                1,
                growth(None, None, GrowthClass::Unknown),
                None,
                vec![frame(&format!("f{i}"), EXE, None)],
            )
        })
        .collect();
    let mut app = app_with(snapshot(vec![process(42, "leaky", many)]), 80, 24);
    app.handle(Event::Key(Key::Up));
    assert_eq!(app.selected_row(), 0);
    for _ in 0..150 {
        app.handle(Event::Key(Key::Down));
    }
    assert_eq!(app.selected_row(), 99);
    app.handle(Event::Key(Key::PageDown));
    assert_eq!(app.selected_row(), 99);
    app.handle(Event::Key(Key::Home));
    assert_eq!(app.selected_row(), 0);
    app.handle(Event::Key(Key::PageDown));
    let page = app.selected_row();
    assert!((5..20).contains(&page), "a page at 80x24 is {page} rows");
    app.handle(Event::Key(Key::PageUp));
    assert_eq!(app.selected_row(), 0);
    app.handle(Event::Key(Key::End));
    assert_eq!(app.selected_row(), 99);
    app.handle(Event::ScrollUp);
    assert_eq!(app.selected_row(), 96, "the wheel moves three rows");

    // The list shrinks under the selection: it is clamped to the new last row.
    let few = snapshot(vec![process(42, "leaky", sites())]);
    app.handle(update(few));
    assert_eq!(app.selected_row(), 2);
    assert!(app.selected_site().is_some());
}

#[test]
fn selection_on_the_top_row_stays_on_the_top_row() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("b-2"));
    let mut grown = sites();
    grown[0].counters.outstanding_bytes = 2_000_000;
    app.handle(update(snapshot(vec![process(42, "leaky", grown)])));
    assert_eq!(app.selected_row(), 0);
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
}

#[test]
fn selection_below_the_top_follows_its_site_when_the_order_changes() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    app.handle(key('j'));
    app.handle(key('j'));
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("c-3"));
    // The churn site grows past the leak: the selection moves up with it.
    let mut grown = sites();
    grown[2].counters.outstanding_bytes = 500_000;
    app.handle(update(snapshot(vec![process(42, "leaky", grown)])));
    assert_eq!(app.selected_row(), 1);
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("c-3"));
    // Selected below the top, the leak is followed when it becomes the biggest.
    app.handle(key('j'));
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
    let mut grown = sites();
    grown[0].counters.outstanding_bytes = 2_000_000;
    app.handle(update(snapshot(vec![process(42, "leaky", grown)])));
    assert_eq!(app.selected_row(), 0);
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
}

#[test]
fn enter_drills_into_a_site_and_escape_comes_back() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    app.handle(key('j'));
    assert_eq!(app.handle(Event::Key(Key::Enter)), None);
    assert_eq!(app.screen(), Screen::SiteDetail);
    assert_eq!(app.detail_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
    // Detail stays on its site when data changes order underneath.
    let mut grown = sites();
    grown[1].counters.outstanding_bytes = 1;
    app.handle(update(snapshot(vec![process(42, "leaky", grown)])));
    assert_eq!(app.detail_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.screen(), Screen::Sites);
    assert_eq!(app.selected_site().map(|(_, s)| s.id.as_str()), Some("a-1"));
    // Esc on the site table of a single-target run goes nowhere.
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.screen(), Screen::Sites);
}

#[test]
fn the_detail_screen_is_titled_by_the_sites_label() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 120, 40);
    // The first row (largest) is the plateau reached through libc's strdup.
    app.handle(Event::Key(Key::Enter));
    let screen = text(&draw(&app, 120, 40));
    assert!(
        screen.contains(" load_config (config.c:12) via strdup · pid 42 (leaky) "),
        "{screen}"
    );
    // The site's internal id (caller and stack id) means nothing to a reader.
    assert!(!screen.contains("b-2"), "{screen}");
}

fn system_wide_snapshot() -> Snapshot {
    let mut nginx = process(100, "nginx", Vec::new());
    nginx.exact = false;
    nginx.hooked_functions.clear();
    nginx.heap = Some(heap_with_fallbacks());
    let mut quiet = process(200, "sshd", Vec::new());
    quiet.exact = false;
    quiet.heap = Some(HeapReport {
        brk_bytes: 4096,
        ..HeapReport::default()
    });
    let mut gone = process(300, "cron", Vec::new());
    gone.exact = false;
    gone.alive = false;
    gone.heap = Some(HeapReport {
        brk_bytes: 1 << 30,
        ..HeapReport::default()
    });
    let mut s = snapshot(vec![quiet, nginx, gone]);
    s.mode = Mode::SystemWide;
    s
}

#[test]
fn system_wide_starts_on_processes_and_enter_asks_to_trace_one() {
    let mut app = app_with(system_wide_snapshot(), 120, 40);
    assert_eq!(app.screen(), Screen::Processes);
    let pids: Vec<u32> = app.table_processes().map(|p| p.pid).collect();
    assert_eq!(pids, [300, 100, 200], "largest heap growth first");
    app.handle(key('j'));
    app.handle(key('s'));
    assert_eq!(app.process_sort(), ProcessSort::BrkFailures);
    let pids: Vec<u32> = app.table_processes().map(|p| p.pid).collect();
    assert_eq!(pids, [100, 300, 200], "nginx has the failed brk calls");
    assert_eq!(
        app.selected_process().map(|p| p.pid),
        Some(100),
        "selection kept"
    );
    assert_eq!(
        app.handle(Event::Key(Key::Enter)),
        Some(Action::TraceProcess(100))
    );
    assert_eq!(app.screen(), Screen::Sites);
    assert_eq!(app.table_sites().count(), 0, "no exact data for it yet");
    // Once the session traces it, its sites appear, and only its sites.
    let mut s = system_wide_snapshot();
    s.processes[1] = process(100, "nginx", sites());
    s.processes.push(process(400, "other", sites()));
    app.handle(update(s));
    assert_eq!(app.table_sites().count(), 3);
    assert!(app.table_sites().all(|(p, _)| p.pid == 100));
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.screen(), Screen::Processes);
}

#[test]
fn pause_freezes_the_view_and_resume_shows_the_newest_data() {
    let mut app = app_with(
        snapshot_at(1.0, vec![process(42, "leaky", sites())]),
        120,
        40,
    );
    app.handle(key('p'));
    assert!(app.is_paused());
    let mut grown = sites();
    grown[0].counters.outstanding_bytes = 7_777_777;
    app.handle(update(snapshot_at(2.0, vec![process(42, "leaky", grown)])));
    assert_eq!(app.snapshot().map(|s| s.duration_s), Some(1.0), "frozen");
    let paused_sparkline = app.history.series(
        42,
        "a-1",
        app.shown.as_ref().map_or(0, |s| s.generation),
        100,
    );
    assert_eq!(paused_sparkline, [300_000]);
    app.handle(key('p'));
    assert!(!app.is_paused());
    assert_eq!(app.snapshot().map(|s| s.duration_s), Some(2.0));
    let series = app.history.series(
        42,
        "a-1",
        app.shown.as_ref().map_or(0, |s| s.generation),
        100,
    );
    assert_eq!(series, [300_000, 7_777_777], "history kept accumulating");
}

#[test]
fn keys_that_ask_the_session_for_something() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 80, 24);
    assert_eq!(app.handle(key('e')), Some(Action::WriteSnapshot));
    assert_eq!(app.handle(key('q')), Some(Action::Quit));
    assert_eq!(app.handle(Event::Key(Key::Ctrl('c'))), Some(Action::Quit));
    assert_eq!(app.handle(Event::Key(Key::Ctrl('l'))), Some(Action::Redraw));
    app.handle(key('?'));
    assert!(app.is_help_open());
    assert_eq!(app.handle(key('j')), None);
    assert!(!app.is_help_open(), "any key closes the help");
    assert_eq!(app.selected_row(), 0, "and does nothing else");
}

#[test]
fn rates_come_from_successive_snapshots() {
    let mut app = app_with(
        snapshot_at(10.0, vec![process(42, "leaky", sites())]),
        80,
        24,
    );
    assert_eq!(app.shown.as_ref().map(|s| s.rates), Some(Rates::default()));
    let mut later = process(42, "leaky", sites());
    later.allocated_count += 500;
    later.freed_count += 250;
    app.handle(update(snapshot_at(12.0, vec![later])));
    let rates = app.shown.as_ref().map(|s| s.rates).unwrap_or_default();
    assert_eq!(rates.alloc_per_s, Some(250.0));
    assert_eq!(rates.free_per_s, Some(125.0));
}

#[test]
fn status_message_is_shown_then_expires() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 100, 30);
    app.set_status("snapshot written to /tmp/leak.json");
    assert!(text(&draw(&app, 100, 30)).contains("snapshot written to /tmp/leak.json"));
    for _ in 0..5 {
        app.handle(update(snapshot(vec![process(42, "leaky", sites())])));
    }
    assert!(!text(&draw(&app, 100, 30)).contains("snapshot written"));
}

// ---- Rendering ------------------------------------------------------------------------

#[test]
fn normal_data_at_80x24_shows_every_panel() {
    let app = app_with(snapshot(vec![process(42, "leaky", sites())]), 80, 24);
    let buf = draw(&app, 80, 24);
    let screen = text(&buf);
    assert_shows(
        &screen,
        &[
            "pid 42 leaky · exact · up 12s · RSS n/a · processed 3.0 MiB",
            "outstanding 1.1 MiB in 53,010 blocks",
            "sort: outstanding ▼",
            "OUTSTANDING▼",
            "remember_session",
            // The plateau is named by its user frame, via libc's strdup that it called.
            "load_config via strdup",
            "LEAK?",
            "stack",
            "heap · pid 42",
            "brk/mmap: not available",
            "q quit",
        ],
    );
    // The selected site (the plateau) has its stack in the stack pane, libc frame included.
    assert!(screen.contains("strdup"), "{screen}");
    assert!(screen.contains("libc.so.6"), "{screen}");
    assert_eq!(fg_at(&buf, "LEAK?"), Some(Color::Red));
    insta::assert_snapshot!("normal_80x24", screen);
}

#[test]
fn empty_data_says_waiting_for_allocations() {
    let app = App::new();
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("waiting for the first sample"), "{screen}");
    assert!(screen.contains("waiting for allocations"), "{screen}");

    let app = app_with(snapshot(vec![process(42, "leaky", Vec::new())]), 80, 24);
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("waiting for allocations"), "{screen}");
    assert!(screen.contains("outstanding 0 B in 0 blocks"), "{screen}");
}

#[test]
fn fallback_mmaps_are_highlighted_with_sizes_and_site() {
    let app = app_with(fallback_snapshot(), 100, 30);
    let buf = draw(&app, 100, 30);
    let screen = text(&buf);
    assert_shows(
        &screen,
        &[
            "brk 132.0 KiB · 2 failed of 9 calls",
            "fallback mmaps 2 = 1.1 MiB",
            "chunks 1.0 MiB, 132.0 KiB",
            "2 = 1.1 MiB ← remember_session",
            "RSS 4.0 MiB (+2.0 MiB, 50% explained)",
        ],
    );
    assert_eq!(fg_at(&buf, "fallback mmaps 2"), Some(Color::Red));
    assert_eq!(
        fg_at(&buf, "2 = 1.1 MiB ← remember_session"),
        Some(Color::Yellow)
    );
    assert_eq!(fg_at(&buf, "2 failed"), Some(Color::Red));
    insta::assert_snapshot!("fallbacks_100x30", screen);
}

#[test]
fn exited_target_shows_a_banner_and_stays_browsable() {
    let mut p = process(42, "leaky", sites());
    p.alive = false;
    p.exit = Some(ExitStatus::Code(0));
    let mut app = app_with(snapshot(vec![p]), 80, 24);
    let screen = text(&draw(&app, 80, 24));
    assert!(
        screen.contains("process exited: pid 42 (leaky), status 0"),
        "{screen}"
    );
    assert!(screen.contains("remember_session"), "{screen}");
    app.handle(key('j'));
    app.handle(Event::Key(Key::Enter));
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("process exited"), "{screen}");
    assert!(
        screen.contains("handle_request"),
        "detail of the exited site:\n{screen}"
    );
}

#[test]
fn small_terminal_keeps_header_and_table() {
    let app = app_with(snapshot(vec![process(42, "leaky", sites())]), 40, 12);
    let screen = text(&draw(&app, 40, 12));
    assert!(screen.contains("leaktrace"), "{screen}");
    assert!(screen.contains("remember_session"), "{screen}");
    assert!(screen.contains("OUTSTANDING▼"), "{screen}");
    assert!(screen.contains("? help"), "{screen}");
    assert!(!screen.contains("stack ·"), "no stack pane:\n{screen}");
    assert!(!screen.contains("⏎ details"), "no footer:\n{screen}");
    insta::assert_snapshot!("small_40x12", screen);

    let screen = text(&draw(&app, 19, 5));
    assert!(screen.contains("too small"), "{screen}");
}

#[test]
fn growth_mode_names_its_columns_growth_and_events() {
    let mut grown = sites();
    grown[0].counters.allocated_count = 77;
    grown[0].counters.outstanding_count = 1;
    let mut p = process(42, "leaky", grown);
    p.exact = false;
    let mut s = snapshot(vec![p]);
    s.mode = Mode::Growth;
    let app = app_with(s, 120, 30);
    let screen = text(&draw(&app, 120, 30));
    assert!(screen.contains("GROWTH▼"), "{screen}");
    assert!(screen.contains("EVENTS"), "{screen}");
    assert!(!screen.contains("OUTSTANDING▼"), "{screen}");
    // The count column shows the site's growth events, not its one "block".
    assert!(screen.contains(" 77 "), "{screen}");
}

#[test]
fn sort_indicator_follows_the_sort() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 80, 24);
    app.handle(key('s'));
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("sort: count ▼"), "{screen}");
    assert!(screen.contains("COUNT▼"), "{screen}");
    assert!(!screen.contains("OUTSTANDING▼"), "{screen}");
    // At 40 columns the sorted column survives even though optional columns are dropped.
    app.handle(key('s'));
    let screen = text(&draw(&app, 40, 12));
    assert!(screen.contains("PER MiB▼"), "{screen}");
}

#[test]
fn long_symbols_are_cut_in_the_middle() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 80, 24);
    app.handle(Event::Key(Key::End));
    app.handle(Event::Key(Key::Enter));
    let screen = text(&draw(&app, 80, 24));
    assert!(
        screen.contains("<alloc::vec::Vec<T,A"),
        "head kept:\n{screen}"
    );
    assert!(screen.contains("…"), "{screen}");
    assert!(screen.contains("hd81fa1e2b3c4d5e6"), "tail kept:\n{screen}");
    assert!(
        screen.contains("inl core::ptr::write"),
        "inlined marked:\n{screen}"
    );
}

#[test]
fn nonzero_counters_are_in_the_warning_colour() {
    let mut p = process(42, "leaky", sites());
    p.counters.unknown_frees = 3;
    let app = app_with(snapshot(vec![p]), 100, 30);
    let buf = draw(&app, 100, 30);
    assert_eq!(fg_at(&buf, "unknown frees 3"), Some(Color::Yellow));
    assert_eq!(fg_at(&buf, "dropped 0"), Some(Color::DarkGray));
}

#[test]
fn paused_marker_and_help_overlay() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 80, 24);
    app.handle(key('p'));
    app.handle(key('?'));
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("PAUSED"), "{screen}");
    assert!(
        screen.contains("filter sites by function or module"),
        "{screen}"
    );
}

/// A process that read and wrote less than 1 MiB has no slope per MiB: the detail screen's
/// sentence says `n/a` (issue 15, section 7), the table's narrow cell `-`.
#[test]
fn detail_screen_says_n_a_for_a_slope_per_mib_of_almost_no_work() {
    let mut snapshot = fallback_snapshot();
    for site in &mut snapshot.processes[0].sites {
        site.growth.bytes_per_mib_processed = None;
        site.growth.recent_bytes_per_mib_processed = None;
        site.growth.r2_processed = None;
    }
    let mut app = app_with(snapshot, 100, 30);
    app.handle(key('j'));
    app.handle(Event::Key(Key::Enter));
    let screen = text(&draw(&app, 100, 30));
    assert_shows(
        &screen,
        &["growth per MiB processed n/a (R² -)", "recent: per MiB n/a"],
    );
}

#[test]
fn detail_screen_shows_numbers_and_every_frame() {
    let mut app = app_with(fallback_snapshot(), 100, 30);
    app.handle(key('j'));
    app.handle(Event::Key(Key::Enter));
    let screen = text(&draw(&app, 100, 30));
    assert_shows(
        &screen,
        &[
            "remember_session (leaky_service.c:26) · pid 42 (leaky)",
            "class LEAK?",
            "leak rank 1",
            "growth per MiB processed +256.0 KiB (R² 0.99)",
            "heap: fallback mmaps 2 = 1.1 MiB",
            "stack · 4 frames",
            "__libc_start_call_main",
            "leaky_service.c:70",
        ],
    );
    // The site's internal id (caller and stack id) means nothing to a reader.
    assert!(!screen.contains("a-1"), "{screen}");
}

#[test]
fn process_table_marks_exited_and_fallbacks() {
    let app = app_with(system_wide_snapshot(), 120, 30);
    let buf = draw(&app, 120, 30);
    let screen = text(&buf);
    assert_shows(
        &screen,
        &[
            "all processes · system-wide",
            "HEAP GROWTH▼",
            "nginx",
            "cron",
            "exited",
            "2 / 1.1 MiB",
        ],
    );
    assert_eq!(fg_at(&buf, "2 / 1.1 MiB"), Some(Color::Yellow));
}

#[test]
fn ten_thousand_sites_draw_only_the_visible_rows() {
    let many: Vec<SiteReport> = (0..10_000u64)
        .map(|i| {
            site(
                &format!("s{i}"),
                (i + 1) * 16,
                i + 1,
                growth(Some(i as f64), Some(i as f64), GrowthClass::Unknown),
                Some(i as f64),
                vec![frame(&format!("alloc_site_{i}"), EXE, Some(("many.c", 1)))],
            )
        })
        .collect();
    let mut app = app_with(snapshot(vec![process(42, "many", many)]), 120, 40);
    let screen = text(&draw(&app, 120, 40));
    assert!(screen.contains("sites 10,000"), "{screen}");
    assert!(
        !screen.contains("MMAP"),
        "no heap data, no mmap column:\n{screen}"
    );
    assert!(screen.contains("alloc_site_9999"), "{screen}");
    app.handle(Event::Key(Key::End));
    let screen = text(&draw(&app, 120, 40));
    assert!(screen.contains("alloc_site_0 "), "{screen}");
    assert!(!screen.contains("alloc_site_9999"), "{screen}");
}

#[test]
fn the_header_shows_the_estimated_cost_of_tracing() {
    let mut with_cost = snapshot(vec![]);
    with_cost.cost = Some(ProbeCost::new(Some(1_250.0), Some(6_400.0)));
    let screen = text(&draw(&app_with(with_cost, 80, 24), 80, 24));
    assert!(screen.contains("cost ≈0.8% CPU"), "{screen}");
    assert!(!screen.contains("bursts"), "{screen}");
    // Growth mode's bursts: the costliest process's, by the larger of its two measures.
    let mut with_bursts = snapshot(vec![process(42, "leaky", sites())]);
    with_bursts.processes[0].bursts = Some(crate::schema::BurstReport {
        measured_overhead_pct: 0.08,
        target_cpu_overhead_pct: Some(0.43),
        budget_pct: 1.0,
        ..crate::schema::BurstReport::default()
    });
    let screen = text(&draw(&app_with(with_bursts, 120, 40), 120, 40));
    assert!(screen.contains("bursts ≈0.4% CPU (budget 1%)"), "{screen}");
    let screen = text(&draw(&app_with(snapshot(vec![]), 80, 24), 80, 24));
    assert!(screen.contains("cost n/a"), "{screen}");
}

/// Every one of `expected` is somewhere on the screen.
fn assert_shows(screen: &str, expected: &[&str]) {
    for expected in expected {
        assert!(screen.contains(expected), "missing {expected:?}:\n{screen}");
    }
}

/// A Go process: 3000 senders growing by 300 per update, a profile and memstats.
fn go_process(senders: u64) -> ProcessReport {
    use crate::schema::{
        GoHeapProfile, GoHeapSite, GoMemStats, GoReport, GoroutineGroupReport, GoroutineGrowth,
    };
    let mut p = process(4242, "gosvc", sites());
    p.go = Some(GoReport {
        version: "go1.22.10".to_string(),
        goroutines: Some(senders + 5),
        groups: vec![GoroutineGroupReport {
            count: senders,
            state: "waiting".to_string(),
            wait_reason: Some("chan send".to_string()),
            created_by: vec![frame("main.startSenders", EXE, None)],
            frames: vec![frame("runtime.gopark", EXE, None)],
            oldest_wait_s: Some(3.0),
            growth: GoroutineGrowth {
                class: GrowthClass::LeakSuspect,
                ..GoroutineGrowth::default()
            },
        }],
        memstats: Some(GoMemStats {
            heap_alloc: 80 << 20,
            num_gc: 8,
            ..GoMemStats::default()
        }),
        heap_profile: GoHeapProfile {
            available: true,
            rate: Some(65536),
            sites: vec![GoHeapSite {
                inuse_bytes: 78 << 20,
                frames: vec![
                    frame("runtime.makeslice", EXE, None),
                    frame("main.leakIntoMap", EXE, None),
                ],
                ..GoHeapSite::default()
            }],
            ..GoHeapProfile::default()
        },
        ..GoReport::default()
    });
    p
}

#[test]
fn a_go_process_gets_the_go_panel_with_groups_profile_and_memstats() {
    let mut app = app_with(snapshot(vec![go_process(2700)]), 120, 40);
    app.handle(update(snapshot(vec![go_process(3000)])));
    let screen = text(&draw(&app, 120, 40));
    for expected in [
        "go1.22.10 · 3,005 goroutines",
        "3,000",
        "chan send · main.startSenders",
        "LEAK",
        "78.0 MiB main.leakIntoMap",
        "lags ≤2 GC",
        "HeapAlloc 80.0 MiB",
    ] {
        assert!(screen.contains(expected), "{expected:?} missing:\n{screen}");
    }
    assert!(screen.contains('█'), "the group's sparkline:\n{screen}");
    // Tiny terminals still draw without panicking.
    let _ = draw(&app, 20, 6);
    let _ = draw(&app, 60, 18);
}

// ---------------------------------------------------------------------------------------------
// Call-tree views

/// The function names of a tree view's visible rows, indented by depth.
fn tree_rows(app: &App) -> Vec<String> {
    let view = app.tree_view().expect("a tree view");
    view.rows
        .iter()
        .map(|&n| {
            let node = &view.tree.nodes[n];
            format!("{}{}", "  ".repeat(node.depth), node.function)
        })
        .collect()
}

#[test]
fn v_steps_through_sites_callers_and_callees() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 100, 30);
    assert_eq!(app.view(), SiteView::Sites);
    assert!(app.tree_view().is_none());
    app.handle(key('v'));
    assert_eq!(app.view(), SiteView::Callers);
    // Roots are the outermost frames, largest first: the plateau's stack ends at main, the
    // leak's at __libc_start_call_main; the churning Rust site (0.3%) is a closed root. Nodes
    // holding 10% or more are open.
    assert_eq!(
        tree_rows(&app),
        [
            "main",
            "  load_config",
            "    strdup",
            "__libc_start_call_main",
            "  main",
            "    handle_request",
            "      remember_session",
            LONG_RUST_NAME,
        ]
    );
    app.handle(key('v'));
    assert_eq!(app.view(), SiteView::Callees);
    assert_eq!(tree_rows(&app)[0], "strdup");
    app.handle(key('v'));
    assert_eq!(app.view(), SiteView::Sites);
    app.handle(key('v'));
    app.handle(Event::Key(Key::Esc));
    assert_eq!(app.view(), SiteView::Sites);
}

#[test]
fn tree_nodes_open_and_close_and_stay_so_across_updates() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 100, 30);
    app.handle(key('v'));
    let open = tree_rows(&app).len();
    // Left on the open root closes it; Left again stays on it (no parent).
    app.handle(Event::Key(Key::Left));
    assert_eq!(tree_rows(&app)[..2], ["main", "__libc_start_call_main"]);
    app.handle(Event::Key(Key::Left));
    assert_eq!(
        app.tree_view().and_then(|t| t.selected()),
        Some(app.tree_view().expect("tree").rows[0])
    );
    // A new snapshot keeps it closed.
    app.handle(update(snapshot_at(
        13.0,
        vec![process(42, "leaky", sites())],
    )));
    assert_eq!(tree_rows(&app).len(), open - 2);
    // Enter opens it again; Down, Down, Left on a leaf goes back to its parent.
    app.handle(Event::Key(Key::Enter));
    assert_eq!(tree_rows(&app).len(), open);
    app.handle(key('j'));
    app.handle(key('j'));
    app.handle(key('h'));
    let view = app.tree_view().expect("tree");
    let selected = view.selected().expect("a selection");
    assert_eq!(view.tree.nodes[selected].function, "load_config");
    // The filter narrows the trees too.
    app.handle(key('/'));
    for c in "remember".chars() {
        app.handle(key(c));
    }
    app.handle(Event::Key(Key::Enter));
    assert_eq!(
        tree_rows(&app),
        [
            "__libc_start_call_main",
            "  main",
            "    handle_request",
            "      remember_session"
        ]
    );
}

#[test]
fn callers_view_draws_cumulative_share_and_self() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 100, 30);
    app.handle(key('v'));
    let screen = text(&draw(&app, 100, 30));
    assert_shows(
        &screen,
        &[
            "callers (top-down) · 1.1 MiB in all · v: callees",
            "CUMULATIVE▼  SHARE        SELF FUNCTION",
            "▾ main  leaky-service",
            "v next view",
        ],
    );
    insta::assert_snapshot!("callers_100x30", screen);
    app.handle(key('v'));
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("callees (bottom-up)"), "{screen}");
    insta::assert_snapshot!("callees_80x24", screen);
}

#[test]
fn tree_views_handle_empty_data_and_tiny_terminals() {
    let mut empty = app_with(snapshot(vec![]), 80, 24);
    empty.handle(key('v'));
    let screen = text(&draw(&empty, 80, 24));
    assert!(
        screen.contains("no outstanding memory with a stack yet"),
        "{screen}"
    );
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 40, 12);
    app.handle(key('v'));
    let screen = text(&draw(&app, 40, 12));
    assert!(screen.contains("main"), "{screen}");
    assert!(!screen.contains("SELF"), "{screen}");
    insta::assert_snapshot!("callers_40x12", screen);
    let screen = text(&draw(&app, 19, 5));
    assert!(screen.contains("too small"), "{screen}");
    // Keys on an empty tree do nothing harmful.
    for k in [
        Key::Up,
        Key::Down,
        Key::Left,
        Key::Right,
        Key::Enter,
        Key::End,
        Key::PageDown,
    ] {
        empty.handle(Event::Key(k));
    }
    assert!(empty.tree_view().expect("tree").selected().is_none());
}

#[test]
fn trees_are_built_only_while_shown_once_per_snapshot() {
    let mut app = app_with(snapshot(vec![process(42, "leaky", sites())]), 100, 30);
    assert!(app.callers.stale && app.callers.tree.nodes.is_empty());
    app.handle(key('v'));
    assert!(!app.callers.stale && !app.callers.tree.nodes.is_empty());
    assert!(
        app.callees.stale,
        "the callees tree waits until it is shown"
    );
    // A new snapshot rebuilds the tree on screen only.
    app.handle(update(snapshot_at(
        13.0,
        vec![process(42, "leaky", sites())],
    )));
    assert!(!app.callers.stale && app.callees.stale);
    app.handle(key('v'));
    assert!(!app.callees.stale);
    app.handle(key('v'));
    app.handle(update(snapshot_at(
        14.0,
        vec![process(42, "leaky", sites())],
    )));
    assert!(app.callers.stale && app.callees.stale);
}
