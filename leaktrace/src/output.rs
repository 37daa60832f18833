//! Every file leaktrace is asked to save (snapshots, the rolling series, exports), written so
//! that a local user cannot turn a root leaktrace against the host (SECURITY.md).
//!
//! leaktrace usually runs as root and is often pointed at shared directories such as /tmp. The
//! rules, each with the attack it stops:
//! - The destination's directory is resolved one component at a time with `O_NOFOLLOW`, and a
//!   symbolic link is followed only when it belongs to the user running leaktrace or to root:
//!   a link planted by someone else (in /tmp, say) is refused, never written through.
//! - Every later step is relative to that directory's descriptor (`openat`, `renameat`), so a
//!   path component swapped for a link while leaktrace writes cannot redirect it.
//! - The temporary file is created with `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name, then
//!   renamed over the destination: a link or file planted at a temporary name makes the create
//!   fail (and another name is tried); it is never opened, truncated or followed.
//! - A directory that anyone may write to without the sticky bit is refused: there, anyone
//!   could replace or delete the snapshot after it is written.
//! - Files are created 0644 (readable, as a report is meant to be) or 0600 with `--private`,
//!   narrowed further by the umask, never widened.
//!
//! Why not the `tempfile` crate: it creates by path, and every step here must be relative to
//! one directory descriptor; rustix (which tempfile itself uses) gives the `*at` calls.
use std::{
    ffi::{OsStr, OsString},
    fs::File,
    hash::{BuildHasher as _, Hasher as _},
    io::{self, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

use rustix::{
    fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD},
    io::Errno,
};

/// Who may read the files leaktrace writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// 0644: a snapshot holds command lines and function names, not secrets of the process's
    /// memory, and the post-mortem commands need no privileges, so it is readable by default.
    #[default]
    Shared,
    /// 0600 (`--private`): only the user running leaktrace.
    Private,
}

impl Access {
    pub fn from_private(private: bool) -> Self {
        if private {
            Access::Private
        } else {
            Access::Shared
        }
    }

    fn mode(self) -> Mode {
        match self {
            Access::Shared => Mode::from_raw_mode(0o644),
            Access::Private => Mode::from_raw_mode(0o600),
        }
    }
}

/// Why a file could not be written. Each reads as one line after "cannot write PATH: ".
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{link} is a symbolic link owned by uid {owner}; leaktrace follows only links of its own user or root")]
    ForeignSymlink { link: PathBuf, owner: u32 },
    #[error("{dir} is writable by everyone without the sticky bit (anyone could replace the file): choose another directory")]
    UnsafeDirectory { dir: PathBuf },
    #[error("{0} is a directory")]
    IsADirectory(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("too many symbolic links under {0}")]
    TooManyLinks(PathBuf),
    #[error("{path} has no file name")]
    NoFileName { path: PathBuf },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<Errno> for OutputError {
    fn from(errno: Errno) -> Self {
        OutputError::Io(errno.into())
    }
}

/// Symbolic links followed while resolving one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;
/// Random temporary names tried before giving up (each clash is someone else's file).
const TEMP_ATTEMPTS: usize = 16;

/// A directory reached without following anyone else's links, held open.
#[derive(Debug)]
struct TrustedDir {
    fd: OwnedFd,
    /// For messages only.
    shown: PathBuf,
}

/// A file to write: its directory's descriptor and its name there.
#[derive(Debug)]
struct Destination {
    dir: TrustedDir,
    name: OsString,
}

impl Destination {
    fn resolve(path: &Path) -> Result<Self, OutputError> {
        let mut path = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            let name = match path.file_name() {
                Some(name) => name.to_os_string(),
                None => return Err(OutputError::NoFileName { path }),
            };
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let dir = TrustedDir::open(&parent)?;
            match rfs::statat(&dir.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                    FileType::Symlink => {
                        let link = dir.shown.join(&name);
                        trust_link(&link, stat.st_uid)?;
                        let target = read_link_at(&dir.fd, &name)?;
                        // A relative target is relative to the link's directory.
                        path = dir.shown.join(target);
                        continue;
                    }
                    FileType::Directory => {
                        return Err(OutputError::IsADirectory(dir.shown.join(&name)))
                    }
                    _ => {}
                },
                Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
            dir.check_not_shared_unsafely()?;
            return Ok(Destination { dir, name });
        }
        Err(OutputError::TooManyLinks(path))
    }
}

impl TrustedDir {
    /// Walk `path` one component at a time from `/` or the working directory.
    fn open(path: &Path) -> Result<Self, OutputError> {
        Self::open_or_create(path, None)
    }

    /// The same walk, creating missing directories with `create` (like `mkdir -p`, but never
    /// through anyone else's link).
    fn open_or_create(path: &Path, create: Option<Mode>) -> Result<Self, OutputError> {
        let mut links = 0;
        let start = if path.is_absolute() { "/" } else { "." };
        let fd = rfs::openat(CWD, start, dir_flags(), Mode::empty())?;
        let mut dir = TrustedDir {
            fd,
            shown: PathBuf::from(start),
        };
        dir.walk(path, create, &mut links)?;
        Ok(dir)
    }

    fn walk(
        &mut self,
        path: &Path,
        create: Option<Mode>,
        links: &mut usize,
    ) -> Result<(), OutputError> {
        for component in path.components() {
            match component {
                Component::RootDir => {
                    self.fd = rfs::openat(CWD, "/", dir_flags(), Mode::empty())?;
                    self.shown = PathBuf::from("/");
                }
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    self.fd = rfs::openat(&self.fd, "..", dir_flags(), Mode::empty())?;
                    self.shown.push("..");
                }
                Component::Normal(name) => self.step(name, create, links)?,
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        name: &OsStr,
        create: Option<Mode>,
        links: &mut usize,
    ) -> Result<(), OutputError> {
        let shown = self.shown.join(name);
        let open = |dir: &OwnedFd| {
            rfs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let fd = match (open(&self.fd), create) {
            (Err(Errno::NOENT), Some(mode)) => {
                match rfs::mkdirat(&self.fd, name, mode) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => return Err(err.into()),
                }
                open(&self.fd)?
            }
            (fd, _) => fd?,
        };
        let stat = rfs::fstat(&fd)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                self.fd = fd;
                self.shown = shown;
                Ok(())
            }
            FileType::Symlink => {
                trust_link(&shown, stat.st_uid)?;
                *links += 1;
                if *links > MAX_LINKS {
                    return Err(OutputError::TooManyLinks(shown));
                }
                // An O_PATH descriptor of the link itself: "" names it.
                let target = read_link_at(&fd, OsStr::new(""))?;
                self.walk(&target, create, links)
            }
            _ => Err(OutputError::NotADirectory(shown)),
        }
    }

    fn check_not_shared_unsafely(&self) -> Result<(), OutputError> {
        let mode = rfs::fstat(&self.fd)?.st_mode;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(OutputError::UnsafeDirectory {
                dir: self.shown.clone(),
            });
        }
        Ok(())
    }

    /// Write `name` here atomically: an exclusive temporary file, filled by `fill` (through a
    /// buffer: a large snapshot is streamed, never held whole in memory), flushed, renamed over
    /// it.
    fn write_file(
        &self,
        name: &OsStr,
        access: Access,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), OutputError> {
        let (temp, file) = self.create_temp(name, access)?;
        let written = (|| -> io::Result<()> {
            let mut buffered = io::BufWriter::with_capacity(64 << 10, File::from(file));
            fill(&mut buffered)?;
            let file = buffered
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            rfs::renameat(&self.fd, &temp, &self.fd, name)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = rfs::unlinkat(&self.fd, &temp, AtFlags::empty());
        }
        Ok(written?)
    }

    /// Whether a file for `name` can be created here: a temporary one, removed at once.
    fn check_writable(&self, name: &OsStr) -> Result<(), OutputError> {
        let (temp, fd) = self.create_temp(name, Access::Private)?;
        drop(fd);
        rfs::unlinkat(&self.fd, &temp, AtFlags::empty())?;
        Ok(())
    }

    /// Create `.NAME.RANDOM.tmp` exclusively; never opens anything already there.
    fn create_temp(
        &self,
        name: &OsStr,
        access: Access,
    ) -> Result<(OsString, OwnedFd), OutputError> {
        let mut last = Errno::EXIST;
        for _ in 0..TEMP_ATTEMPTS {
            let mut temp = OsString::from(".");
            temp.push(name);
            temp.push(format!(".{:016x}.tmp", random_u64()));
            match rfs::openat(
                &self.fd,
                temp.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
                access.mode(),
            ) {
                Ok(fd) => return Ok((temp, fd)),
                Err(err) if err == Errno::EXIST => last = err,
                Err(err) => return Err(err.into()),
            }
        }
        Err(last.into())
    }
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// A link is followed only when its owner is the user running leaktrace or root (root's own
/// links, such as /var/run, are part of the system; anyone else's could point anywhere).
fn trust_link(link: &Path, owner: u32) -> Result<(), OutputError> {
    let me = rustix::process::geteuid().as_raw();
    if owner == me || owner == 0 {
        Ok(())
    } else {
        Err(OutputError::ForeignSymlink {
            link: link.to_path_buf(),
            owner,
        })
    }
}

fn read_link_at(dir: impl AsFd, name: &OsStr) -> Result<PathBuf, OutputError> {
    let target = rfs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// Unpredictable enough that nobody can plant every temporary name in advance (std seeds
/// `RandomState` from the OS); O_EXCL, not the name, is what makes the create safe.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

/// Write `bytes` to `path` so that a reader sees either the old file or the new one, whole:
/// an exclusive temporary file in the same directory, flushed, then renamed over the target.
pub fn write_atomically(path: &Path, bytes: &[u8], access: Access) -> Result<(), OutputError> {
    write_atomically_with(path, access, |file| file.write_all(bytes))
}

/// [`write_atomically`] with the contents written by `fill` straight into the temporary file.
pub fn write_atomically_with(
    path: &Path,
    access: Access,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), OutputError> {
    let destination = Destination::resolve(path)?;
    destination.dir.write_file(&destination.name, access, fill)
}

/// Check before tracing starts that files can be written to `path`, under the same rules.
pub fn check_writable(path: &Path) -> Result<(), OutputError> {
    let destination = Destination::resolve(path)?;
    destination.dir.check_writable(&destination.name)
}

/// Rolling timestamped snapshots in a directory, the newest `keep` kept.
#[derive(Debug)]
pub struct SnapshotSeries {
    dir: TrustedDir,
    keep: usize,
    access: Access,
}

const SERIES_PREFIX: &str = "leaktrace-";

impl SnapshotSeries {
    /// Create the directory if needed (0755, or 0700 with --private) and check it is writable.
    pub fn new(dir: &Path, keep: u32, access: Access) -> Result<Self, OutputError> {
        let created_mode = match access {
            Access::Shared => 0o755,
            Access::Private => 0o700,
        };
        let dir = TrustedDir::open_or_create(dir, Some(Mode::from_raw_mode(created_mode)))?;
        dir.check_not_shared_unsafely()?;
        dir.check_writable(OsStr::new("leaktrace-check"))?;
        Ok(Self {
            dir,
            keep: usize::try_from(keep).unwrap_or(usize::MAX).max(1),
            access,
        })
    }

    /// Write one snapshot (atomically) named by its RFC 3339 time, then delete the oldest
    /// beyond `keep`. Returns the path written.
    /// `fill` writes the contents straight into the file.
    pub fn write_with(
        &self,
        generated_at: &str,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<PathBuf, OutputError> {
        // "2026-11-23T18:00:00.123Z" -> "20261123T180000.123Z": sorts by time, no colons.
        let stamp: String = generated_at
            .chars()
            .filter(|c| !matches!(c, '-' | ':' | '/'))
            .collect();
        let name = OsString::from(format!("{SERIES_PREFIX}{stamp}.json"));
        self.dir.write_file(&name, self.access, fill)?;
        let listing = rfs::openat(
            &self.dir.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut series: Vec<Vec<u8>> = rfs::Dir::new(listing)?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_bytes().to_vec())
            .filter(|n| n.starts_with(SERIES_PREFIX.as_bytes()) && n.ends_with(b".json"))
            .collect();
        series.sort();
        let excess = series.len().saturating_sub(self.keep);
        for old in &series[..excess] {
            rfs::unlinkat(&self.dir.fd, OsStr::from_bytes(old), AtFlags::empty())?;
        }
        Ok(self.dir.shown.join(name))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{symlink, PermissionsExt as _},
    };

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap.json");
        write_atomically(&path, b"first", Access::Shared).expect("first write");
        write_atomically(&path, b"second", Access::Shared).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn files_are_0644_or_0600_when_private_and_never_wider_than_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared.json");
        let private = dir.path().join("private.json");
        write_atomically(&shared, b"{}", Access::Shared).expect("shared");
        write_atomically(&private, b"{}", Access::Private).expect("private");
        assert_eq!(mode_of(&shared) & !0o022, 0o644 & !0o022);
        assert_eq!(
            mode_of(&shared) & 0o133,
            0,
            "never executable or group/other-writable"
        );
        assert_eq!(mode_of(&private), 0o600);
    }

    #[test]
    fn a_planted_link_at_a_temporary_name_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        // Every name of the old scheme and a spread of others: none is opened.
        for name in [
            format!(".snap.json.tmp.{}", std::process::id()),
            ".snap.json.tmp".to_string(),
        ] {
            symlink(&victim, dir.path().join(name)).expect("plant");
        }
        write_atomically(&dir.path().join("snap.json"), b"new", Access::Shared).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(
            fs::read(dir.path().join("snap.json")).expect("read"),
            b"new"
        );
    }

    #[test]
    fn a_directory_everyone_may_write_without_the_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err =
            write_atomically(&open.join("s.json"), b"{}", Access::Shared).expect_err("refused");
        assert!(matches!(err, OutputError::UnsafeDirectory { .. }), "{err}");
        assert!(check_writable(&open.join("s.json")).is_err());
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod +t");
        write_atomically(&open.join("s.json"), b"{}", Access::Shared).expect("sticky is fine");
    }

    #[test]
    fn our_own_links_are_followed_and_directories_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        symlink(&real, dir.path().join("alias")).expect("dir link");
        symlink("real/out.json", dir.path().join("out.json")).expect("file link");
        write_atomically(&dir.path().join("alias/a.json"), b"a", Access::Shared).expect("a");
        assert_eq!(fs::read(real.join("a.json")).expect("a"), b"a");
        write_atomically(&dir.path().join("out.json"), b"b", Access::Shared).expect("b");
        assert_eq!(fs::read(real.join("out.json")).expect("b"), b"b");
        assert!(fs::symlink_metadata(dir.path().join("out.json"))
            .expect("link")
            .file_type()
            .is_symlink());
        assert!(matches!(
            check_writable(&real),
            Err(OutputError::IsADirectory(_))
        ));
        assert!(check_writable(Path::new("/nonexistent-dir/x.json")).is_err());
        assert!(check_writable(&dir.path().join("ok.json")).is_ok());
        assert!(leftovers(dir.path()).is_empty() && leftovers(&real).is_empty());
    }

    #[test]
    fn a_link_owned_by_another_user_is_refused_not_followed() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED a_link_owned_by_another_user_is_refused_not_followed: needs root to chown a link");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        let link = dir.path().join("snap.json");
        symlink(&victim, &link).expect("plant");
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).expect("chown link");
        let err = write_atomically(&link, b"new", Access::Shared).expect_err("refused");
        assert!(
            matches!(err, OutputError::ForeignSymlink { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid 65534"));
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        // The same link as a directory component.
        let dir_link = dir.path().join("d");
        symlink(dir.path(), &dir_link).expect("plant dir link");
        std::os::unix::fs::lchown(&dir_link, Some(65534), Some(65534)).expect("chown link");
        let err = check_writable(&dir_link.join("x.json")).expect_err("refused");
        assert!(matches!(err, OutputError::ForeignSymlink { .. }), "{err}");
        // A series directory is never created through it either.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let foreign = dir.path().join("series-link");
        symlink(elsewhere.path(), &foreign).expect("plant series link");
        std::os::unix::fs::lchown(&foreign, Some(65534), Some(65534)).expect("chown link");
        let err =
            SnapshotSeries::new(&foreign.join("a/b"), 3, Access::Shared).expect_err("refused");
        assert!(matches!(err, OutputError::ForeignSymlink { .. }), "{err}");
        assert!(!elsewhere.path().join("a").exists());
    }

    #[test]
    fn the_series_keeps_the_newest_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = SnapshotSeries::new(&dir.path().join("series/nested"), 3, Access::Shared)
            .expect("series");
        let mut written = Vec::new();
        for second in 0..5 {
            let stamp = format!("2026-11-23T18:00:0{second}.000Z");
            written.push(
                series
                    .write_with(&stamp, |f| f.write_all(stamp.as_bytes()))
                    .expect("write"),
            );
        }
        assert_eq!(mode_of(&dir.path().join("series")) & 0o7022, 0);
        let mut left: Vec<PathBuf> = fs::read_dir(dir.path().join("series/nested"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        left.sort();
        assert_eq!(left, written[2..].to_vec());
        assert_eq!(
            fs::read(&left[2]).expect("read"),
            b"2026-11-23T18:00:04.000Z"
        );
        assert!(left[2].ends_with("leaktrace-20261123T180004.000Z.json"));
    }
}
