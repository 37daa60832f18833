//! Exact mode's unwind tables: each module's CFI compiled into rows (`compile`) once per file
//! (device + inode), shared by every traced process that maps it, loaded into the eBPF maps the
//! walk reads (`UNWIND_ROWS`, `UNWIND_MAPPINGS`), unloaded when no traced process maps it.
//!
//! All of it runs on one worker thread of its own ([`TableWorker`]): compiling a big module
//! (libcrypto, a 100 MB binary) and writing its rows never stall the sampling loop. The loop
//! asks for a process's mappings to be (re)read on every liveness tick; the worker does nothing
//! when its executable mappings have not changed.
use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use leaktrace_common::unwind::{ExecMapping, ProcessMappings, UnwindRow, MAX_EXEC_MAPPINGS};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::{
    procfs,
    schema::UnwindTableStats,
    target_files::{self, Elf, Unreadable},
};

pub mod compile;

pub use compile::{compile, go_cgo_return, lookup, CfiSections, Compiled, GoCode};

/// Default bound of the rows' memory (`--unwind-table-mib`).
pub const DEFAULT_TABLE_MIB: u32 = 64;

type FileId = (procfs::Device, u64);

/// The unwind sections and load segments of one module file.
pub struct ModuleCfi {
    pub sections: CfiSections,
    /// (file offset, virtual address, file size) of each PT_LOAD segment.
    pub loads: Vec<(u64, u64, u64)>,
}

impl ModuleCfi {
    /// Headers and unwind sections only, through `target_files` (bounded, never mapped).
    pub fn read(elf: &Elf) -> Result<Self, Unreadable> {
        let file = elf.parse()?;
        let address = |name: &str| file.section_by_name(name).map(|s| s.address());
        let eh_frame = match address(".eh_frame") {
            Some(svma) => elf.section_data(&file, ".eh_frame")?.map(|d| (svma, d)),
            None => None,
        };
        let is_go = file.section_by_name(".gopclntab").is_some()
            || file.section_by_name(".go.buildinfo").is_some();
        // A Go binary's .debug_frame is the Go linker's, which the walk does not follow.
        let debug_frame = match eh_frame {
            Some(_) => None,
            None if is_go => None,
            None => elf.section_data(&file, ".debug_frame")?,
        };
        let go = is_go.then(|| compile::GoCode {
            cgo_return: asmcgocall_code(elf, &file)
                .and_then(|(address, code)| compile::go_cgo_return(&code, address)),
        });
        let loads = load_segments(&file);
        Ok(Self {
            sections: CfiSections {
                eh_frame,
                debug_frame,
                text_svma: address(".text"),
                got_svma: address(".got"),
                go,
            },
            loads,
        })
    }
}

/// The address and machine code of Go's `runtime.asmcgocall` (the assembly function: named
/// `.abi0` in 1.19, 1.22 and 1.25 binaries, plain in older ones), from `.symtab`; `None` in a
/// stripped binary.
fn asmcgocall_code(elf: &Elf, file: &target_files::ElfView<'_>) -> Option<(u64, Vec<u8>)> {
    use object::ObjectSymbol as _;
    // asmcgocall is about 170 bytes; more is not it.
    const MAX_BYTES: u64 = 512;
    let named = |name: &str| file.symbols().find(|s| s.name() == Ok(name));
    let symbol = named("runtime.asmcgocall.abi0").or_else(|| named("runtime.asmcgocall"))?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (offset, size) = section.file_range()?;
    let within = symbol.address().checked_sub(section.address())?;
    let len = symbol
        .size()
        .clamp(1, MAX_BYTES)
        .min(size.checked_sub(within)?);
    let code = elf.bytes_at(offset.checked_add(within)?, len).ok()?;
    Some((symbol.address(), code))
}

/// (file offset, virtual address, file size) of each loadable segment of `file`: what
/// [`load_bias`] maps a mapping back through (exact mode's tables and growth mode's unwinder).
pub fn load_segments(file: &target_files::ElfView<'_>) -> Vec<(u64, u64, u64)> {
    file.segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, s.address(), size)
        })
        .collect()
}

/// `avma - svma` for a mapping of a file with these PT_LOAD segments that starts at `start`
/// with `file_offset`. A mapping starts where its segment starts, page-aligned; the previous
/// segment's last page may hold the same file offset (lld packs segments), so an exact start
/// wins.
pub fn load_bias(loads: &[(u64, u64, u64)], start: u64, file_offset: u64) -> Option<u64> {
    let &(offset, vaddr, _) = loads
        .iter()
        .find(|(offset, _, _)| *offset & !0xfff == file_offset)
        .or_else(|| {
            loads.iter().find(|(offset, _, size)| {
                *offset & !0xfff <= file_offset && file_offset < offset + size
            })
        })?;
    let svma = vaddr.wrapping_sub(offset).wrapping_add(file_offset);
    Some(start.wrapping_sub(svma))
}

/// `BPF_MAP_UPDATE_BATCH` of `keys` -> `values` (array maps have it since Linux 5.7).
fn update_batch(map: &OwnedFd, keys: &[u32], values: &[UnwindRow]) -> std::io::Result<()> {
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len().min(values.len())).unwrap_or(0),
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is the bpf_attr layout of this command; `keys` and `values` outlive the
    // call and hold `count` elements each, of the map's key and value sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sorted by start, with the consecutive mappings of one file at one load bias made one (a
/// library's segments): one entry per module in most processes.
fn merge_mappings(mut entries: Vec<(ExecMapping, FileId)>) -> Vec<ExecMapping> {
    entries.sort_by_key(|(m, _)| m.start);
    let mut merged: Vec<(ExecMapping, FileId)> = Vec::with_capacity(entries.len());
    for (mapping, id) in entries {
        match merged.last_mut() {
            Some((last, last_id))
                if *last_id == id && last.bias == mapping.bias && last.end <= mapping.start =>
            {
                last.end = mapping.end;
            }
            _ => merged.push((mapping, id)),
        }
    }
    merged.into_iter().map(|(m, _)| m).collect()
}

/// A module file opened as process `pid` maps it (through the mapping, else its path in the
/// process's root, else the plain path).
fn open_module(pid: u32, mapping: &procfs::Mapping, path: &Path) -> Result<Elf, Unreadable> {
    read_module_as_mapped(pid, mapping, path, Ok)
}

/// `read` the module file of `mapping` as process `pid` maps it: through the mapping itself
/// (right even for a deleted or replaced file, and inside containers), else by its path inside
/// the process's root, else by the plain path; the first way that opens and reads wins, else
/// the last error. Exact mode's tables and growth mode's unwinder read modules this way.
pub fn read_module_as_mapped<T>(
    pid: u32,
    mapping: &procfs::Mapping,
    path: &Path,
    read: impl Fn(Elf) -> Result<T, Unreadable>,
) -> Result<T, Unreadable> {
    let candidates = [
        (procfs::mapped_file(pid, &mapping.range), None),
        (procfs::path_in_root(pid, path), Some(path)),
        (path.to_path_buf(), None),
    ];
    let mut last = None;
    for (shown, in_root) in candidates {
        let opened = match in_root {
            Some(path) => target_files::open_in_root(pid, path),
            None => target_files::open(&shown),
        };
        match opened.and_then(|file| read(Elf::new(&shown, file))) {
            Ok(read) => return Ok(read),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| Unreadable::Malformed {
        path: path.to_path_buf(),
        reason: "no way to open it".into(),
    }))
}

/// A loaded module table.
struct Module {
    path: PathBuf,
    /// Rows `first_row..first_row + rows` of `UNWIND_ROWS` (0 rows: frame pointers).
    first_row: u32,
    rows: u32,
    loads: Vec<(u64, u64, u64)>,
    users: HashSet<u32>,
}

/// First-fit allocation of row ranges in the rows array.
struct RowSpace {
    free: Vec<Range<u32>>,
}

impl RowSpace {
    fn new(capacity: u32) -> Self {
        Self {
            free: std::iter::once(0..capacity).collect(),
        }
    }

    fn take(&mut self, rows: u32) -> Option<u32> {
        let index = self.free.iter().position(|r| r.end - r.start >= rows)?;
        let range = &mut self.free[index];
        let first = range.start;
        range.start += rows;
        if range.start == range.end {
            self.free.remove(index);
        }
        Some(first)
    }

    fn give_back(&mut self, first: u32, rows: u32) {
        if rows == 0 {
            return;
        }
        self.free.push(first..first + rows);
        self.free.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u32>> = Vec::with_capacity(self.free.len());
        for range in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => merged.push(range),
            }
        }
        self.free = merged;
    }
}

/// The worker's state: modules, row space, processes, and its own descriptors of the maps.
struct Tables {
    rows_map: Array<MapData, UnwindRow>,
    /// The same map, for batched updates (aya has none).
    rows_fd: OwnedFd,
    mappings_map: BpfHashMap<MapData, u32, ProcessMappings>,
    space: RowSpace,
    capacity: u32,
    modules: HashMap<FileId, Module>,
    /// Modules that could not be loaded, with why (said once).
    failed: HashMap<FileId, String>,
    /// Per process: the executable mappings last loaded.
    processes: HashMap<u32, Vec<(Range<u64>, u64, FileId)>>,
    stats: Arc<Mutex<UnwindTableStats>>,
}

enum Job {
    Refresh(u32, Option<mpsc::Sender<()>>),
    Forget(u32),
}

/// The handle the session keeps: requests go to the worker thread.
pub struct TableWorker {
    jobs: mpsc::Sender<Job>,
    pub stats: Arc<Mutex<UnwindTableStats>>,
}

impl TableWorker {
    /// Start the worker with its own descriptors of the two maps; rows bounded by `capacity`.
    pub fn start(
        rows_map: Array<MapData, UnwindRow>,
        rows_fd: OwnedFd,
        mappings_map: BpfHashMap<MapData, u32, ProcessMappings>,
        capacity: u32,
        needs: crate::privileges::Needs,
    ) -> anyhow::Result<Self> {
        let stats = Arc::new(Mutex::new(UnwindTableStats {
            capacity_bytes: u64::from(capacity) * 16,
            ..UnwindTableStats::default()
        }));
        let (jobs, receiver) = mpsc::channel();
        let mut tables = Tables {
            rows_map,
            rows_fd,
            mappings_map,
            space: RowSpace::new(capacity),
            capacity,
            modules: HashMap::new(),
            failed: HashMap::new(),
            processes: HashMap::new(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("unwind-tables".into())
            .spawn(move || {
                // Started before the attach, this thread keeps no more than the session's
                // thread keeps after it (capabilities are per thread: privileges.rs).
                if let Err(err) = crate::privileges::narrow_this_thread(needs) {
                    log::warn!("the unwind-table thread cannot drop capabilities: {err:#}");
                }
                while let Ok(job) = receiver.recv() {
                    match job {
                        Job::Refresh(pid, done) => {
                            tables.refresh(pid);
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                        }
                        Job::Forget(pid) => tables.forget(pid),
                    }
                }
            })?;
        Ok(Self { jobs, stats })
    }

    /// Re-read `pid`'s executable mappings and load what is new (in the background).
    pub fn refresh(&self, pid: u32) {
        let _ = self.jobs.send(Job::Refresh(pid, None));
    }

    /// As [`Self::refresh`], and wait until done (at most `timeout`): for a process stopped at
    /// its entry point.
    pub fn refresh_and_wait(&self, pid: u32, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        if self.jobs.send(Job::Refresh(pid, Some(done))).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }

    /// Drop a process: its mappings, and the tables no other process maps.
    pub fn forget(&self, pid: u32) {
        let _ = self.jobs.send(Job::Forget(pid));
    }

    pub fn stats(&self) -> UnwindTableStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Tables {
    fn refresh(&mut self, pid: u32) {
        let Ok(maps) = procfs::read_maps(pid) else {
            return;
        };
        // Every mapping of a file that has executable code mapped: a page of code made
        // non-executable for a while (a fault handler's trick, a JIT's W^X) splits the
        // mapping, and its pcs can still be on a stack (the fault's own frame).
        let code_files: HashSet<FileId> = maps
            .mappings
            .iter()
            .filter(|m| m.executable && m.inode != 0)
            .map(procfs::Mapping::file_id)
            .collect();
        let code: Vec<(&procfs::Mapping, &Path)> = maps
            .mappings
            .iter()
            .filter(|m| m.inode != 0 && code_files.contains(&m.file_id()))
            .filter_map(|m| Some((m, m.path()?)))
            .collect();
        let key: Vec<(Range<u64>, u64, FileId)> = code
            .iter()
            .map(|(m, _)| (m.range.clone(), m.offset, m.file_id()))
            .collect();
        if self.processes.get(&pid) == Some(&key) {
            return;
        }
        let mut entries: Vec<(ExecMapping, FileId)> = Vec::new();
        let mut used = HashSet::new();
        for (mapping, path) in &code {
            let id = mapping.file_id();
            if !self.modules.contains_key(&id) && !self.failed.contains_key(&id) {
                self.load_module(pid, id, mapping, path);
            }
            let Some(module) = self.modules.get_mut(&id) else {
                continue;
            };
            let Some(bias) = load_bias(&module.loads, mapping.range.start, mapping.offset) else {
                continue;
            };
            module.users.insert(pid);
            used.insert(id);
            entries.push((
                ExecMapping {
                    start: mapping.range.start,
                    end: mapping.range.end,
                    bias,
                    first_row: module.first_row,
                    rows: module.rows,
                },
                id,
            ));
        }
        let merged = merge_mappings(entries);
        if merged.len() > MAX_EXEC_MAPPINGS {
            log::warn!(
                "pid {pid} maps code from {} places; the eBPF walk knows the first {MAX_EXEC_MAPPINGS}",
                merged.len()
            );
        }
        let mut value = ProcessMappings::default();
        for (slot, mapping) in value.mappings.iter_mut().zip(&merged) {
            *slot = *mapping;
        }
        value.count = merged.len().min(MAX_EXEC_MAPPINGS) as u32;
        if let Err(err) = self.mappings_map.insert(pid, value, 0) {
            log::warn!("pid {pid}: cannot load its unwind mappings: {err}");
        }
        // Modules this process no longer maps (dlclose).
        let before: Vec<FileId> = self
            .processes
            .get(&pid)
            .map(|k| k.iter().map(|(_, _, id)| *id).collect())
            .unwrap_or_default();
        for id in before.into_iter().filter(|id| !used.contains(id)) {
            self.release(id, pid);
        }
        self.processes.insert(pid, key);
        self.publish();
    }

    fn load_module(&mut self, pid: u32, id: FileId, mapping: &procfs::Mapping, path: &Path) {
        let started = Instant::now();
        let module = open_module(pid, mapping, path)
            .and_then(|elf| ModuleCfi::read(&elf))
            .map_err(|e| e.to_string())
            .and_then(|cfi| {
                let nothing_but_frame_pointers =
                    cfi.sections.go.as_ref().is_some_and(|go| {
                        cfi.sections.eh_frame.is_none() && go.cgo_return.is_none()
                    });
                if nothing_but_frame_pointers
                    || (cfi.sections.eh_frame.is_none() && cfi.sections.debug_frame.is_none())
                {
                    return Ok((cfi.loads, Vec::new()));
                }
                let compiled = compile(&cfi.sections).map_err(|e| e.to_string())?;
                Ok((cfi.loads, compiled.rows))
            });
        let (loads, rows) = match module {
            Ok(module) => module,
            Err(why) => return self.fail(id, path, why),
        };
        let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        let Some(first_row) = self.space.take(count) else {
            let why = format!(
                "no room for its {count} rows in the unwind tables ({} MiB: raise --unwind-table-mib)",
                (u64::from(self.capacity) * 16) >> 20
            );
            return self.fail(id, path, why);
        };
        let compiled_at = started.elapsed();
        if let Err(err) = self.write_rows(first_row, &rows) {
            self.space.give_back(first_row, count);
            return self.fail(id, path, format!("cannot load its rows: {err}"));
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let load_ms = started.elapsed().saturating_sub(compiled_at).as_secs_f64() * 1e3;
        log::debug!(
            "unwind table of {}: {count} rows in {ms:.1} ms ({load_ms:.1} ms of it loading them)",
            path.display()
        );
        if let Ok(mut stats) = self.stats.lock() {
            if stats.slowest_build_ms.is_none_or(|slowest| ms > slowest) {
                stats.slowest_build_ms = Some(ms);
                stats.slowest_build_module = Some(path.display().to_string());
            }
        }
        self.modules.insert(
            id,
            Module {
                path: path.to_path_buf(),
                first_row,
                rows: count,
                loads,
                users: HashSet::new(),
            },
        );
    }

    /// Rows `first..` of the rows map: in batches (one syscall per 64 Ki rows instead of one
    /// per row: loading libcrypto's rows one by one took 190-270 ms here), else one by one.
    fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), String> {
        const BATCH: usize = 1 << 16;
        for (n, chunk) in rows.chunks(BATCH).enumerate() {
            let start = first + (n * BATCH) as u32;
            let keys: Vec<u32> = (start..start + chunk.len() as u32).collect();
            if let Err(err) = update_batch(&self.rows_fd, &keys, chunk) {
                log::debug!("batched row update refused ({err}): one by one");
                for (key, row) in keys.iter().zip(chunk) {
                    self.rows_map
                        .set(*key, *row, 0)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, id: FileId, path: &Path, why: String) {
        log::warn!("no unwind table for {}: {why}", path.display());
        self.failed.insert(id, why);
        self.publish();
    }

    fn release(&mut self, id: FileId, pid: u32) {
        let Some(module) = self.modules.get_mut(&id) else {
            return;
        };
        module.users.remove(&pid);
        if module.users.is_empty() {
            log::debug!("unloading the unwind table of {}", module.path.display());
            let (first, rows) = (module.first_row, module.rows);
            self.modules.remove(&id);
            self.space.give_back(first, rows);
        }
    }

    fn forget(&mut self, pid: u32) {
        let _ = self.mappings_map.remove(&pid);
        if let Some(key) = self.processes.remove(&pid) {
            let ids: HashSet<FileId> = key.into_iter().map(|(_, _, id)| id).collect();
            for id in ids {
                self.release(id, pid);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            let rows: u64 = self.modules.values().map(|m| u64::from(m.rows)).sum();
            stats.modules = self.modules.len() as u64;
            stats.rows = rows;
            stats.bytes = rows * 16;
            stats.peak_bytes = stats.peak_bytes.max(stats.bytes);
            stats.failed_modules = self.failed.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests;
