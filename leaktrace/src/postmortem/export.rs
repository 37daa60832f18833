//! `leaktrace export FILE --format pprof|folded|svg`: outstanding memory by call stack for the
//! usual profile viewers.
//!
//! - folded: `root;...;leaf bytes` lines (flamegraph.pl, inferno, speedscope). Inlined frames
//!   carry flamegraph.pl's `_[i]` suffix.
//! - svg: an inferno flamegraph of outstanding bytes.
//! - pprof: gzip'd `profile.proto` with two sample types, `outstanding_space/bytes` and
//!   `outstanding_objects/count` (`go tool pprof -sample_index=outstanding_objects`).
//!
//! - go-heap: the Go runtime's own heap profile (`processes[].go.heap_profile`) as pprof with
//!   runtime/pprof's four sample types, inuse_space (default), inuse_objects, alloc_space and
//!   alloc_objects.
//!
//! Only sites with outstanding memory are exported. With several processes, each stack starts
//! with a `comm (pid N)` frame so their memory stays apart. Each stack ends where its label
//! starts looking: the allocator plumbing at its innermost end (`CRYPTO_zalloc`, `xmalloc`,
//! `operator new`, ... see `frames::FUNCTIONS`) is left out, so the flamegraph's tips and
//! pprof's `self` are the code that asked for memory; a stack of plumbing only is kept whole.
//! Frames without a symbol are named `module+0xoffset` as everywhere else.
use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    time::UNIX_EPOCH,
};

use flate2::{write::GzEncoder, Compression};
use inferno::flamegraph::{self, color::BasicPalette, Palette};
use prost::Message as _;

use super::{
    pprof,
    read::{RecordedFrame, RecordedProcess, RecordedSite, RecordedSnapshot},
};
use crate::format;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{file} has no outstanding memory to export: every traced allocation was freed")]
    NothingOutstanding { file: String },
    #[error("{file} has more outstanding bytes than a flamegraph can add up ({total}): the snapshot is corrupt")]
    TooLarge { file: String, total: String },
    #[error("cannot render the flamegraph: {0}")]
    Flamegraph(std::io::Error),
    #[error("cannot compress the profile: {0}")]
    Compress(std::io::Error),
}

/// A site with outstanding memory, with the process it belongs to.
fn outstanding_sites(
    snapshot: &RecordedSnapshot,
) -> impl Iterator<Item = (&RecordedProcess, &RecordedSite)> {
    snapshot.processes.iter().flat_map(|process| {
        process
            .sites
            .iter()
            .filter(|s| s.counters.outstanding_bytes > 0)
            .map(move |site| (process, site))
    })
}

fn check_not_empty(snapshot: &RecordedSnapshot, file: &str) -> Result<(), ExportError> {
    match outstanding_sites(snapshot).next() {
        Some(_) => Ok(()),
        None => Err(ExportError::NothingOutstanding {
            file: file.to_string(),
        }),
    }
}

/// A site's frames as exported: without the leading allocator plumbing.
fn exported_frames(site: &RecordedSite) -> &[RecordedFrame] {
    &site.frames[crate::frames::leading_plumbing(&site.frames)..]
}

fn process_frame(process: &RecordedProcess) -> String {
    format!("{} (pid {})", process.comm, process.pid)
}

/// A frame name safe in a folded line: no `;` (the frame separator) and no line breaks.
fn folded_name(frame: &RecordedFrame) -> String {
    let mut name: String = format::frame_name(frame)
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if name.trim().is_empty() {
        name = "[unnamed]".to_string();
    }
    if frame.inlined {
        name.push_str("_[i]");
    }
    name
}

/// Folded stacks, root first, one line per distinct stack, sorted; identical stacks summed.
pub fn folded(snapshot: &RecordedSnapshot, file: &str) -> Result<String, ExportError> {
    check_not_empty(snapshot, file)?;
    let several = snapshot.processes.len() > 1;
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for (process, site) in outstanding_sites(snapshot) {
        let mut frames: Vec<String> = Vec::with_capacity(site.frames.len() + 1);
        if several {
            frames.push(folded_name(&RecordedFrame {
                function: Some(process_frame(process)),
                ..RecordedFrame::default()
            }));
        }
        frames.extend(exported_frames(site).iter().rev().map(folded_name));
        if frames.is_empty() {
            frames.push("[no frames]".to_string());
        }
        let total = stacks.entry(frames.join(";")).or_default();
        *total = total.saturating_add(site.counters.outstanding_bytes);
    }
    Ok(stacks
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}\n"))
        .collect())
}

/// An SVG flamegraph of outstanding bytes.
pub fn svg(snapshot: &RecordedSnapshot, file: &str) -> Result<Vec<u8>, ExportError> {
    let folded = folded(snapshot, file)?;
    // inferno adds the counts up in a u64; no real process comes near this bound.
    let total = outstanding_sites(snapshot).try_fold(0u64, |sum, (_, site)| {
        sum.checked_add(site.counters.outstanding_bytes)
            .filter(|&sum| sum <= i64::MAX as u64)
    });
    if total.is_none() {
        let total: u128 = outstanding_sites(snapshot)
            .map(|(_, site)| u128::from(site.counters.outstanding_bytes))
            .sum();
        return Err(ExportError::TooLarge {
            file: file.to_string(),
            total: total.to_string(),
        });
    }
    let mut options = flamegraph::Options::default();
    options.title = "Outstanding memory".to_string();
    options.subtitle = Some(format!(
        "leaktrace snapshot {file} ({}, {:.1}s of tracing)",
        snapshot.generated_at, snapshot.duration_s
    ));
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colors from the function names: the same file always renders the same SVG.
    options.deterministic = true;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .map_err(ExportError::Flamegraph)?;
    Ok(svg)
}

/// Builds a pprof profile: strings, functions, mappings and locations are interned.
#[derive(Default)]
struct ProfileBuilder {
    profile: pprof::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    mappings: HashMap<String, u64>,
    locations: HashMap<LocationKey, u64>,
}

/// A location is one address in one module, with its inlined frames; keyed without the raw
/// address, which differs between processes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct LocationKey {
    module: Option<String>,
    offset: Option<u64>,
    lines: Vec<(u64, i64)>,
}

impl ProfileBuilder {
    fn new() -> Self {
        let mut builder = Self::default();
        // string_table[0] must be "".
        builder.string("");
        builder
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = i64::try_from(self.profile.string_table.len()).unwrap_or(i64::MAX);
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), index);
        index
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name_index = self.string(name);
        let file_index = self.string(file);
        self.profile.function.push(pprof::Function {
            id,
            name: name_index,
            system_name: name_index,
            filename: file_index,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// One mapping per module file; addresses in it are file offsets (memory_start 0).
    fn mapping(&mut self, frame: &RecordedFrame) -> u64 {
        let Some(module) = &frame.module else {
            return 0;
        };
        let limit = frame.offset.unwrap_or(0).saturating_add(1);
        if let Some(&id) = self.mappings.get(module) {
            if let Some(mapping) = self.profile.mapping.get_mut((id - 1) as usize) {
                mapping.memory_limit = mapping.memory_limit.max(limit);
            }
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        self.profile.mapping.push(pprof::Mapping {
            id,
            memory_start: 0,
            memory_limit: limit,
            file_offset: 0,
            filename,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mappings.insert(module.clone(), id);
        id
    }

    /// The location of one address: `frames` are its inlined frames, innermost first, then the
    /// frame they were inlined into.
    fn location(&mut self, frames: &[&RecordedFrame]) -> u64 {
        let Some(&outer) = frames.last() else {
            return 0;
        };
        let lines: Vec<(u64, i64)> = frames
            .iter()
            .map(|f| {
                let function =
                    self.function(&format::frame_name(*f), f.file.as_deref().unwrap_or(""));
                (function, i64::from(f.line.unwrap_or(0)))
            })
            .collect();
        let key = LocationKey {
            module: outer.module.clone(),
            offset: outer.offset,
            lines: lines.clone(),
        };
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let mapping_id = self.mapping(outer);
        self.profile.location.push(pprof::Location {
            id,
            mapping_id,
            address: if mapping_id == 0 {
                0
            } else {
                outer.offset.unwrap_or(0)
            },
            line: lines
                .into_iter()
                .map(|(function_id, line)| pprof::Line { function_id, line })
                .collect(),
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// One sample of `process`: the stack `frames` (innermost first) with `value`, labelled
    /// with the process's pid and comm (pprof's own export and the Go heap profile alike).
    fn push_sample(
        &mut self,
        process: &RecordedProcess,
        frames: &[RecordedFrame],
        value: Vec<i64>,
    ) {
        let location_id: Vec<u64> = frames_by_address(frames)
            .iter()
            .map(|group| self.location(group))
            .filter(|&id| id != 0)
            .collect();
        let label = vec![
            self.label("pid", None, i64::from(process.pid)),
            self.label("comm", Some(&process.comm), 0),
        ];
        self.profile.sample.push(pprof::Sample {
            location_id,
            value,
            label,
        });
    }

    fn label(&mut self, key: &str, text: Option<&str>, num: i64) -> pprof::Label {
        pprof::Label {
            key: self.string(key),
            str: text.map(|t| self.string(t)).unwrap_or(0),
            num,
            num_unit: 0,
        }
    }
}

/// Groups a site's frames by address: inlined frames belong with the next non-inlined one.
fn frames_by_address(frames: &[RecordedFrame]) -> Vec<Vec<&RecordedFrame>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    for frame in frames {
        current.push(frame);
        if !frame.inlined {
            groups.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Which values a profile's samples carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SampleValues {
    /// `outstanding_space/bytes`, `outstanding_objects/count`: sites with outstanding memory.
    Outstanding,
    /// Go's heap profile: `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`,
    /// `inuse_space/bytes` (the default), for every site that allocated. Growth mode's sites
    /// count growth events and the heap they grew, under the same names.
    GoHeap,
}

impl SampleValues {
    fn types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            SampleValues::Outstanding => &[
                ("outstanding_space", "bytes"),
                ("outstanding_objects", "count"),
            ],
            SampleValues::GoHeap => &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
        }
    }

    fn of(self, site: &RecordedSite) -> Option<Vec<i64>> {
        let c = &site.counters;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        match self {
            SampleValues::Outstanding => (c.outstanding_bytes > 0)
                .then(|| vec![n(c.outstanding_bytes), n(c.outstanding_count)]),
            SampleValues::GoHeap => (c.outstanding_bytes > 0 || c.allocated_bytes > 0).then(|| {
                vec![
                    n(c.allocated_count.max(c.outstanding_count)),
                    n(c.allocated_bytes.max(c.outstanding_bytes)),
                    n(c.outstanding_count),
                    n(c.outstanding_bytes),
                ]
            }),
        }
    }
}

/// The pprof profile, not yet encoded.
pub fn pprof_profile(
    snapshot: &RecordedSnapshot,
    file: &str,
) -> Result<pprof::Profile, ExportError> {
    check_not_empty(snapshot, file)?;
    let comment = format!(
        "leaktrace snapshot {file}: outstanding memory at {}",
        snapshot.generated_at
    );
    Ok(build_profile(snapshot, &comment, SampleValues::Outstanding))
}

/// Go's heap profile of a snapshot (`/debug/pprof/heap` under `--listen`): what Go's own
/// endpoint serves, so that `go tool pprof`, Parca and Pyroscope read it as they read Go's.
/// A process with nothing allocated gives a profile without samples, as Go's does.
pub fn pprof_heap_gz(snapshot: &RecordedSnapshot) -> Result<Vec<u8>, ExportError> {
    let comment = format!("leaktrace: heap at {}", snapshot.generated_at);
    gzip(&build_profile(snapshot, &comment, SampleValues::GoHeap))
}

fn build_profile(
    snapshot: &RecordedSnapshot,
    comment: &str,
    values: SampleValues,
) -> pprof::Profile {
    let mut b = ProfileBuilder::new();
    let sample_type = values
        .types()
        .iter()
        .map(|(kind, unit)| pprof::ValueType {
            r#type: b.string(kind),
            unit: b.string(unit),
        })
        .collect();
    b.profile.sample_type = sample_type;
    let (default, period_type) = match values {
        SampleValues::Outstanding => ("outstanding_space", "outstanding_space"),
        // As Go's runtime/pprof writes it.
        SampleValues::GoHeap => ("inuse_space", "space"),
    };
    b.profile.default_sample_type = b.string(default);
    b.profile.period_type = Some(pprof::ValueType {
        r#type: b.string(period_type),
        unit: b.string("bytes"),
    });
    b.profile.period = 1;
    b.profile.time_nanos = humantime::parse_rfc3339_weak(&snapshot.generated_at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    b.profile.duration_nanos = if snapshot.duration_s.is_finite() && snapshot.duration_s > 0.0 {
        (snapshot.duration_s * 1e9).min(i64::MAX as f64) as i64
    } else {
        0
    };
    let comment = b.string(comment);
    b.profile.comment = vec![comment];

    // pprof takes the first mapping for the main binary.
    if let Some(first) = snapshot.processes.first() {
        b.mapping(&RecordedFrame {
            module: Some(first.exe.clone()),
            ..RecordedFrame::default()
        });
    }
    for process in &snapshot.processes {
        for site in &process.sites {
            let Some(value) = values.of(site) else {
                continue;
            };
            b.push_sample(process, exported_frames(site), value);
        }
    }
    b.profile
}

fn gzip(profile: &pprof::Profile) -> Result<Vec<u8>, ExportError> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .map_err(ExportError::Compress)?;
    gz.finish().map_err(ExportError::Compress)
}

/// The pprof profile, encoded and gzip'd as `go tool pprof` reads it.
pub fn pprof_gz(snapshot: &RecordedSnapshot, file: &str) -> Result<Vec<u8>, ExportError> {
    gzip(&pprof_profile(snapshot, file)?)
}

/// The Go runtime's heap profile of every Go process, as runtime/pprof writes it: sample types
/// inuse_space, inuse_objects, alloc_space, alloc_objects (already unsampled at the profile
/// rate), default inuse_space.
pub fn go_heap_profile(
    snapshot: &RecordedSnapshot,
    file: &str,
) -> Result<pprof::Profile, ExportError> {
    let mut b = ProfileBuilder::new();
    let (bytes, count) = (b.string("bytes"), b.string("count"));
    let types = [
        "alloc_objects",
        "alloc_space",
        "inuse_objects",
        "inuse_space",
    ];
    b.profile.sample_type = types
        .iter()
        .map(|name| pprof::ValueType {
            r#type: b.string(name),
            unit: if name.ends_with("space") {
                bytes
            } else {
                count
            },
        })
        .collect();
    let inuse_space = b.string("inuse_space");
    b.profile.default_sample_type = inuse_space;
    let space = b.string("space");
    b.profile.period_type = Some(pprof::ValueType {
        r#type: space,
        unit: bytes,
    });
    let go_processes: Vec<_> = snapshot
        .processes
        .iter()
        .filter_map(|p| p.go.as_ref().map(|go| (p, go)))
        .filter(|(_, go)| go.heap_profile.available)
        .collect();
    b.profile.period = go_processes
        .first()
        .and_then(|(_, go)| go.heap_profile.rate)
        .and_then(|rate| i64::try_from(rate).ok())
        .unwrap_or(0);
    b.profile.time_nanos = humantime::parse_rfc3339_weak(&snapshot.generated_at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    let comment = b.string(&format!(
        "leaktrace snapshot {file}: the Go runtime's heap profile at {}, {}",
        snapshot.generated_at,
        crate::golang::LAG_NOTE
    ));
    b.profile.comment = vec![comment];
    if let Some((first, _)) = go_processes.first() {
        b.mapping(&RecordedFrame {
            module: Some(first.exe.clone()),
            ..RecordedFrame::default()
        });
    }
    let value = |n: u64| {
        i64::try_from(n).map_err(|_| ExportError::TooLarge {
            file: file.to_string(),
            total: n.to_string(),
        })
    };
    for (process, go) in go_processes {
        for site in &go.heap_profile.sites {
            let value = vec![
                value(site.alloc_objects)?,
                value(site.alloc_bytes)?,
                value(site.inuse_objects)?,
                value(site.inuse_bytes)?,
            ];
            b.push_sample(process, &site.frames, value);
        }
    }
    Ok(b.profile)
}

/// [`go_heap_profile`], encoded and gzip'd.
pub fn go_heap_pprof_gz(snapshot: &RecordedSnapshot, file: &str) -> Result<Vec<u8>, ExportError> {
    gzip(&go_heap_profile(snapshot, file)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SiteCounters;

    fn frame(function: &str, inlined: bool) -> RecordedFrame {
        RecordedFrame {
            addr: Some(0x10),
            module: Some("/bin/x".to_string()),
            offset: Some(0x10),
            function: Some(function.to_string()),
            inlined,
            ..RecordedFrame::default()
        }
    }

    #[test]
    fn inlined_frames_share_a_location() {
        let frames = vec![
            frame("helper", true),
            frame("caller", false),
            frame("main", false),
        ];
        let groups = frames_by_address(&frames);
        let names: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|f| format::frame_name(*f)).collect())
            .collect();
        assert_eq!(names, vec![vec!["helper", "caller"], vec!["main"]]);
    }

    #[test]
    fn absurd_byte_counts_are_an_error_not_an_overflow() {
        let site = |function: &str| RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: u64::MAX / 2 + 1,
                outstanding_count: 1,
                ..SiteCounters::default()
            },
            frames: vec![frame(function, false)],
            ..RecordedSite::default()
        };
        let snapshot = RecordedSnapshot {
            processes: vec![RecordedProcess {
                sites: vec![site("a"), site("b")],
                ..RecordedProcess::default()
            }],
            ..RecordedSnapshot::default()
        };
        assert!(matches!(
            svg(&snapshot, "x.json"),
            Err(ExportError::TooLarge { .. })
        ));
        // The other formats saturate instead.
        assert!(folded(&snapshot, "x.json").is_ok());
        assert!(pprof_gz(&snapshot, "x.json").is_ok());
    }

    #[test]
    fn the_heap_profile_has_go_heap_sample_types_and_values() {
        use std::io::Read as _;
        let site = RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: 50_000,
                outstanding_count: 500,
                allocated_bytes: 150_000,
                allocated_count: 1500,
                ..SiteCounters::default()
            },
            frames: vec![frame("leak", false), frame("main", false)],
            ..RecordedSite::default()
        };
        // A site that allocated and freed everything is in alloc_* only.
        let freed = RecordedSite {
            counters: SiteCounters {
                allocated_bytes: 64,
                allocated_count: 1,
                ..SiteCounters::default()
            },
            frames: vec![frame("churn", false)],
            ..RecordedSite::default()
        };
        let snapshot = RecordedSnapshot {
            processes: vec![RecordedProcess {
                pid: 7,
                sites: vec![site, freed],
                ..RecordedProcess::default()
            }],
            ..RecordedSnapshot::default()
        };
        let gz = pprof_heap_gz(&snapshot).expect("encodes");
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut bytes)
            .expect("gunzips");
        let profile = pprof::Profile::decode(&bytes[..]).expect("decodes");
        let text = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (text(t.r#type), text(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!(text(profile.default_sample_type), "inuse_space");
        let values: Vec<&[i64]> = profile.sample.iter().map(|s| &s.value[..]).collect();
        assert_eq!(
            values,
            [&[1500, 150_000, 500, 50_000][..], &[1, 64, 0, 0][..]]
        );
        // An empty process is an empty profile, as Go's, not an error.
        let empty = RecordedSnapshot {
            processes: vec![RecordedProcess::default()],
            ..RecordedSnapshot::default()
        };
        assert!(pprof_heap_gz(&empty).is_ok());
    }

    #[test]
    fn folded_names_cannot_break_the_format() {
        let mut f = frame("weird;name\nhere", true);
        assert_eq!(folded_name(&f), "weird:name here_[i]");
        f.inlined = false;
        f.function = None;
        assert_eq!(folded_name(&f), "x+0x10");
    }

    #[test]
    fn exported_stacks_start_after_the_allocator_plumbing() {
        let site = RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: 640,
                outstanding_count: 10,
                ..SiteCounters::default()
            },
            frames: vec![
                frame("CRYPTO_zalloc", false),
                frame("X509_STORE_CTX_new", false),
                frame("main", false),
            ],
            ..RecordedSite::default()
        };
        let plumbing_only = RecordedSite {
            frames: vec![frame("xmalloc", false)],
            ..site.clone()
        };
        let snapshot = RecordedSnapshot {
            processes: vec![RecordedProcess {
                sites: vec![site, plumbing_only],
                ..RecordedProcess::default()
            }],
            ..RecordedSnapshot::default()
        };
        let folded = folded(&snapshot, "x.json").expect("folded");
        assert_eq!(folded, "main;X509_STORE_CTX_new 640\nxmalloc 640\n");
        let profile = pprof_profile(&snapshot, "x.json").expect("pprof");
        assert_eq!(profile.sample[0].location_id.len(), 2);
        let names: Vec<&str> = profile
            .function
            .iter()
            .map(|f| profile.string_table[f.name as usize].as_str())
            .collect();
        assert!(!names.contains(&"CRYPTO_zalloc"), "{names:?}");
    }
}
