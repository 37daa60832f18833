//! Files leaktrace reads on behalf of a traced process: its executable and libraries, for
//! probe offsets, unwind tables and symbols. The traced process may be hostile (another user's,
//! a container's): it can replace its files' paths with FIFOs, device files or links, truncate a
//! file it mapped, or craft its ELF. So, here (SECURITY.md):
//! - only regular files are read, opened with `O_NONBLOCK` so that a FIFO cannot block the open;
//! - a file or a section larger than any real module is refused with one line;
//! - paths inside the target's root are resolved *inside* that root (`openat2` with
//!   `RESOLVE_IN_ROOT`): a link a container plants cannot lead to the host's files;
//! - ELF files are read through `object`'s `ReadCache` (plain reads of the headers and of the
//!   sections asked for), never mapped: a target that truncates a file leaktrace had mapped
//!   would kill leaktrace with SIGBUS.
use std::{
    fs::File,
    io::{self, Read as _},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use object::{read::ReadCache, Object as _, ObjectSection as _};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags, CWD};

/// No real module comes near this (the largest shared objects are a few hundred MiB, debug
/// info included); a "libc" of 50 GB is an attack or a mistake.
pub const MAX_MODULE_BYTES: u64 = 4 << 30;
/// No real `.eh_frame`/`.debug_frame`/`.symtab` comes near this (tens of MiB at most).
pub const MAX_SECTION_BYTES: u64 = 256 << 20;

/// Why a target's file was not read. One line each.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("{path} is not a regular file but a {kind}")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is {size} bytes, more than any module ({MAX_MODULE_BYTES})")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: its {section} section is {size} bytes, more than any real one ({MAX_SECTION_BYTES})")]
    SectionTooLarge {
        path: PathBuf,
        section: String,
        size: u64,
    },
    #[error("{path} is not a readable ELF file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl Unreadable {
    fn io(path: &Path, source: impl Into<io::Error>) -> Self {
        Unreadable::Io {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

/// Open a module file by a path of leaktrace's own namespace (links are followed: the
/// `/proc/PID/map_files` entries are links to exactly the mapped file).
pub fn open(path: &Path) -> Result<File, Unreadable> {
    let fd =
        rfs::openat(CWD, path, read_flags(), Mode::empty()).map_err(|e| Unreadable::io(path, e))?;
    checked(path, fd)
}

/// Open `path` as the process `pid` sees it: resolved inside its root directory, so its links
/// (absolute ones included) stay inside that root.
pub fn open_in_root(pid: u32, path: &Path) -> Result<File, Unreadable> {
    let root_path = crate::procfs::root_dir(pid);
    let root = rfs::openat(
        CWD,
        &root_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Unreadable::io(&root_path, e))?;
    open_beneath(&root, path).map_err(|err| match err {
        Unreadable::Io { source, .. } => Unreadable::io(&root_path.join(relative(path)), source),
        other => other,
    })
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn open_beneath(root: &OwnedFd, path: &Path) -> Result<File, Unreadable> {
    let fd = rfs::openat2(
        root,
        relative(path),
        read_flags(),
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| Unreadable::io(path, e))?;
    checked(path, fd)
}

fn checked(path: &Path, fd: OwnedFd) -> Result<File, Unreadable> {
    let stat = rfs::fstat(&fd).map_err(|e| Unreadable::io(path, e))?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("directory"),
        FileType::Fifo => Some("FIFO"),
        FileType::Socket => Some("socket"),
        FileType::CharacterDevice => Some("character device"),
        FileType::BlockDevice => Some("block device"),
        FileType::Symlink | FileType::Unknown => Some("special file"),
    };
    if let Some(kind) = kind {
        return Err(Unreadable::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if size > MAX_MODULE_BYTES {
        return Err(Unreadable::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(File::from(fd))
}

/// A whole module file, bounded (for the few readers that need all of it).
pub fn read(path: &Path) -> Result<Vec<u8>, Unreadable> {
    read_file(path, open(path)?)
}

/// The whole of an already opened module file, never more than [`MAX_MODULE_BYTES`] (the file
/// can grow after the size check).
pub fn read_file(path: &Path, file: File) -> Result<Vec<u8>, Unreadable> {
    let mut data = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| Unreadable::io(path, e))?;
    if data.len() as u64 > MAX_MODULE_BYTES {
        return Err(Unreadable::TooLarge {
            path: path.to_path_buf(),
            size: data.len() as u64,
        });
    }
    Ok(data)
}

/// An ELF file read on demand: headers and the sections asked for, nothing mapped.
pub struct Elf {
    path: PathBuf,
    cache: ReadCache<File>,
}

/// A parsed [`Elf`]: `object`'s view of it, borrowing its read cache.
pub type ElfView<'a> = object::File<'a, &'a ReadCache<File>>;

impl Elf {
    pub fn new(path: &Path, file: File) -> Self {
        Self {
            path: path.to_path_buf(),
            cache: ReadCache::new(file),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn parse(&self) -> Result<ElfView<'_>, Unreadable> {
        object::File::parse(&self.cache).map_err(|e| Unreadable::Malformed {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// A section's bytes (decompressed when compressed), `None` when the file has no such
    /// section; refused when it, or what it would decompress to, is larger than any real one.
    pub fn section_data(
        &self,
        elf: &ElfView<'_>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, Unreadable> {
        let Some(section) = elf.section_by_name(name) else {
            return Ok(None);
        };
        let range = section
            .compressed_file_range()
            .map_err(|e| self.malformed(name, e))?;
        let size = range.uncompressed_size.max(range.compressed_size);
        if size > MAX_SECTION_BYTES {
            return Err(Unreadable::SectionTooLarge {
                path: self.path.clone(),
                section: name.to_string(),
                size,
            });
        }
        let data = section
            .uncompressed_data()
            .map_err(|e| self.malformed(name, e))?;
        Ok(Some(data.into_owned()))
    }

    /// `len` bytes at file offset `offset` (a function's code), through the read cache.
    pub fn bytes_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, Unreadable> {
        use object::ReadRef as _;
        (&self.cache)
            .read_bytes_at(offset, len)
            .map(<[u8]>::to_vec)
            .map_err(|()| Unreadable::Malformed {
                path: self.path.clone(),
                reason: format!("no {len} bytes at offset {offset:#x}"),
            })
    }

    fn malformed(&self, section: &str, err: object::Error) -> Unreadable {
        Unreadable::Malformed {
            path: self.path.clone(),
            reason: format!("section {section}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        fs,
        io::Write as _,
        os::unix::fs::symlink,
        sync::mpsc,
        time::{Duration, Instant},
    };

    use proptest::prelude::*;

    use super::*;

    fn elf_at(path: &Path) -> Result<Elf, Unreadable> {
        Ok(Elf::new(path, open(path)?))
    }

    /// Run `f` on a thread and fail if it blocks: a test of "never blocks" must not hang.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("blocked for 5 s")
    }

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    }

    /// The smallest real shared object the test process maps with unwind tables.
    fn real_module() -> PathBuf {
        let maps = crate::procfs::read_own_maps().expect("maps");
        let mut modules: Vec<PathBuf> = maps
            .files()
            .filter_map(crate::procfs::Mapping::path)
            .filter(|p| p.to_string_lossy().contains(".so"))
            .map(Path::to_path_buf)
            .collect();
        modules.sort_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX));
        modules.into_iter().next().expect("a shared object")
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("libc.so.6");
        mkfifo(&fifo);
        let err = within_5s(move || open(&fifo).map(|_| ()));
        assert!(
            matches!(err, Err(Unreadable::NotRegular { kind: "FIFO", .. })),
            "{err:?}"
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (path, kind) in [("/dev/zero", "character device"), ("/tmp", "directory")] {
            let err = within_5s(move || read(Path::new(path)).map(|_| ()));
            assert!(
                matches!(&err, Err(Unreadable::NotRegular { kind: k, .. }) if *k == kind),
                "{path}: {err:?}"
            );
        }
    }

    #[test]
    fn a_huge_file_is_refused_in_one_line_even_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let huge = dir.path().join("huge");
        // Sparse: costs no disk.
        File::create(&huge)
            .expect("create")
            .set_len(50 << 30)
            .expect("set_len");
        let link = dir.path().join("libc.so.6");
        symlink(&huge, &link).expect("link");
        let start = Instant::now();
        let err = read(&link).expect_err("refused");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, Unreadable::TooLarge { size, .. } if size == 50 << 30));
        assert_eq!(err.to_string().lines().count(), 1);
    }

    #[test]
    fn links_inside_a_root_stay_inside_it() {
        let root = tempfile::tempdir().expect("root");
        let outside = tempfile::tempdir().expect("outside");
        fs::write(outside.path().join("secret"), b"host file").expect("secret");
        fs::create_dir_all(root.path().join("usr/lib")).expect("mkdir");
        // Absolute and climbing links, as a container would plant them.
        symlink(
            outside.path().join("secret"),
            root.path().join("usr/lib/abs.so"),
        )
        .expect("abs link");
        let climbs = format!(
            "../../../../../../../..{}",
            outside.path().join("secret").display()
        );
        symlink(&climbs, root.path().join("usr/lib/up.so")).expect("climbing link");
        fs::write(root.path().join("usr/lib/real.so"), b"inside").expect("real");
        symlink("real.so", root.path().join("usr/lib/rel.so")).expect("relative link");
        let dir = rfs::openat(
            CWD,
            root.path(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("root fd");
        for escaping in ["/usr/lib/abs.so", "/usr/lib/up.so", "/../../etc/passwd"] {
            let found = open_beneath(&dir, Path::new(escaping))
                .ok()
                .and_then(|f| read_file(Path::new(escaping), f).ok());
            assert_ne!(found.as_deref(), Some(&b"host file"[..]), "{escaping}");
            if escaping == "/../../etc/passwd" {
                assert!(found.is_none(), "/etc/passwd of the host was read");
            }
        }
        let inside = open_beneath(&dir, Path::new("/usr/lib/rel.so")).expect("inside");
        assert_eq!(
            read_file(Path::new("rel"), inside).expect("read"),
            b"inside"
        );
    }

    #[test]
    fn our_own_root_reads_our_own_modules() {
        let module = real_module();
        let file = open_in_root(std::process::id(), &module).expect("in root");
        assert_eq!(
            read_file(&module, file).expect("read").len() as u64,
            fs::metadata(&module).expect("stat").len()
        );
    }

    #[test]
    fn sections_are_read_on_demand_from_a_real_module() {
        let module = real_module();
        let elf = elf_at(&module).expect("open");
        let view = elf.parse().expect("parse");
        let eh_frame = elf
            .section_data(&view, ".eh_frame")
            .expect("read")
            .expect("a shared object has .eh_frame");
        assert!(eh_frame.len() > 64);
        assert!(elf.section_data(&view, ".no-such").expect("read").is_none());
    }

    #[test]
    fn a_truncated_elf_is_an_error_not_a_panic() {
        let module = fs::read(real_module()).expect("read");
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [0, 3, 16, 64, 100, 4096, module.len() / 2] {
            let path = dir.path().join(format!("cut-{len}"));
            fs::write(&path, &module[..len]).expect("write");
            if let Ok(elf) = elf_at(&path) {
                if let Ok(view) = elf.parse() {
                    let _ = elf.section_data(&view, ".eh_frame");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Mutated real modules: byte flips in the first and last 64 KiB (headers, section table,
        /// unwind tables), plus a cut.
        /// Reading must end in data or an error, never a panic or an unbounded allocation
        /// (sizes are checked before any section is read).
        #[test]
        fn mutated_modules_never_panic(
            flips in prop::collection::vec((0usize..65536, any::<bool>(), any::<u8>()), 1..64),
            cut in prop::option::of(0usize..1 << 20),
        ) {
            static MODULE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let mut data = MODULE.get_or_init(|| fs::read(real_module()).expect("read")).clone();
            let len = data.len();
            for (at, from_end, byte) in flips {
                // The section headers sit at the end of the file, the ELF and program headers
                // at its start.
                let at = if from_end { len.saturating_sub(1 + at % len) } else { at % len };
                if let Some(b) = data.get_mut(at) {
                    *b ^= byte;
                }
            }
            if let Some(cut) = cut {
                data.truncate(cut);
            }
            let mut file = tempfile::NamedTempFile::new().expect("temp");
            file.write_all(&data).expect("write");
            let elf = elf_at(file.path()).expect("open");
            if let Ok(view) = elf.parse() {
                for name in [".eh_frame", ".eh_frame_hdr", ".debug_frame", ".symtab", ".text"] {
                    if let Ok(Some(section)) = elf.section_data(&view, name) {
                        prop_assert!(section.len() as u64 <= MAX_SECTION_BYTES);
                    }
                }
            }
        }
    }
}
