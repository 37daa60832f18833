//! Turning stack addresses into frames: module, file offset and build id (so the data stays
//! meaningful after the process is gone), then function, file:line and inlined frames.
//!
//! Addresses are normalized against a copy of /proc/PID/maps kept fresh while the process lives,
//! and symbolized from the module file by file offset, so the same path works for a process that
//! has already exited. Each (pid, address) is resolved once.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    io::{self, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized, Symbolizer,
};

use crate::{procfs, schema::Frame, target_files::Unreadable};

pub struct Symbols {
    maps: HashMap<u32, procfs::Maps>,
    frames: HashMap<(u32, u64), Vec<Frame>>,
    /// By file, not path: a path through each process's root would grow with process churn.
    build_ids: HashMap<FileId, Option<String>>,
    /// Module files already said to be unreadable: said once, retried quietly.
    said_unreadable: HashSet<FileId>,
    pinned: PinnedFiles,
    /// Frames by module file and offset, whatever process they were seen in: the thousandth
    /// run of a compiler is named without opening anything (bounded by [`FRAMES_BY_FILE`]).
    by_file: HashMap<(FileId, u64), Vec<Frame>>,
    /// One symbolizer per module file, each keeping its file mapped with its parsed symbols
    /// and DWARF until it is dropped: kept across snapshots (parsing a module again costs far
    /// more than naming an address in it), the least recently used dropped first past
    /// [`MODULES_OPEN`] files or [`MODULES_OPEN_BYTES`] ([`Symbols::bound`]).
    open: HashMap<FileId, OpenModule>,
    /// Counts symbolizer uses: which open module was used least recently.
    uses: u64,
}

/// A module file's own symbolizer.
struct OpenModule {
    symbolizer: Symbolizer,
    /// The file's size: what it may cost mapped.
    bytes: u64,
    /// [`Symbols::uses`] at its last use.
    used: u64,
    /// Its [`PinnedFiles`] key: unpinned with it.
    pinned: (u64, u64),
}

/// Module files kept open between uses, and their bytes at most ([`Symbols::bound`]): a debug
/// build's DWARF alone is hundreds of MB mapped. Past either the least recently used go (a
/// single larger file is named, then dropped). Frames already named stay cached, so only new
/// addresses in a dropped file pay for opening it again.
pub const MODULES_OPEN: usize = 32;
pub const MODULES_OPEN_BYTES: u64 = 32 << 20;

/// Frames kept by module file and offset (about 200 bytes each); past it the cache starts
/// empty again.
const FRAMES_BY_FILE: usize = 20_000;

/// A module file, whatever path or namespace it is reached by: (device, inode).
type FileId = (procfs::Device, u64);

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            maps: HashMap::new(),
            frames: HashMap::new(),
            build_ids: HashMap::new(),
            said_unreadable: HashSet::new(),
            pinned: PinnedFiles::default(),
            open: HashMap::new(),
            uses: 0,
            by_file: HashMap::new(),
        }
    }

    /// Keep the symbolizers bounded: past `max_open` module files or `max_bytes` of them, the
    /// least recently used are dropped (closing their mappings, freeing their parsed symbols
    /// and their pinned descriptor or sealed copy).
    pub fn bound(&mut self, max_open: usize, max_bytes: u64) {
        // A file larger than the whole budget goes first, alone: it must not flush the others.
        let huge: Vec<FileId> = self
            .open
            .iter()
            .filter(|(_, m)| m.bytes > max_bytes)
            .map(|(file, _)| *file)
            .collect();
        for file in huge {
            if let Some(module) = self.open.remove(&file) {
                self.pinned.unpin(module.pinned);
            }
        }
        let mut bytes: u64 = self.open.values().map(|m| m.bytes).sum();
        while self.open.len() > max_open || (bytes > max_bytes && !self.open.is_empty()) {
            let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, m)| m.used)
                .map(|(file, _)| *file)
            else {
                break;
            };
            if let Some(module) = self.open.remove(&oldest) {
                bytes = bytes.saturating_sub(module.bytes);
                self.pinned.unpin(module.pinned);
            }
        }
    }

    /// Re-read a live process's mappings (libraries loaded since the last call).
    pub fn refresh_maps(&mut self, pid: u32) {
        match procfs::read_maps(pid) {
            Ok(maps) => {
                log::debug!("pid {pid}: {} file mappings", maps.files().count());
                self.maps.insert(pid, maps);
            }
            Err(err) => log::debug!("pid {pid}: cannot read its maps: {err}"),
        }
    }

    /// Make sure the mappings of `addrs` are known (read while the process lives), so that a
    /// short-lived process's stacks can still be named after it exits. `seen`: the mappings
    /// the caller read just before (growth mode's unwinder), taken instead of reading them
    /// again, or that the process was already gone then (nothing to read).
    pub fn keep_maps_for(&mut self, pid: u32, addrs: &[u64], seen: procfs::MapsSeen<'_>) {
        if addrs.iter().all(|a| self.mapping(pid, *a).is_some()) {
            return;
        }
        match seen {
            procfs::MapsSeen::Gone => {}
            procfs::MapsSeen::Read(maps)
                if addrs
                    .iter()
                    .all(|a| maps.containing(*a).is_some_and(|m| m.path().is_some())) =>
            {
                self.maps.insert(pid, maps.clone());
            }
            procfs::MapsSeen::Read(_) | procfs::MapsSeen::Unknown => self.refresh_maps(pid),
        }
    }

    /// Forget a process's mappings and frames: its pid now names another program (exec, or
    /// reuse after exit).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.frames.retain(|(p, _), _| *p != pid);
    }

    /// Frames for a stack of return addresses, innermost first. `alive` says whether module files
    /// can still be reached through the process's root (containers) or only by their path.
    pub fn stack_frames(&mut self, pid: u32, alive: bool, addrs: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.frames.contains_key(&(pid, *a)))
            .collect();
        if !missing.is_empty() {
            if alive && missing.iter().any(|a| self.mapping(pid, *a).is_none()) {
                self.refresh_maps(pid);
            }
            self.resolve(pid, alive, &missing);
        }
        addrs
            .iter()
            .flat_map(|a| {
                self.frames
                    .get(&(pid, *a))
                    .cloned()
                    .unwrap_or_else(|| self.unresolved(pid, *a))
            })
            .collect()
    }

    /// A frame whose module could not be symbolized: module, offset and (when the file was
    /// read once) build id, enough to name it later with the same binary.
    fn unresolved(&self, pid: u32, addr: u64) -> Vec<Frame> {
        let mapping = self.mapping(pid, addr);
        vec![Frame {
            addr,
            module: mapping.map(|(path, _, _)| path.display().to_string()),
            offset: mapping.map(|(_, offset, _)| offset),
            build_id: mapping.and_then(|(_, _, file)| self.build_ids.get(&file).cloned().flatten()),
            ..Frame::default()
        }]
    }

    /// The module file mapped at `addr`, the address's offset in that file, and the file.
    fn mapping(&self, pid: u32, addr: u64) -> Option<(&Path, u64, FileId)> {
        let mapping = self.maps.get(&pid)?.containing(addr)?;
        Some((
            mapping.path()?,
            addr - mapping.range.start + mapping.offset,
            mapping.file_id(),
        ))
    }

    fn resolve(&mut self, pid: u32, alive: bool, addrs: &[u64]) {
        // Group by module so each module is symbolized in one call.
        let mut by_module: HashMap<PathBuf, (FileId, Vec<(u64, u64)>)> = HashMap::new();
        for &addr in addrs {
            match self.mapping(pid, addr) {
                Some((path, offset, file_id)) if self.by_file.contains_key(&(file_id, offset)) => {
                    let module = path.display().to_string();
                    let frames = self.by_file[&(file_id, offset)]
                        .iter()
                        .map(|frame| Frame {
                            addr,
                            module: Some(module.clone()),
                            ..frame.clone()
                        })
                        .collect();
                    self.frames.insert((pid, addr), frames);
                }
                Some((path, offset, file_id)) => by_module
                    .entry(path.to_path_buf())
                    .or_insert_with(|| (file_id, Vec::new()))
                    .1
                    .push((addr, offset)),
                None => {
                    self.frames.insert(
                        (pid, addr),
                        vec![Frame {
                            addr,
                            ..Frame::default()
                        }],
                    );
                }
            }
        }
        for (module, (file_id, entries)) in by_module {
            // Through the process's root first (containers, a file replaced on disk since), then by
            // the plain path: a process that is exiting no longer has a root to go through.
            let through_root = procfs::path_in_root(pid, &module);
            let candidates = if alive {
                vec![through_root, module.clone()]
            } else {
                vec![module.clone()]
            };
            // Return addresses point after the call; look up the call instruction itself.
            let lookups: Vec<u64> = entries
                .iter()
                .map(|(_, off)| off.saturating_sub(1))
                .collect();
            let module_name = module.display().to_string();
            let mut resolved = None;
            let mut unreadable = None;
            for readable in &candidates {
                // blazesym opens the path itself: check first that it is what the process sees
                // (inside its root) and a file that can be read (target_files' rules).
                let vetted = match vet_module(pid, alive, &module, readable) {
                    Ok(vetted) => vetted,
                    Err(why) => {
                        log::debug!(
                            "pid {pid}: not symbolizing through {}: {why}",
                            readable.display()
                        );
                        unreadable = Some(why.to_string());
                        continue;
                    }
                };
                let pinned = match self.pinned.pin(readable, vetted) {
                    Ok(pinned) => pinned,
                    Err(why) => {
                        log::debug!("pid {pid}: not symbolizing {}: {why}", readable.display());
                        unreadable = Some(why.to_string());
                        continue;
                    }
                };
                let build_id = pinned
                    .file
                    .and_then(|file| self.build_id(file_id, readable, file));
                self.uses += 1;
                let open = self.open.entry(file_id).or_insert_with(|| OpenModule {
                    symbolizer: Symbolizer::new(),
                    bytes: pinned.bytes,
                    used: 0,
                    pinned: pinned.key,
                });
                open.used = self.uses;
                let source = Source::Elf(Elf::new(pinned.path));
                match open
                    .symbolizer
                    .symbolize(&source, Input::FileOffset(&lookups))
                {
                    Ok(symbolized) => {
                        let frames: Vec<Vec<Frame>> = entries
                            .iter()
                            .enumerate()
                            .map(|(i, (addr, offset))| {
                                let base = Frame {
                                    addr: *addr,
                                    module: Some(module_name.clone()),
                                    offset: Some(*offset),
                                    build_id: build_id.clone(),
                                    ..Frame::default()
                                };
                                match symbolized.get(i) {
                                    Some(Symbolized::Sym(sym)) => sym_frames(sym, &base),
                                    _ => vec![base],
                                }
                            })
                            .collect();
                        resolved = Some(frames);
                        break;
                    }
                    Err(err) => {
                        log::debug!("cannot symbolize in {}: {err}", readable.display());
                        unreadable = Some(err.to_string());
                    }
                }
            }
            // Not cached when the module could not be read at all: a later snapshot retries.
            let Some(frames) = resolved else {
                if let Some(why) = unreadable.filter(|_| self.said_unreadable.insert(file_id)) {
                    log::warn!("pid {pid}: cannot name functions in {module_name}: {why}");
                }
                continue;
            };
            if self.by_file.len() + entries.len() > FRAMES_BY_FILE {
                self.by_file.clear();
            }
            for ((addr, offset), frames) in entries.iter().zip(frames) {
                self.by_file.insert((file_id, *offset), frames.clone());
                self.frames.insert((pid, *addr), frames);
            }
        }
    }

    /// The build id of the module at `path`, read from `vetted` (that very file, already
    /// opened) the first time.
    fn build_id(&mut self, file: FileId, path: &Path, vetted: File) -> Option<String> {
        self.build_ids
            .entry(file)
            .or_insert_with(|| read_build_id(path, vetted))
            .clone()
    }
}

/// A symbol as frames: its inlined functions innermost first (`inlined: true`), then the
/// function they were inlined into.
fn sym_frames(sym: &blazesym::symbolize::Sym<'_>, base: &Frame) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    // blazesym lists inlined functions outermost first.
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = inlined
            .code_info
            .as_ref()
            .map(|c| (Some(code_file(c)), c.line))
            .unwrap_or((None, None));
        frames.push(Frame {
            function: Some(inlined.name.to_string()),
            file,
            line,
            inlined: true,
            ..base.clone()
        });
    }
    let (file, line) = sym
        .code_info
        .as_deref()
        .map(|c| (Some(code_file(c)), c.line))
        .unwrap_or((None, None));
    frames.push(Frame {
        function: Some(sym.name.to_string()),
        file,
        line,
        ..base.clone()
    });
    frames
}

fn code_file(code: &blazesym::symbolize::CodeInfo<'_>) -> String {
    match &code.dir {
        Some(dir) if !dir.as_os_str().is_empty() => {
            dir.join(&*code.file).to_string_lossy().into_owned()
        }
        _ => code.file.to_string_lossy().into_owned(),
    }
}

/// Modules pinned open for blazesym beyond this many are closed, oldest first (a system-wide run
/// meets a few hundred distinct modules).
const MAX_PINNED_FILES: usize = 256;
/// The largest module copied before symbolizing (see [`PinnedFiles`]).
const MAX_COPIED_BYTES: u64 = 512 << 20;

/// The module files blazesym reads, by a `/proc/self/fd/N` path to a descriptor leaktrace holds:
/// - the very file [`vet_module`] opened and checked, so a file swapped in at the path
///   afterwards is never the one read (blazesym opens the path it is given itself);
/// - or, when someone other than root could write the file (its owner, or anyone by its mode),
///   a sealed in-memory copy of it: blazesym maps the files it reads, and a file truncated
///   while mapped kills the reader with SIGBUS. A copy that can neither shrink nor change
///   cannot. Only root can truncate the other files, and a root target is trusted that far.
///
/// Keyed by (device, inode) of the vetted file: one pin per file, whichever process maps it.
#[derive(Default)]
struct PinnedFiles {
    files: HashMap<(u64, u64), File>,
    order: VecDeque<(u64, u64)>,
}

/// A module as blazesym is to read it: the path, and a descriptor of that file for leaktrace's
/// own reads (the build id).
struct Pinned {
    path: PathBuf,
    file: Option<File>,
    /// The file's size, and its key among the pinned files.
    bytes: u64,
    key: (u64, u64),
}

impl PinnedFiles {
    fn pin(&mut self, readable: &Path, vetted: File) -> Result<Pinned, Unreadable> {
        let meta = vetted.metadata().map_err(|e| Unreadable::Io {
            path: readable.to_path_buf(),
            source: e,
        })?;
        let key = (meta.dev(), meta.ino());
        if !self.files.contains_key(&key) {
            let others_can_write = meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0;
            let file = if others_can_write {
                sealed_copy(readable, vetted, meta.len(), meta.uid())?
            } else {
                vetted
            };
            if self.order.len() >= MAX_PINNED_FILES {
                if let Some(oldest) = self.order.pop_front() {
                    self.files.remove(&oldest);
                }
            }
            self.files.insert(key, file);
            self.order.push_back(key);
        }
        let file = &self.files[&key];
        Ok(Pinned {
            path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            file: file.try_clone().ok(),
            bytes: meta.len(),
            key,
        })
    }

    /// Close a pinned file (its symbolizer is gone).
    fn unpin(&mut self, key: (u64, u64)) {
        if self.files.remove(&key).is_some() {
            self.order.retain(|k| *k != key);
        }
    }
}

/// A copy of `file` in sealed memory: it can no longer shrink, grow or change.
fn sealed_copy(readable: &Path, file: File, size: u64, owner: u32) -> Result<File, Unreadable> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    if size > MAX_COPIED_BYTES {
        return Err(Unreadable::Malformed {
            path: readable.to_path_buf(),
            reason: format!(
                "uid {owner} may write it, so it is copied before it is read (it could be \
                 truncated under leaktrace), and it is {size} bytes, more than the \
                 {MAX_COPIED_BYTES} copied at most"
            ),
        });
    }
    let io_error = |source: io::Error| Unreadable::Io {
        path: readable.to_path_buf(),
        source,
    };
    let memfd = memfd_create(
        "leaktrace-module",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| io_error(e.into()))?;
    let mut copy = File::from(memfd);
    // Read through the descriptor: a file truncated meanwhile gives a short copy (an ELF error
    // later), never a fault.
    io::copy(&mut file.take(MAX_COPIED_BYTES), &mut copy).map_err(io_error)?;
    fcntl_add_seals(
        &copy,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| io_error(e.into()))?;
    Ok(copy)
}

/// For the fuzz targets (`fuzz/`): name `offsets` in `file` as [`Symbols::resolve`] does,
/// through a `/proc/self/fd` path.
#[doc(hidden)]
pub fn fuzz_module(file: File, offsets: &[u64]) {
    let source = Source::Elf(Elf::new(format!("/proc/self/fd/{}", file.as_raw_fd())));
    let symbolizer = Symbolizer::new();
    let _ = symbolizer.symbolize(&source, Input::FileOffset(offsets));
}

/// Whether `readable` (the module by its path inside the process's root, or by its plain path)
/// is a regular file within bounds and, while the process lives, the same file as the process's
/// root holds there: a link it planted cannot send blazesym to a FIFO or to the host's files.
/// blazesym then reads the file this opened, not the path ([`PinnedFiles`]).
fn vet_module(pid: u32, alive: bool, module: &Path, readable: &Path) -> Result<File, Unreadable> {
    let vetted = if alive {
        crate::target_files::open_in_root(pid, module)?
    } else {
        crate::target_files::open(readable)?
    };
    match (vetted.metadata(), std::fs::metadata(readable)) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Ok(vetted),
        _ => Err(Unreadable::Malformed {
            path: readable.to_path_buf(),
            reason: "it is not the file the process's root holds at that path".to_string(),
        }),
    }
}

fn read_build_id(path: &Path, file: File) -> Option<String> {
    use object::Object as _;
    let elf = crate::target_files::Elf::new(path, file);
    let file = elf.parse().ok()?;
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        // The address of an instruction inside this very function, as a return address would be.
        a_function_to_find as *const () as u64 + 1
    }

    #[test]
    fn resolves_a_function_of_this_test_binary() {
        let pid = std::process::id();
        let addr = a_function_to_find();
        let mut symbols = Symbols::new();
        let frames = symbols.stack_frames(pid, true, &[addr]);
        let frame = frames.last().expect("one frame");
        assert!(
            frame
                .function
                .as_deref()
                .is_some_and(|f| f.contains("a_function_to_find")),
            "{frames:?}"
        );
        assert!(
            frame
                .module
                .as_deref()
                .is_some_and(|m| m.contains("leaktrace")),
            "{frame:?}"
        );
        assert!(frame.offset.is_some());
        // A second lookup, even as if the process were gone, comes from the cache.
        assert_eq!(symbols.stack_frames(pid, false, &[addr]), frames);
    }

    /// A module someone other than root may write is read from a sealed copy: truncating the
    /// file afterwards (which would fault a reader that maps it) changes nothing for leaktrace.
    /// A root-owned module is read through the vetted descriptor itself, not copied.
    #[test]
    fn a_module_its_owner_could_truncate_is_read_from_a_sealed_copy() {
        use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("owned.c");
        std::fs::write(
            &source,
            "int owned_function_to_find(int x) { return x * 3 + 1; }\n\
             int second_function_to_find(int x) { return x * 5 + 2; }\n",
        )
        .expect("write source");
        let library = dir.path().join("libowned.so");
        let built = std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-O0", "-o"])
            .arg(&library)
            .arg(&source)
            .status()
            .expect("run gcc");
        assert!(built.success(), "gcc failed");
        // Each function's file offset, from its address and the segment holding it.
        let bytes = std::fs::read(&library).expect("read library");
        let elf = object::File::parse(&*bytes).expect("parse library");
        let offset_of = |name: &str| {
            let symbol = elf
                .symbols()
                .find(|s| s.name() == Ok(name))
                .expect("symbol");
            let segment = elf
                .segments()
                .find(|s| (s.address()..s.address() + s.size()).contains(&symbol.address()))
                .expect("segment");
            symbol.address() - segment.address() + segment.file_range().0
        };
        let (first, second) = (
            offset_of("owned_function_to_find"),
            offset_of("second_function_to_find"),
        );
        drop(elf);

        let base = 0x7f00_0000_0000;
        let maps = format!(
            "7f0000000000-7f0000100000 r-xp 00000000 fe:01 4343 {}\n",
            library.display()
        );
        let pid = u32::MAX;
        let name_at = |symbols: &mut Symbols, offset: u64| {
            // As a return address: one past an instruction inside the function.
            let frames = symbols.stack_frames(pid, false, &[base + offset + 2]);
            frames.last().and_then(|f| f.function.clone())
        };
        let pinned_is_a_copy = |symbols: &Symbols| {
            let file = symbols
                .pinned
                .files
                .values()
                .next()
                .expect("one pinned file");
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .expect("read fd link")
                .to_string_lossy()
                .starts_with("/memfd:")
        };

        // Owned by root, not writable by others: the vetted descriptor itself.
        let mut symbols = Symbols::new();
        symbols.maps.insert(pid, procfs::Maps::parse(&maps));
        assert_eq!(
            name_at(&mut symbols, first).as_deref(),
            Some("owned_function_to_find")
        );
        assert!(!pinned_is_a_copy(&symbols));

        // Owned by nobody: a sealed copy, which its owner's truncation cannot reach.
        std::os::unix::fs::chown(&library, Some(65534), Some(65534)).expect("chown");
        let mut symbols = Symbols::new();
        symbols.maps.insert(pid, procfs::Maps::parse(&maps));
        assert_eq!(
            name_at(&mut symbols, first).as_deref(),
            Some("owned_function_to_find")
        );
        assert!(pinned_is_a_copy(&symbols));
        std::fs::File::options()
            .write(true)
            .open(&library)
            .and_then(|f| f.set_len(0))
            .expect("truncate the library");
        assert_eq!(
            name_at(&mut symbols, second).as_deref(),
            Some("second_function_to_find")
        );
    }

    /// Open modules past the count or the bytes: the least recently used go; a file larger
    /// than the whole budget goes alone, without flushing the others.
    #[test]
    fn bound_drops_the_least_recently_used_and_a_file_over_the_budget_alone() {
        let device = procfs::Device { major: 8, minor: 1 };
        let mut symbols = Symbols::new();
        for (inode, bytes, used) in [(1, 10, 3), (2, 10, 1), (3, 10, 2), (4, 1000, 4)] {
            symbols.open.insert(
                (device, inode),
                OpenModule {
                    symbolizer: Symbolizer::new(),
                    bytes,
                    used,
                    pinned: (0, inode),
                },
            );
        }
        let left = |symbols: &Symbols| {
            let mut inodes: Vec<u64> = symbols.open.keys().map(|(_, inode)| *inode).collect();
            inodes.sort_unstable();
            inodes
        };
        symbols.bound(2, 100);
        assert_eq!(left(&symbols), [1, 3]);
        symbols.bound(8, 15);
        assert_eq!(left(&symbols), [1]);
        symbols.bound(8, 15);
        assert_eq!(left(&symbols), [1]);
    }

    /// A FIFO planted at a module's path: refused without blocking, said once however often
    /// it is retried, its frames kept as module and offset.
    #[test]
    fn an_unreadable_module_is_said_once_and_keeps_module_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("libgone.so");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0, "mkfifo");
        // No such process: only the plain path is tried.
        let pid = u32::MAX;
        let maps = format!(
            "7f0000000000-7f0000010000 r-xp 00001000 fe:01 4242 {}\n",
            fifo.display()
        );
        let mut symbols = Symbols::new();
        symbols.maps.insert(pid, procfs::Maps::parse(&maps));
        for addr in [0x7f00_0000_0100, 0x7f00_0000_0200, 0x7f00_0000_0100] {
            let frames = symbols.stack_frames(pid, false, &[addr]);
            let expected = Frame {
                addr,
                module: Some(fifo.display().to_string()),
                offset: Some(addr - 0x7f00_0000_0000 + 0x1000),
                ..Frame::default()
            };
            assert_eq!(frames, vec![expected]);
        }
        assert_eq!(symbols.said_unreadable.len(), 1);
    }
}
