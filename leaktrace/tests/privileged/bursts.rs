//! Privileged tests of growth mode's bursts (issue 13): a small leak among larger temporaries
//! must be the best-ranked estimated site, while heap-growth events (which name the temporary
//! that crossed the heap's top) never rank a site as a leak; a cache that fills and then stops
//! and pure churn are no leak. The fixture (tests/fixtures/bursts.c) runs a paced request loop
//! and says how many bytes it leaked. The main case (a 160-byte leak among 20-44 KiB
//! temporaries) runs at the default budget, until four bursts are in; the others at 4% for
//! 30 s.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Seconds the fixture serves requests, and the overhead budget, for the tests that do not use
/// the default: a 4% budget samples in 30 s about what the default 1% samples in 2 minutes.
/// The cache test needs it: its cache fills within 8 s, before the default's first burst.
const SERVE_S: u32 = 30;
const BUDGET_PCT: &str = "4";

/// At the default budget: bursts the fixture serves until the tracer has harvested (the
/// verdict needs three: two whose samples a later one confirms), and the longest it serves.
/// On this 2-CPU machine, quiet or loaded, a burst costs 0.1-0.3 s of the target's CPU, so 1%
/// allows one every 10-30 s: 4 bursts in 40-120 s, the "within about 2 minutes". The
/// cap is only there so a tracer that never bursts fails instead of hanging.
const DEFAULT_BUDGET_BURSTS: u64 = 4;
const DEFAULT_BUDGET_CAP_S: u32 = 240;

/// How a test runs the fixture: `serve_s` seconds at `--overhead-budget budget`, or, at the
/// default budget (`None`), until the snapshot shows `until_bursts` bursts (at most `serve_s`).
struct Serve {
    serve_s: u32,
    budget: Option<&'static str>,
    until_bursts: Option<u64>,
}

const FIXED: Serve = Serve {
    serve_s: SERVE_S,
    budget: Some(BUDGET_PCT),
    until_bursts: None,
};

const DEFAULT_BUDGET: Serve = Serve {
    serve_s: DEFAULT_BUDGET_CAP_S,
    budget: None,
    until_bursts: Some(DEFAULT_BUDGET_BURSTS),
};

/// Run `bursts MODE SECONDS THREADS LEAK_MIN LEAK_MAX BIG_MIN BIG_MAX` under growth mode; the
/// final snapshot's only process and the fixture's leak rate (B/s).
fn trace_bursts(
    mode: &str,
    threads: u32,
    leak: (u32, u32),
    big: (u32, u32),
    serve: &Serve,
) -> (Value, f64) {
    // One at a time: each attaches and detaches uprobes on libc, which takes longer the busier
    // the machine, and the probes fire meanwhile (the budget then allows fewer bursts).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fixture = fixture("bursts", &[]);
    let args: Vec<String> = [
        mode.to_string(),
        serve.serve_s.to_string(),
        threads.to_string(),
        leak.0.to_string(),
        leak.1.to_string(),
        big.0.to_string(),
        big.1.to_string(),
    ]
    .into();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut options = vec!["--mode", "growth", "--interval", "2s"];
    if let Some(budget) = serve.budget {
        options.extend(["--overhead-budget", budget]);
    }
    options.extend(["--json", json.to_str().expect("utf-8 path"), "--"]);
    options.push(fixture.to_str().expect("utf-8 path"));
    options.extend(args.iter().map(String::as_str));
    let started = Instant::now();
    let mut run = Run::start(&options);
    if let Some(wanted) = serve.until_bursts {
        // Poll the snapshot leaktrace rewrites every interval; once it holds enough bursts,
        // stop the fixture's requests (SIGUSR1). What is asserted is the final snapshot.
        let deadline = started + Duration::from_secs(u64::from(serve.serve_s));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            let bursts = std::fs::read(&json)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .and_then(|snapshot| snapshot["processes"][0]["bursts"]["bursts"].as_u64())
                .unwrap_or(0);
            if bursts >= wanted {
                eprintln!(
                    "bursts test ({mode}, default budget): {bursts} bursts after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                for child in children_of(run.pid()) {
                    // SAFETY: kill has no memory preconditions; the pid is our fixture, a
                    // child of the leaktrace we started, still running (it waits for stdin).
                    unsafe { libc::kill(child as i32, libc::SIGUSR1) };
                }
                break;
            }
        }
    }
    run.wait_for(
        &format!("finished {mode}"),
        Duration::from_secs(u64::from(serve.serve_s) + 60),
    );
    let (snapshot, lines) = release_and_read(run, &json);
    let leak_rate = lines
        .iter()
        .find_map(|l| {
            let rest = l.split("leaked ").nth(1)?;
            let mut words = rest.split_whitespace();
            let bytes: f64 = words.next()?.parse().ok()?;
            let seconds: f64 = words.nth(2)?.parse().ok()?;
            Some(bytes / seconds)
        })
        .unwrap_or_else(|| {
            panic!(
                "the fixture did not say what it leaked:\n{}",
                lines.join("\n")
            )
        });
    (only_process(&snapshot).clone(), leak_rate)
}

/// The pids whose parent is `pid` (/proc/PID/task/*/children).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn estimated_sites(process: &Value) -> &[Value] {
    process["estimated_sites"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Growth-event sites say what grew the heap: none may be called a leak.
fn assert_growth_sites_rank_no_leak(process: &Value) {
    for site in process["sites"].as_array().expect("sites") {
        assert_ne!(site["growth"]["class"], "leak_suspect", "{site:#}");
    }
}

fn assert_bursts_ran(process: &Value, at_least: u64) {
    let bursts = &process["bursts"];
    assert!(
        bursts["bursts"].as_u64().unwrap_or(0) >= at_least,
        "fewer than {at_least} bursts: {bursts:#}"
    );
    assert!(bursts.get("unavailable").is_none(), "{bursts:#}");
}

/// The leak must be the best-ranked estimated site, a leak suspect, with an estimate of the
/// right order: the rate is scaled by time, and a paced loop slowed by the probes while they
/// are attached runs flat out to catch up during the burst (measured here: up to 1.7x the
/// true rate), or falls behind under load (lower).
fn assert_leak_ranked_first(process: &Value, leak_rate: f64) {
    assert_bursts_ran(process, 3);
    assert_growth_sites_rank_no_leak(process);
    let sites = estimated_sites(process);
    let top = sites
        .iter()
        .find(|s| s["estimate_rank"] == 1)
        .unwrap_or_else(|| panic!("no estimated site ranked first: {process:#}"));
    assert_eq!(top_function(top), Some("remember_request"), "{top:#}");
    assert_eq!(top["class"], "leak_suspect", "{top:#}");
    assert_eq!(top["estimated"], true);
    let rate = top["surviving_bytes_per_s"].as_f64().expect("rate");
    let (low, high) = (
        top["surviving_bytes_per_s_interval"]["low"]
            .as_f64()
            .expect("low"),
        top["surviving_bytes_per_s_interval"]["high"]
            .as_f64()
            .expect("high"),
    );
    assert!(low <= rate && rate <= high, "{top:#}");
    assert!(
        rate > 0.0 && rate <= 4.0 * leak_rate,
        "estimated {rate:.0} B/s surviving for a true leak of {leak_rate:.0} B/s: {top:#}"
    );
    for other in sites.iter().filter(|s| s["estimate_rank"] != 1) {
        assert_ne!(other["class"], "leak_suspect", "{other:#}");
    }
}

#[test]
fn a_160_byte_leak_among_20_to_44_kib_temporaries_is_ranked_first_at_the_default_budget() {
    if !privileged() {
        return;
    }
    let (process, leak_rate) =
        trace_bursts("leak", 1, (160, 200), (20 << 10, 44 << 10), &DEFAULT_BUDGET);
    assert_leak_ranked_first(&process, leak_rate);
    // The default budget, and its cost measured on the target itself.
    let bursts = &process["bursts"];
    assert_eq!(bursts["budget_pct"], 1.0, "{bursts:#}");
    assert!(
        bursts["target_cpu_overhead_pct"].as_f64().is_some(),
        "the bursts' cost on the target's CPU time was never measured: {bursts:#}"
    );
}

#[test]
fn a_1_kib_leak_among_20_to_44_kib_temporaries_is_ranked_first() {
    if !privileged() {
        return;
    }
    let (process, leak_rate) = trace_bursts("leak", 1, (1000, 1400), (20 << 10, 44 << 10), &FIXED);
    assert_leak_ranked_first(&process, leak_rate);
}

#[test]
fn a_64_byte_leak_among_mmapped_temporaries_is_ranked_first() {
    if !privileged() {
        return;
    }
    let (process, leak_rate) = trace_bursts("leak", 1, (48, 80), (100 << 10, 200 << 10), &FIXED);
    assert_leak_ranked_first(&process, leak_rate);
}

#[test]
fn a_leak_from_two_threads_is_ranked_first() {
    if !privileged() {
        return;
    }
    let (process, leak_rate) = trace_bursts("leak", 2, (160, 200), (20 << 10, 44 << 10), &FIXED);
    assert_leak_ranked_first(&process, leak_rate);
}

#[test]
fn a_cache_that_fills_then_stops_is_no_leak() {
    if !privileged() {
        return;
    }
    let (process, _) = trace_bursts("cache", 1, (160, 200), (20 << 10, 44 << 10), &FIXED);
    assert_bursts_ran(&process, 3);
    assert_growth_sites_rank_no_leak(&process);
    let sites = estimated_sites(&process);
    for site in sites {
        assert_ne!(site["class"], "leak_suspect", "{site:#}");
    }
    // The bursts did see the cache fill (else this test could not fail).
    let cache = sites
        .iter()
        .find(|s| top_function(s) == Some("cache_insert"))
        .unwrap_or_else(|| panic!("the cache's allocations were never sampled: {process:#}"));
    assert!(cache["samples"].as_u64().unwrap_or(0) > 0, "{cache:#}");
    assert_eq!(cache["class"], "plateau", "{cache:#}");
}

#[test]
fn pure_churn_is_no_leak() {
    if !privileged() {
        return;
    }
    let (process, _) = trace_bursts("churn", 1, (160, 200), (20 << 10, 44 << 10), &FIXED);
    assert_bursts_ran(&process, 3);
    assert_growth_sites_rank_no_leak(&process);
    let sites = estimated_sites(&process);
    assert!(
        sites
            .iter()
            .any(|s| s["allocations_seen"].as_u64().unwrap_or(0) > 0),
        "the bursts saw no allocation: {process:#}"
    );
    for site in sites {
        assert_ne!(site["class"], "leak_suspect", "{site:#}");
        assert_eq!(site["samples"], 0, "{site:#}");
    }
}
