//! The overhead meter: probe hits per second and the calibrated cost of one hit, checked on a
//! fixture whose allocation rate is known.

use std::time::Duration;

use crate::common::{fixture, privileged, validate_schema, wait_for_snapshot, Run};

#[test]
fn the_cost_meter_sees_the_fixture_s_probe_rate() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("snapshot.json");
    let mut run = Run::start(&[
        "--interval",
        "1s",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--",
        fixture.to_str().expect("utf-8 path"),
        "steady",
        "6",
    ]);
    // An interval snapshot while the loop runs, its rate taken over a whole interval.
    let snapshot = wait_for_snapshot(&json, Duration::from_secs(20), |s| {
        s["complete"] == false
            && s["duration_s"].as_f64().unwrap_or(0.0) >= 2.5
            && s["cost"]["probe_hits_per_s"].is_number()
    });
    validate_schema(&snapshot);
    run.wait_for("finished steady", Duration::from_secs(30));
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "leaktrace failed:\n{}", lines.join("\n"));

    let cost = &snapshot["cost"];
    // steady: every 10 ms (plus the loop's own time) one leaked malloc (entry + return) and 10
    // malloc + free pairs (entry + return + free): at most 100 x (2 + 10 x 3) = 3,200 hits/s.
    // Under load the loop runs slower than that, so the floor is what the same snapshot
    // counted: each allocation is two hits (entry, return), each free one, over the run.
    let rate = cost["probe_hits_per_s"].as_f64().expect("probe_hits_per_s");
    let process = &snapshot["processes"][0];
    let counted = |key: &str| process[key].as_u64().expect("a count") as f64;
    let duration = snapshot["duration_s"].as_f64().expect("duration_s");
    let average = (2.0 * counted("allocated_count") + counted("freed_count")) / duration;
    assert!(
        average > 0.0 && (average / 2.0..=3_200.0 * 1.5).contains(&rate),
        "probe_hits_per_s {rate} is neither near the {average:.0}/s counted over the run nor \
         under the fixture's 3,200/s: {cost}"
    );
    let ns_per_hit = cost["ns_per_hit"].as_f64().expect("ns_per_hit");
    assert!(
        ns_per_hit > 0.0 && ns_per_hit < 100_000.0,
        "ns_per_hit {ns_per_hit} is not a plausible cost of a uprobe hit: {cost}"
    );
    let pct = cost["estimated_overhead_pct"]
        .as_f64()
        .expect("estimated_overhead_pct");
    let expected = rate * ns_per_hit / 1e9 * 100.0;
    assert!(
        (pct - expected).abs() <= 1e-9 * expected.max(1.0),
        "estimated_overhead_pct {pct} is not hits/s x ns/hit ({expected})"
    );
}
