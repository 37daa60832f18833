//! Per-site history of outstanding bytes for the sparklines, built by the dashboard from
//! successive snapshots (the snapshot itself only has the latest value).
use std::collections::{HashMap, VecDeque};

use crate::schema::Snapshot;

/// Samples kept per site: four minutes at the TUI's default 1 s interval, wider than any
/// sparkline a terminal can show.
pub const HISTORY_CAPACITY: usize = 240;

/// Outstanding bytes per (pid, site id), tagged with the update generation they came from so
/// that a paused view can show the series as it was when it froze.
#[derive(Clone, Debug, Default)]
pub(crate) struct SiteHistory {
    by_pid: HashMap<u32, HashMap<String, VecDeque<(u64, u64)>>>,
}

impl SiteHistory {
    /// Appends every site's outstanding bytes of `snapshot` as generation `generation`, and
    /// forgets sites (and processes) the snapshot no longer has, so memory stays bounded by
    /// the live sites.
    pub(crate) fn record(&mut self, generation: u64, snapshot: &Snapshot) {
        for process in &snapshot.processes {
            let sites = self.by_pid.entry(process.pid).or_default();
            for site in &process.sites {
                let series = match sites.get_mut(site.id.as_str()) {
                    Some(series) => series,
                    None => sites.entry(site.id.clone()).or_default(),
                };
                if series.len() >= HISTORY_CAPACITY {
                    series.pop_front();
                }
                series.push_back((generation, site.counters.outstanding_bytes));
            }
            sites.retain(|_, series| series.back().is_some_and(|(g, _)| *g == generation));
        }
        self.by_pid
            .retain(|pid, _| snapshot.processes.iter().any(|p| p.pid == *pid));
    }

    /// The newest at most `max_len` samples of a site, oldest first, up to and including
    /// generation `up_to`.
    pub(crate) fn series(&self, pid: u32, site_id: &str, up_to: u64, max_len: usize) -> Vec<u64> {
        let Some(series) = self.by_pid.get(&pid).and_then(|s| s.get(site_id)) else {
            return Vec::new();
        };
        let end = series.partition_point(|(g, _)| *g <= up_to);
        let start = end.saturating_sub(max_len);
        series.range(start..end).map(|(_, bytes)| *bytes).collect()
    }
}

/// Goroutine counts per (pid, group), for the Go panel's sparklines. A group is named by what
/// identifies it in the report (state, wait reason, creating function, first frame): the
/// snapshot gives groups no id.
#[derive(Clone, Debug, Default)]
pub(crate) struct GoroutineHistory {
    by_group: HashMap<(u32, String), VecDeque<(u64, u64)>>,
}

/// A goroutine group's name across snapshots.
pub(crate) fn group_key(group: &crate::schema::GoroutineGroupReport) -> String {
    let name = |frames: &[crate::schema::Frame]| {
        frames
            .first()
            .and_then(|f| f.function.clone())
            .unwrap_or_default()
    };
    format!(
        "{}|{}|{}|{}",
        group.state,
        group.wait_reason.as_deref().unwrap_or(""),
        name(&group.created_by),
        name(&group.frames)
    )
}

impl GoroutineHistory {
    /// Appends every Go group's count; forgets groups the snapshot no longer has.
    pub(crate) fn record(&mut self, generation: u64, snapshot: &Snapshot) {
        for process in &snapshot.processes {
            let Some(go) = &process.go else { continue };
            for group in &go.groups {
                let series = self
                    .by_group
                    .entry((process.pid, group_key(group)))
                    .or_default();
                if series.len() >= HISTORY_CAPACITY {
                    series.pop_front();
                }
                series.push_back((generation, group.count));
            }
        }
        self.by_group
            .retain(|_, series| series.back().is_some_and(|(g, _)| *g == generation));
    }

    /// The newest at most `max_len` counts of a group, oldest first, up to generation `up_to`.
    pub(crate) fn series(&self, pid: u32, key: &str, up_to: u64, max_len: usize) -> Vec<u64> {
        let Some(series) = self.by_group.get(&(pid, key.to_string())) else {
            return Vec::new();
        };
        let end = series.partition_point(|(g, _)| *g <= up_to);
        let start = end.saturating_sub(max_len);
        series.range(start..end).map(|(_, n)| *n).collect()
    }
}
