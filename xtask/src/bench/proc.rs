//! Processes: which libc a process maps, and the "go" line of a waiting child.

use anyhow::{anyhow, Context as _, Result};
use leaktrace_supervisor::Supervised;
use procfs::process::{MMapPath, Process};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_is_found_in_our_own_maps() {
        let libc = libc_path_of(std::process::id()).expect("this test links libc");
        assert!(is_libc(&libc), "{libc}");
        assert!(std::path::Path::new(&libc).is_file(), "{libc}");
    }

    #[test]
    fn only_libc_itself_is_libc() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(!is_libc("/usr/lib/libcrypto.so.3"));
        assert!(!is_libc("libc.so.6"));
        assert!(!is_libc("/usr/lib/libc-client.so.2007e"));
    }
}
