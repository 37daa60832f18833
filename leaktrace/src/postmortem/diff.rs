//! `leaktrace diff OLD NEW`: how each allocation site's outstanding memory changed between two
//! snapshots, of the same run or of different runs, on the same machine or not.
//!
//! Raw addresses change with ASLR and restarts, so sites are matched by what their frames mean:
//! function and module file name for symbolized frames, module file name and file offset for
//! the others (stable for one build). Processes are matched by pid when the executable is the
//! same, then by executable, then by command name. Every step pairs the i-th unmatched process
//! of a kind in OLD with the i-th of that kind in NEW, so the matching is the same both ways
//! round: what `diff(A, B)` calls new, `diff(B, A)` calls vanished.
use std::{cmp::Reverse, collections::BTreeMap, fmt::Write as _};

use super::read::{RecordedFrame, RecordedProcess, RecordedSite, RecordedSnapshot};
use crate::{
    format::{self, human_bytes},
    frames::basename,
};

/// What identifies an allocation site across runs and machines: per frame, innermost first,
/// `function@module`, `module+0xoffset` or `?` (a frame with neither).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey(pub Vec<String>);

impl SiteKey {
    pub fn of(site: &RecordedSite) -> SiteKey {
        SiteKey(site.frames.iter().map(frame_key).collect())
    }
}

fn frame_key(frame: &RecordedFrame) -> String {
    match &frame.function {
        Some(function) => {
            let module = frame.module.as_deref().map_or("?", basename);
            format!("{function}@{module}")
        }
        // Only the address is known: it means nothing in another process, so every such frame
        // looks the same.
        None => format::module_offset(frame).unwrap_or_else(|| "?".to_string()),
    }
}

/// A process as the diff names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessName {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
}

impl ProcessName {
    fn of(process: &RecordedProcess) -> ProcessName {
        ProcessName {
            pid: process.pid,
            comm: process.comm.clone(),
            exe: process.exe.clone(),
            outstanding_bytes: process.outstanding_bytes,
            outstanding_count: process.outstanding_count,
        }
    }
}

/// One site's outstanding memory in OLD and in NEW (zero where it is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteChange {
    pub key: SiteKey,
    /// `verify_request (app.c:14) via X509_STORE_CTX_new` (`format::site_label`)
    pub label: String,
    pub old_bytes: u64,
    pub old_count: u64,
    pub new_bytes: u64,
    pub new_count: u64,
}

impl SiteChange {
    pub fn bytes_change(&self) -> i128 {
        i128::from(self.new_bytes) - i128::from(self.old_bytes)
    }

    pub fn count_change(&self) -> i128 {
        i128::from(self.new_count) - i128::from(self.old_count)
    }
}

/// Two snapshots of one process (or of the same program in two runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessDiff {
    pub old: ProcessName,
    pub new: ProcessName,
    /// Sites in both, largest growth first.
    pub changed: Vec<SiteChange>,
    /// Sites only in NEW, largest first.
    pub new_sites: Vec<SiteChange>,
    /// Sites only in OLD, largest first.
    pub vanished_sites: Vec<SiteChange>,
    /// Go programs: goroutines and the runtime's heap profile in both.
    pub go: Option<GoDiff>,
}

/// Two snapshots of a Go program's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoDiff {
    pub old_goroutines: Option<u64>,
    pub new_goroutines: Option<u64>,
    /// Heap-profile stacks (in-use bytes and objects) in either, largest change first.
    pub heap: Vec<SiteChange>,
}

impl ProcessDiff {
    pub fn bytes_change(&self) -> i128 {
        i128::from(self.new.outstanding_bytes) - i128::from(self.old.outstanding_bytes)
    }

    pub fn count_change(&self) -> i128 {
        i128::from(self.new.outstanding_count) - i128::from(self.old.outstanding_count)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDiff {
    pub processes: Vec<ProcessDiff>,
    pub only_old: Vec<ProcessName>,
    pub only_new: Vec<ProcessName>,
}

/// Compare two snapshots.
pub fn diff(old: &RecordedSnapshot, new: &RecordedSnapshot) -> SnapshotDiff {
    let pairs = match_processes(&old.processes, &new.processes);
    let mut matched_old = vec![false; old.processes.len()];
    let mut matched_new = vec![false; new.processes.len()];
    let mut processes = Vec::new();
    for (i, j) in pairs {
        matched_old[i] = true;
        matched_new[j] = true;
        processes.push(diff_process(&old.processes[i], &new.processes[j]));
    }
    let unmatched = |list: &[RecordedProcess], matched: &[bool]| -> Vec<ProcessName> {
        list.iter()
            .zip(matched)
            .filter(|(_, &m)| !m)
            .map(|(p, _)| ProcessName::of(p))
            .collect()
    };
    SnapshotDiff {
        processes,
        only_old: unmatched(&old.processes, &matched_old),
        only_new: unmatched(&new.processes, &matched_new),
    }
}

/// Index pairs (old, new), in OLD's order.
fn match_processes(old: &[RecordedProcess], new: &[RecordedProcess]) -> Vec<(usize, usize)> {
    // Each rule is an equivalence (equal keys), applied to what earlier rules left unmatched.
    type Rule = fn(&RecordedProcess) -> (u32, &str);
    let rules: [Rule; 3] = [
        |p| (p.pid, p.exe.as_str()),
        |p| (0, p.exe.as_str()),
        |p| (0, p.comm.as_str()),
    ];
    let mut old_free = vec![true; old.len()];
    let mut new_free = vec![true; new.len()];
    let mut pairs = Vec::new();
    for rule in rules {
        for (i, old_process) in old.iter().enumerate() {
            if !old_free[i] {
                continue;
            }
            let key = rule(old_process);
            let found = new
                .iter()
                .enumerate()
                .find(|(j, p)| new_free[*j] && rule(p) == key);
            if let Some((j, _)) = found {
                old_free[i] = false;
                new_free[j] = false;
                pairs.push((i, j));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Outstanding bytes and blocks per site key; sites whose frames mean the same are summed.
#[derive(Default)]
struct KeyedSite {
    label: String,
    label_bytes: Option<u64>,
    bytes: u64,
    count: u64,
}

fn by_key(process: &RecordedProcess) -> BTreeMap<SiteKey, KeyedSite> {
    keyed(process.sites.iter().map(|site| {
        (
            site.frames.as_slice(),
            site.counters.outstanding_bytes,
            site.counters.outstanding_count,
            format::site_label(&site.frames),
        )
    }))
}

/// Sites (frames, bytes, count, label) summed by what their frames mean.
fn keyed<'a>(
    sites: impl Iterator<Item = (&'a [RecordedFrame], u64, u64, String)>,
) -> BTreeMap<SiteKey, KeyedSite> {
    let mut keyed: BTreeMap<SiteKey, KeyedSite> = BTreeMap::new();
    for (frames, bytes, count, label) in sites {
        let entry = keyed
            .entry(SiteKey(frames.iter().map(frame_key).collect()))
            .or_default();
        entry.bytes = entry.bytes.saturating_add(bytes);
        entry.count = entry.count.saturating_add(count);
        // Named after its largest member.
        if entry.label_bytes < Some(bytes) {
            entry.label = label;
            entry.label_bytes = Some(bytes);
        }
    }
    keyed
}

/// The Go heap profiles' stacks of two snapshots of one program, largest change first.
fn go_diff(old: &RecordedProcess, new: &RecordedProcess) -> Option<GoDiff> {
    if old.go.is_none() && new.go.is_none() {
        return None;
    }
    let heap_sites = |process: &RecordedProcess| {
        let sites = process
            .go
            .as_ref()
            .map(|go| go.heap_profile.sites.as_slice())
            .unwrap_or_default();
        keyed(sites.iter().map(|site| {
            (
                site.frames.as_slice(),
                site.inuse_bytes,
                site.inuse_objects,
                super::go_text::go_label(&site.frames),
            )
        }))
    };
    let (changed, appeared, vanished) = compare(heap_sites(old), heap_sites(new));
    let mut heap: Vec<SiteChange> = changed
        .into_iter()
        .chain(appeared)
        .chain(vanished)
        .collect();
    heap.sort_by(|a, b| {
        (Reverse(a.bytes_change().abs()), &a.key).cmp(&(Reverse(b.bytes_change().abs()), &b.key))
    });
    Some(GoDiff {
        old_goroutines: old.go.as_ref().and_then(|go| go.goroutines),
        new_goroutines: new.go.as_ref().and_then(|go| go.goroutines),
        heap,
    })
}

fn diff_process(old: &RecordedProcess, new: &RecordedProcess) -> ProcessDiff {
    let (changed, appeared, vanished) = compare(by_key(old), by_key(new));
    ProcessDiff {
        old: ProcessName::of(old),
        new: ProcessName::of(new),
        changed,
        new_sites: appeared,
        vanished_sites: vanished,
        go: go_diff(old, new),
    }
}

/// Sites in both (largest growth first), only in NEW and only in OLD (largest first).
fn compare(
    old_sites: BTreeMap<SiteKey, KeyedSite>,
    mut new_sites: BTreeMap<SiteKey, KeyedSite>,
) -> (Vec<SiteChange>, Vec<SiteChange>, Vec<SiteChange>) {
    let mut changed = Vec::new();
    let mut vanished = Vec::new();
    for (key, before) in old_sites {
        match new_sites.remove(&key) {
            Some(after) => changed.push(SiteChange {
                key,
                label: after.label,
                old_bytes: before.bytes,
                old_count: before.count,
                new_bytes: after.bytes,
                new_count: after.count,
            }),
            None => vanished.push(SiteChange {
                key,
                label: before.label,
                old_bytes: before.bytes,
                old_count: before.count,
                new_bytes: 0,
                new_count: 0,
            }),
        }
    }
    let mut appeared: Vec<SiteChange> = new_sites
        .into_iter()
        .map(|(key, after)| SiteChange {
            key,
            label: after.label,
            old_bytes: 0,
            old_count: 0,
            new_bytes: after.bytes,
            new_count: after.count,
        })
        .collect();
    // Growth first; among equal changes, the larger site first.
    changed.sort_by(|a, b| {
        let order = |s: &SiteChange| {
            (
                Reverse(s.bytes_change()),
                Reverse(s.count_change()),
                Reverse(s.new_bytes),
            )
        };
        order(a).cmp(&order(b)).then_with(|| a.key.cmp(&b.key))
    });
    appeared.sort_by(|a, b| (Reverse(a.new_bytes), &a.key).cmp(&(Reverse(b.new_bytes), &b.key)));
    vanished.sort_by(|a, b| (Reverse(a.old_bytes), &a.key).cmp(&(Reverse(b.old_bytes), &b.key)));
    (changed, appeared, vanished)
}

/// "+1.5 KiB (+1536 B)", "-100 B", "0 B".
fn signed_bytes(change: i128) -> String {
    let magnitude = u64::try_from(change.unsigned_abs()).unwrap_or(u64::MAX);
    let sign = match change.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    if magnitude < 1024 {
        format!("{sign}{magnitude} B")
    } else {
        format!("{sign}{} ({sign}{magnitude} B)", human_bytes(magnitude))
    }
}

fn signed(change: i128) -> String {
    if change > 0 {
        format!("+{change}")
    } else {
        change.to_string()
    }
}

fn process_title(p: &ProcessName) -> String {
    format!("pid {} ({})", p.pid, p.comm)
}

/// The diff as text; at most `top` rows per list.
pub fn render_diff(diff: &SnapshotDiff, old_name: &str, new_name: &str, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "leaktrace diff: {old_name} -> {new_name}");
    for process in &diff.processes {
        let _ = writeln!(
            out,
            "\n{} -> {}  {}\n  outstanding {} -> {}: {}, blocks {} -> {}: {}",
            process_title(&process.old),
            process_title(&process.new),
            process.new.exe,
            human_bytes(process.old.outstanding_bytes),
            human_bytes(process.new.outstanding_bytes),
            signed_bytes(process.bytes_change()),
            process.old.outstanding_count,
            process.new.outstanding_count,
            signed(process.count_change()),
        );
        site_table(
            &mut out,
            "Sites in both, largest growth first",
            &process.changed,
            top,
        );
        site_table(&mut out, "New sites", &process.new_sites, top);
        site_table(&mut out, "Vanished sites", &process.vanished_sites, top);
        if let Some(go) = &process.go {
            let count = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "  Go goroutines {} -> {}",
                count(go.old_goroutines),
                count(go.new_goroutines)
            );
            site_table(
                &mut out,
                &format!(
                    "Go heap profile (in use; each {}), largest change first",
                    crate::golang::LAG_NOTE
                ),
                &go.heap,
                top,
            );
        }
    }
    for (title, list) in [
        (format!("Processes only in {old_name}"), &diff.only_old),
        (format!("Processes only in {new_name}"), &diff.only_new),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        for p in list {
            let _ = writeln!(
                out,
                "  {}  {}: {} outstanding in {} blocks",
                process_title(p),
                p.exe,
                human_bytes(p.outstanding_bytes),
                p.outstanding_count
            );
        }
    }
    out
}

fn site_table(out: &mut String, title: &str, sites: &[SiteChange], top: usize) {
    if sites.is_empty() {
        let _ = writeln!(out, "  {title}: none");
        return;
    }
    let shown = sites.len().min(top);
    let of = if shown < sites.len() {
        format!(" (top {shown} of {})", sites.len())
    } else {
        format!(" ({})", sites.len())
    };
    let _ = writeln!(out, "  {title}{of}:");
    let _ = writeln!(
        out,
        "    {:>26} {:>8} {:>11} {:>11}  SITE",
        "CHANGE", "BLOCKS", "OLD", "NEW"
    );
    for site in &sites[..shown] {
        let _ = writeln!(
            out,
            "    {:>26} {:>8} {:>11} {:>11}  {}",
            signed_bytes(site.bytes_change()),
            signed(site.count_change()),
            human_bytes(site.old_bytes),
            human_bytes(site.new_bytes),
            site.label
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        postmortem::read::RecordedGrowth,
        schema::{Counters, SiteCounters},
    };

    fn frame(function: Option<&str>, module: &str, offset: u64, addr: u64) -> RecordedFrame {
        RecordedFrame {
            addr: Some(addr),
            module: Some(module.to_string()),
            offset: Some(offset),
            function: function.map(str::to_string),
            ..RecordedFrame::default()
        }
    }

    fn site(bytes: u64, frames: Vec<RecordedFrame>) -> RecordedSite {
        RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: bytes,
                outstanding_count: bytes / 100,
                oldest_age_s: None,
                ..SiteCounters::default()
            },
            growth: RecordedGrowth {
                bytes_per_mib_processed: None,
                bytes_per_min: None,
                r2_processed: None,
                r2_time: None,
                class: "unknown".to_string(),
            },
            leak_rank: 1,
            frames,
            ..Default::default()
        }
    }

    fn process(pid: u32, exe: &str, sites: Vec<RecordedSite>) -> RecordedProcess {
        RecordedProcess {
            pid,
            comm: basename(exe).to_string(),
            exe: exe.to_string(),
            alive: true,
            exit: None,
            outstanding_bytes: sites.iter().map(|s| s.counters.outstanding_bytes).sum(),
            outstanding_count: sites.iter().map(|s| s.counters.outstanding_count).sum(),
            allocated_bytes: 0,
            allocated_count: 0,
            freed_count: 0,
            bytes_processed: None,
            counters: Counters::default(),
            sites,
            ..Default::default()
        }
    }

    fn snapshot(processes: Vec<RecordedProcess>) -> RecordedSnapshot {
        RecordedSnapshot {
            schema: "leaktrace/1".to_string(),
            generated_at: String::new(),
            duration_s: 1.0,
            complete: true,
            mode: Some("exact".to_string()),
            processes,
        }
    }

    #[test]
    fn sites_match_across_aslr_and_machines_by_meaning() {
        // Run 1 on one machine, run 2 elsewhere: other addresses, other paths.
        let old = snapshot(vec![process(
            10,
            "/a/server",
            vec![
                site(
                    500,
                    vec![
                        frame(Some("leak"), "/a/server", 0x1100, 0x5555_0000_1100),
                        frame(None, "/usr/lib/libc.so.6", 0x29d90, 0x7f00_0002_9d90),
                    ],
                ),
                site(100, vec![frame(Some("gone"), "/a/server", 0x1200, 0x1)]),
            ],
        )]);
        let new = snapshot(vec![process(
            99,
            "/b/server",
            vec![
                site(
                    800,
                    vec![
                        frame(Some("leak"), "/b/server", 0x1100, 0x5600_0000_1100),
                        frame(None, "/lib/libc.so.6", 0x29d90, 0x7e00_0002_9d90),
                    ],
                ),
                site(300, vec![frame(Some("fresh"), "/b/server", 0x1300, 0x2)]),
            ],
        )]);
        let diff = diff(&old, &new);
        assert!(diff.only_old.is_empty() && diff.only_new.is_empty());
        let process = &diff.processes[0];
        assert_eq!(process.changed.len(), 1);
        assert_eq!(process.changed[0].bytes_change(), 300);
        assert_eq!(process.changed[0].label, "leak");
        assert_eq!(process.new_sites[0].label, "fresh");
        assert_eq!(process.vanished_sites[0].label, "gone");
        assert_eq!(process.bytes_change(), 500);
    }

    #[test]
    fn a_diff_names_sites_past_the_plumbing_via_the_library_called() {
        let crypto = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";
        let stack = |bytes| {
            site(
                bytes,
                vec![
                    frame(Some("CRYPTO_zalloc"), crypto, 0x2333e9, 0x10),
                    frame(None, crypto, 0x2e4e09, 0x20),
                    frame(Some("verify_request"), "/a/app", 0x1100, 0x30),
                    frame(Some("main"), "/a/app", 0x1200, 0x40),
                ],
            )
        };
        let old = snapshot(vec![process(1, "/a/app", vec![stack(100)])]);
        let new = snapshot(vec![process(1, "/a/app", vec![stack(300)])]);
        let diff = diff(&old, &new);
        assert_eq!(
            diff.processes[0].changed[0].label,
            "verify_request via libcrypto.so.3+0x2e4e09"
        );
    }

    #[test]
    fn processes_match_by_pid_and_exe_before_exe_alone() {
        let old = snapshot(vec![
            process(1, "/bin/a", vec![]),
            process(2, "/bin/a", vec![]),
            process(3, "/bin/c", vec![]),
        ]);
        let new = snapshot(vec![
            process(2, "/bin/a", vec![]),
            process(7, "/bin/b", vec![]),
        ]);
        let diff = diff(&old, &new);
        assert_eq!(diff.processes.len(), 1);
        assert_eq!(diff.processes[0].old.pid, 2);
        let only_old: Vec<u32> = diff.only_old.iter().map(|p| p.pid).collect();
        assert_eq!(only_old, vec![1, 3]);
        assert_eq!(diff.only_new[0].pid, 7);
    }

    #[test]
    fn growth_sorts_first_and_renders_signed() {
        let frames = |name: &str| vec![frame(Some(name), "/bin/x", 0, 0)];
        let old = snapshot(vec![process(
            1,
            "/bin/x",
            vec![site(5000, frames("shrinks")), site(100, frames("grows"))],
        )]);
        let new = snapshot(vec![process(
            1,
            "/bin/x",
            vec![
                site(1000, frames("shrinks")),
                site(300_100, frames("grows")),
            ],
        )]);
        let diff = diff(&old, &new);
        let order: Vec<&str> = diff.processes[0]
            .changed
            .iter()
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(order, vec!["grows", "shrinks"]);
        let text = render_diff(&diff, "old.json", "new.json", 10);
        assert!(text.contains("+293.0 KiB (+300000 B)"), "{text}");
        assert!(text.contains("-3.9 KiB (-4000 B)"), "{text}");
        assert!(text.contains("New sites: none"), "{text}");
    }

    #[test]
    fn go_heap_profiles_compare_by_stack() {
        use crate::postmortem::read::{RecordedGo, RecordedGoHeapSite};
        let go_process = |inuse: u64, goroutines: u64| RecordedProcess {
            pid: 7,
            comm: "gosvc".to_string(),
            go: Some(RecordedGo {
                goroutines: Some(goroutines),
                heap_profile: crate::postmortem::read::RecordedGoHeapProfile {
                    available: true,
                    sites: vec![RecordedGoHeapSite {
                        inuse_bytes: inuse,
                        inuse_objects: inuse / 4096,
                        frames: vec![
                            frame(Some("runtime.makeslice"), "/srv/gosvc", 0x10, 0x410),
                            frame(Some("main.leakIntoMap"), "/srv/gosvc", 0x20, 0x420),
                        ],
                        ..RecordedGoHeapSite::default()
                    }],
                    ..Default::default()
                },
                ..RecordedGo::default()
            }),
            ..RecordedProcess::default()
        };
        let go = go_diff(&go_process(4096 * 10, 5), &go_process(4096 * 30, 105)).expect("go");
        assert_eq!((go.old_goroutines, go.new_goroutines), (Some(5), Some(105)));
        assert_eq!(go.heap.len(), 1);
        assert_eq!(go.heap[0].bytes_change(), 4096 * 20);
        assert_eq!(go.heap[0].count_change(), 20);
        assert!(
            go.heap[0].label.starts_with("main.leakIntoMap"),
            "{}",
            go.heap[0].label
        );
        assert_eq!(
            go_diff(&RecordedProcess::default(), &RecordedProcess::default()),
            None
        );
    }
}
