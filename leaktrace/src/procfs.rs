//! Everything leaktrace reads from /proc: a process's mappings, state, program break, memory and
//! I/O counters, and the paths that reach its files from our side.
//!
//! Written by hand rather than with the `procfs` crate: its maps parser fails the whole file on
//! one line it does not understand (here such a line is skipped and counted), keeps the kernel's
//! " (deleted)" suffix in paths, and slices a path starting with "/SYSV" without checking its
//! length; and the other files leaktrace reads are a field or two each.
//!
//! Every read can race with the process exiting: it then fails with the `io::Error` of the read
//! (usually `NotFound`), or `None` where callers only ask "if known", never a panic.
use std::{
    fmt::Display,
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

/// The /proc directory of a process: a pid, or `"self"`.
fn proc_path(process: impl Display, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{process}/{file}"))
}

/// Whether /proc has a directory for this pid (a zombie still has one).
pub fn process_exists(pid: u32) -> bool {
    proc_path(pid, "").exists()
}

/// The command name (`comm`) of a process.
pub fn read_comm(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(proc_path(pid, "comm"))?
        .trim_end()
        .to_string())
}

/// The executable as the process names it (in its own mount namespace).
pub fn read_exe(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(proc_path(pid, "exe"))
}

/// The process's executable, as the kernel holds it (/proc/PID/exe: right even if the path was
/// replaced or is in another mount namespace).
pub fn exe_file(pid: u32) -> PathBuf {
    proc_path(pid, "exe")
}

/// The process's root directory (/proc/PID/root): its mount namespace seen from ours.
pub fn root_dir(pid: u32) -> PathBuf {
    proc_path(pid, "root")
}

/// A path of the process's mount namespace, reached from ours through /proc/PID/root
/// (containers; a file replaced on disk since the process opened it is not followed).
pub fn path_in_root(pid: u32, path: &Path) -> PathBuf {
    root_dir(pid).join(path.strip_prefix("/").unwrap_or(path))
}

/// The file mapped at `range`, opened through the mapping itself (/proc/PID/map_files): right
/// even for a deleted or replaced file, and inside containers.
pub fn mapped_file(pid: u32, range: &Range<u64>) -> PathBuf {
    proc_path(pid, &format!("map_files/{:x}-{:x}", range.start, range.end))
}

/// A process's cgroup (the v2 path, or the first v1 one) and the container it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    /// The 64-hex-digit id of a docker, containerd, cri-o or podman container.
    pub container_id: Option<String>,
    /// Which runtime's naming the path follows.
    pub runtime: Option<&'static str>,
}

/// /proc/PID/cgroup, read and parsed; None when unreadable.
pub fn read_cgroup(pid: u32) -> Option<Cgroup> {
    let text = fs::read_to_string(proc_path(pid, "cgroup")).ok()?;
    parse_cgroup(&text)
}

/// The cgroup in /proc/PID/cgroup text: the unified (v2, `0::`) path, unless it is the root
/// and a v1 hierarchy places the process deeper (hybrid hosts), then that one. The container is
/// the first path, v2 first, that names one.
pub fn parse_cgroup(text: &str) -> Option<Cgroup> {
    let path_of = |line: &str| line.splitn(3, ':').nth(2).map(str::to_string);
    let unified = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .and_then(path_of);
    let v1: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .filter_map(path_of)
        .collect();
    let path = match unified {
        Some(path) if path != "/" => path,
        unified => v1
            .iter()
            .find(|p| p.as_str() != "/")
            .cloned()
            .or(unified)
            .or_else(|| v1.first().cloned())?,
    };
    let (container_id, runtime) = std::iter::once(&path)
        .chain(&v1)
        .find_map(|p| container_of(p))
        .unzip();
    Some(Cgroup {
        path,
        container_id,
        runtime,
    })
}

/// The container a cgroup path names: the last component holding a 64-hex-digit id, named
/// `docker-ID.scope` / `docker/ID` (docker), `cri-containerd-ID.scope` (containerd),
/// `crio-ID.scope` (cri-o; not `crio-conmon-`, its monitor), `libpod-ID.scope` (podman), or an
/// id alone under `kubepods` (containerd's cgroupfs driver).
fn container_of(path: &str) -> Option<(String, &'static str)> {
    const PREFIXES: [(&str, &str); 5] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
        ("containerd-", "containerd"),
    ];
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (at, component) in components.iter().enumerate().rev() {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        if name.starts_with("crio-conmon-") {
            continue;
        }
        for (prefix, runtime) in PREFIXES {
            if let Some(id) = name.strip_prefix(prefix).filter(|id| is_id(id)) {
                return Some((id.to_string(), runtime));
            }
        }
        if is_id(name) {
            let parent = at.checked_sub(1).map(|p| components[p]).unwrap_or_default();
            let runtime = if parent == "docker" {
                "docker"
            } else if parent.starts_with("libpod") {
                "podman"
            } else if components.iter().any(|c| c.starts_with("kubepods")) {
                "containerd"
            } else {
                continue;
            };
            return Some((name.to_string(), runtime));
        }
    }
    None
}

/// A device number, as /proc/PID/maps prints it (`fe:01`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

/// What a mapping maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingName {
    /// No name: anonymous memory (malloc's large blocks, thread stacks).
    Anonymous,
    /// A kernel-made name that is not a file path: `[heap]`, `[stack]`, `[vdso]`,
    /// `anon_inode:...`.
    Pseudo(String),
    /// A file, by the path the process knows it by. The kernel's " (deleted)" suffix is removed:
    /// the file is then reached through [`mapped_file`].
    File(PathBuf),
}

/// One line of /proc/PID/maps. The read, write and shared permissions are checked but not kept:
/// nothing in leaktrace asks for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub range: Range<u64>,
    pub executable: bool,
    /// Offset in the file of the mapping's first byte.
    pub offset: u64,
    pub device: Device,
    /// The file's inode on `device`; 0 for memory that no file backs.
    pub inode: u64,
    pub name: MappingName,
}

impl Mapping {
    /// The mapped file's path, for file-backed mappings.
    pub fn path(&self) -> Option<&Path> {
        match &self.name {
            MappingName::File(path) => Some(path),
            MappingName::Anonymous | MappingName::Pseudo(_) => None,
        }
    }

    /// (device, inode): the same file whatever path or namespace it is reached by.
    pub fn file_id(&self) -> (Device, u64) {
        (self.device, self.inode)
    }

    fn is_heap(&self) -> bool {
        matches!(&self.name, MappingName::Pseudo(name) if name == "[heap]")
    }

    /// Parse one line; `None` for a line that is not a mapping.
    fn parse(line: &str) -> Option<Self> {
        // The path is the rest of the line after the inode and its padding: it may hold spaces.
        let mut rest = line;
        let mut next_field = || {
            let trimmed = rest.trim_start_matches(' ');
            let end = trimmed.find(' ').unwrap_or(trimmed.len());
            let (field, after) = trimmed.split_at(end);
            rest = after;
            (!field.is_empty()).then_some(field)
        };
        let (start, end) = next_field()?.split_once('-')?;
        let perms = next_field()?.as_bytes();
        let offset = next_field()?;
        let (major, minor) = next_field()?.split_once(':')?;
        let inode = next_field()?;
        let valid_perms = perms.len() == 4
            && matches!(perms[0], b'r' | b'-')
            && matches!(perms[1], b'w' | b'-')
            && matches!(perms[2], b'x' | b'-')
            && matches!(perms[3], b'p' | b's');
        if !valid_perms {
            return None;
        }
        let range = u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?;
        if range.start > range.end {
            return None;
        }
        let name = match rest.trim_start_matches(' ') {
            "" => MappingName::Anonymous,
            path if path.starts_with('/') => MappingName::File(PathBuf::from(
                path.strip_suffix(" (deleted)").unwrap_or(path),
            )),
            pseudo => MappingName::Pseudo(pseudo.to_string()),
        };
        Some(Mapping {
            range,
            executable: perms[2] == b'x',
            offset: u64::from_str_radix(offset, 16).ok()?,
            device: Device {
                major: u32::from_str_radix(major, 16).ok()?,
                minor: u32::from_str_radix(minor, 16).ok()?,
            },
            inode: inode.parse().ok()?,
            name,
        })
    }
}

/// What a reader of a process's mappings found when it last read them.
#[derive(Clone, Copy, Debug)]
pub enum MapsSeen<'a> {
    /// Not read.
    Unknown,
    /// The process was gone.
    Gone,
    Read(&'a Maps),
}

/// A process's mappings, in address order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    pub mappings: Vec<Mapping>,
    /// Lines that were not mappings (a format we do not know): skipped.
    pub malformed_lines: usize,
}

impl Maps {
    /// Parse the text of a /proc/PID/maps file.
    pub fn parse(text: &str) -> Self {
        let mut maps = Maps::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match Mapping::parse(line) {
                Some(mapping) => maps.mappings.push(mapping),
                None => maps.malformed_lines += 1,
            }
        }
        maps
    }

    /// The file-backed mappings.
    pub fn files(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter().filter(|m| m.path().is_some())
    }

    /// The mapping that holds `addr`.
    pub fn containing(&self, addr: u64) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.range.contains(&addr))
    }
}

/// A process's mappings (/proc/PID/maps).
pub fn read_maps(pid: u32) -> io::Result<Maps> {
    read_maps_of(pid)
}

/// Our own mappings (/proc/self/maps).
pub fn read_own_maps() -> io::Result<Maps> {
    read_maps_of("self")
}

fn read_maps_of(process: impl Display + Copy) -> io::Result<Maps> {
    let maps = Maps::parse(&fs::read_to_string(proc_path(process, "maps"))?);
    if maps.malformed_lines > 0 {
        log::debug!(
            "/proc/{process}/maps: skipped {} lines that are not mappings",
            maps.malformed_lines
        );
    }
    Ok(maps)
}

/// The fields of /proc/PID/stat that leaktrace reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// One letter: `R` running, `S` sleeping, `Z` zombie, `X` dead, ...
    pub state: char,
    /// Start of the heap (field 47; Linux 3.5 and later).
    pub start_brk: Option<u64>,
    /// CPU time of all the process's threads in user and in system mode, in clock ticks
    /// (fields 14 and 15).
    pub user_ticks: u64,
    pub system_ticks: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
        // fields are counted from the last ')', where field 3 (the state) is the first.
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        let state = field(3)?.chars().next()?;
        let start_brk = field(47).and_then(|v| v.parse().ok());
        let ticks = |n| field(n).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(Stat {
            state,
            start_brk,
            user_ticks: ticks(14),
            system_ticks: ticks(15),
        })
    }
}

/// CPU time a process used so far, in ns, user and system apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTime {
    pub user_ns: u64,
    pub system_ns: u64,
}

/// The CPU time of all of `pid`'s threads so far (/proc/PID/stat, clock-tick resolution).
pub fn read_cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = read_stat(pid).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns_per_tick = 1_000_000_000 / u64::try_from(hz).ok().filter(|hz| *hz > 0)?;
    Some(CpuTime {
        user_ns: stat.user_ticks.saturating_mul(ns_per_tick),
        system_ns: stat.system_ticks.saturating_mul(ns_per_tick),
    })
}

pub fn read_stat(pid: u32) -> io::Result<Stat> {
    Stat::parse(&fs::read_to_string(proc_path(pid, "stat"))?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat has no state field"),
        )
    })
}

/// Whether a process still exists (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    read_stat(pid).is_ok_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

/// Start of the heap (`start_brk` of /proc/PID/stat) and the current break (end of the `[heap]`
/// mapping, or the start when the heap is still empty).
pub fn read_brk(pid: u32) -> Option<(u64, u64)> {
    let start_brk = read_stat(pid).ok()?.start_brk?;
    let maps = read_maps(pid).ok()?;
    let current = maps
        .mappings
        .iter()
        .find(|m| m.is_heap())
        .map_or(start_brk, |heap| heap.range.end);
    Some((start_brk, current))
}

/// The value of a `Name: value` line (/proc/PID/status, /proc/PID/io).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Resident set size and data segment size (VmRSS, VmData of /proc/PID/status), in bytes.
pub fn read_memory(pid: u32) -> Option<(u64, u64)> {
    parse_memory(&fs::read_to_string(proc_path(pid, "status")).ok()?)
}

fn parse_memory(status: &str) -> Option<(u64, u64)> {
    let bytes = |name: &str| {
        field(status, name)?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((bytes("VmRSS")?, bytes("VmData")?))
}

/// Our own resident memory now and at its peak (VmRSS, VmHWM of /proc/self/status), in bytes.
pub fn own_memory() -> Option<(u64, u64)> {
    let status = fs::read_to_string(proc_path("self", "status")).ok()?;
    let bytes = |name: &str| {
        field(&status, name)?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((bytes("VmRSS")?, bytes("VmHWM")?))
}

/// Our own CPU time so far (user + system, every thread), in seconds.
pub fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given; zeroed is a valid rusage either way.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Our own effective capabilities (CapEff of /proc/self/status), one bit per capability.
pub fn own_effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string(proc_path("self", "status")).ok()?;
    u64::from_str_radix(field(&status, "CapEff")?, 16).ok()
}

/// The effective capabilities of each of our own threads (capabilities are per thread):
/// (thread id, CapEff). Threads that end while being read are left out.
pub fn threads_effective_capabilities() -> Vec<(u32, u64)> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
            let status = fs::read_to_string(task.path().join("status")).ok()?;
            let effective = u64::from_str_radix(field(&status, "CapEff")?, 16).ok()?;
            Some((tid, effective))
        })
        .collect()
}

/// Cumulative bytes a process read and wrote (`rchar`, `wchar` of /proc/PID/io).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

pub fn read_io(pid: u32) -> Option<IoCounters> {
    parse_io(&fs::read_to_string(proc_path(pid, "io")).ok()?)
}

fn parse_io(text: &str) -> Option<IoCounters> {
    let counter = |name: &str| field(text, name)?.parse::<u64>().ok();
    Some(IoCounters {
        read_bytes: counter("rchar")?,
        written_bytes: counter("wchar")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_read_from_cgroup_paths() {
        let id = "4f3c2b1a".repeat(8);
        let container = |path: &str| {
            let cgroup = parse_cgroup(&format!("0::{path}\n")).expect("parses");
            assert_eq!(cgroup.path, path);
            cgroup.container_id.zip(cgroup.runtime)
        };
        let with = |runtime| Some((id.clone(), runtime));
        assert_eq!(
            container(&format!("/system.slice/docker-{id}.scope")),
            with("docker")
        );
        assert_eq!(container(&format!("/docker/{id}")), with("docker"));
        assert_eq!(
            container(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            )),
            with("containerd")
        );
        assert_eq!(
            container(&format!("/kubepods/besteffort/pod1/{id}")),
            with("containerd")
        );
        assert_eq!(
            container(&format!("/machine.slice/libpod-{id}.scope/container")),
            with("podman")
        );
        assert_eq!(
            container(&format!("/kubepods.slice/crio-{id}.scope")),
            with("cri-o")
        );
        assert_eq!(
            container(&format!("/kubepods.slice/crio-conmon-{id}.scope")),
            None
        );
        assert_eq!(container("/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(container(&format!("/system.slice/{id}.scope")), None);
        // cgroup v1: the first line's path.
        let v1 =
            parse_cgroup(&format!("12:memory:/docker/{id}\n11:cpu:/docker/{id}\n")).expect("v1");
        assert_eq!(v1.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(parse_cgroup(""), None);
        // A hybrid host: the unified hierarchy at its root, a v1 one deeper.
        let hybrid = parse_cgroup("4:memory:/process_api/a80\n1:cpu:/\n0::/\n").expect("hybrid");
        assert_eq!(hybrid.path, "/process_api/a80");
        assert_eq!(hybrid.container_id, None);
        assert_eq!(parse_cgroup("0::/\n").expect("root").path, "/");
    }

    fn file(path: &str) -> MappingName {
        MappingName::File(PathBuf::from(path))
    }

    #[test]
    fn maps_lines_parse_every_column() {
        let maps = Maps::parse(
            "55d0a0001000-55d0a0005000 r-xp 00001000 fe:01 1234                       /usr/bin/app\n",
        );
        assert_eq!(maps.malformed_lines, 0);
        assert_eq!(
            maps.mappings,
            vec![Mapping {
                range: 0x55d0_a000_1000..0x55d0_a000_5000,
                executable: true,
                offset: 0x1000,
                device: Device {
                    major: 0xfe,
                    minor: 1
                },
                inode: 1234,
                name: file("/usr/bin/app"),
            }]
        );
    }

    #[test]
    fn anonymous_and_pseudo_mappings_have_no_path() {
        let maps = Maps::parse(
            "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n\
             55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n\
             7ffd00030000-7ffd00032000 r-xp 00000000 00:00 0                          [vdso]\n\
             7f2000000000-7f2000001000 rw-s 00000000 00:0e 12 anon_inode:[perf_event]\n\
             7f3000000000-7f3000001000 rw-p 00000000 00:00 0                          [anon:glibc malloc]",
        );
        assert_eq!(maps.malformed_lines, 0);
        let names: Vec<_> = maps.mappings.iter().map(|m| m.name.clone()).collect();
        assert_eq!(
            names,
            vec![
                MappingName::Anonymous,
                MappingName::Pseudo("[heap]".into()),
                MappingName::Pseudo("[stack]".into()),
                MappingName::Pseudo("[vdso]".into()),
                MappingName::Pseudo("anon_inode:[perf_event]".into()),
                MappingName::Pseudo("[anon:glibc malloc]".into()),
            ]
        );
        assert!(maps.mappings.iter().all(|m| m.path().is_none()));
        assert_eq!(maps.files().count(), 0);
        assert!(maps.mappings[1].is_heap() && !maps.mappings[2].is_heap());
        assert!(maps.mappings[3].executable && !maps.mappings[2].executable);
    }

    #[test]
    fn deleted_files_and_paths_with_spaces_keep_their_path() {
        let maps = Maps::parse(
            "7f00-7f10 r-xp 00002000 fd:01 9 /tmp/lib.so (deleted)\n\
             7f10-7f20 r--p 00000000 fd:01 10    /opt/my  app/bin  \n\
             7f20-7f30 rw-s 00000000 00:01 2048 /memfd:jit (deleted)\n\
             7f30-7f40 r--p 00000000 fd:01 11 /srv/(deleted) data",
        );
        assert_eq!(maps.malformed_lines, 0);
        let paths: Vec<_> = maps.files().filter_map(Mapping::path).collect();
        assert_eq!(
            paths,
            vec![
                Path::new("/tmp/lib.so"),
                Path::new("/opt/my  app/bin  "),
                Path::new("/memfd:jit"),
                Path::new("/srv/(deleted) data"),
            ]
        );
    }

    #[test]
    fn maps_lines_parse_and_skip_anonymous() {
        let maps = Maps::parse(
            "55d0c0a00000-55d0c0a21000 r-xp 00001000 fd:01 123 /usr/bin/my server\n\
             7ffd1c3f0000-7ffd1c411000 rw-p 00000000 00:00 0 [stack]\n\
             7f00-7f10 r-xp 00002000 fd:01 9 /tmp/lib.so (deleted)",
        );
        let maps: Vec<_> = maps.files().collect();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].path(), Some(Path::new("/usr/bin/my server")));
        assert_eq!(maps[0].offset, 0x1000);
        assert_eq!(maps[1].path(), Some(Path::new("/tmp/lib.so")));
    }

    #[test]
    fn huge_numbers_parse() {
        let maps = Maps::parse(
            "ffffffffff600000-ffffffffff601000 --xp ffffffffffff0000 fff:fffff 18446744073709551615 /huge",
        );
        assert_eq!(maps.malformed_lines, 0);
        let m = &maps.mappings[0];
        assert_eq!(m.range, 0xffff_ffff_ff60_0000..0xffff_ffff_ff60_1000);
        assert_eq!(m.offset, 0xffff_ffff_ffff_0000);
        assert_eq!(
            m.file_id(),
            (
                Device {
                    major: 0xfff,
                    minor: 0xf_ffff
                },
                u64::MAX
            )
        );
        assert_eq!(maps.containing(0xffff_ffff_ff60_0fff), Some(m));
        assert_eq!(maps.containing(0xffff_ffff_ff60_1000), None);
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        let maps = Maps::parse(
            "garbage\n\
             \n\
             7f00-7f10 r-xp 00000000 fd:01\n\
             7f00 r-xp 00000000 fd:01 9 /no/range/end\n\
             zz00-7f10 r-xp 00000000 fd:01 9 /bad/hex\n\
             7f10-7f00 r-xp 00000000 fd:01 9 /backwards\n\
             7f00-7f10 rwxq 00000000 fd:01 9 /bad/perms\n\
             7f00-7f10 r-x 00000000 fd:01 9 /short/perms\n\
             7f00-7f10 r-xp 00000000 fd01 9 /bad/device\n\
             7f00-7f10 r-xp 00000000 fd:01 -9 /negative/inode\n\
             7f00-7f10 r-xp 00000000 fd:01 184467440737095516150 /inode/overflow\n\
             7f00-7f10 r-xp 1ffffffffffffffff fd:01 9 /offset/overflow\n\
             7f00-7f10 r-xp 00000000 fd:01 9 /good\n\
             Rss:                   4 kB",
        );
        assert_eq!(maps.malformed_lines, 12);
        assert_eq!(maps.mappings.len(), 1);
        assert_eq!(maps.mappings[0].name, file("/good"));
        assert_eq!(Maps::parse(""), Maps::default());
    }

    #[test]
    fn our_own_maps_hold_this_function() {
        let maps = read_own_maps().expect("read /proc/self/maps");
        assert_eq!(maps.malformed_lines, 0);
        let here = maps_lines_parse_every_column as *const () as u64;
        let mapping = maps.containing(here).expect("code mapping");
        assert!(
            mapping.executable && mapping.path().is_some(),
            "{mapping:?}"
        );
        let by_pid = read_maps(std::process::id()).expect("read /proc/PID/maps");
        assert_eq!(by_pid.containing(here), Some(mapping));
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let mut stat = String::from("1234 (my (odd) prog) S");
        for field in 4..=52 {
            stat.push_str(&format!(" {field}"));
        }
        assert_eq!(
            Stat::parse(&stat),
            Some(Stat {
                state: 'S',
                start_brk: Some(47),
                user_ticks: 14,
                system_ticks: 15,
            })
        );
        assert_eq!(
            Stat::parse("1 (old kernel) Z 0 1"),
            Some(Stat {
                state: 'Z',
                start_brk: None,
                user_ticks: 0,
                system_ticks: 0,
            })
        );
        assert_eq!(Stat::parse("1 (no state)"), None);
        assert_eq!(Stat::parse("no parentheses"), None);
    }

    #[test]
    fn our_own_cpu_time_is_read_and_grows() {
        let before = read_cpu_time(std::process::id()).expect("our own stat");
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        // Spin for 100 ms of wall clock, at least 10 ticks of CPU once scheduled.
        while started.elapsed() < std::time::Duration::from_millis(100) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = read_cpu_time(std::process::id()).expect("our own stat");
        assert!(after.user_ns + after.system_ns >= before.user_ns + before.system_ns);
        assert!(after.user_ns + after.system_ns > 0, "{after:?}");
    }

    #[test]
    fn status_fields_parse() {
        let status =
            "Name:\tcat\nVmData:\t     348 kB\nVmRSS:\t    1024 kB\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_memory(status), Some((1024 * 1024, 348 * 1024)));
        assert_eq!(parse_memory("VmRSS:\t1 kB\n"), None);
        assert_eq!(field(status, "CapEff"), Some("000001ffffffffff"));
        assert_eq!(field(status, "Cap"), None);
    }

    #[test]
    fn io_counters_parse() {
        let io = "rchar: 4096\nwchar: 17\nsyscr: 3\nsyscw: 1\nread_bytes: 0\n";
        assert_eq!(
            parse_io(io),
            Some(IoCounters {
                read_bytes: 4096,
                written_bytes: 17
            })
        );
        assert_eq!(parse_io("rchar: 1\n"), None);
        assert!(read_io(std::process::id()).is_some());
    }

    #[test]
    fn our_own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_exists(pid));
        assert!(is_alive(pid));
        assert!(!read_comm(pid).expect("comm").is_empty());
        assert_eq!(
            read_exe(pid).expect("exe"),
            std::env::current_exe().expect("current exe")
        );
        let (start_brk, current) = read_brk(pid).expect("brk");
        assert!(start_brk > 0 && current >= start_brk);
        let (rss, data) = read_memory(pid).expect("memory");
        assert!(rss > 0 && data > 0);
        assert!(own_effective_capabilities().is_some());
        assert!(!process_exists(u32::MAX - 1));
        assert!(!is_alive(u32::MAX - 1));
        assert_eq!(
            read_maps(u32::MAX - 1).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn paths_reach_the_process_s_files() {
        assert_eq!(
            path_in_root(42, Path::new("/usr/lib/libc.so.6")),
            Path::new("/proc/42/root/usr/lib/libc.so.6")
        );
        assert_eq!(
            mapped_file(42, &(0x7f00..0x7f10)),
            Path::new("/proc/42/map_files/7f00-7f10")
        );
        assert_eq!(root_dir(42), Path::new("/proc/42/root"));
    }
}
