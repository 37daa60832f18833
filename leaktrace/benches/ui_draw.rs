//! How long the dashboard takes to draw a frame with 10,000 allocation sites (issue 4 asks
//! for under 20 ms), and how long an update with that many sites takes (sorting, filtering
//! and history happen there, not while drawing).
//!
//! `cargo bench -p leaktrace --bench ui_draw` prints medians; it asserts nothing.
use std::time::{Duration, Instant};

use leaktrace::{
    schema::{
        Counters, Frame, Growth, GrowthClass, Mode, ProcessReport, Processed, SiteCounters,
        SiteHeap, SiteReport, Snapshot, SCHEMA,
    },
    ui::{App, Event, Key, Live, Update},
};
use ratatui::{backend::TestBackend, Terminal};

const SITES: u64 = 10_000;
const DRAWS: usize = 200;
const UPDATES: usize = 20;

fn frame(function: String, line: u32) -> Frame {
    Frame {
        addr: 0x5555_0000_0000 + u64::from(line),
        module: Some("/usr/lib/service/libservice-core.so".to_string()),
        offset: Some(u64::from(line)),
        build_id: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
        function: Some(function),
        file: Some("/build/service/src/handlers/request.rs".to_string()),
        line: Some(line),
        inlined: line.is_multiple_of(3),
    }
}

/// 10,000 sites with 8-frame stacks of long, Rust-like names; outstanding bytes change with
/// `round` so successive updates re-sort.
fn snapshot(round: u64) -> Snapshot {
    let sites = (0..SITES)
        .map(|i| {
            let outstanding = (i * 7919 + round * 104_729) % 1_000_000 + 1;
            SiteReport {
                id: format!("{i:x}-{i}"),
                counters: SiteCounters {
                    outstanding_bytes: outstanding,
                    outstanding_count: outstanding / 64 + 1,
                    allocated_bytes: outstanding * 4,
                    allocated_count: outstanding / 16 + 1,
                    freed_bytes: outstanding * 3,
                    freed_count: outstanding / 32,
                    oldest_age_s: Some((i % 600) as f64),
                    aged_outstanding_bytes: outstanding / 2,
                    aged_outstanding_count: outstanding / 128,
                },
                growth: Growth {
                    bytes_per_mib_processed: Some((i % 977) as f64 * 13.0),
                    bytes_per_min: Some((i % 613) as f64 * 101.0),
                    r2_processed: Some(0.9),
                    r2_time: Some(0.85),
                    recent_bytes_per_min: Some(1.0),
                    recent_bytes_per_mib_processed: Some(1.0),
                    class: if i.is_multiple_of(50) {
                        GrowthClass::LeakSuspect
                    } else {
                        GrowthClass::Churn
                    },
                    samples: 40,
                },
                leak_rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                heap: SiteHeap::default(),
                frames: (0..8u32)
                    .map(|depth| {
                        frame(
                            format!(
                                "service::handlers::request::<impl service::Handler for \
                                 service::RequestContext<T>>::handle_{i}_{depth}"
                            ),
                            depth + 1,
                        )
                    })
                    .collect(),
            }
        })
        .collect::<Vec<_>>();
    Snapshot {
        schema: SCHEMA.to_string(),
        generated_at: "2026-11-23T18:00:00Z".to_string(),
        duration_s: round as f64,
        mode: Mode::Exact,
        system_wide: false,
        unwinding: None,
        interval_s: 1.0,
        min_age_s: 0.0,
        processed: Processed::Both,
        complete: false,
        cost: None,
        processes: vec![ProcessReport {
            pid: 4242,
            comm: "service".to_string(),
            exe: "/usr/bin/service".to_string(),
            alive: true,
            exit: None,
            exact: true,
            libc: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            hooked_functions: vec!["malloc".to_string()],
            outstanding_bytes: sites.iter().map(|s| s.counters.outstanding_bytes).sum(),
            outstanding_count: sites.iter().map(|s| s.counters.outstanding_count).sum(),
            allocated_bytes: 0,
            allocated_count: round * 1000,
            freed_count: round * 900,
            bytes_processed: Some(round << 20),
            heap: None,
            counters: Counters::default(),
            sites,
        }],
    }
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
