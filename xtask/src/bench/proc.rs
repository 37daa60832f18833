//! Processes and programs: where a program is on PATH, which libc a process maps, whether we are
//! root, the "go" line of a waiting child, and the tail of a command's output for an error.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use leaktrace_supervisor::Supervised;
use procfs::process::{MMapPath, Process};

/// Lines of a command's output quoted in an error.
const TAIL_LINES: usize = 8;

/// Directories searched after PATH: a root shell's PATH may lack the sbin ones.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The executable `name` on PATH or in the system directories.
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(SYSTEM_DIRS.into_iter().map(PathBuf::from));
    let search = std::env::join_paths(dirs).ok()?;
    which::which_in(name, Some(search), Path::new("/")).ok()
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Releases a child waiting for one line on its stdin, then closes that stdin.
pub(super) fn go(child: &mut Supervised) -> Result<()> {
    child
        .send_line()
        .with_context(|| format!("{}: cannot send the go line", child.name()))?;
    child.close_stdin();
    Ok(())
}

/// The path of the libc mapped into `pid`, from /proc/PID/maps.
pub(super) fn libc_path_of(pid: u32) -> Result<String> {
    let maps_path = format!("/proc/{pid}/maps");
    let pid = i32::try_from(pid).context("pid out of range")?;
    let maps = Process::new(pid)
        .and_then(|p| p.maps())
        .with_context(|| format!("cannot read {maps_path}"))?;
    maps.into_iter()
        .filter_map(|m| match m.pathname {
            MMapPath::Path(path) => path.to_str().map(str::to_string),
            _ => None,
        })
        .find(|p| is_libc(p))
        .ok_or_else(|| anyhow!("no libc mapping found in {maps_path}"))
}

/// `/usr/lib/x86_64-linux-gnu/libc.so.6` or an old-style `libc-2.31.so`.
fn is_libc(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    path.starts_with('/')
        && (base.starts_with("libc.so") || (base.starts_with("libc-") && base.ends_with(".so")))
}

/// The last non-empty lines of a command's output, on one line.
pub(super) fn tail_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_is_found_in_our_own_maps() {
        let libc = libc_path_of(std::process::id()).expect("this test links libc");
        assert!(is_libc(&libc), "{libc}");
        assert!(Path::new(&libc).is_file(), "{libc}");
    }

    #[test]
    fn only_libc_itself_is_libc() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(!is_libc("/usr/lib/libcrypto.so.3"));
        assert!(!is_libc("libc.so.6"));
        assert!(!is_libc("/usr/lib/libc-client.so.2007e"));
    }

    #[test]
    fn programs_are_found_on_path_and_in_system_dirs() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(find_program("no-such-program-leaktrace"), None);
    }
}
