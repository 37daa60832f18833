//! What the dashboard shows besides the JSON snapshot. The numbers it derives from
//! successive snapshots (rates) or from one (sums, heap growth, fallback sites) are the
//! model's (`model::dashboard`); [`Live`] holds only what no snapshot has.

/// Live data delivered with each snapshot ([`super::Update`]). `Live::default()` is valid:
/// it only says that nothing beyond the snapshot is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Live {
    /// Seconds since tracing started when this update was made; `None` uses the snapshot's
    /// `duration_s`.
    pub uptime_s: Option<f64>,
    /// eBPF probe hits per second over the last interval, all targets together; `None` until
    /// the tracer counts them (the header then says "n/a").
    pub probe_hits_per_s: Option<f64>,
}
