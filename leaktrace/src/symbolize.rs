//! Turning stack addresses into frames: module, file offset and build id (so the data stays
//! meaningful after the process is gone), then function, file:line and inlined frames.
//!
//! Addresses are normalized against a copy of /proc/PID/maps kept fresh while the process lives,
//! and symbolized from the module file by file offset, so the same path works for a process that
//! has already exited. Each (pid, address) is resolved once.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized, Symbolizer,
};

use crate::schema::Frame;

/// A file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    path: PathBuf,
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let _perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(path.trim_end_matches(" (deleted)")),
            })
        })
        .collect()
}

pub struct Symbols {
    symbolizer: Symbolizer,
    maps: HashMap<u32, Vec<Mapping>>,
    frames: HashMap<(u32, u64), Vec<Frame>>,
    build_ids: HashMap<PathBuf, Option<String>>,
}

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
        }
    }

    /// Re-read a live process's mappings (libraries loaded since the last call).
    pub fn refresh_maps(&mut self, pid: u32) {
        match fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(text) => {
                let maps = parse_maps(&text);
                log::debug!("pid {pid}: {} file mappings", maps.len());
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

    /// A frame whose module could not be read: module and offset only.
    fn unresolved(&self, pid: u32, addr: u64) -> Vec<Frame> {
        let mapping = self.mapping(pid, addr);
        vec![Frame {
            addr,
            module: mapping.map(|m| m.path.display().to_string()),
            offset: mapping.map(|m| addr - m.start + m.file_offset),
            ..Frame::default()
        }]
    }

    fn mapping(&self, pid: u32, addr: u64) -> Option<&Mapping> {
        self.maps
            .get(&pid)?
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
    }

    fn resolve(&mut self, pid: u32, alive: bool, addrs: &[u64]) {
        // Group by module so each module is symbolized in one call.
        let mut by_module: HashMap<PathBuf, Vec<(u64, u64)>> = HashMap::new();
        for &addr in addrs {
            match self.mapping(pid, addr) {
                Some(m) => by_module
                    .entry(m.path.clone())
                    .or_default()
                    .push((addr, addr - m.start + m.file_offset)),
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
        for (module, entries) in by_module {
            // Through the process's root first (containers, a file replaced on disk since), then by
            // the plain path: a process that is exiting no longer has a root to go through.
            let through_root = PathBuf::from(format!("/proc/{pid}/root"))
                .join(module.strip_prefix("/").unwrap_or(&module));
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
            for readable in &candidates {
                let build_id = self.build_id(readable);
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
                    Err(err) => log::debug!("cannot symbolize in {}: {err}", readable.display()),
                }
            }
            // Not cached when the module could not be read at all: a later snapshot retries.
            let Some(frames) = resolved else {
                continue;
            };
            for ((addr, _), frames) in entries.iter().zip(frames) {
                self.frames.insert((pid, *addr), frames);
            }
        }
    }

    fn build_id(&mut self, path: &Path) -> Option<String> {
        self.build_ids
            .entry(path.to_path_buf())
            .or_insert_with(|| read_build_id(path))
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

fn read_build_id(path: &Path) -> Option<String> {
    use object::Object as _;
    let data = fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
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
    fn maps_lines_parse_and_skip_anonymous() {
        let maps = parse_maps(
            "55d0c0a00000-55d0c0a21000 r-xp 00001000 fd:01 123 /usr/bin/my server\n\
             7ffd1c3f0000-7ffd1c411000 rw-p 00000000 00:00 0 [stack]\n\
             7f00-7f10 r-xp 00002000 fd:01 9 /tmp/lib.so (deleted)",
        );
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].path, PathBuf::from("/usr/bin/my server"));
        assert_eq!(maps[0].file_offset, 0x1000);
        assert_eq!(maps[1].path, PathBuf::from("/tmp/lib.so"));
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
}
