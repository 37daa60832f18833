//! Which allocator serves a process's `malloc`, and the functions of its family to hook.
//!
//! The dynamic linker binds `malloc` to its first definition in the search order: the
//! executable, then LD_PRELOAD (and /etc/ld.so.preload), then the libraries in breadth-first
//! DT_NEEDED order. The same order is followed here, over the files the process really maps.
//! The module found is recognized from its symbols (glibc, jemalloc, tcmalloc, mimalloc, musl),
//! and each family is hooked by its own names: its entry points that bypass `malloc`/`free`
//! (`mallocx`, `tc_*`, `mi_*`, C++ `operator new`/`delete`) allocate and free as much as the
//! standard ones. A jemalloc linked into the executable under a prefix (`je_malloc`,
//! `_rjem_malloc`) serves its callers beside the libc's `malloc` and is hooked too.
use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    io::Read as _,
    path::{Path, PathBuf},
};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};
use leaktrace_common::AllocFn;
use object::{
    Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _, RelocationTarget,
};

use crate::{placement, procfs, target_files};

/// What a hooked function does, for the probe it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// An allocating function: the entry and return programs, with this cookie.
    Alloc(AllocFn),
    /// A function that frees its first argument (free, sdallocx, operator delete, ...).
    Free,
}

/// One function to hook, located in its module's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub symbol: String,
    /// Other names of the family at the same address (glibc's memalign is aligned_alloc,
    /// tcmalloc's tc_malloc is malloc): covered by the same probe.
    pub aliases: Vec<String>,
    pub kind: HookKind,
    /// File offset of the function's first byte.
    pub file_offset: u64,
    /// Bytes into the function where its entry probe goes (`placement`).
    pub placed_at: u64,
}

/// The allocator families leaktrace knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Glibc,
    Jemalloc,
    Tcmalloc,
    TcmallocMinimal,
    Mimalloc,
    Musl,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Glibc => "glibc",
            Family::Jemalloc => "jemalloc",
            Family::Tcmalloc => "tcmalloc",
            Family::TcmallocMinimal => "tcmalloc_minimal",
            Family::Mimalloc => "mimalloc",
            Family::Musl => "musl",
        }
    }
}

/// An allocator found in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    /// None: a `malloc` leaktrace does not recognize (not hooked).
    pub family: Option<Family>,
    pub version: Option<String>,
    /// The module defining it, as the process names it.
    pub module: PathBuf,
    /// The same file reached from leaktrace's namespace: read and attached through this path.
    pub file: PathBuf,
    /// Whether it is linked into the executable (static binary, or a prefixed jemalloc).
    pub in_executable: bool,
    /// Symbol prefix (`je_`, `_rjem_`), empty for the standard names.
    pub prefix: String,
    pub hooks: Vec<Hook>,
}

impl Allocator {
    /// `glibc 2.36`, `jemalloc 5.3.0 (je_)`, `unknown`.
    pub fn describe(&self) -> String {
        let mut text = self.family.map_or("unknown", Family::name).to_string();
        if let Some(version) = &self.version {
            text.push(' ');
            text.push_str(version);
        }
        if !self.prefix.is_empty() {
            text.push_str(&format!(" ({}*)", self.prefix));
        }
        text
    }

    #[cfg(test)]
    pub fn hooked_names(&self) -> Vec<String> {
        self.hooks
            .iter()
            .flat_map(|h| std::iter::once(&h.symbol).chain(&h.aliases))
            .cloned()
            .collect()
    }
}

/// What discovery found in a process: the allocators to hook (the one serving `malloc` first),
/// or why none can be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    pub allocators: Vec<Allocator>,
    /// Set when nothing can be hooked: one line naming what was found.
    pub unhookable: Option<String>,
}

impl Discovery {
    pub fn primary(&self) -> Option<&Allocator> {
        self.allocators.first()
    }

    pub fn hookable(&self) -> impl Iterator<Item = &Allocator> {
        self.allocators.iter().filter(|a| !a.hooks.is_empty())
    }
}

/// A module in the dynamic linker's search order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// As the process names it.
    pub path: PathBuf,
    /// Where leaktrace opens it (map_files, /proc/PID/root, or the path itself).
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Read(#[from] target_files::Unreadable),
    #[error("{0} is not an ELF file")]
    NotElf(String),
}

/// The allocators of a running process.
pub fn discover_process(pid: u32) -> Result<Discovery, DiscoveryError> {
    let maps = procfs::read_maps(pid).map_err(|e| target_files::Unreadable::Io {
        path: PathBuf::from(format!("/proc/{pid}/maps")),
        source: e,
    })?;
    let exe = procfs::read_exe(pid).unwrap_or_default();
    // Every mapped file once, by its first mapping: map_files opens exactly that file; without
    // CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE it cannot be opened, and the file is reached by
    // its path inside the process's root instead.
    let mut mapped: Vec<Module> = Vec::new();
    let mut through_map_files = None;
    for mapping in maps.files() {
        let Some(path) = mapping.path() else { continue };
        if mapped.iter().any(|m| m.path == path) {
            continue;
        }
        let map_file = procfs::mapped_file(pid, &mapping.range);
        let usable = *through_map_files.get_or_insert_with(|| {
            !matches!(
                target_files::open(&map_file),
                Err(target_files::Unreadable::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::PermissionDenied
            )
        });
        mapped.push(Module {
            path: path.to_path_buf(),
            file: if usable {
                map_file
            } else {
                procfs::path_in_root(pid, path)
            },
        });
    }
    let preloads = preloads_of(pid);
    let ordered = search_order(&exe, &mapped, &preloads);
    discover(&ordered)
}

/// The allocators a not yet started executable will use: `loaded` are the libraries its loader
/// lists (`ld.so --list`, which prints them in search order, preloads first).
pub fn discover_executable(exe: &Path, loaded: &[PathBuf]) -> Result<Discovery, DiscoveryError> {
    let mut modules = vec![Module {
        path: exe.to_path_buf(),
        file: exe.to_path_buf(),
    }];
    modules.extend(loaded.iter().map(|path| Module {
        path: path.clone(),
        file: path.clone(),
    }));
    discover(&modules)
}

/// The LD_PRELOAD value of the process's initial environment (its program's, since its last
/// exec), as it is written there.
pub fn ld_preload_of(pid: u32) -> Option<Vec<u8>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"LD_PRELOAD="))
        .map(<[u8]>::to_vec)
}

/// LD_PRELOAD of the process's initial environment, then its /etc/ld.so.preload.
fn preloads_of(pid: u32) -> Vec<String> {
    let mut preloads = Vec::new();
    if let Some(value) = ld_preload_of(pid) {
        preloads.extend(
            String::from_utf8_lossy(&value)
                .split([':', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    if let Ok(file) = target_files::open_in_root(pid, Path::new("/etc/ld.so.preload")) {
        let mut text = String::new();
        if file.take(64 * 1024).read_to_string(&mut text).is_ok() {
            preloads.extend(
                text.split_whitespace()
                    .filter(|s| !s.starts_with('#'))
                    .map(str::to_string),
            );
        }
    }
    preloads
}

/// The mapped modules in the dynamic linker's search order: the executable, the preloads, then
/// breadth-first DT_NEEDED from the executable; modules reached no other way (dlopen) last.
fn search_order(exe: &Path, mapped: &[Module], preloads: &[String]) -> Vec<Module> {
    let basename = |p: &Path| p.file_name().map(OsStr::to_os_string);
    let mut sonames: HashMap<usize, Option<String>> = HashMap::new();
    let mut soname_of = |i: usize| -> Option<String> {
        sonames
            .entry(i)
            .or_insert_with(|| dynamic_strings(&mapped[i].file).ok().and_then(|d| d.soname))
            .clone()
    };
    let mut order: Vec<usize> = Vec::new();
    let push = |order: &mut Vec<usize>, i: usize| {
        if !order.contains(&i) {
            order.push(i);
        }
    };
    if let Some(i) = mapped.iter().position(|m| m.path == exe) {
        push(&mut order, i);
    }
    let find = |name: &str, soname_of: &mut dyn FnMut(usize) -> Option<String>| {
        if let Some(i) = mapped.iter().position(|m| m.path == Path::new(name)) {
            return Some(i);
        }
        // A path through a link (libfoo.so.2 -> libfoo.so.2.0.1) finds the file mapped by the
        // name it was linked as: its file name, or the soname of a mapped file.
        let name = name.rsplit('/').next().unwrap_or(name);
        mapped
            .iter()
            .position(|m| basename(&m.path).as_deref() == Some(OsStr::new(name)))
            .or_else(|| (0..mapped.len()).find(|&i| soname_of(i).as_deref() == Some(name)))
    };
    for preload in preloads {
        if let Some(i) = find(preload, &mut soname_of) {
            push(&mut order, i);
        }
    }
    // Breadth-first over DT_NEEDED, from the executable (then from each library reached).
    let mut next = 0;
    let mut queue: Vec<usize> = order.first().copied().into_iter().collect();
    while next < queue.len() {
        let i = queue[next];
        next += 1;
        let needed = dynamic_strings(&mapped[i].file)
            .map(|d| d.needed)
            .unwrap_or_default();
        for name in needed {
            if let Some(j) = find(&name, &mut soname_of) {
                push(&mut order, j);
                if !queue.contains(&j) {
                    queue.push(j);
                }
            }
        }
        // The preloads' own dependencies follow the executable's.
        if next == 1 {
            for preload in preloads {
                if let Some(j) = find(preload, &mut soname_of) {
                    if !queue.contains(&j) {
                        queue.push(j);
                    }
                }
            }
        }
    }
    for i in 0..mapped.len() {
        push(&mut order, i);
    }
    order.into_iter().map(|i| mapped[i].clone()).collect()
}

/// DT_NEEDED and DT_SONAME of an ELF file.
#[derive(Default)]
struct DynamicStrings {
    needed: Vec<String>,
    soname: Option<String>,
}

fn dynamic_strings(path: &Path) -> Result<DynamicStrings, DiscoveryError> {
    const DT_NEEDED: u64 = 1;
    const DT_SONAME: u64 = 14;
    let elf = target_files::Elf::new(path, target_files::open(path)?);
    let view = elf.parse()?;
    let (Some(dynamic), Some(strings)) = (
        elf.section_data(&view, ".dynamic")?,
        elf.section_data(&view, ".dynstr")?,
    ) else {
        return Ok(DynamicStrings::default());
    };
    let string_at = |offset: u64| -> Option<String> {
        let bytes = strings.get(usize::try_from(offset).ok()?..)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    };
    let mut found = DynamicStrings::default();
    // Elf64_Dyn: d_tag, d_val (little-endian x86-64).
    for entry in dynamic.chunks_exact(16) {
        let word = |at: usize| {
            entry
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        match word(0) {
            0 => break,
            DT_NEEDED => found.needed.extend(string_at(word(8))),
            DT_SONAME => found.soname = string_at(word(8)),
            _ => {}
        }
    }
    Ok(found)
}

/// The symbols an ELF module defines (functions), by name, with their addresses.
struct Symbols {
    by_name: HashMap<String, u64>,
}

impl Symbols {
    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// Defined function symbols: the dynamic table, and the full one when `with_symtab`.
fn symbols_of(file: &object::File<'_>, with_symtab: bool) -> Symbols {
    let mut by_name = HashMap::new();
    let tables = file
        .dynamic_symbols()
        .chain(with_symtab.then(|| file.symbols()).into_iter().flatten());
    for symbol in tables {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        // Versioned names (malloc@@GLIBC_2.2.5) keep their base name.
        let name = name.split('@').next().unwrap_or(name);
        by_name.entry(name.to_string()).or_insert(symbol.address());
    }
    Symbols { by_name }
}

/// Whether an ELF file is statically linked (no program interpreter, no dynamic section).
fn is_static(file: &object::File<'_>) -> bool {
    file.section_by_name(".interp").is_none() && file.section_by_name(".dynamic").is_none()
}

/// Follow the search order to the module defining `malloc` and recognize it; add the
/// allocators linked into the executable beside it (a prefixed jemalloc, mimalloc's API).
fn discover(modules: &[Module]) -> Result<Discovery, DiscoveryError> {
    let mut allocators = Vec::new();
    let mut beside = Vec::new();
    let mut found_malloc = false;
    for (index, module) in modules.iter().enumerate() {
        let data = match target_files::read(&module.file) {
            Ok(data) => data,
            Err(err) if index == 0 => return Err(err.into()),
            Err(err) => {
                log::debug!("{err}; skipped in the allocator search");
                continue;
            }
        };
        let Ok(file) = object::File::parse(&*data) else {
            if index == 0 {
                return Err(DiscoveryError::NotElf(module.path.display().to_string()));
            }
            continue;
        };
        let is_executable = index == 0;
        // An executable's own symbols count in full: a static binary exports nothing, and a
        // prefixed jemalloc linked in is not exported either.
        let symbols = symbols_of(&file, is_executable);
        let static_binary = is_executable && is_static(&file);
        let defines_malloc = if is_executable && !static_binary {
            // A dynamic executable's malloc serves the libraries only when exported.
            file.dynamic_symbols()
                .any(|s| s.is_definition() && s.name().is_ok_and(|n| n == "malloc"))
        } else {
            symbols.has("malloc")
        };
        if !found_malloc && defines_malloc {
            found_malloc = true;
            allocators.push(recognize(module, &file, &data, &symbols, "", is_executable));
        }
        if is_executable {
            // Allocators linked into the executable beside the one serving malloc: a prefixed
            // jemalloc (C programs, Rust's tikv-jemallocator), mimalloc's own API (Rust's
            // mimalloc crate). They serve their callers directly.
            if let Some(prefix) = jemalloc_prefix(&symbols).filter(|p| !p.is_empty()) {
                beside.push(recognize(module, &file, &data, &symbols, &prefix, true));
            } else if !defines_malloc && symbols.has("mi_malloc") && symbols.has("mi_free") {
                beside.push(recognize(module, &file, &data, &symbols, "", true));
            }
        }
        if found_malloc && index > 0 {
            break;
        }
    }
    allocators.append(&mut beside);
    let unhookable = if allocators.iter().any(|a| !a.hooks.is_empty()) {
        None
    } else {
        Some(match allocators.first() {
            Some(found) => format!(
                "malloc is defined in {} by an allocator leaktrace does not know",
                found.module.display()
            ),
            None => why_no_malloc(modules),
        })
    };
    Ok(Discovery {
        allocators,
        unhookable,
    })
}

/// Why no module defines malloc, in the user's words.
fn why_no_malloc(modules: &[Module]) -> String {
    let Some(exe) = modules.first() else {
        return "no module defines malloc".to_string();
    };
    let Ok(data) = target_files::read(&exe.file) else {
        return "its executable cannot be read".to_string();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return "its executable is not an ELF file".to_string();
    };
    let is_go = file.section_by_name(".go.buildinfo").is_some()
        || file.section_by_name(".gopclntab").is_some();
    match (is_go, is_static(&file)) {
        (true, true) => "it is a pure Go binary (Go's own allocator, no malloc)".to_string(),
        (false, true) if file.symbols().next().is_none() => {
            "it is a stripped static binary (no symbol names malloc)".to_string()
        }
        (false, true) => "it is a static binary that defines no malloc".to_string(),
        (_, false) => "no module it maps defines malloc (libc not loaded yet?)".to_string(),
    }
}

/// The prefix of a jemalloc's names: `P` such that `Pmallocx` and `Pdallocx` are defined.
fn jemalloc_prefix(symbols: &Symbols) -> Option<String> {
    symbols
        .by_name
        .keys()
        .filter_map(|name| name.strip_suffix("mallocx"))
        .find(|prefix| {
            symbols.has(&format!("{prefix}dallocx")) && symbols.has(&format!("{prefix}malloc"))
        })
        .map(str::to_string)
}

fn recognize(
    module: &Module,
    file: &object::File<'_>,
    data: &[u8],
    symbols: &Symbols,
    prefix: &str,
    in_executable: bool,
) -> Allocator {
    let family = family_of(module, symbols, prefix);
    let version = family.and_then(|f| version_of(f, file, data, symbols));
    let hooks = family
        .map(|f| hooks_for(f, prefix, file, data, symbols))
        .unwrap_or_default();
    Allocator {
        family,
        version,
        module: module.path.clone(),
        file: module.file.clone(),
        in_executable,
        prefix: prefix.to_string(),
        hooks,
    }
}

fn family_of(module: &Module, symbols: &Symbols, prefix: &str) -> Option<Family> {
    if jemalloc_prefix(symbols).as_deref() == Some(prefix) {
        return Some(Family::Jemalloc);
    }
    if !prefix.is_empty() {
        return None;
    }
    if symbols.has("tc_malloc") {
        // The full gperftools build carries the heap profiler; the minimal one does not.
        return Some(if symbols.has("HeapProfilerStart") {
            Family::Tcmalloc
        } else {
            Family::TcmallocMinimal
        });
    }
    if symbols.has("mi_malloc") {
        return Some(Family::Mimalloc);
    }
    let base = module
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // musl: mallocng's internals (static binaries keep them in .symtab), or its one library.
    if symbols.has("__libc_malloc_impl")
        || symbols.has("__malloc_alloc_meta")
        || symbols.has("__malloc_donate")
        || base.starts_with("ld-musl")
        || base.starts_with("libc.musl")
    {
        return Some(Family::Musl);
    }
    if (symbols.has("__libc_malloc") && symbols.has("__libc_start_main"))
        || symbols.has("_int_malloc")
        || (symbols.has("__libc_malloc") && base.starts_with("libc"))
    {
        return Some(Family::Glibc);
    }
    None
}

fn version_of(
    family: Family,
    file: &object::File<'_>,
    data: &[u8],
    symbols: &Symbols,
) -> Option<String> {
    match family {
        // "GNU C Library (Debian GLIBC 2.36-9+deb12u13) stable release version 2.36."
        Family::Glibc => version_after(data, b"release version "),
        // JEMALLOC_VERSION: "5.3.0-0-g54eaed1d...": a version, a count, a git hash.
        Family::Jemalloc => jemalloc_version(data),
        Family::Tcmalloc | Family::TcmallocMinimal => version_after(data, b"gperftools "),
        // mi_version() returns MI_MALLOC_VERSION (209 = 2.0.9): `mov $imm32,%eax; ret`.
        Family::Mimalloc => {
            let code = function_bytes(file, data, *symbols.by_name.get("mi_version")?, 6)?;
            match *code {
                [0xb8, a, b, c, d, 0xc3] => {
                    let v = u32::from_le_bytes([a, b, c, d]);
                    Some(format!("{}.{}.{}", v / 100, v % 100 / 10, v % 10))
                }
                _ => None,
            }
        }
        // musl keeps no version string in a static binary.
        Family::Musl => None,
    }
}

/// The `d.d[.d]` right after `marker` in `data`.
fn version_after(data: &[u8], marker: &[u8]) -> Option<String> {
    let at = data.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let version: Vec<u8> = data[at..]
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .copied()
        .collect();
    let version = String::from_utf8(version).ok()?;
    let version = version.trim_end_matches('.');
    (version.contains('.') && version.starts_with(|c: char| c.is_ascii_digit()))
        .then(|| version.to_string())
}

fn jemalloc_version(data: &[u8]) -> Option<String> {
    // A NUL-terminated "X.Y.Z-N-g<hex>" string.
    data.split(|&b| b == 0).find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let (version, rest) = s.split_once('-')?;
        let (count, hash) = rest.split_once("-g")?;
        let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        (version.split('.').count() == 3
            && version.split('.').all(numeric)
            && numeric(count)
            && hash.len() >= 7
            && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| version.to_string())
    })
}

/// Standard names and their kinds (prefixed for jemalloc).
const STANDARD_ALLOC: &[(&str, AllocFn)] = &[
    ("malloc", AllocFn::Malloc),
    ("calloc", AllocFn::Calloc),
    ("realloc", AllocFn::Realloc),
    ("reallocarray", AllocFn::Reallocarray),
    ("posix_memalign", AllocFn::PosixMemalign),
    ("aligned_alloc", AllocFn::AlignedAlloc),
    ("memalign", AllocFn::Memalign),
    ("valloc", AllocFn::Valloc),
    ("pvalloc", AllocFn::Pvalloc),
];
const STANDARD_FREE: &[&str] = &["free", "cfree"];

/// C++ operators new (size first: malloc's shape) and delete (pointer first), mangled.
const OPERATOR_NEW: &[&str] = &[
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
];
const OPERATOR_DELETE: &[&str] = &[
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

const JEMALLOC_ALLOC: &[(&str, AllocFn)] = &[
    ("mallocx", AllocFn::Mallocx),
    ("rallocx", AllocFn::Rallocx),
    ("xallocx", AllocFn::Xallocx),
];
const JEMALLOC_FREE: &[&str] = &["sdallocx", "dallocx"];

const TCMALLOC_ALLOC: &[(&str, AllocFn)] = &[
    ("tc_malloc", AllocFn::Malloc),
    ("tc_malloc_skip_new_handler", AllocFn::Malloc),
    ("tc_calloc", AllocFn::Calloc),
    ("tc_realloc", AllocFn::Realloc),
    ("tc_memalign", AllocFn::Memalign),
    ("tc_posix_memalign", AllocFn::PosixMemalign),
    ("tc_valloc", AllocFn::Valloc),
    ("tc_pvalloc", AllocFn::Pvalloc),
    ("tc_new", AllocFn::Malloc),
    ("tc_newarray", AllocFn::Malloc),
    ("tc_new_nothrow", AllocFn::Malloc),
    ("tc_newarray_nothrow", AllocFn::Malloc),
    ("tc_new_aligned", AllocFn::Malloc),
    ("tc_newarray_aligned", AllocFn::Malloc),
    ("tc_new_aligned_nothrow", AllocFn::Malloc),
    ("tc_newarray_aligned_nothrow", AllocFn::Malloc),
];
const TCMALLOC_FREE: &[&str] = &[
    "tc_free",
    "tc_cfree",
    "tc_free_sized",
    "tc_delete",
    "tc_deletearray",
    "tc_delete_sized",
    "tc_deletearray_sized",
    "tc_delete_nothrow",
    "tc_deletearray_nothrow",
    "tc_delete_aligned",
    "tc_deletearray_aligned",
    "tc_delete_sized_aligned",
    "tc_deletearray_sized_aligned",
    "tc_delete_aligned_nothrow",
    "tc_deletearray_aligned_nothrow",
];

/// mimalloc's own entry points (the `mi_heap_*` variants, which take a heap first, and the
/// string functions are not hooked).
const MIMALLOC_ALLOC: &[(&str, AllocFn)] = &[
    ("reallocf", AllocFn::Reallocf),
    ("mi_malloc", AllocFn::Malloc),
    ("mi_malloc_small", AllocFn::Malloc),
    ("mi_zalloc", AllocFn::Malloc),
    ("mi_zalloc_small", AllocFn::Malloc),
    ("mi_calloc", AllocFn::Calloc),
    ("mi_mallocn", AllocFn::Calloc),
    ("mi_realloc", AllocFn::Realloc),
    ("mi_rezalloc", AllocFn::Realloc),
    ("mi_reallocn", AllocFn::Reallocarray),
    ("mi_recalloc", AllocFn::Reallocarray),
    ("mi_reallocf", AllocFn::Reallocf),
    ("mi_expand", AllocFn::Expand),
    ("mi_malloc_aligned", AllocFn::Malloc),
    ("mi_malloc_aligned_at", AllocFn::Malloc),
    ("mi_zalloc_aligned", AllocFn::Malloc),
    ("mi_zalloc_aligned_at", AllocFn::Malloc),
    ("mi_calloc_aligned", AllocFn::Calloc),
    ("mi_calloc_aligned_at", AllocFn::Calloc),
    ("mi_realloc_aligned", AllocFn::Realloc),
    ("mi_realloc_aligned_at", AllocFn::Realloc),
    ("mi_rezalloc_aligned", AllocFn::Realloc),
    ("mi_rezalloc_aligned_at", AllocFn::Realloc),
    ("mi_new", AllocFn::Malloc),
    ("mi_new_nothrow", AllocFn::Malloc),
    ("mi_new_aligned", AllocFn::Malloc),
    ("mi_new_aligned_nothrow", AllocFn::Malloc),
    ("mi_new_n", AllocFn::Calloc),
    ("mi_new_realloc", AllocFn::Realloc),
    ("mi_new_reallocn", AllocFn::Reallocarray),
];
const MIMALLOC_FREE: &[&str] = &[
    "mi_free",
    "mi_free_size",
    "mi_free_aligned",
    "mi_free_size_aligned",
];

/// The functions of `family` the module defines, one hook per address (aliases share one),
/// without the forwarders: a function whose first instruction jumps to another hooked function
/// (directly or through its PLT slot) would make one call count twice.
fn hooks_for(
    family: Family,
    prefix: &str,
    file: &object::File<'_>,
    data: &[u8],
    symbols: &Symbols,
) -> Vec<Hook> {
    let mut wanted: Vec<(String, HookKind)> = Vec::new();
    let mut alloc = |names: &[(&str, AllocFn)], prefixed: bool| {
        for (name, kind) in names {
            let name = if prefixed {
                format!("{prefix}{name}")
            } else {
                (*name).to_string()
            };
            wanted.push((name, HookKind::Alloc(*kind)));
        }
    };
    alloc(STANDARD_ALLOC, true);
    match family {
        Family::Jemalloc => alloc(JEMALLOC_ALLOC, true),
        Family::Tcmalloc | Family::TcmallocMinimal => alloc(TCMALLOC_ALLOC, false),
        Family::Mimalloc => alloc(MIMALLOC_ALLOC, false),
        Family::Glibc | Family::Musl => {}
    }
    let cxx = matches!(
        family,
        Family::Jemalloc | Family::Tcmalloc | Family::TcmallocMinimal | Family::Mimalloc
    ) && prefix.is_empty();
    if cxx {
        wanted.extend(
            OPERATOR_NEW
                .iter()
                .map(|n| (n.to_string(), HookKind::Alloc(AllocFn::Malloc))),
        );
    }
    let mut frees: Vec<String> = STANDARD_FREE
        .iter()
        .map(|n| format!("{prefix}{n}"))
        .collect();
    match family {
        Family::Jemalloc => frees.extend(JEMALLOC_FREE.iter().map(|n| format!("{prefix}{n}"))),
        Family::Tcmalloc | Family::TcmallocMinimal => {
            frees.extend(TCMALLOC_FREE.iter().map(|n| n.to_string()));
        }
        Family::Mimalloc => frees.extend(MIMALLOC_FREE.iter().map(|n| n.to_string())),
        Family::Glibc | Family::Musl => {}
    }
    if cxx {
        frees.extend(OPERATOR_DELETE.iter().map(|n| n.to_string()));
    }
    wanted.extend(frees.into_iter().map(|n| (n, HookKind::Free)));

    // Defined ones, one hook per address under its first name, the others its aliases.
    let mut by_address: Vec<(String, HookKind, u64)> = Vec::new();
    let mut aliases: HashMap<u64, Vec<String>> = HashMap::new();
    for (name, kind) in wanted {
        let Some(&address) = symbols.by_name.get(&name) else {
            continue;
        };
        if by_address.iter().any(|(_, _, a)| *a == address) {
            let names = aliases.entry(address).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
            continue;
        }
        by_address.push((name, kind, address));
    }
    let hooked_addresses: HashSet<u64> = by_address.iter().map(|(_, _, a)| *a).collect();
    let plt = plt_targets(file);
    let mut hooks = Vec::new();
    for (name, kind, address) in &by_address {
        let Some(code) = function_bytes(file, data, *address, placement::BODY_BYTES) else {
            log::debug!("{name}: its code is outside the file's sections; not hooked");
            continue;
        };
        if let Some(target) = forwards_to(code, *address) {
            // Through the PLT, the callee is named; it may be hooked under an alias.
            let callee = plt
                .get(&target)
                .and_then(|callee| symbols.by_name.get(callee))
                .copied();
            let to_hooked = (hooked_addresses.contains(&target) && target != *address)
                || callee.is_some_and(|c| hooked_addresses.contains(&c) && c != *address);
            if to_hooked {
                log::debug!("{name} forwards to a hooked function; not hooked itself");
                continue;
            }
        }
        let Some(file_offset) = file_offset_of(file, *address) else {
            continue;
        };
        hooks.push(Hook {
            symbol: name.clone(),
            aliases: aliases.remove(address).unwrap_or_default(),
            kind: *kind,
            file_offset,
            placed_at: placement::probe_offset_for(code),
        });
    }
    // malloc and free first: the start-up line and the JSON list read in that order.
    hooks.sort_by_key(|h| match h.kind {
        HookKind::Alloc(AllocFn::Malloc) if h.symbol.ends_with("malloc") => 0,
        HookKind::Alloc(_) => 1,
        HookKind::Free => 2,
    });
    hooks
}

/// The target of a function that starts (after an optional `endbr64`) with a direct `jmp`.
fn forwards_to(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    for _ in 0..2 {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instruction);
        if instruction.code() == iced_x86::Code::Endbr64 {
            continue;
        }
        return (instruction.flow_control() == FlowControl::UnconditionalBranch)
            .then(|| instruction.near_branch_target())
            .filter(|&t| t != 0);
    }
    None
}

/// PLT stubs by address, with the name of the function each jumps to (`jmp *slot(%rip)`, the
/// slot relocated to that function).
fn plt_targets(file: &object::File<'_>) -> HashMap<u64, String> {
    let mut slots: HashMap<u64, String> = HashMap::new();
    if let (Some(relocations), Some(table)) =
        (file.dynamic_relocations(), file.dynamic_symbol_table())
    {
        for (offset, relocation) in relocations {
            if let RelocationTarget::Symbol(index) = relocation.target() {
                if let Ok(name) = table.symbol_by_index(index).and_then(|s| s.name()) {
                    slots.insert(offset, name.split('@').next().unwrap_or(name).to_string());
                }
            }
        }
    }
    let mut stubs = HashMap::new();
    for section in file.sections() {
        if !section.name().is_ok_and(|n| n.starts_with(".plt")) {
            continue;
        }
        let Ok(code) = section.data() else { continue };
        let mut decoder = Decoder::with_ip(64, code, section.address(), DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        // A stub's address: that of its first instruction after the previous stub's jump.
        let mut stub_start = section.address();
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if instruction.is_ip_rel_memory_operand()
                && instruction.flow_control() == FlowControl::IndirectBranch
            {
                if let Some(name) = slots.get(&instruction.ip_rel_memory_address()) {
                    stubs.insert(stub_start, name.clone());
                }
            }
            if matches!(
                instruction.flow_control(),
                FlowControl::IndirectBranch | FlowControl::UnconditionalBranch
            ) {
                // Stubs are 16-byte aligned; the next starts at the next boundary.
                stub_start = instruction.next_ip().div_ceil(16) * 16;
            }
        }
    }
    stubs
}

/// Where the code at virtual `address` lies in the file.
fn file_offset_of(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.sections().find_map(|section| {
        let (offset, size) = section.file_range()?;
        let into = address.checked_sub(section.address())?;
        (into < size && section.kind() == object::SectionKind::Text).then_some(offset + into)
    })
}

/// Up to `len` bytes of code at virtual `address` (fewer at the end of its section).
fn function_bytes<'d>(
    file: &object::File<'_>,
    data: &'d [u8],
    address: u64,
    len: usize,
) -> Option<&'d [u8]> {
    let (offset, end) = file.sections().find_map(|section| {
        let (offset, size) = section.file_range()?;
        let into = address.checked_sub(section.address())?;
        (into < size && section.kind() == object::SectionKind::Text)
            .then_some((offset + into, offset + size))
    })?;
    let start = usize::try_from(offset).ok()?;
    let end = usize::try_from(end).ok()?.min(start.saturating_add(len));
    data.get(start..end.min(data.len()))
}

#[cfg(test)]
fn module(path: &str) -> Module {
    Module {
        path: PathBuf::from(path),
        file: PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover_paths(paths: &[&str]) -> Discovery {
        discover(&paths.iter().map(|p| module(p)).collect::<Vec<_>>()).expect("discover")
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
    const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

    fn installed(path: &str) -> bool {
        let there = Path::new(path).exists();
        if !there {
            println!("{path} is not installed (cargo xtask setup installs it); skipped");
        }
        there
    }

    #[test]
    fn glibc_serves_a_plain_program() {
        let found = discover_paths(&["/bin/sh", LIBC]);
        let glibc = found.primary().expect("an allocator");
        assert_eq!(glibc.family, Some(Family::Glibc));
        assert!(
            glibc
                .version
                .as_deref()
                .is_some_and(|v| v.starts_with("2.")),
            "{glibc:?}"
        );
        let names = glibc.hooked_names();
        assert_eq!(
            names.first().map(String::as_str),
            Some("malloc"),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "free"), "{names:?}");
        assert!(found.unhookable.is_none());
    }

    #[test]
    fn a_preloaded_jemalloc_wins_and_brings_its_own_entry_points() {
        if !installed(JEMALLOC) {
            return;
        }
        let found = discover_paths(&["/bin/sh", JEMALLOC, LIBC]);
        let jemalloc = found.primary().expect("an allocator");
        assert_eq!(jemalloc.family, Some(Family::Jemalloc));
        assert_eq!(jemalloc.version.as_deref(), Some("5.3.0"));
        let names = jemalloc.hooked_names();
        for name in [
            "malloc", "mallocx", "rallocx", "xallocx", "sdallocx", "dallocx", "free", "_Znwm",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        // operator delete(void*) is `jmp free@plt`: free's probe counts it.
        assert!(!names.iter().any(|n| n == "_ZdlPv"), "{names:?}");
        assert!(names.iter().any(|n| n == "_ZdlPvm"), "{names:?}");
    }

    #[test]
    fn tcmalloc_and_mimalloc_are_recognized_with_versions() {
        if installed(TCMALLOC) {
            let found = discover_paths(&["/bin/sh", TCMALLOC, LIBC]);
            let tc = found.primary().expect("an allocator");
            assert_eq!(tc.family, Some(Family::TcmallocMinimal));
            assert!(
                tc.version.as_deref().is_some_and(|v| v.starts_with("2.")),
                "{tc:?}"
            );
            let names = tc.hooked_names();
            // Aliases share one hook: malloc and tc_malloc are one address.
            let malloc = tc
                .hooks
                .iter()
                .find(|h| h.symbol == "malloc")
                .expect("malloc");
            assert!(
                malloc.aliases.iter().any(|n| n == "tc_malloc"),
                "{malloc:?}"
            );
            assert!(names.iter().any(|n| n == "tc_free_sized"), "{names:?}");
        }
        if installed(MIMALLOC) {
            let found = discover_paths(&["/bin/sh", MIMALLOC, LIBC]);
            let mi = found.primary().expect("an allocator");
            assert_eq!(mi.family, Some(Family::Mimalloc));
            assert!(
                mi.version.as_deref().is_some_and(|v| v.starts_with("2.")),
                "{mi:?}"
            );
            let names = mi.hooked_names();
            for name in ["malloc", "free", "mi_expand", "reallocf", "mi_new_n"] {
                assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
            }
            // cfree and mi_free_size are `jmp mi_free@plt`, and mi_free is free's alias:
            // every free is counted once, by free's probe.
            assert!(!names.iter().any(|n| n == "mi_free_size"), "{names:?}");
            assert!(!names.iter().any(|n| n == "cfree"), "{names:?}");
        }
    }

    #[test]
    fn the_executable_is_searched_first() {
        if !installed(JEMALLOC) {
            return;
        }
        // libc before jemalloc: glibc's malloc wins.
        let found = discover_paths(&["/bin/sh", LIBC, JEMALLOC]);
        assert_eq!(found.primary().and_then(|a| a.family), Some(Family::Glibc));
    }

    #[test]
    fn versions_are_read_from_their_strings() {
        assert_eq!(
            version_after(b"xx stable release version 2.36.\0", b"release version "),
            Some("2.36".to_string())
        );
        assert_eq!(
            jemalloc_version(b"abc\x005.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c\x00x"),
            Some("5.3.0".to_string())
        );
        assert_eq!(jemalloc_version(b"1.2-3\0"), None);
        assert_eq!(version_after(b"gperftools x", b"gperftools "), None);
    }

    #[test]
    fn a_jemalloc_prefix_is_found_by_its_own_names() {
        let symbols = |names: &[&str]| Symbols {
            by_name: names.iter().map(|n| (n.to_string(), 0x1000)).collect(),
        };
        let prefix = |names: &[&str]| jemalloc_prefix(&symbols(names));
        assert_eq!(
            prefix(&["je_malloc", "je_mallocx", "je_dallocx", "malloc"]),
            Some("je_".to_string())
        );
        assert_eq!(
            prefix(&["_rjem_malloc", "_rjem_mallocx", "_rjem_dallocx"]),
            Some("_rjem_".to_string())
        );
        assert_eq!(
            prefix(&["malloc", "mallocx", "dallocx"]),
            Some(String::new())
        );
        // tcmalloc exports nallocx (jemalloc's API) but no mallocx.
        assert_eq!(prefix(&["malloc", "nallocx", "tc_malloc"]), None);
        assert_eq!(prefix(&["je_mallocx", "je_dallocx"]), None);
    }

    #[test]
    fn a_forwarding_jump_is_seen() {
        // jmp rel32 at 0x1000 to 0x1000 + 5 + 0x10
        assert_eq!(forwards_to(&[0xe9, 0x10, 0, 0, 0], 0x1000), Some(0x1015));
        // endbr64; jmp rel8
        assert_eq!(
            forwards_to(&[0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0x02], 0x1000),
            Some(0x1008)
        );
        // push %rbp: not a forwarder.
        assert_eq!(forwards_to(&[0x55, 0xe9, 0, 0, 0, 0], 0x1000), None);
    }

    #[test]
    fn our_own_process_is_served_by_glibc() {
        let found = discover_process(std::process::id()).expect("discover self");
        let glibc = found.primary().expect("an allocator");
        assert_eq!(glibc.family, Some(Family::Glibc), "{found:?}");
        assert!(glibc.module.ends_with("libc.so.6"));
        assert!(glibc.file.starts_with("/proc/"), "{glibc:?}");
    }
}
