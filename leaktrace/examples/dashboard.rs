//! The dashboard on synthetic data, driven the way the session drives it (see
//! docs/dashboard.md): no eBPF, no root. For trying the TUI and its terminal handling.
//!
//! ```sh
//! cargo run -p leaktrace --example dashboard                      # q quits
//! cargo run -p leaktrace --example dashboard -- --exit-after 5    # the target "exits"
//! cargo run -p leaktrace --example dashboard -- --panic-after 3   # the terminal must survive
//! cargo run -p leaktrace --example dashboard -- --sites 10000     # a big table
//! ```
use std::{process::ExitCode, time::Duration};

use clap::Parser;
use leaktrace::{
    dashboard::{self, Action, App, Event, Live, Update},
    schema::{
        Counters, ExitStatus, FallbackSummary, Frame, Growth, GrowthClass, HeapReport, ProbeCost,
        SiteHeap, Snapshot,
    },
    synthetic,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};

/// The leaktrace dashboard on synthetic data: no eBPF, no root.
#[derive(Debug, Parser)]
struct Options {
    /// Allocation sites in the table.
    #[arg(long, default_value_t = 40)]
    sites: u64,
    /// The target "exits" after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    exit_after: Option<f64>,
    /// Panic after this many seconds (the terminal must survive it).
    #[arg(long, value_name = "SECONDS")]
    panic_after: Option<f64>,
    /// Milliseconds between samples.
    #[arg(long = "interval-ms", value_name = "MS", default_value = "1000", value_parser = parse_millis)]
    interval: Duration,
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|err| format!("{text}: {err}"))
}

const EXE: &str = "/opt/demo/bin/demo-service";

fn frame(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        addr: 0x5555_5555_0000 + u64::from(line),
        offset: Some(u64::from(line) * 16),
        file: Some(format!("/src/demo/{file}")),
        ..synthetic::frame(function, EXE, Some((file, line)))
    }
}

fn libc_frame(function: &str) -> Frame {
    Frame {
        addr: 0x7fff_0000_0000,
        offset: Some(0x2_9d90),
        ..synthetic::frame(function, synthetic::LIBC, None)
    }
}

/// What a demo service looks like `t` seconds in: one steady leak, one cache that fills up
/// and stops, the rest churning.
fn snapshot(t: f64, options: &Options) -> Snapshot {
    let per_min = |bytes_per_s: f64| Some(bytes_per_s * 60.0);
    let growth = |class, slope: Option<f64>| Growth {
        r2_processed: slope.map(|_| 0.97),
        r2_time: slope.map(|_| 0.99),
        samples: t as usize,
        ..synthetic::growth(slope.map(|s| s / 30.0), slope, class)
    };
    let site = |id: u64, bytes: u64, growth: Growth, frames: Vec<Frame>| {
        let mut site = synthetic::site(
            &format!("{id:x}-{id}"),
            bytes,
            bytes / 100 + 1,
            growth,
            Some(t),
            frames,
        );
        site.leak_rank = u32::try_from(id + 1).unwrap_or(u32::MAX);
        site
    };
    let mut sites = vec![
        site(
            0,
            (t * 10_000.0) as u64,
            growth(GrowthClass::LeakSuspect, per_min(10_000.0)),
            vec![
                frame("steady_leak", "leak.c", 133),
                frame("handle_request", "server.c", 88),
                frame("main", "server.c", 12),
                libc_frame("__libc_start_call_main"),
            ],
        ),
        site(
            1,
            (t.min(5.0) * 80_000.0) as u64,
            growth(GrowthClass::Plateau, per_min(1_000.0)),
            vec![
                libc_frame("strdup"),
                frame("cache_insert", "cache.c", 41),
                frame("handle_request", "server.c", 90),
            ],
        ),
    ];
    for id in 2..options.sites {
        let bytes = (id * 7919 + (t as u64) * 104_729) % 50_000 + 64;
        sites.push(site(
            id,
            bytes,
            growth(GrowthClass::Churn, Some(0.0)),
            vec![
                frame(
                    &format!(
                        "<demo::buffers::Pool<T> as demo::Recycle>::take_{id}::h0123456789abcdef"
                    ),
                    "pool.rs",
                    u32::try_from(id % 500).unwrap_or(0),
                ),
                frame("handle_request", "server.c", 91),
            ],
        ));
    }
    let fallbacks = t >= 5.0;
    if fallbacks {
        if let Some(leak) = sites.first_mut() {
            leak.heap = SiteHeap {
                fallback_mmap_count: 3,
                fallback_mmap_bytes: (1 << 20) + 2 * 135_168,
                direct_mmap_bytes: 0,
                anon_mmap_bytes: (1 << 20) + 2 * 135_168,
                ..SiteHeap::default()
            };
        }
    }
    let exited = options.exit_after.is_some_and(|after| t >= after);
    let mut process = synthetic::process(4242, "demo-service", sites);
    let outstanding_bytes = process.outstanding_bytes;
    process.exe = EXE.to_string();
    process.alive = !exited;
    process.exit = exited.then_some(ExitStatus::Code(0));
    process.allocated_bytes = outstanding_bytes * 3;
    process.allocated_count = (t * 1500.0) as u64;
    process.freed_count = (t * 1400.0) as u64;
    process.bytes_processed = Some((t * 1_048_576.0) as u64);
    process.heap = Some(HeapReport {
        brk_bytes: 135_168,
        brk_calls: 40,
        brk_failures: if fallbacks { 3 } else { 0 },
        fallback_mmaps: if fallbacks {
            synthetic::fallbacks(&[(1 << 20, 1), (135_168, 2)])
        } else {
            FallbackSummary::default()
        },
        anon_mmap_outstanding_bytes: 2 << 20,
        anon_reserved_bytes: 64 << 20,
        rss_bytes: Some((8 << 20) + outstanding_bytes),
        vm_data_bytes: Some(100 << 20),
        rss_growth_bytes: Some(outstanding_bytes as i64),
        explained_share: Some(0.93),
        events: 100,
    });
    process.counters = Counters {
        unknown_frees: 2,
        ..Counters::default()
    };
    let mut snapshot = synthetic::snapshot(t, vec![process]);
    snapshot.interval_s = options.interval.as_secs_f64();
    snapshot.cost = Some(ProbeCost::new(Some(1_300.0), Some(2_400.0)));
    snapshot
}

async fn run(options: Options) -> anyhow::Result<()> {
    let mut app = App::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let started = Instant::now();
    dashboard::run_terminal(async |dash| -> anyhow::Result<()> {
        app.handle(dash.size_event()?);
        let mut next_sample = started;
        loop {
            dash.draw(&app)?;
            tokio::select! {
                event = dash.next_event() => match event {
                    Some(Ok(event)) => match app.handle(event) {
                        Some(Action::Quit) => return Ok(()),
                        Some(Action::WriteSnapshot) => {
                            app.set_status("snapshot written to /tmp/demo.json (not really)");
                        }
                        Some(Action::TraceProcess(pid)) => {
                            app.set_status(format!("would trace pid {pid}"));
                        }
                        Some(Action::Redraw) => dash.redraw_all()?,
                        None => {}
                    },
                    Some(Err(err)) => return Err(err.into()),
                    None => return Ok(()),
                },
                _ = sleep_until(next_sample) => {
                    let t = started.elapsed().as_secs_f64();
                    if options.panic_after.is_some_and(|after| t >= after) {
                        panic!("demo panic after {t:.1}s, as asked");
                    }
                    app.handle(Event::Update(Box::new(Update {
                        snapshot: snapshot(t, &options),
                        live: Live {
                            uptime_s: Some(t),
                            probe_hits_per_s: Some(2900.0),
                        },
                    })));
                    next_sample += options.interval;
                }
                _ = sigterm.recv() => return Ok(()),
            }
        }
    })
    .await?
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dashboard example: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dashboard example: {err:#}");
            ExitCode::FAILURE
        }
    }
}
