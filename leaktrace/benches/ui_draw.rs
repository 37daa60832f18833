//! How long the dashboard takes to draw a frame with 10,000 allocation sites (the goal is
//! under 20 ms), and how long an update with that many sites takes (sorting, filtering and
//! history happen there, not while drawing), also with the callers tree on screen.
//!
//! `cargo bench -p leaktrace --bench ui_draw` prints medians; it asserts nothing.
use std::time::{Duration, Instant};

use leaktrace::{
    dashboard::{App, Event, Key, Live, Update},
    schema::{Frame, GrowthClass, Snapshot},
    synthetic,
};
use ratatui::{backend::TestBackend, Terminal};

const SITES: u64 = 10_000;
const DRAWS: usize = 200;
const UPDATES: usize = 20;

fn frame(function: &str, line: u32) -> Frame {
    Frame {
        addr: 0x5555_0000_0000 + u64::from(line),
        offset: Some(u64::from(line)),
        build_id: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
        inlined: line.is_multiple_of(3),
        ..synthetic::frame(
            function,
            "/usr/lib/service/libservice-core.so",
            Some(("handlers/request.rs", line)),
        )
    }
}

/// 10,000 sites with 8-frame stacks of long, Rust-like names; outstanding bytes change with
/// `round` so successive updates re-sort.
fn snapshot(round: u64) -> Snapshot {
    let sites = (0..SITES)
        .map(|i| {
            let outstanding = (i * 7919 + round * 104_729) % 1_000_000 + 1;
            let class = if i.is_multiple_of(50) {
                GrowthClass::LeakSuspect
            } else {
                GrowthClass::Churn
            };
            let mut site = synthetic::site(
                &format!("{i:x}-{i}"),
                outstanding,
                outstanding / 64 + 1,
                synthetic::growth(
                    Some((i % 977) as f64 * 13.0),
                    Some((i % 613) as f64 * 101.0),
                    class,
                ),
                Some((i % 600) as f64),
                (0..8u32)
                    .map(|depth| {
                        frame(
                            &format!(
                                "service::handlers::request::<impl service::Handler for \
                                 service::RequestContext<T>>::handle_{i}_{depth}"
                            ),
                            depth + 1,
                        )
                    })
                    .collect(),
            );
            site.leak_rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
            site
        })
        .collect();
    let mut process = synthetic::process(4242, "service", sites);
    process.allocated_count = round * 1000;
    process.freed_count = round * 900;
    process.bytes_processed = Some(round << 20);
    synthetic::snapshot(round as f64, vec![process])
}

fn update(round: u64) -> Event {
    Event::Update(Box::new(Update {
        snapshot: snapshot(round),
        live: Live::default(),
    }))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn bench_draw(app: &mut App, width: u16, height: u16) -> Duration {
    app.handle(Event::Resize { width, height });
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(never) => match never {},
    };
    let mut times = Vec::with_capacity(DRAWS);
    for i in 0..DRAWS {
        // Move the selection so every frame has a different stack, sparkline and rows.
        app.handle(Event::Key(if i % 40 < 20 {
            Key::PageDown
        } else {
            Key::Up
        }));
        let start = Instant::now();
        let _ = terminal.draw(|f| f.render_widget(&*app, f.area()));
        times.push(start.elapsed());
    }
    median(times)
}

fn main() {
    let mut app = App::new();
    let mut update_times = Vec::with_capacity(UPDATES);
    for round in 1..=UPDATES as u64 {
        let event = update(round);
        let start = Instant::now();
        app.handle(event);
        update_times.push(start.elapsed());
    }
    println!(
        "ui update with {SITES} sites (history, rates, sort, freeing the previous snapshot): \
         median {:?} over {UPDATES}",
        median(update_times)
    );
    let mut drop_times = Vec::with_capacity(5);
    for round in 0..5 {
        let old = snapshot(round);
        let start = Instant::now();
        drop(old);
        drop_times.push(start.elapsed());
    }
    println!(
        "  of which freeing a {SITES}-site snapshot alone: median {:?}",
        median(drop_times)
    );
    for (width, height) in [(80, 24), (200, 60)] {
        println!(
            "ui draw {width}x{height} with {SITES} sites: median {:?} over {DRAWS} frames",
            bench_draw(&mut app, width, height)
        );
    }
    // The callers tree on screen: each update rebuilds it (80,000 nodes here, every frame a
    // distinct function).
    app.handle(Event::Key(Key::Char('v')));
    let mut tree_times = Vec::with_capacity(UPDATES);
    for round in 1..=UPDATES as u64 {
        let event = update(round + 100);
        let start = Instant::now();
        app.handle(event);
        tree_times.push(start.elapsed());
    }
    println!(
        "ui update with {SITES} sites and the callers tree on screen: median {:?} over {UPDATES}",
        median(tree_times)
    );
    app.handle(Event::Key(Key::Esc));
    let mut sort_times = Vec::new();
    for _ in 0..14 {
        let start = Instant::now();
        app.handle(Event::Key(Key::Char('s')));
        sort_times.push(start.elapsed());
    }
    println!(
        "ui re-sort of {SITES} sites (s key): median {:?}",
        median(sort_times)
    );
}
