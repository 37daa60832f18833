//! Turning stack addresses into frames: module, file offset and build id (so the data stays
//! meaningful after the process is gone), then function, file:line and inlined frames.
//!
//! Addresses are normalized against a copy of /proc/PID/maps kept fresh while the process lives,
//! and symbolized from the module file by file offset, so the same path works for a process that
//! has already exited. Each (pid, address) is resolved once.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized, Symbolizer,
};

use crate::{procfs, schema::Frame};

pub struct Symbols {
    symbolizer: Symbolizer,
    maps: HashMap<u32, procfs::Maps>,
    frames: HashMap<(u32, u64), Vec<Frame>>,
    /// By file, not path: a path through each process's root would grow with process churn.
    build_ids: HashMap<FileId, Option<String>>,
    /// Module files already said to be unreadable: said once, retried quietly.
    said_unreadable: HashSet<FileId>,
    /// Frames by module file and offset, whatever process they were seen in: the thousandth
    /// run of a compiler is named without opening anything (bounded by [`FRAMES_BY_FILE`]).
    by_file: HashMap<(FileId, u64), Vec<Frame>>,
    /// Module files the symbolizer opened (it keeps each mapped, with its parsed symbols and
    /// DWARF, until it is dropped).
    opened: HashSet<FileId>,
}

/// Module files the symbolizer keeps open before it is started afresh ([`Symbols::bound`]): a
/// debug build's DWARF alone is hundreds of MB mapped. Frames already named stay cached, so
/// only new addresses pay for the reopening.
pub const MODULES_OPEN: usize = 32;

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
            symbolizer: Symbolizer::new(),
            maps: HashMap::new(),
            frames: HashMap::new(),
            build_ids: HashMap::new(),
            said_unreadable: HashSet::new(),
            opened: HashSet::new(),
            by_file: HashMap::new(),
        }
    }

    /// Keep the symbolizer's caches bounded: past `max_open` module files, it starts afresh
    /// (closing their mappings and freeing their parsed symbols).
    pub fn bound(&mut self, max_open: usize) {
        if self.opened.len() > max_open {
            self.symbolizer = Symbolizer::new();
            self.opened.clear();
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
    /// short-lived process's stacks can still be named after it exits.
    pub fn keep_maps_for(&mut self, pid: u32, addrs: &[u64]) {
        if addrs.iter().any(|a| self.mapping(pid, *a).is_none()) {
            self.refresh_maps(pid);
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
                let build_id = self.build_id(file_id, readable, vetted);
                self.opened.insert(file_id);
                let source = Source::Elf(Elf::new(readable));
                match self
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
    fn build_id(&mut self, file: FileId, path: &Path, vetted: std::fs::File) -> Option<String> {
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

/// Whether `readable` (the module by its path inside the process's root, or by its plain path)
/// is a regular file within bounds and, while the process lives, the same file as the process's
/// root holds there: a link it planted cannot send blazesym to a FIFO or to the host's files.
/// blazesym opens the path again afterwards: a file swapped in between is not caught.
fn vet_module(
    pid: u32,
    alive: bool,
    module: &Path,
    readable: &Path,
) -> Result<std::fs::File, crate::target_files::Unreadable> {
    use std::os::unix::fs::MetadataExt as _;
    let vetted = if alive {
        crate::target_files::open_in_root(pid, module)?
    } else {
        crate::target_files::open(readable)?
    };
    match (vetted.metadata(), std::fs::metadata(readable)) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Ok(vetted),
        _ => Err(crate::target_files::Unreadable::Malformed {
            path: readable.to_path_buf(),
            reason: "it is not the file the process's root holds at that path".to_string(),
        }),
    }
}

fn read_build_id(path: &Path, file: std::fs::File) -> Option<String> {
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
