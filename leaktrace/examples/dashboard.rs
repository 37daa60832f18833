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

use leaktrace::{
    schema::{
        ChunkSize, Counters, ExitStatus, FallbackSummary, Frame, Growth, GrowthClass, HeapReport,
        Mode, ProbeCost, ProcessReport, Processed, SiteCounters, SiteHeap, SiteReport, Snapshot,
        SCHEMA,
    },
    ui::{self, Action, App, Event, Live, Update},
};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};

struct Options {
    sites: u64,
    exit_after: Option<f64>,
    panic_after: Option<f64>,
    interval: Duration,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        sites: 40,
        exit_after: None,
        panic_after: None,
        interval: Duration::from_secs(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<f64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--sites" => options.sites = value()? as u64,
            "--exit-after" => options.exit_after = Some(value()?),
            "--panic-after" => options.panic_after = Some(value()?),
            "--interval-ms" => options.interval = Duration::from_millis(value()? as u64),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn frame(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        addr: 0x5555_5555_0000 + u64::from(line),
        module: Some("/opt/demo/bin/demo-service".to_string()),
        offset: Some(u64::from(line) * 16),
        build_id: None,
        function: Some(function.to_string()),
        file: Some(format!("/src/demo/{file}")),
        line: Some(line),
        inlined: false,
    }
}

fn libc_frame(function: &str) -> Frame {
    Frame {
        addr: 0x7fff_0000_0000,
        module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()),
        offset: Some(0x2_9d90),
        build_id: None,
        function: Some(function.to_string()),
        file: None,
        line: None,
        inlined: false,
    }
}

/// What a demo service looks like `t` seconds in: one steady leak, one cache that fills up
/// and stops, the rest churning.
fn snapshot(t: f64, options: &Options) -> Snapshot {
    let per_min = |bytes_per_s: f64| Some(bytes_per_s * 60.0);
    let growth = |class, slope: Option<f64>| Growth {
        bytes_per_mib_processed: slope.map(|s| s / 30.0),
        bytes_per_min: slope,
        r2_processed: slope.map(|_| 0.97),
        r2_time: slope.map(|_| 0.99),
        recent_bytes_per_min: slope,
        recent_bytes_per_mib_processed: slope.map(|s| s / 30.0),
        class,
        samples: t as usize,
    };
    let site = |id: u64, bytes: u64, growth: Growth, frames: Vec<Frame>| SiteReport {
        id: format!("{id:x}-{id}"),
        counters: SiteCounters {
            outstanding_bytes: bytes,
            outstanding_count: bytes / 100 + 1,
            allocated_bytes: bytes * 3,
            allocated_count: bytes / 30 + 1,
            freed_bytes: bytes * 2,
            freed_count: bytes / 50,
            oldest_age_s: Some(t),
            aged_outstanding_bytes: bytes / 2,
            aged_outstanding_count: bytes / 200,
        },
        growth,
        leak_rank: u32::try_from(id + 1).unwrap_or(u32::MAX),
        heap: SiteHeap::default(),
        frames,
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
    let outstanding_bytes = sites.iter().map(|s| s.counters.outstanding_bytes).sum();
    let outstanding_count = sites.iter().map(|s| s.counters.outstanding_count).sum();
    Snapshot {
        schema: SCHEMA.to_string(),
        generated_at: "2026-11-23T18:00:00Z".to_string(),
        duration_s: t,
        mode: Mode::Exact,
        system_wide: false,
        unwinding: None,
        interval_s: options.interval.as_secs_f64(),
        min_age_s: 0.0,
        processed: Processed::Both,
        complete: false,
        cost: Some(ProbeCost::new(Some(1_300.0), Some(2_400.0))),
        processes: vec![ProcessReport {
            pid: 4242,
            comm: "demo-service".to_string(),
            exe: "/opt/demo/bin/demo-service".to_string(),
            alive: !exited,
            exit: exited.then_some(ExitStatus::Code(0)),
            exact: true,
            libc: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            hooked_functions: vec!["malloc".to_string(), "free".to_string()],
            outstanding_bytes,
            outstanding_count,
            allocated_bytes: outstanding_bytes * 3,
            allocated_count: (t * 1500.0) as u64,
            freed_count: (t * 1400.0) as u64,
            bytes_processed: Some((t * 1_048_576.0) as u64),
            heap: Some(HeapReport {
                brk_bytes: 135_168,
                brk_calls: 40,
                brk_failures: if fallbacks { 3 } else { 0 },
                fallback_mmaps: if fallbacks {
                    FallbackSummary {
                        count: 3,
                        bytes: (1 << 20) + 2 * 135_168,
                        chunk_sizes: vec![
                            ChunkSize {
                                bytes: 1 << 20,
                                count: 1,
                            },
                            ChunkSize {
                                bytes: 135_168,
                                count: 2,
                            },
                        ],
                    }
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
            }),
            counters: Counters {
                unknown_frees: 2,
                ..Counters::default()
            },
            sites,
        }],
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let mut app = App::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let started = Instant::now();
    ui::run_terminal(async |dash| -> anyhow::Result<()> {
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
    let options = match options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("dashboard example: {err}");
            return ExitCode::FAILURE;
        }
    };
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
