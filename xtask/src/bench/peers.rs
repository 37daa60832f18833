//! The peer tracers, bpftrace and bcc's memleak: installed with apt when missing, bcc's kernel
//! headers tree built from Debian's linux-headers packages, and memleak started on a pid.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{anyhow, bail, Context as _, Result};
use leaktrace_supervisor::{Input, Supervised};

use crate::system::{dpkg_installed, find_program, tail_of, Apt};

use super::{write_file, ATTACH_TIMEOUT, BPFTRACE, MEMLEAK, SETTLE};

/// Shared cache for the kernel-headers tree (survives `cargo clean`); `out_dir` is the fallback.
const HEADERS_CACHE: &str = "/var/cache/leaktrace-bench";
const HEADERS_MARKER: &str = ".leaktrace-bench-complete";

pub(super) struct Peers {
    /// Why bpftrace is unavailable, when its install was attempted and failed.
    pub(super) bpftrace_note: Option<String>,
    /// Why bcc's tools are unavailable, when their install was attempted and failed.
    pub(super) bcc_note: Option<String>,
    /// The BCC_KERNEL_SOURCE tree, or why there is none.
    pub(super) headers: std::result::Result<PathBuf, String>,
}

/// The Debian package of each peer variant.
pub(super) const BPFTRACE_PACKAGE: (&str, &str) = (BPFTRACE, "bpftrace");
pub(super) const BCC_PACKAGE: (&str, &str) = (MEMLEAK, "bpfcc-tools");

/// The packages of the peers among the variants run (`only`; empty: every variant), so that a
/// run without peers installs nothing.
pub(super) fn packages_for<'a>(only: &[String], peers: &[(&str, &'a str)]) -> Vec<&'a str> {
    peers
        .iter()
        .filter(|(variant, _)| only.is_empty() || only.iter().any(|o| o == variant))
        .map(|(_, package)| *package)
        .collect()
}

/// Installs the missing `packages` (Debian names) and prepares what `memleak-bpfcc` needs.
pub(super) fn prepare_peers(out_dir: &Path, packages: &[&str]) -> Result<Peers> {
    let mut peers = Peers {
        bpftrace_note: None,
        bcc_note: None,
        headers: Err(String::new()),
    };
    if packages.is_empty() {
        peers.headers = Err("no peer among the variants run".to_string());
        return Ok(peers);
    }
    if find_program("dpkg").is_none() || find_program("apt-get").is_none() {
        let why =
            "not a Debian system (no dpkg/apt-get): peers are used only if already installed, \
                   and memleak-bpfcc has no kernel headers tree"
                .to_string();
        println!("bench: note: {why}");
        peers.headers = Err(why);
        return Ok(peers);
    }
    let mut apt = Apt::default();
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("bench: installing {} with apt-get", missing.join(" "));
        if let Err(e) = apt.install(&missing) {
            let why = format!("apt-get install {} failed: {e:#}", missing.join(" "));
            println!("bench: note: {why}");
            if missing.contains(&"bpftrace") {
                peers.bpftrace_note = Some(why.clone());
            }
            if missing.contains(&"bpfcc-tools") {
                peers.bcc_note = Some(why);
            }
        }
    }
    if !packages.contains(&BCC_PACKAGE.1) {
        peers.headers = Err("memleak-bpfcc is not among the variants run".to_string());
        return Ok(peers);
    }
    if find_program(MEMLEAK).is_none() {
        peers.headers = Err(peers
            .bcc_note
            .clone()
            .unwrap_or_else(|| "memleak-bpfcc is not installed".to_string()));
        return Ok(peers);
    }
    peers.headers = match headers_tree(out_dir, &mut apt) {
        Ok(p) => Ok(p),
        Err(e) => {
            let why = format!("cannot prepare the kernel headers tree it needs: {e:#}");
            println!("bench: note: memleak-bpfcc will be skipped: {why}");
            Err(why)
        }
    };
    Ok(peers)
}

/// Debian's linux-headers (flavour + common), extracted with `dpkg -x` and merged into one tree,
/// cached under /var/cache/leaktrace-bench (or `out_dir` when that is not writable).
fn headers_tree(out_dir: &Path, apt: &mut Apt) -> Result<PathBuf> {
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow!("dpkg --print-architecture failed"))?;
    let name = format!("linux-headers-{arch}");
    let candidates = [PathBuf::from(HEADERS_CACHE), out_dir.to_path_buf()];
    for base in &candidates {
        let tree = base.join(&name);
        if tree.join(HEADERS_MARKER).is_file() {
            return Ok(tree);
        }
    }
    let base = candidates
        .iter()
        .find(|b| std::fs::create_dir_all(b).is_ok() && writable_dir(b))
        .ok_or_else(|| {
            anyhow!(
                "neither {HEADERS_CACHE} nor {} is writable",
                out_dir.display()
            )
        })?;
    let tree = base.join(&name);

    // linux-headers-amd64 -> linux-headers-6.1.0-NN-amd64 -> linux-headers-6.1.0-NN-common
    let flavour = apt
        .depends(&name)?
        .into_iter()
        .find(|d| d.starts_with("linux-headers-"))
        .ok_or_else(|| anyhow!("{name} depends on no linux-headers-* package"))?;
    let common = apt
        .depends(&flavour)?
        .into_iter()
        .find(|d| d.starts_with("linux-headers-") && d.ends_with("-common"))
        .ok_or_else(|| anyhow!("{flavour} depends on no linux-headers-*-common package"))?;
    println!(
        "bench: preparing kernel headers for memleak-bpfcc: {flavour} + {common} -> {}",
        tree.display()
    );

    // A private, randomly named work directory, removed on every exit path.
    let work_dir = tempfile::Builder::new()
        .prefix(".tmp-headers-")
        .tempdir_in(base)
        .with_context(|| format!("cannot create a work directory in {}", base.display()))?;
    let work = work_dir.path();
    let result = (|| -> Result<()> {
        apt.run(&["download", "-q", &flavour, &common], Some(work))?;
        let extracted = work.join("x");
        for entry in std::fs::read_dir(work)? {
            let deb = entry?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                let out = Command::new("dpkg")
                    .arg("-x")
                    .arg(&deb)
                    .arg(&extracted)
                    .stdin(Stdio::null())
                    .output()
                    .context("cannot run dpkg -x")?;
                if !out.status.success() {
                    bail!("dpkg -x {} failed: {}", deb.display(), tail_of(&out.stderr));
                }
            }
        }
        let src = extracted.join("usr/src");
        let common_dir = src.join(&common);
        let flavour_dir = src.join(&flavour);
        for d in [&common_dir, &flavour_dir] {
            if !d.is_dir() {
                bail!("{} missing after dpkg -x", d.display());
            }
        }
        // The flavour's top Makefile only includes the common one by absolute path: keep common's.
        merge_into(&flavour_dir, &common_dir, true)?;
        for needed in ["include/linux/kconfig.h", "include/generated/autoconf.h"] {
            if !common_dir.join(needed).is_file() {
                bail!("merged headers tree lacks {needed}");
            }
        }
        write_file(
            &common_dir.join(HEADERS_MARKER),
            format!("{flavour}\n{common}\n").as_bytes(),
        )?;
        if tree.exists() {
            std::fs::remove_dir_all(&tree)
                .with_context(|| format!("cannot remove stale {}", tree.display()))?;
        }
        std::fs::rename(&common_dir, &tree)
            .with_context(|| format!("cannot move the headers tree to {}", tree.display()))?;
        Ok(())
    })();
    drop(work_dir);
    result?;
    Ok(tree)
}

/// Whether a file can be created in `dir` (an unnamed temporary file, gone when closed).
fn writable_dir(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

/// Moves every entry of `from` into `to`, replacing files and symlinks already there
/// (except the top-level Makefile when `top`), recursing into directories.
fn merge_into(from: &Path, to: &Path, top: bool) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if top && name == "Makefile" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let src_is_dir = entry.file_type()?.is_dir();
        let dst_meta = std::fs::symlink_metadata(&dst).ok();
        match dst_meta {
            Some(m) if src_is_dir && m.is_dir() => merge_into(&src, &dst, false)?,
            Some(m) => {
                if m.is_dir() {
                    std::fs::remove_dir_all(&dst)?;
                } else {
                    std::fs::remove_file(&dst)?;
                }
                std::fs::rename(&src, &dst)?;
            }
            None => std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move {} to {}", src.display(), dst.display()))?,
        }
    }
    Ok(())
}

/// Starts `memleak-bpfcc -p PID` and returns once its probes are attached.
pub(super) fn spawn_memleak(memleak_bin: &Path, headers: &Path, pid: u32) -> Result<Supervised> {
    let mut cmd = Command::new(memleak_bin);
    cmd.arg("-p")
        .arg(pid.to_string())
        .env("BCC_KERNEL_SOURCE", headers)
        .env("PYTHONUNBUFFERED", "1");
    let mut ml = Supervised::spawn("memleak-bpfcc", &mut cmd, Input::Null)?;
    // memleak prints "Attaching to pid" *before* attaching; its first periodic report (after
    // compile + attach + one 5 s interval) is the first line that proves the probes are in.
    ml.wait_stdout(
        ATTACH_TIMEOUT,
        "first `Top N stacks with outstanding allocations` report (printed once attached, after its 5 s interval)",
        |l| {
            l.contains("stacks with outstanding allocations")
                .then_some(())
        },
    )?;
    thread::sleep(SETTLE);
    Ok(ml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_peers_run_are_installed() {
        let table = [BPFTRACE_PACKAGE, BCC_PACKAGE];
        assert_eq!(packages_for(&[], &table), ["bpftrace", "bpfcc-tools"]);
        let only = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(packages_for(&only(&["untraced", "leaktrace-growth"]), &table).is_empty());
        assert_eq!(
            packages_for(&only(&["untraced", "memleak-bpfcc"]), &table),
            ["bpfcc-tools"]
        );
    }
}
