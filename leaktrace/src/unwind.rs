//! Growth mode's stacks: the user registers and the top of the user stack, copied by the eBPF
//! program at a heap-growing syscall, unwound here with the modules' `.eh_frame` /
//! `.debug_frame` (framehop), as samply does with perf's stack copies. This gives full stacks
//! through code built without frame pointers (glibc, OpenSSL, most -O2 builds), where the
//! kernel's frame-pointer walk stops after a frame or two.
use std::{
    collections::HashMap,
    ops::Range,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, Module, Unwinder as _,
};
use object::{Object as _, ObjectSection as _};

use crate::{
    procfs,
    schema::UnwindStats,
    target_files::{Elf, Unreadable},
    tracer::StackCopy,
};

/// Section data shared by every process that maps the same file.
type Data = Arc<[u8]>;

/// Frames kept per stack (the kernel's frame-pointer walk keeps 127).
const MAX_FRAMES: usize = 127;
/// Module files whose unwind sections are cached, and their bytes at most (see
/// [`StackUnwinder::forget`]): a debug build's .eh_frame alone is several MiB.
const FILES_CACHED: usize = 256;
const FILES_CACHED_BYTES: usize = 24 << 20;

/// A process's modules are re-read at most this often when a stack leads outside them (a
/// library loaded since they were read).
const MODULES_REFRESH: Duration = Duration::from_millis(250);

impl UnwindStats {
    pub fn ns_per_event(&self) -> Option<f64> {
        (self.events > 0).then(|| self.nanos as f64 / self.events as f64)
    }
}

/// The unwind sections of one ELF file and its loadable segments.
struct ModuleFile {
    text_svma: Option<Range<u64>>,
    text: Option<Data>,
    got_svma: Option<Range<u64>>,
    eh_frame_svma: Option<Range<u64>>,
    eh_frame: Option<Data>,
    eh_frame_hdr_svma: Option<Range<u64>>,
    eh_frame_hdr: Option<Data>,
    debug_frame: Option<Data>,
    /// (file offset, virtual address, file size) of each PT_LOAD segment.
    loads: Vec<(u64, u64, u64)>,
}

impl ModuleFile {
    /// Read through `target_files`: headers and the unwind sections only (a 100 MiB library
    /// costs what its .eh_frame costs), never mapped (a target truncating its file would kill
    /// a reader of a mapping with SIGBUS), bounded in size.
    fn read(elf: &Elf) -> Result<Self, Unreadable> {
        let file = elf.parse()?;
        let section = |name: &str| -> Result<(Option<Range<u64>>, Option<Data>), Unreadable> {
            let range = file
                .section_by_name(name)
                .map(|s| s.address()..s.address() + s.size());
            let data = match range {
                Some(_) => elf.section_data(&file, name)?.map(Data::from),
                None => None,
            };
            Ok((range, data))
        };
        let range = |name: &str| {
            file.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        // The code itself is not copied: framehop only reads it to analyse prologues where the
        // CFI is missing, and the CFI of the syscall wrappers and their callers is there.
        let (text_svma, text) = (range(".text"), None);
        let got_svma = range(".got");
        let (eh_frame_svma, eh_frame) = section(".eh_frame")?;
        let (eh_frame_hdr_svma, eh_frame_hdr) = section(".eh_frame_hdr")?;
        if let (Some(hdr_svma), Some(hdr), Some(eh_frame_svma)) =
            (&eh_frame_hdr_svma, &eh_frame_hdr, &eh_frame_svma)
        {
            check_eh_frame_hdr(hdr, hdr_svma.start, eh_frame_svma).map_err(|reason| {
                Unreadable::Malformed {
                    path: elf.path().to_path_buf(),
                    reason,
                }
            })?;
        }
        // Go binaries and some others have only .debug_frame (maybe compressed).
        let debug_frame = match eh_frame {
            Some(_) => None,
            None => section(".debug_frame")?.1,
        };
        if eh_frame.is_none() && debug_frame.is_none() {
            log::debug!("{} has no unwind sections", elf.path().display());
        }
        let loads = crate::unwind_tables::load_segments(&file);
        Ok(Self {
            text_svma,
            text,
            got_svma,
            eh_frame_svma,
            eh_frame,
            eh_frame_hdr_svma,
            eh_frame_hdr,
            debug_frame,
            loads,
        })
    }

    /// Whether a process's unwinder holds these sections (they are shared, not copied).
    fn in_use(&self) -> bool {
        self.sections().any(|data| Arc::strong_count(data) > 1)
    }

    /// The bytes of unwind sections held.
    fn bytes(&self) -> usize {
        self.sections().map(|data| data.len()).sum()
    }

    /// The sections held.
    fn sections(&self) -> impl Iterator<Item = &Data> {
        [
            &self.text,
            &self.eh_frame,
            &self.eh_frame_hdr,
            &self.debug_frame,
        ]
        .into_iter()
        .flatten()
    }

    /// `avma - svma` for a mapping of this file that starts at `start` with `file_offset`.
    fn bias(&self, start: u64, file_offset: u64) -> Option<u64> {
        crate::unwind_tables::load_bias(&self.loads, start, file_offset)
    }

    fn section_info(&self) -> ExplicitModuleSectionInfo<Data> {
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            text: self.text.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame_svma.clone(),
            eh_frame: self.eh_frame.clone(),
            eh_frame_hdr_svma: self.eh_frame_hdr_svma.clone(),
            eh_frame_hdr: self.eh_frame_hdr.clone(),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        }
    }
}

/// Whether `.eh_frame_hdr`'s lookup table points into `.eh_frame`, as a linker writes it. The
/// unwinder trusts it: gimli subtracts a table entry from the section's address unchecked (a
/// panic in a debug build, a wild offset otherwise: found by the `module` fuzz target).
fn check_eh_frame_hdr(hdr: &[u8], hdr_svma: u64, eh_frame: &Range<u64>) -> Result<(), String> {
    use gimli::{BaseAddresses, EhFrameHdr, LittleEndian, Pointer};
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(hdr_svma)
        .set_eh_frame(eh_frame.start);
    let parsed = EhFrameHdr::new(hdr, LittleEndian)
        .parse(&bases, 8)
        .map_err(|e| format!(".eh_frame_hdr: {e}"))?;
    let start = match parsed.eh_frame_ptr() {
        Pointer::Direct(address) if eh_frame.contains(&address) => address,
        _ => return Err(".eh_frame_hdr does not point into .eh_frame".to_string()),
    };
    // An entry is an offset from the header's .eh_frame pointer: never before it.
    let inside = |pointer: Pointer| match pointer {
        Pointer::Direct(address) => (start..eh_frame.end).contains(&address),
        Pointer::Indirect(_) => false,
    };
    let Some(table) = parsed.table() else {
        return Ok(());
    };
    let mut entries = table.iter(&bases);
    loop {
        match entries.next() {
            Ok(Some((_, fde))) if inside(fde) => {}
            Ok(Some(_)) => {
                return Err(".eh_frame_hdr lists an entry outside .eh_frame".to_string());
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!(".eh_frame_hdr table: {e}")),
        }
    }
}

/// The executable file mappings of a process (the code to unwind through), with their paths.
fn code_mappings(maps: &procfs::Maps) -> impl Iterator<Item = (&procfs::Mapping, &Path)> {
    maps.mappings
        .iter()
        .filter(|m| m.executable && m.inode != 0)
        .filter_map(|m| Some((m, m.path()?)))
}

/// Whether a module is the C library, whose frames (the allocator, the syscall wrappers) are
/// dropped from the top of growth stacks so that a site starts at the code that allocated.
fn is_libc(path: &Path) -> bool {
    path.to_str().is_some_and(crate::frames::is_libc)
}

struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Data>,
    /// Made at the first walk: a process found gone has no modules to walk through (its
    /// stacks are the instruction pointer alone).
    cache: Option<CacheX86_64>,
    code: Vec<Range<u64>>,
    libc: Vec<Range<u64>>,
    read_at: Instant,
    /// The mappings read at `read_at`; `None`: the process was gone (its events are drained
    /// after it exits), which is not read again before [`MODULES_REFRESH`].
    maps: Option<procfs::Maps>,
}

impl ProcessUnwinder {
    fn covers(&self, addr: u64) -> bool {
        self.code.iter().any(|r| r.contains(&addr))
    }
}

/// Unwinders of every process growth events came from, and the module files they share.
#[derive(Default)]
pub struct StackUnwinder {
    files: HashMap<(procfs::Device, u64), Option<Arc<ModuleFile>>>,
    processes: HashMap<u32, ProcessUnwinder>,
    pub stats: UnwindStats,
}

impl StackUnwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The return addresses of a stack copy, innermost first (the syscall's instruction
    /// pointer, then each caller), and how many leading frames are in the C library.
    pub fn unwind(&mut self, pid: u32, copy: &StackCopy<'_>) -> (Vec<u64>, usize) {
        let started = Instant::now();
        self.stats.events += 1;
        if copy.bytes.is_empty() {
            self.stats.empty_copies += 1;
        }
        if !self.processes.contains_key(&pid) {
            self.load_process(pid);
        }
        let mut frames = self.walk(pid, copy);
        // The syscall's own instruction is always in a mapped file (libc, ld.so, a static
        // binary): outside the modules read, the process has exec'd since (a fork's heap
        // events can be seen before its exec), so they are read again at once. Other frames
        // outside them (a library loaded since, or JIT code) wait for MODULES_REFRESH.
        // A process found gone is not looked for again before MODULES_REFRESH: a busy host's
        // short processes are mostly gone by the time their events are drained, and each
        // failed lookup of /proc/PID costs a path walk.
        let stale = self.processes.get(&pid).is_some_and(|p| {
            let due = p.read_at.elapsed() >= MODULES_REFRESH;
            (!p.covers(copy.ip) && (p.maps.is_some() || due))
                || (frames.iter().any(|a| !p.covers(*a)) && due)
        });
        if stale {
            self.load_process(pid);
            frames = self.walk(pid, copy);
        }
        let in_libc = self.leading_libc(pid, &frames);
        self.stats.frames += frames.len() as u64;
        self.stats.nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (frames, in_libc)
    }

    /// The mappings of `pid` as they were last read to unwind its stacks.
    pub fn maps_seen(&self, pid: u32) -> procfs::MapsSeen<'_> {
        match self.processes.get(&pid) {
            None => procfs::MapsSeen::Unknown,
            Some(ProcessUnwinder { maps: None, .. }) => procfs::MapsSeen::Gone,
            Some(ProcessUnwinder {
                maps: Some(maps), ..
            }) => procfs::MapsSeen::Read(maps),
        }
    }

    /// How many of the first `frames` are in the process's C library.
    pub fn leading_libc(&self, pid: u32, frames: &[u64]) -> usize {
        self.processes.get(&pid).map_or(0, |p| {
            frames
                .iter()
                .take_while(|a| p.libc.iter().any(|r| r.contains(*a)))
                .count()
        })
    }

    /// Drop a process that has exited. Module files stay cached for the next process of the
    /// same program (a build starts the same compiler thousands of times). Those no live
    /// process uses go once they exceed [`FILES_CACHED`] files or [`FILES_CACHED_BYTES`]; those
    /// in use stay (dropping them would only make the next process read a second copy).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        let unused = |file: &Option<Arc<ModuleFile>>| file.as_ref().is_none_or(|f| !f.in_use());
        let (count, bytes) = self
            .files
            .values()
            .filter(|f| unused(f))
            .fold((0, 0), |(n, b), f| {
                (n + 1, b + f.as_ref().map_or(0, |f| f.bytes()))
            });
        if count > FILES_CACHED || bytes > FILES_CACHED_BYTES {
            self.files.retain(|_, file| !unused(file));
        }
    }

    fn walk(&mut self, pid: u32, copy: &StackCopy<'_>) -> Vec<u64> {
        let Some(process) = self.processes.get_mut(&pid).filter(|p| p.maps.is_some()) else {
            return vec![copy.ip];
        };
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(copy.sp).ok_or(())?).map_err(|_| ())?;
            let bytes = copy
                .bytes
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            Ok(u64::from_le_bytes(word))
        };
        let regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
        let mut frames = Vec::new();
        let cache = process.cache.get_or_insert_with(CacheX86_64::new);
        let mut iter = process
            .unwinder
            .iter_frames(copy.ip, regs, cache, &mut read_stack);
        // An error ends the stack where it is: what was unwound so far is kept.
        loop {
            let frame = match iter.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    log::debug!("unwinding pid {pid} stopped: {err}");
                    break;
                }
            };
            let addr = frame.address();
            if addr == 0 || frames.len() >= MAX_FRAMES {
                break;
            }
            frames.push(addr);
        }
        if frames.is_empty() {
            frames.push(copy.ip);
        }
        frames
    }

    /// (Re)build a process's unwinder from its executable mappings.
    fn load_process(&mut self, pid: u32) {
        let maps = procfs::read_maps(pid).ok();
        let mut unwinder = UnwinderX86_64::new();
        let mut code = Vec::new();
        let mut libc = Vec::new();
        let empty = procfs::Maps::default();
        for (mapping, path) in code_mappings(maps.as_ref().unwrap_or(&empty)) {
            let file = self
                .files
                .entry(mapping.file_id())
                .or_insert_with(|| read_module(pid, mapping, path).map(Arc::new))
                .clone();
            let Some(file) = file else {
                continue;
            };
            let Some(bias) = file.bias(mapping.range.start, mapping.offset) else {
                continue;
            };
            if is_libc(path) {
                libc.push(mapping.range.clone());
            }
            code.push(mapping.range.clone());
            unwinder.add_module(Module::new(
                path.display().to_string(),
                mapping.range.clone(),
                bias,
                file.section_info(),
            ));
        }
        self.processes.insert(
            pid,
            ProcessUnwinder {
                unwinder,
                cache: None,
                code,
                libc,
                read_at: Instant::now(),
                maps,
            },
        );
    }
}

/// A mapped file's unwind sections, read through the mapping itself (right even for a deleted
/// or replaced file, and inside containers), else by its path inside the process's root, else by
/// the plain path. A file that cannot be read (a FIFO, a huge or malformed file: see
/// target_files) is said once, and the stacks through it stop there.
fn read_module(pid: u32, mapping: &procfs::Mapping, path: &Path) -> Option<ModuleFile> {
    crate::unwind_tables::read_module_as_mapped(pid, mapping, path, |elf| ModuleFile::read(&elf))
        .map_err(|err| log::warn!("pid {pid}: cannot unwind through {}: {err}", path.display()))
        .ok()
}

/// The registers here and up to 16 KiB of this thread's stack above the stack pointer, as the
/// eBPF program copies them at a syscall: for the unwinder's tests and benchmark. The copy is
/// taken before this frame returns (the copy's own calls only write below the stack pointer).
#[doc(hidden)]
#[inline(never)]
pub fn own_stack_copy() -> (u64, u64, u64, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads registers only.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
        );
    }
    // SAFETY: this thread's live stack above its stack pointer, within its mapping.
    let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, readable_above(sp)) }.to_vec();
    (ip, sp, bp, bytes)
}

/// Bytes of this process's mapping above `sp`, at most 16 KiB (what the eBPF program copies).
fn readable_above(sp: u64) -> usize {
    procfs::read_own_maps()
        .ok()
        .and_then(|maps| Some(maps.containing(sp)?.range.end))
        .map_or(0, |end| {
            usize::try_from(end - sp)
                .unwrap_or(0)
                .min(leaktrace_common::STACK_COPY_BYTES)
        })
}

/// For the fuzz targets (`fuzz/`): read `elf` as a module's unwind sections, map it at a fixed
/// address and unwind a stack made of `stack` from each of `pcs` (offsets into the mapping), as
/// growth mode does with a target's file and stack copy. Returns the frames found, to be used.
#[doc(hidden)]
pub fn fuzz_module(elf: &Elf, pcs: &[u64], stack: &[u8]) -> usize {
    const BASE: u64 = 0x5555_0000_0000;
    let Ok(file) = ModuleFile::read(elf) else {
        return 0;
    };
    let Some(bias) = file.bias(BASE, 0) else {
        return 0;
    };
    let range = BASE..BASE + (64 << 20);
    let mut unwinder = UnwinderX86_64::new();
    unwinder.add_module(Module::new(
        "fuzz".to_string(),
        range.clone(),
        bias,
        file.section_info(),
    ));
    let mut cache = CacheX86_64::new();
    let sp = 0x7fff_0000_0000;
    let mut found = 0;
    for pc in pcs {
        let ip = BASE + pc % (range.end - range.start);
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            Ok(u64::from_le_bytes(word))
        };
        let regs = UnwindRegsX86_64::new(ip, sp, sp + 64);
        let mut frames = unwinder.iter_frames(ip, regs, &mut cache, &mut read_stack);
        while let Ok(Some(_)) = frames.next() {
            found += 1;
            if found >= MAX_FRAMES * pcs.len() {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library this test runs with: a real .eh_frame_hdr passes; the same with one table
    /// entry pointing before .eh_frame is refused (gimli would subtract past zero).
    #[test]
    fn an_eh_frame_hdr_pointing_outside_eh_frame_is_refused() {
        let maps = procfs::read_maps(std::process::id()).expect("own maps");
        let libc = code_mappings(&maps)
            .map(|(_, path)| path)
            .find(|path| is_libc(path))
            .expect("libc mapped");
        let bytes = std::fs::read(libc).expect("read libc");
        let elf = object::File::parse(&*bytes).expect("parse libc");
        let section = |name| {
            let s = elf.section_by_name(name).expect("section");
            (s.address(), s.data().expect("data").to_vec(), s.size())
        };
        let (hdr_svma, mut hdr, _) = section(".eh_frame_hdr");
        let (eh_svma, _, eh_size) = section(".eh_frame");
        let eh_frame = eh_svma..eh_svma + eh_size;
        assert_eq!(check_eh_frame_hdr(&hdr, hdr_svma, &eh_frame), Ok(()));
        // Header (4 bytes, eh_frame_ptr, fde_count as sdata4), then (location, fde) pairs of
        // datarel sdata4: point the first FDE at the header itself, before .eh_frame.
        assert_eq!(&hdr[..4], &[1, 0x1b, 0x03, 0x3b], "glibc's usual encodings");
        let original = hdr.clone();
        hdr[16..20].copy_from_slice(&0i32.to_le_bytes());
        assert!(check_eh_frame_hdr(&hdr, hdr_svma, &eh_frame).is_err());
        // Or the header's own .eh_frame pointer moved past the first FDE, still inside
        // .eh_frame (what the fuzzer found next).
        let mut hdr = original;
        let eh_frame_ptr = i32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes"));
        hdr[4..8].copy_from_slice(&(eh_frame_ptr + 0x1000).to_le_bytes());
        assert!(check_eh_frame_hdr(&hdr, hdr_svma, &eh_frame).is_err());
    }

    #[test]
    fn code_mappings_keep_executable_files_only() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fe:01 1234 /usr/bin/app
55d0a0001000-55d0a0005000 r-xp 00001000 fe:01 1234 /usr/bin/app
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000026000-7f100017b000 r-xp 00026000 fe:01 777 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00030000-7ffd00032000 r-xp 00000000 00:00 0 [vdso]
";
        let maps = procfs::Maps::parse(maps);
        let code: Vec<_> = code_mappings(&maps).collect();
        assert_eq!(code.len(), 2);
        assert_eq!(code[0].0.range, 0x55d0_a000_1000..0x55d0_a000_5000);
        assert_eq!(code[0].0.offset, 0x1000);
        let fe_01 = procfs::Device {
            major: 0xfe,
            minor: 0x01,
        };
        assert_eq!(code[1].0.file_id(), (fe_01, 777));
        assert!(is_libc(code[1].1));
        assert!(!is_libc(code[0].1));
    }

    #[test]
    fn bias_maps_a_mapping_back_to_its_segment() {
        let file = ModuleFile {
            text_svma: None,
            text: None,
            got_svma: None,
            eh_frame_svma: None,
            eh_frame: None,
            eh_frame_hdr_svma: None,
            eh_frame_hdr: None,
            debug_frame: None,
            // A PIE: text segment at vaddr 0x1000 from file offset 0x1000; a non-PIE's at
            // 0x401000 from 0x1000.
            loads: vec![
                (0, 0, 0x800),
                (0x1000, 0x1000, 0x3000),
                (0x4000, 0x5000, 0x100),
            ],
        };
        assert_eq!(file.bias(0x55d0_a000_1000, 0x1000), Some(0x55d0_a000_0000));
        assert_eq!(file.bias(0x7f00_0000_5000, 0x4000), Some(0x7f00_0000_0000));
        let non_pie = ModuleFile {
            loads: vec![(0, 0x40_0000, 0x800), (0x1000, 0x40_1000, 0x3000)],
            ..file
        };
        assert_eq!(non_pie.bias(0x40_1000, 0x1000), Some(0));
        assert_eq!(non_pie.bias(0x40_1000, 0x9000), None);
        // lld's layout: the text segment starts mid-page, in the read-only segment's last page,
        // so the mapping's offset is inside both.
        let lld = ModuleFile {
            loads: vec![(0, 0, 0x32_3430), (0x32_3430, 0x32_4430, 0x94_4800)],
            ..non_pie
        };
        assert_eq!(
            lld.bias(0x5600_0032_4000, 0x32_3000),
            Some(0x5600_0000_0000)
        );
    }

    /// Unwind this test's own stack from a copy, as the eBPF program would send it: the frames
    /// must reach the test function through code whose unwinding needs its CFI.
    #[test]
    #[inline(never)]
    fn unwinds_a_copy_of_this_thread_s_own_stack() {
        let (ip, sp, bp, bytes) = own_stack_copy();
        let copy = StackCopy {
            ip,
            sp,
            bp,
            bytes: &bytes,
        };
        let mut unwinder = StackUnwinder::new();
        let me = std::process::id();
        let (frames, _) = unwinder.unwind(me, &copy);
        let here = unwinds_a_copy_of_this_thread_s_own_stack as *const () as u64;
        assert!(
            frames.len() >= 3,
            "only {} frames: {frames:x?}",
            frames.len()
        );
        // One of the return addresses lands in this function (just after its call).
        assert!(
            frames.iter().any(|a| (here..here + 4096).contains(a)),
            "no frame in the test function at {here:#x}: {frames:x?}"
        );
        assert_eq!(unwinder.stats.events, 1);
        // A copy that holds nothing unwinds to the instruction pointer alone.
        let empty = StackCopy { bytes: &[], ..copy };
        let (frames, _) = unwinder.unwind(me, &empty);
        assert!(frames.len() <= 2, "{frames:x?}");
        assert_eq!(unwinder.stats.empty_copies, 1);
    }
}
