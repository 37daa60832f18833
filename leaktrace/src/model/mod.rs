//! The one aggregator: the reported totals, ranks and derived numbers, exact and growth mode
//! alike, are computed here from what the tracer and the heap tracker saw; the heap's own
//! numbers come from `heap`, the slopes from `growth`, unwinding's counters from `unwind`, and
//! the dashboard derives a few of its own (docs/architecture.md lists them). Pure: no I/O, no
//! clocks read, no symbols named. The session feeds it and every view reads what it produces
//! (the `schema` types).
//!
//! - `totals`: per-site and per-process totals (exact mode from the maps, growth mode from
//!   heap growth by stack);
//! - `sites`: growth series and verdicts, leak ranks, heap-only sites;
//! - `dashboard`: what the dashboard derives from snapshots (rates, sums, fallback sites);
//! - `estimate`, `burst_plan`: growth mode's leak estimate from short exact bursts (sampled
//!   blocks that survive), and when bursts run within the overhead budget;
//! - `functions`: outstanding bytes by function (self and cumulative) and call trees, for
//!   `functions[]`, `report --tree` and the dashboard's tree views;
//! - `process`: work processed, RSS growth and its explained share, the heap object, the
//!   order of system-wide rows, the probe cost.
mod burst_plan;
pub mod dashboard;
mod estimate;
pub mod functions;
mod process;
mod sites;
mod totals;

pub use burst_plan::{BurstCpu, BurstPlan, CpuReading};
pub use estimate::{estimated_site, BurstWindow, SiteEstimate, SurvivalWatch};
pub use functions::{function_totals, CallTree, StackCost, TreeDirection};
pub use process::{
    by_heap_growth, growth_event_ns, heap_growth_bytes, heap_report, process_heap_growth,
    process_slopes, work_done, ProcessMemory, SinceStart,
};
pub use sites::{site_reports, SiteEvidence, SiteSeries};
pub use totals::{growth_totals, process_totals, GrowthClock, ProcessTotals, SiteAges};
