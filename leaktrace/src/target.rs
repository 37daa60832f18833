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

use crate::{
    allocator::{self, Discovery},
    procfs,
    schema::ExitStatus,
    target_files::{self, Unreadable},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot inspect pid {pid}: {source}")]
    Inspect { pid: u32, source: io::Error },
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
    /// The module of the allocator serving malloc, as the process names it (in its own mount
    /// namespace); empty when none was found.
    pub libc: PathBuf,
    /// The allocators found (the one serving malloc first), or why none can be hooked.
    pub allocators: Discovery,
    /// The process's cgroup (v2 path), and the container id it holds, if any.
    pub cgroup: Option<procfs::Cgroup>,
}

impl TargetProcess {
    /// A process known by its pid alone (system-wide rows): nothing inspected.
    pub fn bare(pid: u32, comm: String) -> Self {
        Self {
            pid,
            comm,
            exe: procfs::read_exe(pid).unwrap_or_default(),
            libc: PathBuf::new(),
            allocators: Discovery::default(),
            cgroup: procfs::read_cgroup(pid),
        }
    }
}

/// Inspect a running process and find the allocator serving its malloc. A process whose
/// allocator cannot be hooked is still returned: `allocators.unhookable` says why.
pub fn inspect(pid: u32) -> Result<TargetProcess, TargetError> {
    if pid == 0 || !procfs::process_exists(pid) {
        return Err(TargetError::NoSuchProcess(pid));
    }
    let inspect_err = |source| TargetError::Inspect { pid, source };
    let comm = procfs::read_comm(pid).map_err(inspect_err)?;
    let exe = procfs::read_exe(pid).map_err(inspect_err)?;
    let allocators = allocator::discover_process(pid).unwrap_or_else(|err| Discovery {
        allocators: Vec::new(),
        unhookable: Some(format!("its modules cannot be read ({err})")),
    });
    let libc = allocators
        .primary()
        .map(|a| a.module.clone())
        .unwrap_or_default();
    Ok(TargetProcess {
        pid,
        comm,
        exe,
        libc,
        allocators,
        cgroup: procfs::read_cgroup(pid),
    })
}

/// Whether a file starts like an ELF object.
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    // Through target_files: a FIFO or a device at the path must not block or stream forever.
    target_files::open(path)
        .is_ok_and(|mut f| std::io::Read::read_exact(&mut f, &mut magic).is_ok())
        && magic == *b"\x7fELF"
}

/// The machine's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
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
    which::which_in_global(program, Some(path_var))
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(not_found)
}

/// The allocators a not-yet-started executable will use, from the libraries its own dynamic
/// loader lists (`ld.so --list`, which maps the libraries without running any of their code, in
/// search order, LD_PRELOAD first). Scripts are followed to their interpreter; a static
/// executable is searched alone.
pub fn allocators_for_executable(exe: &Path) -> Result<Discovery, TargetError> {
    allocators_for_executable_with(exe, std::env::var_os("LD_PRELOAD").as_deref())
}

/// [`allocators_for_executable`] for the program process `pid` just exec'd (`exe`, reached
/// through its root): its loader is asked with the process's own LD_PRELOAD, not ours
/// (`env LD_PRELOAD=... prog` preloads into `prog` only).
pub fn allocators_for_exec(pid: u32, exe: &Path) -> Result<Discovery, TargetError> {
    let preload = allocator::ld_preload_of(pid);
    allocators_for_executable_with(exe, preload.as_deref().map(OsStr::from_bytes))
}

fn allocators_for_executable_with(
    exe: &Path,
    preload: Option<&OsStr>,
) -> Result<Discovery, TargetError> {
    let untraceable = |why: &str| TargetError::UntraceableCommand {
        path: exe.display().to_string(),
        why: why.to_string(),
    };
    let data = target_files::read(exe).map_err(|e| match e {
        Unreadable::Io { source, .. } => untraceable(&format!("cannot read it ({source})")),
        other => untraceable(&other.to_string()),
    })?;
    if let Some(script) = data.strip_prefix(b"#!") {
        let line = script.split(|&b| b == b'\n').next().unwrap_or_default();
        let interpreter = OsStr::from_bytes(line).to_string_lossy().into_owned();
        let interpreter = interpreter.split_whitespace().next().unwrap_or_default();
        if interpreter.is_empty() {
            return Err(untraceable("it is a script without an interpreter"));
        }
        return allocators_for_executable_with(Path::new(interpreter), preload);
    }
    let file =
        object::File::parse(&*data).map_err(|_| untraceable("it is not an ELF executable"))?;
    let loaded = match elf_interpreter(&file) {
        None => Vec::new(),
        Some(interpreter) => {
            let mut list = Command::new(&interpreter);
            list.arg("--list").arg(exe);
            match preload {
                Some(preload) => list.env("LD_PRELOAD", preload),
                None => list.env_remove("LD_PRELOAD"),
            };
            let output = list.output().map_err(|e| {
                untraceable(&format!("its loader {} failed: {e}", interpreter.display()))
            })?;
            let listing = String::from_utf8_lossy(&output.stdout);
            listing
                .lines()
                .filter_map(|line| {
                    // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "\t/lib64/ld-... (0x...)"
                    let resolved = line.split("=>").nth(1).unwrap_or(line).trim();
                    resolved.split_whitespace().next().map(str::to_string)
                })
                .filter(|path| path.starts_with('/'))
                .map(PathBuf::from)
                .collect()
        }
    };
    allocator::discover_executable(exe, &loaded).map_err(|err| untraceable(&err.to_string()))
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
    fn our_own_process_is_inspectable() {
        let me = inspect(std::process::id()).expect("inspect self");
        assert!(me.libc.ends_with("libc.so.6"), "{me:?}");
        assert!(
            me.allocators.primary().is_some_and(|a| a.file.exists()),
            "{me:?}"
        );
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
    fn a_dynamic_executable_resolves_its_allocator() {
        let found = allocators_for_executable(Path::new("/bin/sh")).expect("sh links libc");
        let glibc = found.primary().expect("an allocator");
        assert!(glibc.module.ends_with("libc.so.6"), "{found:?}");
        assert!(!glibc.hooks.is_empty());
    }
}
