//! Go programs read from outside: the build information, a goroutine census, the runtime's own
//! heap profile and its memory statistics, all from the target's memory (`process_vm_readv`),
//! never stopping it. Layouts come from the binary's DWARF, or measured per-version tables.
//!
//! Every read is bounded (list caps, cycle checks) and may be torn by the running program: a
//! torn read is retried or counted, never trusted silently.
pub mod buildinfo;
pub mod census;
pub mod census_thread;
pub mod heap_profile;
pub mod layout;
pub mod memory;
pub mod memstats;

use std::{collections::HashMap, path::Path, sync::Arc};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

pub use self::{
    buildinfo::BuildInfo,
    census_thread::{CensusThread, CENSUS_WAIT},
    heap_profile::LAG_NOTE,
    layout::{GLayout, RecordLayout, StatsLayout},
    memory::Memory,
};
use crate::{
    procfs,
    schema::{GoReport, GoroutineGroupReport},
    symbolize::Symbols,
    target_files::{self, Elf},
};

/// Function symbols kept for naming pcs (a Go binary has tens of thousands).
const MAX_FUNCTIONS: usize = 2_000_000;

/// What leaktrace knows of a Go binary, read once from its file.
pub struct GoRuntime {
    pub build: BuildInfo,
    /// Added to the file's addresses to get the running process's (position-independent builds).
    bias: u64,
    /// Data symbols of the runtime, by name, as file addresses; with their sizes.
    symbols: HashMap<&'static str, (u64, u64)>,
    /// Function symbols: start address and name, sorted by address.
    functions: Vec<(u64, String)>,
    /// Where the `runtime.g` fields come from: DWARF, a table, or why neither works.
    pub g_layout: Result<(GLayout, LayoutSource), String>,
    /// Where the memory statistics' offsets come from, or why there are none.
    pub stats_layout: Result<(StatsLayout, LayoutSource), String>,
    pub record_layout: RecordLayout,
}

/// The layouts of a Go binary's runtime structs: from its DWARF, else from the tables for its
/// version, else why neither.
struct Layouts {
    g_layout: Result<(GLayout, LayoutSource), String>,
    stats_layout: Result<(StatsLayout, LayoutSource), String>,
    record_layout: RecordLayout,
}

impl Layouts {
    fn of_file(elf: &Elf, view: &target_files::ElfView<'_>, build: &BuildInfo) -> Layouts {
        let structs = layout::read_structs(|name| elf.section_data(view, name).ok().flatten())
            .unwrap_or_else(|err| {
                log::debug!("{}: {err}", elf.path().display());
                layout::Structs::new()
            });
        let version = build.major_minor();
        let no_table = |what: &str| match version {
            Some(_) => format!(
                "no {what}: the binary has no DWARF (built with -ldflags=-w) and leaktrace has \
                 no table for {}",
                build.version
            ),
            None => format!(
                "no {what}: the binary has no DWARF and {} is no release version",
                build.version
            ),
        };
        let g_layout = match GLayout::from_dwarf(&structs) {
            Some(layout) => Ok((layout, LayoutSource::Dwarf)),
            None => version
                .and_then(GLayout::for_version)
                .map(|layout| (layout, LayoutSource::Table))
                .ok_or_else(|| no_table("goroutine census")),
        };
        let stats_layout = match StatsLayout::from_dwarf(&structs) {
            Some(layout) => Ok((layout, LayoutSource::Dwarf)),
            None => version
                .and_then(StatsLayout::for_version)
                .map(|layout| (layout, LayoutSource::Table))
                .ok_or_else(|| no_table("memory statistics")),
        };
        Layouts {
            g_layout,
            stats_layout,
            record_layout: RecordLayout::new(&structs, version),
        }
    }
}

/// For the privileged tests: each table leaktrace has for the version of the Go binary at
/// `path` against the binary's own DWARF. `Ok` holds the disagreements (none when the tables
/// are right); `Err` when the binary has no DWARF layout or leaktrace no table to compare.
#[doc(hidden)]
pub fn tables_against_dwarf(path: &Path) -> Result<Vec<String>, String> {
    let file = target_files::open(path).map_err(|e| e.to_string())?;
    let elf = Elf::new(path, file);
    let view = elf.parse().map_err(|e| e.to_string())?;
    let section = elf
        .section_data(&view, ".go.buildinfo")
        .map_err(|e| e.to_string())?
        .ok_or("no Go build information")?;
    let build = BuildInfo::parse(&section).map_err(|e| e.to_string())?;
    let version = build.major_minor().ok_or("no release version")?;
    let structs = layout::read_structs(|name| elf.section_data(&view, name).ok().flatten())
        .map_err(|e| e.to_string())?;
    let mut disagreements = Vec::new();
    let g = (GLayout::from_dwarf(&structs), GLayout::for_version(version));
    let stats = (
        StatsLayout::from_dwarf(&structs),
        StatsLayout::for_version(version),
    );
    match g {
        (Some(dwarf), Some(table)) if dwarf != table => {
            disagreements.push(format!("runtime.g: DWARF {dwarf:?}, table {table:?}"));
        }
        (Some(_), Some(_)) => {}
        other => return Err(format!("{}: runtime.g layouts {other:?}", build.version)),
    }
    match stats {
        (Some(dwarf), Some(table)) if dwarf != table => {
            disagreements.push(format!("memstats: DWARF {dwarf:?}, table {table:?}"));
        }
        (Some(_), Some(_)) => {}
        other => return Err(format!("{}: memstats layouts {other:?}", build.version)),
    }
    let record = RecordLayout::new(&layout::Structs::new(), Some(version));
    if RecordLayout::new(&structs, Some(version)) != record {
        disagreements.push(format!("memRecordCycle: table {record:?}"));
    }
    Ok(disagreements)
}

/// Where a layout came from, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    Table,
}

impl LayoutSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutSource::Dwarf => "dwarf",
            LayoutSource::Table => "table",
        }
    }
}

/// Runtime variables read by address.
const RUNTIME_SYMBOLS: &[&str] = &[
    "runtime.allgs",
    "runtime.waitReasonStrings",
    "runtime.mbuckets",
    "runtime.mProfCycle",
    "runtime.MemProfileRate",
    "runtime.disableMemoryProfiling",
    "runtime.memstats",
    "runtime.gcController",
    "runtime.class_to_size",
    // Go 1.25 moved the size classes to internal/runtime/gc.
    "internal/runtime/gc.SizeClassToSize",
];

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("{0}")]
    File(#[from] target_files::Unreadable),
    #[error("{0}")]
    BuildInfo(#[from] buildinfo::BuildInfoError),
}

impl GoRuntime {
    /// Read a running process's executable; `Ok(None)` when it is no Go binary.
    pub fn of_process(pid: u32) -> Result<Option<GoRuntime>, GoError> {
        let path = procfs::exe_file(pid);
        let file = target_files::open(&path)?;
        let elf = Elf::new(&path, file);
        let view = elf.parse()?;
        let Some(section) = elf.section_data(&view, ".go.buildinfo")? else {
            return Ok(None);
        };
        let build = BuildInfo::parse(&section)?;
        let bias = load_bias(pid, &view);
        let mut symbols = HashMap::new();
        let mut functions = Vec::new();
        for symbol in view.symbols() {
            let Ok(name) = symbol.name() else { continue };
            if symbol.kind() == SymbolKind::Text {
                if functions.len() < MAX_FUNCTIONS && symbol.address() != 0 {
                    functions.push((symbol.address(), name.to_string()));
                }
            } else if let Some(wanted) = RUNTIME_SYMBOLS.iter().find(|w| **w == name) {
                symbols.insert(*wanted, (symbol.address(), symbol.size()));
            }
        }
        functions.sort_unstable_by_key(|(addr, _)| *addr);
        let Layouts {
            g_layout,
            stats_layout,
            record_layout,
        } = Layouts::of_file(&elf, &view, &build);
        Ok(Some(GoRuntime {
            build,
            bias,
            symbols,
            functions,
            g_layout,
            stats_layout,
            record_layout,
        }))
    }

    /// Why no goroutine census can be taken, in one line; `None` when one can.
    pub fn census_unavailable(&self) -> Option<String> {
        match &self.g_layout {
            Err(why) => Some(why.clone()),
            Ok(_) if !self.symbols.contains_key("runtime.allgs") => {
                Some(census::CensusError::NoAllgs.to_string())
            }
            Ok(_) => None,
        }
    }

    /// A runtime variable's address in the running process, and its size.
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols
            .get(name)
            .map(|(addr, size)| (addr.wrapping_add(self.bias), *size))
    }

    /// The function containing a pc of the running process (its symbol name).
    pub fn function_at(&self, pc: u64) -> Option<&str> {
        self.function_start(pc).map(|(_, name)| name)
    }

    /// The stack as a site key: a runtime frame stands for its function (its start address),
    /// not for the call site inside it, so that heap growth through the same runtime functions
    /// into the same user frames is one site, not one per path inside `mallocgc`.
    pub fn site_key(&self, stack: &[u64]) -> Vec<u64> {
        stack
            .iter()
            .map(|&pc| match self.function_start(pc) {
                Some((start, name)) if is_runtime_function(name) => start,
                _ => pc,
            })
            .collect()
    }

    /// The start address (in the running process) and name of the function containing `pc`.
    fn function_start(&self, pc: u64) -> Option<(u64, &str)> {
        let addr = pc.wrapping_sub(self.bias);
        let index = self.functions.partition_point(|(start, _)| *start <= addr);
        let (start, name) = self.functions.get(index.checked_sub(1)?)?;
        Some((start.wrapping_add(self.bias), name.as_str()))
    }

    /// Whether a pc is in the runtime's own code (not the program's).
    pub fn is_runtime_pc(&self, pc: u64) -> bool {
        self.function_at(pc).is_some_and(is_runtime_function)
    }
}

/// The runtime's own functions (and its internal packages).
fn is_runtime_function(name: &str) -> bool {
    name.starts_with("runtime.")
        || name.starts_with("runtime/")
        || name.starts_with("internal/runtime/")
}

/// Start of the executable's lowest mapping minus its lowest loadable address (0 for the
/// usual non-PIE Go binary).
fn load_bias(pid: u32, view: &target_files::ElfView<'_>) -> u64 {
    if view.kind() != object::ObjectKind::Dynamic {
        return 0;
    }
    let lowest_vaddr = view
        .sections()
        .filter(|s| s.address() != 0)
        .map(|s| s.address())
        .min()
        .unwrap_or(0);
    let Ok(exe) = procfs::read_exe(pid) else {
        return 0;
    };
    let Ok(maps) = procfs::read_maps(pid) else {
        return 0;
    };
    maps.files()
        .filter(|m| m.path() == Some(exe.as_path()) && m.offset == 0)
        .map(|m| m.range.start)
        .min()
        .map_or(0, |start| start.wrapping_sub(lowest_vaddr & !0xfff))
}

/// One Go process followed through the run: its runtime, its census thread (which keeps the
/// goroutine groups' series) and the memory statistics' series.
pub struct GoTracker {
    pub runtime: Arc<GoRuntime>,
    memory: Memory,
    census: CensusThread,
    stats: memstats::StatsTracker,
    /// The latest report, kept for the snapshots taken after the process ended.
    last: Option<GoReport>,
}

impl GoTracker {
    /// `Ok(None)`: not a Go program.
    pub fn of_process(pid: u32) -> Result<Option<GoTracker>, GoError> {
        Ok(GoRuntime::of_process(pid)?.map(|runtime| {
            let runtime = Arc::new(runtime);
            let memory = Memory::new(pid);
            GoTracker {
                census: CensusThread::spawn(Arc::clone(&runtime), memory),
                runtime,
                memory,
                stats: memstats::StatsTracker::default(),
                last: None,
            }
        }))
    }

    /// Read everything once and make the report; `sampling`: add a point to the series.
    pub fn report(
        &mut self,
        t_s: f64,
        sampling: bool,
        alive: bool,
        symbols: &mut Symbols,
    ) -> GoReport {
        let pid = self.memory.pid;
        let mut report = GoReport {
            version: self.runtime.build.version.clone(),
            main_module: self.runtime.build.main_path.clone(),
            ..GoReport::default()
        };
        if !alive {
            // Its memory is gone: what was read last is what it was.
            if let Some(last) = &self.last {
                return last.clone();
            }
            report.census_error = Some("the process exited before it was read".to_string());
            report.heap_profile.reason = Some("the process exited before it was read".to_string());
            return report;
        }
        match self.runtime.census_unavailable() {
            Some(why) => report.census_error = Some(why),
            None => match self.census.latest(t_s, sampling, CENSUS_WAIT) {
                Ok(outcome) => {
                    log::debug!(
                        "pid {pid}: goroutine census of {:.1} s read and grouped in {:?}",
                        outcome.t_s,
                        outcome.took
                    );
                    report.census_s = Some(outcome.took.as_secs_f64());
                    report.census_age_s = Some((t_s - outcome.t_s).max(0.0));
                    match &outcome.result {
                        Ok(census) => {
                            report.layout = Some(census.layout_source.as_str().to_string());
                            report.torn_reads = census.torn;
                            report.goroutines = Some(census.goroutines);
                            report.groups = census
                                .groups
                                .iter()
                                .map(|group| GoroutineGroupReport {
                                    count: group.count,
                                    state: group.state.to_string(),
                                    wait_reason: group.wait_reason.clone(),
                                    created_by: symbols.stack_frames(pid, alive, &[group.gopc]),
                                    frames: symbols.stack_frames(pid, alive, &group.pcs),
                                    oldest_wait_s: group.oldest_wait_s,
                                    growth: group.growth.clone(),
                                })
                                .collect();
                        }
                        Err(why) => report.census_error = Some(why.clone()),
                    }
                }
                Err(why) => report.census_error = Some(why),
            },
        }
        report.heap_profile = heap_profile::read(&self.runtime, &self.memory, symbols, pid);
        match self.stats.read(&self.runtime, &self.memory, t_s, sampling) {
            Ok(stats) => report.memstats = Some(stats),
            Err(why) => report.memstats_error = Some(why),
        }
        self.last = Some(report.clone());
        report
    }
}

/// Whether the file at `path` is a Go binary (has Go build information).
pub fn is_go_binary(path: &Path) -> bool {
    let Ok(file) = target_files::open(path) else {
        return false;
    };
    let elf = Elf::new(path, file);
    let Ok(view) = elf.parse() else {
        return false;
    };
    view.section_by_name(".go.buildinfo").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> GoRuntime {
        GoRuntime {
            build: BuildInfo {
                version: "go1.22.10".to_string(),
                main_path: None,
            },
            bias: 0,
            symbols: HashMap::new(),
            functions: vec![
                (0x1000, "runtime.mallocgc".to_string()),
                (0x2000, "internal/runtime/maps.newarray".to_string()),
                (0x3000, "main.rememberBlob".to_string()),
                (0x4000, "main.main".to_string()),
            ],
            g_layout: Err("none".to_string()),
            stats_layout: Err("none".to_string()),
            record_layout: RecordLayout::new(&layout::Structs::new(), Some((1, 22))),
        }
    }

    #[test]
    fn runtime_frames_key_by_function_user_frames_by_pc() {
        let go = runtime();
        // Two paths out of mallocgc (different call sites inside it) into the same user frame.
        let a = go.site_key(&[0x1010, 0x2020, 0x3030, 0x4040]);
        let b = go.site_key(&[0x1080, 0x2090, 0x3030, 0x4040]);
        assert_eq!(a, b);
        assert_eq!(a, vec![0x1000, 0x2000, 0x3030, 0x4040]);
        // A different line of the user's function stays another site.
        assert_ne!(a, go.site_key(&[0x1010, 0x2020, 0x3040, 0x4040]));
        assert_eq!(go.function_at(0x3030), Some("main.rememberBlob"));
        assert!(go.is_runtime_pc(0x2020) && !go.is_runtime_pc(0x3030));
        assert_eq!(go.function_at(0x10), None);
        assert!(go.census_unavailable().is_some());
    }
}
