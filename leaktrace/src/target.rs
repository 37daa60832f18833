//! The processes leaktrace traces: finding them, the allocator they really map, and launching a
//! command paused until the probes are attached.
use std::{
    ffi::{CString, OsStr, OsString},
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object as _, ObjectSection as _};

use crate::schema::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot inspect pid {pid}: {source}")]
    Inspect { pid: u32, source: io::Error },
    #[error(
        "pid {pid} ({comm}) maps no libc: {why}; leaktrace hooks libc's malloc family and cannot trace it"
    )]
    NoLibc { pid: u32, comm: String, why: String },
    #[error("{program}: command not found")]
    CommandNotFound { program: String },
    #[error("{path}: {why}; leaktrace hooks libc's malloc family and cannot trace it")]
    UntraceableCommand { path: String, why: String },
    #[error("failed to run {program}: {source}")]
    Exec { program: String, source: io::Error },
    #[error("failed to launch {program}: {source}")]
    Spawn { program: String, source: io::Error },
}

/// A process being traced.
#[derive(Clone, Debug)]
pub struct TargetProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: PathBuf,
    /// The libc as the process names it (in its own mount namespace).
    pub libc: PathBuf,
    /// The same file reached from our namespace (through /proc/PID/root), for attaching.
    pub libc_host_path: PathBuf,
}

/// Inspect a running process and find the libc it maps.
pub fn inspect(pid: u32) -> Result<TargetProcess, TargetError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if pid == 0 || !proc_dir.exists() {
        return Err(TargetError::NoSuchProcess(pid));
    }
    let inspect_err = |source| TargetError::Inspect { pid, source };
    let comm = read_comm(pid).map_err(inspect_err)?;
    let exe = fs::read_link(proc_dir.join("exe")).map_err(inspect_err)?;
    let maps = fs::read_to_string(proc_dir.join("maps")).map_err(inspect_err)?;
    let Some(libc) = libc_in_maps(&maps) else {
        let why = explain_no_libc(&proc_dir.join("exe"));
        return Err(TargetError::NoLibc { pid, comm, why });
    };
    let libc_host_path = proc_dir
        .join("root")
        .join(libc.strip_prefix("/").unwrap_or(&libc));
    Ok(TargetProcess {
        pid,
        comm,
        exe,
        libc,
        libc_host_path,
    })
}

/// A process to trace in growth mode: no allocator library needed (static binaries, Go).
pub fn inspect_any(pid: u32) -> Result<TargetProcess, TargetError> {
    match inspect(pid) {
        Err(TargetError::NoLibc { comm, .. }) => Ok(TargetProcess {
            pid,
            comm,
            exe: fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default(),
            libc: PathBuf::new(),
            libc_host_path: PathBuf::new(),
        }),
        other => other,
    }
}

/// Whether a file starts like an ELF object.
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

pub fn read_comm(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim_end()
        .to_string())
}

/// Cumulative bytes a process read and wrote (`rchar`, `wchar` of /proc/PID/io).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

pub fn read_io(pid: u32) -> Option<IoCounters> {
    parse_io(&fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

fn parse_io(text: &str) -> Option<IoCounters> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(IoCounters {
        read_bytes: field("rchar:")?,
        written_bytes: field("wchar:")?,
    })
}

/// The machine's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Start of the heap (`start_brk`, /proc/PID/stat field 47) and the current break (end of the
/// `[heap]` mapping, or the start when the heap is still empty).
pub fn read_brk(pid: u32) -> Option<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start_brk = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(47 - 3)?
        .parse::<u64>()
        .ok()?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let current = maps
        .lines()
        .find(|l| l.ends_with("[heap]"))
        .and_then(|l| l.split('-').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|end| u64::from_str_radix(end, 16).ok())
        .unwrap_or(start_brk);
    Some((start_brk, current))
}

/// Resident set size and data segment size (VmRSS, VmData of /proc/PID/status), in bytes.
pub fn read_memory(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    Some((kib("VmRSS:")?, kib("VmData:")?))
}

/// Whether a process still exists (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The path of the libc mapped in a /proc/PID/maps text (glibc, or musl's combined loader).
pub fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.starts_with('/') && is_libc_name(path))
        .map(PathBuf::from)
}

fn is_libc_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "libc.so.6"
        || name == "libc.so"
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || name.starts_with("ld-musl-")
        || name.starts_with("libc.musl-")
}

/// Why an executable maps no libc, in the user's words.
fn explain_no_libc(exe: &Path) -> String {
    let Ok(data) = fs::read(exe) else {
        return "its executable cannot be read".to_string();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return "its executable is not an ELF file".to_string();
    };
    let is_go = file.section_by_name(".go.buildinfo").is_some()
        || file.section_by_name(".gopclntab").is_some();
    let dynamic = elf_interpreter(&file).is_some();
    match (is_go, dynamic) {
        (true, false) => {
            "it is a pure Go binary (statically linked, Go's own allocator)".to_string()
        }
        (false, false) => "it is a statically linked binary".to_string(),
        (_, true) => "it is dynamically linked but has not loaded libc".to_string(),
    }
}

fn elf_interpreter(file: &object::File<'_>) -> Option<PathBuf> {
    let section = file.section_by_name(".interp")?;
    let bytes = section.data().ok()?;
    let bytes = bytes.split(|&b| b == 0).next()?;
    (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
}

/// Resolve a command name like the shell does (a name with a slash is a path).
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, TargetError> {
    let not_found = || TargetError::CommandNotFound {
        program: program.to_string_lossy().into_owned(),
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if path.exists() {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The libc a not-yet-started executable will load, asked of its own dynamic loader
/// (`ld.so --list`, which maps the libraries without running any of their code). Scripts are
/// followed to their interpreter.
pub fn libc_for_executable(exe: &Path) -> Result<PathBuf, TargetError> {
    let untraceable = |why: &str| TargetError::UntraceableCommand {
        path: exe.display().to_string(),
        why: why.to_string(),
    };
    let data = fs::read(exe).map_err(|e| untraceable(&format!("cannot read it ({e})")))?;
    if let Some(script) = data.strip_prefix(b"#!") {
        let line = script.split(|&b| b == b'\n').next().unwrap_or_default();
        let interpreter = OsStr::from_bytes(line).to_string_lossy().into_owned();
        let interpreter = interpreter.split_whitespace().next().unwrap_or_default();
        if interpreter.is_empty() {
            return Err(untraceable("it is a script without an interpreter"));
        }
        return libc_for_executable(Path::new(interpreter));
    }
    let file =
        object::File::parse(&*data).map_err(|_| untraceable("it is not an ELF executable"))?;
    let Some(interpreter) = elf_interpreter(&file) else {
        return Err(untraceable(&explain_no_libc(exe)));
    };
    let output = Command::new(&interpreter)
        .arg("--list")
        .arg(exe)
        .output()
        .map_err(|e| untraceable(&format!("its loader {} failed: {e}", interpreter.display())))?;
    let listing = String::from_utf8_lossy(&output.stdout);
    listing
        .lines()
        .filter_map(|line| {
            // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "\t/lib64/ld-... (0x...)"
            let resolved = line.split("=>").nth(1).unwrap_or(line).trim();
            resolved.split_whitespace().next().map(str::to_string)
        })
        .find(|path| path.starts_with('/') && is_libc_name(path))
        .map(PathBuf::from)
        .ok_or_else(|| untraceable("it does not link libc"))
}

/// A launched command, stopped before `exec` until `release` is called.
pub struct PausedChild {
    pub pid: u32,
    program: String,
    /// Writing a byte (or closing) lets the child exec.
    go: Option<OwnedFd>,
    /// Receives the child's errno if exec fails; closed (CLOEXEC) when exec succeeds.
    exec_status: OwnedFd,
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int buffer.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that waits for `release` before exec'ing `program args`: the probes are
/// attached to its pid in between, so it is traced from its first allocation (constructors too).
pub fn spawn_paused(program: &Path, argv: &[OsString]) -> Result<PausedChild, TargetError> {
    let program_name = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spawn_err = |source| TargetError::Spawn {
        program: program_name.clone(),
        source,
    };
    let to_cstring = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            spawn_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an argument contains a NUL byte",
            ))
        })
    };
    // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
    let path = to_cstring(program.as_os_str())?;
    let args = argv
        .iter()
        .map(|a| to_cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let (go_read, go_write) = pipe_cloexec().map_err(spawn_err)?;
    let (status_read, status_write) = pipe_cloexec().map_err(spawn_err)?;

    // SAFETY: the child only calls read, execv, write and _exit (async-signal-safe) on data
    // prepared above, then replaces itself or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(spawn_err(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: (child) see above; `arg_ptrs` is NULL-terminated, the fds are open.
        unsafe {
            let mut byte = 0u8;
            libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            libc::execv(path.as_ptr(), arg_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(status_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    drop(go_read);
    drop(status_write);
    Ok(PausedChild {
        pid: pid as u32,
        program: program_name,
        go: Some(go_write),
        exec_status: status_read,
    })
}

impl PausedChild {
    /// Let the child exec; returns once exec has succeeded or failed.
    pub fn release(&mut self) -> Result<(), TargetError> {
        if let Some(go) = self.go.take() {
            let byte = [1u8];
            // SAFETY: writing one byte from a valid buffer to an fd we own.
            unsafe { libc::write(go.as_raw_fd(), byte.as_ptr().cast(), 1) };
        }
        let mut errno = [0u8; 4];
        let mut status =
            fs::File::from(
                self.exec_status
                    .try_clone()
                    .map_err(|source| TargetError::Spawn {
                        program: self.program.clone(),
                        source,
                    })?,
            );
        match status.read(&mut errno) {
            Ok(4) => {
                reap(self.pid);
                Err(TargetError::Exec {
                    program: self.program.clone(),
                    source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
                })
            }
            _ => Ok(()),
        }
    }

    /// Kill and reap a child that will never be released (attach failed).
    pub fn abort(mut self) {
        // SAFETY: our own child, not yet exec'd.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        self.go.take();
        reap(self.pid);
    }
}

fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
}

/// Reap our launched child if it has exited.
pub fn try_wait_child(pid: u32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: non-blocking wait for our own child.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if reaped != pid as i32 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_glibc_and_musl_in_maps() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /usr/bin/cat
7f1c2a000000-7f1c2a028000 r--p 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1c3f0000-7ffd1c411000 rw-p 00000000 00:00 0 [stack]";
        assert_eq!(
            libc_in_maps(maps),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        let musl = "7f00-7f10 r-xp 00000000 fd:01 9 /lib/ld-musl-x86_64.so.1";
        assert_eq!(
            libc_in_maps(musl),
            Some(PathBuf::from("/lib/ld-musl-x86_64.so.1"))
        );
        let none = "7f00-7f10 r-xp 00000000 fd:01 9 /usr/lib/libcrypto.so.3\n7f20-7f30 rw-p 00000000 00:00 0 [heap]";
        assert_eq!(libc_in_maps(none), None);
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
    fn our_own_process_is_inspectable() {
        let me = inspect(std::process::id()).expect("inspect self");
        assert!(me.libc.ends_with("libc.so.6"), "{me:?}");
        assert!(me.libc_host_path.exists(), "{me:?}");
        assert!(is_alive(std::process::id()));
        let (start_brk, current) = read_brk(std::process::id()).expect("brk");
        assert!(start_brk > 0 && current >= start_brk);
        let (rss, data) = read_memory(std::process::id()).expect("memory");
        assert!(rss > 0 && data > 0);
    }

    #[test]
    fn missing_process_and_command_are_named() {
        let err = inspect(u32::MAX - 1).expect_err("no such pid");
        assert_eq!(
            err.to_string(),
            format!("no process with pid {}", u32::MAX - 1)
        );
        let err = resolve_program(OsStr::new("leaktrace-no-such-command")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "leaktrace-no-such-command: command not found"
        );
    }

    #[test]
    fn a_dynamic_executable_resolves_its_libc() {
        let libc = libc_for_executable(Path::new("/bin/sh")).expect("sh links libc");
        assert!(libc.ends_with("libc.so.6"), "{}", libc.display());
    }
}
