//! What this machine has: programs on PATH, Debian packages (installed with apt-get), root.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Lines of a command's output quoted in an error.
const TAIL_LINES: usize = 8;

/// Directories searched after PATH: a root shell's PATH may lack the sbin ones.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The executable `name` on PATH or in the system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(SYSTEM_DIRS.into_iter().map(PathBuf::from));
    let search = std::env::join_paths(dirs).ok()?;
    which::which_in(name, Some(search), Path::new("/")).ok()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether Debian's package `pkg` is installed.
pub fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg")
        .args(["-s", pkg])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("Status:") && l.contains("install ok installed"))
        })
}

/// apt-get, with `apt-get update` run at most once, and only when something is needed.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn run(&self, args: &[&str], dir: Option<&Path>) -> Result<Output> {
        let mut cmd = Command::new("apt-get");
        // Another apt-get (a second setup running beside this one) holds the lock for a while:
        // wait for it rather than fail.
        cmd.args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let out = cmd.output().context("cannot run apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get {} exited with {}: {}",
                args.join(" "),
                out.status,
                tail_of(&out.stderr)
            );
        }
        Ok(out)
    }

    fn update(&mut self) -> Result<()> {
        if !self.updated {
            if !is_root() {
                bail!("apt-get needs root");
            }
            println!("xtask: apt-get update");
            self.run(&["update", "-q"], None)?;
            self.updated = true;
        }
        Ok(())
    }

    pub fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        self.install_with(&[], pkgs)
    }

    /// Installs `pkgs` without the packages they only recommend (what `setup` needs is small).
    pub fn install_without_recommends(&mut self, pkgs: &[&str]) -> Result<()> {
        self.install_with(&["--no-install-recommends"], pkgs)
    }

    fn install_with(&mut self, flags: &[&str], pkgs: &[&str]) -> Result<()> {
        self.update()?;
        let mut args = vec!["install", "-y", "-q"];
        args.extend_from_slice(flags);
        args.extend_from_slice(pkgs);
        self.run(&args, None)?;
        Ok(())
    }

    /// `apt-cache depends PKG`: the direct `Depends:` package names.
    pub fn depends(&mut self, pkg: &str) -> Result<Vec<String>> {
        let query = || -> Option<Vec<String>> {
            let out = Command::new("apt-cache")
                .args(["depends", pkg])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            let deps: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends:"))
                .map(|d| {
                    d.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                })
                .collect();
            (!deps.is_empty()).then_some(deps)
        };
        if let Some(d) = query() {
            return Ok(d);
        }
        // Maybe the package lists were never fetched on this machine.
        if !self.updated {
            self.update()?;
            if let Some(d) = query() {
                return Ok(d);
            }
        }
        bail!("apt-cache knows no dependencies of {pkg}")
    }
}

/// The last non-empty lines of a command's output, on one line.
pub fn tail_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_and_in_system_dirs() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(find_program("no-such-program-leaktrace"), None);
    }
}
