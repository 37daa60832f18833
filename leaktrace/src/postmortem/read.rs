//! Reading a saved snapshot back, for the post-mortem commands.
//!
//! The reader reads the `schema` types where they fit (counters, exit status, fallbacks, a
//! site's counters) and has its own lenient view of the rest: it requires exactly the fields the
//! post-mortem commands use and ignores everything else, so snapshots from later versions of
//! `leaktrace/1` (which may add fields) and from earlier ones (which lack fields added since)
//! both read. Any byte string gives either a snapshot or one [`ReadError`], never a panic.
use std::{fs, io, path::Path};

use serde::Deserialize;
use serde_json::error::Category;

use crate::{
    model::{self, StackCost},
    schema::{Counters, ExitStatus, FallbackSummary, FunctionReport, SiteCounters, SCHEMA},
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reason is in the message, not a `source`: the message is the whole story in one line.
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: io::Error },
    #[error("{path} ends early (line {line}, column {column}): the snapshot is truncated; use the final snapshot of a run or a complete copy")]
    Truncated {
        path: String,
        line: usize,
        column: usize,
    },
    #[error("{path} is not JSON ({detail}): give a snapshot written by `leaktrace --json`")]
    NotJson { path: String, detail: String },
    #[error("{path} is not a leaktrace snapshot (no \"schema\" field): give a snapshot written by `leaktrace --json`")]
    NoSchema { path: String },
    #[error("{path} has schema {found}, this leaktrace reads only \"{SCHEMA}\": use the leaktrace version that wrote it")]
    UnknownSchema { path: String, found: String },
    #[error("{path} is not a valid {SCHEMA} snapshot: {detail}")]
    Invalid { path: String, detail: String },
    #[error("{path} is an empty snapshot ({what}): take one after the target has allocated, e.g. the final snapshot of the run")]
    Empty { path: String, what: &'static str },
}

/// A snapshot as the post-mortem commands see it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedSnapshot {
    pub schema: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// Seconds since tracing started.
    pub duration_s: f64,
    /// The final snapshot of its run.
    pub complete: bool,
    /// `exact`, `growth` or (older versions) `system_wide`; kept as written, so that a mode
    /// this version does not know still reads.
    #[serde(default)]
    pub mode: Option<String>,
    pub processes: Vec<RecordedProcess>,
}

impl RecordedSnapshot {
    /// One process of a live snapshot, as the post-mortem commands would read it back from
    /// disk (through the same serialization, so both see the same fields); `None` when `pid` is
    /// not in it.
    pub fn of_process(snapshot: &crate::schema::Snapshot, pid: u32) -> Option<RecordedSnapshot> {
        let process = snapshot.processes.iter().find(|p| p.pid == pid)?;
        let process = serde_json::to_value(process)
            .and_then(serde_json::from_value::<RecordedProcess>)
            .inspect_err(|err| log::warn!("cannot read back process {pid}: {err}"))
            .ok()?;
        Some(RecordedSnapshot {
            schema: snapshot.schema.clone(),
            generated_at: snapshot.generated_at.clone(),
            duration_s: snapshot.duration_s,
            complete: snapshot.complete,
            mode: Some(snapshot.mode.as_str().to_string()),
            processes: vec![process],
        })
    }

    /// Whether `process`'s sites are growth mode's (stacks that grew the heap), whose counts
    /// are growth events, not blocks.
    pub fn growth_sites(&self, process: &RecordedProcess) -> bool {
        self.mode.as_deref() == Some(crate::schema::Mode::Growth.as_str())
            && process.exact == Some(false)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub alive: bool,
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocated_bytes: u64,
    pub allocated_count: u64,
    pub freed_count: u64,
    #[serde(default)]
    pub bytes_processed: Option<u64>,
    pub counters: Counters,
    pub sites: Vec<RecordedSite>,
    /// Whether the malloc family was traced (false: growth mode, or older versions' system-wide
    /// rows with heap data only). Added to `leaktrace/1` later: absent means exact.
    #[serde(default)]
    pub exact: Option<bool>,
    /// The heap as the kernel sees it; absent from older snapshots.
    #[serde(default)]
    pub heap: Option<RecordedHeap>,
    /// Growth mode: the bursts' leak estimate per site; absent from older snapshots.
    #[serde(default)]
    pub estimated_sites: Vec<crate::schema::EstimatedSite>,
    /// Growth mode: the bursts behind `estimated_sites` and what they cost.
    #[serde(default)]
    pub bursts: Option<crate::schema::BurstReport>,
    /// Go programs: the runtime's census, heap profile and statistics; absent for others.
    #[serde(default)]
    pub go: Option<RecordedGo>,
    /// Outstanding bytes by function; absent from older snapshots, then computed from the
    /// sites when the snapshot is read ([`parse_snapshot`]), so it is always there after.
    #[serde(default)]
    pub functions: Option<Vec<FunctionReport>>,
}

/// `processes[].go`, leniently: every field may be absent.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGo {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub goroutines: Option<u64>,
    #[serde(default)]
    pub census_error: Option<String>,
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub groups: Vec<RecordedGoroutineGroup>,
    #[serde(default)]
    pub memstats: Option<RecordedGoMemStats>,
    #[serde(default)]
    pub memstats_error: Option<String>,
    #[serde(default)]
    pub heap_profile: RecordedGoHeapProfile,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGoroutineGroup {
    pub count: u64,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub wait_reason: Option<String>,
    #[serde(default)]
    pub created_by: Vec<RecordedFrame>,
    #[serde(default)]
    pub frames: Vec<RecordedFrame>,
    #[serde(default)]
    pub oldest_wait_s: Option<f64>,
    #[serde(default)]
    pub growth: RecordedGoroutineGrowth,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGoroutineGrowth {
    #[serde(default)]
    pub per_min: Option<f64>,
    #[serde(default)]
    pub class: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGoMemStats {
    #[serde(default)]
    pub heap_alloc: Option<u64>,
    #[serde(default)]
    pub heap_inuse: Option<u64>,
    #[serde(default)]
    pub heap_sys: Option<u64>,
    #[serde(default)]
    pub heap_objects: Option<u64>,
    #[serde(default)]
    pub num_gc: Option<u64>,
    #[serde(default)]
    pub next_gc: Option<u64>,
    #[serde(default)]
    pub gc_cpu_fraction: Option<f64>,
    #[serde(default)]
    pub heap_alloc_per_min: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGoHeapProfile {
    #[serde(default)]
    pub available: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub rate: Option<u64>,
    #[serde(default)]
    pub lag: Option<String>,
    #[serde(default)]
    pub inuse_bytes: Option<u64>,
    #[serde(default)]
    pub sites: Vec<RecordedGoHeapSite>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGoHeapSite {
    pub inuse_bytes: u64,
    #[serde(default)]
    pub inuse_objects: u64,
    #[serde(default)]
    pub alloc_bytes: u64,
    #[serde(default)]
    pub alloc_objects: u64,
    #[serde(default)]
    pub frames: Vec<RecordedFrame>,
}

impl RecordedProcess {
    /// Outstanding bytes by function, largest cumulative first.
    pub fn functions(&self) -> &[FunctionReport] {
        self.functions.as_deref().unwrap_or_default()
    }

    /// What each site with frames adds to the process's functions and call trees.
    pub fn stack_costs(&self) -> impl Iterator<Item = StackCost<'_, RecordedFrame>> {
        self.sites.iter().map(|site| StackCost {
            frames: &site.frames,
            bytes: site.counters.outstanding_bytes,
            count: site.counters.outstanding_count,
        })
    }

    /// Fill in `functions` from the sites when the snapshot had none.
    fn complete_functions(&mut self) {
        if self.functions.is_none() {
            self.functions = Some(model::function_totals(self.stack_costs()));
        }
    }
}

/// The `heap` object of a process. Every field is optional: shown where present.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedHeap {
    #[serde(default)]
    pub brk_bytes: Option<u64>,
    #[serde(default)]
    pub brk_calls: Option<u64>,
    #[serde(default)]
    pub brk_failures: Option<u64>,
    #[serde(default)]
    pub fallback_mmaps: Option<FallbackSummary>,
    #[serde(default)]
    pub anon_mmap_outstanding_bytes: Option<u64>,
    #[serde(default)]
    pub anon_reserved_bytes: Option<u64>,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    #[serde(default)]
    pub rss_growth_bytes: Option<i64>,
    /// Share of the RSS growth that outstanding traced allocations account for.
    #[serde(default)]
    pub explained_share: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedSite {
    /// `outstanding_bytes` and `outstanding_count` are required, the others read as 0 when
    /// absent.
    #[serde(flatten)]
    pub counters: SiteCounters,
    pub growth: RecordedGrowth,
    pub leak_rank: u32,
    /// Innermost first; the first frame is the allocator's caller.
    pub frames: Vec<RecordedFrame>,
    /// Heap attribution, added to `leaktrace/1` later: absent in older snapshots.
    #[serde(default)]
    pub fallback_mmap_count: Option<u64>,
    #[serde(default)]
    pub fallback_mmap_bytes: Option<u64>,
    #[serde(default)]
    pub direct_mmap_bytes: Option<u64>,
    #[serde(default)]
    pub anon_mmap_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RecordedGrowth {
    #[serde(default)]
    pub bytes_per_mib_processed: Option<f64>,
    #[serde(default)]
    pub bytes_per_min: Option<f64>,
    #[serde(default)]
    pub r2_processed: Option<f64>,
    #[serde(default)]
    pub r2_time: Option<f64>,
    /// Kept as written (`leak_suspect`, `plateau`, `churn`, `unknown`): a class added later
    /// still reads and is shown as it is.
    pub class: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RecordedFrame {
    /// Return address in the process; shown only when nothing better is known.
    #[serde(default)]
    pub addr: Option<u64>,
    #[serde(default)]
    pub module: Option<String>,
    /// Offset of `addr` in `module`: stable across runs of the same build.
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub line: Option<u32>,
    pub inlined: bool,
}

crate::frames::impl_stack_frame!(RecordedFrame, |f| f.addr);

impl RecordedSnapshot {
    pub fn site_count(&self) -> usize {
        self.processes.iter().map(|p| p.sites.len()).sum()
    }

    /// Sites of the Go runtime's heap profiles, every process together.
    pub fn go_heap_site_count(&self) -> usize {
        self.processes
            .iter()
            .filter_map(|p| p.go.as_ref())
            .map(|go| go.heap_profile.sites.len())
            .sum()
    }

    /// For `export --format go-heap`: a snapshot without any Go heap profile has nothing.
    pub fn require_go_heap_sites(&self, path: &str) -> Result<(), ReadError> {
        if self.go_heap_site_count() == 0 {
            return Err(ReadError::Empty {
                path: path.to_string(),
                what: "no Go heap profile (no Go process, or its profiling was off)",
            });
        }
        Ok(())
    }

    /// For the commands that work on allocation sites (diff, export): a snapshot of
    /// system-wide heap data only has nothing for them.
    pub fn require_sites(&self, path: &str) -> Result<(), ReadError> {
        if self.site_count() == 0 {
            return Err(ReadError::Empty {
                path: path.to_string(),
                what: "no allocation sites",
            });
        }
        Ok(())
    }
}

/// Read and check the snapshot at `path`.
pub fn read_snapshot(path: &Path) -> Result<RecordedSnapshot, ReadError> {
    let shown = path.display().to_string();
    let bytes = fs::read(path).map_err(|reason| ReadError::Unreadable {
        path: shown.clone(),
        reason,
    })?;
    parse_snapshot(&bytes, &shown)
}

/// Parse a snapshot from `bytes`; `path` only names it in errors.
pub fn parse_snapshot(bytes: &[u8], path: &str) -> Result<RecordedSnapshot, ReadError> {
    // First only the schema, so that a snapshot of another version is named as such instead of
    // failing on whichever field changed.
    let probe: SchemaOnly = serde_json::from_slice(bytes).map_err(|error| {
        // Skipping a value does not tell a number cut short ("1.") from a malformed one; reading
        // the document whole does, and is only paid for on bad input.
        let precise = serde_json::from_slice::<serde_json::Value>(bytes).err();
        syntax_error(precise.unwrap_or(error), path)
    })?;
    match probe.schema {
        None => {
            return Err(ReadError::NoSchema {
                path: path.to_string(),
            })
        }
        Some(serde_json::Value::String(s)) if s == SCHEMA => {}
        Some(other) => {
            return Err(ReadError::UnknownSchema {
                path: path.to_string(),
                found: one_line(&other.to_string(), 60),
            })
        }
    }
    let mut snapshot: RecordedSnapshot =
        serde_json::from_slice(bytes).map_err(|e| ReadError::Invalid {
            path: path.to_string(),
            detail: one_line(&e.to_string(), 200),
        })?;
    for process in &mut snapshot.processes {
        process.complete_functions();
    }
    if snapshot.processes.is_empty() {
        return Err(ReadError::Empty {
            path: path.to_string(),
            what: "no traced processes",
        });
    }
    // A system-wide snapshot may have heap data and no sites: `report` still has something to
    // say about it.
    if snapshot.processes.iter().all(|p| p.heap.is_none()) {
        snapshot.require_sites(path)?;
    }
    Ok(snapshot)
}

/// The `schema` field of a JSON object, everything else skipped unparsed. Unlike a derived
/// struct it accepts only an object: `["leaktrace/1"]` is not a snapshot.
struct SchemaOnly {
    schema: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for SchemaOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = SchemaOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SchemaOnly, A::Error> {
                let mut schema = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "schema" {
                        schema = Some(map.next_value::<serde_json::Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(SchemaOnly { schema })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

fn syntax_error(error: serde_json::Error, path: &str) -> ReadError {
    match error.classify() {
        Category::Eof => ReadError::Truncated {
            path: path.to_string(),
            line: error.line(),
            column: error.column(),
        },
        // Valid JSON of the wrong shape (an array, a string...): not a snapshot at all.
        Category::Data => ReadError::NoSchema {
            path: path.to_string(),
        },
        Category::Syntax | Category::Io => ReadError::NotJson {
            path: path.to_string(),
            detail: one_line(&error.to_string(), 200),
        },
    }
}

/// `text` on one line, cut to at most `max` characters (for values quoted from the input).
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push_str("...");
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "schema": "leaktrace/1", "generated_at": "2026-01-01T00:00:00Z", "duration_s": 1.5,
        "complete": true, "added_later": {"anything": [1, 2]},
        "processes": [{
            "pid": 7, "comm": "c", "exe": "/bin/c", "alive": false, "exit": {"signal": 9},
            "outstanding_bytes": 100, "outstanding_count": 1, "allocated_bytes": 100,
            "allocated_count": 1, "freed_count": 0, "bytes_processed": null,
            "counters": {"dropped_allocations": 0, "stack_errors": 0, "lost_events": 0, "unknown_frees": 2},
            "sites": [{
                "outstanding_bytes": 100, "outstanding_count": 1, "oldest_age_s": 1.0,
                "growth": {"bytes_per_min": 10.0, "class": "some_future_class"},
                "leak_rank": 1,
                "frames": [
                    {"addr": 1, "module": "/lib/libfoo.so", "offset": 4096, "inlined": false},
                    {"function": "main", "file": "/src/main.c", "line": 3, "inlined": false}
                ]
            }]
        }]
    }"#;

    #[test]
    fn reads_what_it_uses_and_ignores_the_rest() {
        let snapshot = parse_snapshot(MINIMAL.as_bytes(), "x.json").expect("reads");
        let process = &snapshot.processes[0];
        assert_eq!(process.exit, Some(ExitStatus::Signal(9)));
        assert!(process.counters.any());
        let site = &process.sites[0];
        assert_eq!(site.growth.class, "some_future_class");
        assert_eq!(
            crate::format::frame_name(&site.frames[0]),
            "libfoo.so+0x1000"
        );
        assert_eq!(
            crate::format::site_label(&site.frames),
            "main (main.c:3) via libfoo.so+0x1000"
        );
        // Written before `functions[]`: computed from the sites.
        let functions: Vec<(&str, u64, u64)> = process
            .functions()
            .iter()
            .map(|f| (f.function.as_str(), f.self_bytes, f.cumulative_bytes))
            .collect();
        assert_eq!(
            functions,
            [("main", 0, 100), ("libfoo.so+0x1000", 100, 100)]
        );
    }

    #[test]
    fn recorded_functions_are_read_as_written() {
        let with = MINIMAL.replace(
            "\"sites\": [",
            r#""functions": [{"function": "f", "module": null, "self_bytes": 1, "self_count": 1,
                "cumulative_bytes": 2, "cumulative_count": 1}], "sites": ["#,
        );
        let snapshot = parse_snapshot(with.as_bytes(), "x.json").expect("reads");
        let functions = snapshot.processes[0].functions();
        assert_eq!(functions.len(), 1);
        assert_eq!(functions[0].cumulative_bytes, 2);
    }

    #[test]
    fn each_kind_of_bad_input_has_its_own_error() {
        let err = |text: &str| parse_snapshot(text.as_bytes(), "x.json").expect_err("bad input");
        assert!(matches!(
            err(&MINIMAL[..MINIMAL.len() / 2]),
            ReadError::Truncated { .. }
        ));
        assert!(matches!(err(""), ReadError::Truncated { .. }));
        assert!(matches!(
            err("{\"schema\": \"leaktrace/1\", \"duration_s\": 1."),
            ReadError::Truncated { .. }
        ));
        assert!(matches!(err("{\"schema\": 1}x"), ReadError::NotJson { .. }));
        assert!(matches!(err("{\"a\": nope}"), ReadError::NotJson { .. }));
        assert!(matches!(err("[1, 2]"), ReadError::NoSchema { .. }));
        assert!(matches!(
            err("[\"leaktrace/1\"]"),
            ReadError::NoSchema { .. }
        ));
        assert!(matches!(err("\"leaktrace/1\""), ReadError::NoSchema { .. }));
        assert!(matches!(err("{}"), ReadError::NoSchema { .. }));
        let other = MINIMAL.replace("leaktrace/1", "leaktrace/2");
        assert!(matches!(err(&other), ReadError::UnknownSchema { .. }));
        let missing = MINIMAL.replace("\"leak_rank\": 1,", "");
        let message = err(&missing).to_string();
        assert!(message.contains("leak_rank"), "{message}");
        let empty = r#"{"schema": "leaktrace/1", "generated_at": "", "duration_s": 0,
            "complete": false, "processes": []}"#;
        assert!(matches!(err(empty), ReadError::Empty { .. }));
    }

    #[test]
    fn errors_are_one_line() {
        let long = format!("{{\"schema\": \"{}\"}}", "x\\n".repeat(500));
        let message = parse_snapshot(long.as_bytes(), "x.json")
            .expect_err("bad input")
            .to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.len() < 300, "{message}");
    }
}
