//! What leaktrace needs from the kernel and the user, checked before touching the kernel.
use std::path::Path;

use anyhow::bail;

/// Where tracefs is (mounting it if it is not, as root may).
pub(super) fn ensure_tracefs() -> anyhow::Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    // tracefs is root's 0700: without CAP_DAC_READ_SEARCH a non-root leaktrace sees nothing in
    // it, which must not read as "not mounted".
    if std::fs::read_dir(tracing).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        && !has_capability(CAP_DAC_READ_SEARCH)
    {
        bail!(
            "cannot read tracefs (/sys/kernel/tracing is root's): without root leaktrace needs CAP_DAC_READ_SEARCH too"
        );
    }
    if tracing.join("events/syscalls").exists()
        || Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        return Ok(());
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(tracing)
        .status()
        .is_ok_and(|s| s.success());
    if mounted && tracing.join("events/syscalls").exists() {
        log::info!("mounted tracefs on /sys/kernel/tracing");
        return Ok(());
    }
    bail!(
        "tracefs with syscall tracepoints is not available: mount it (mount -t tracefs tracefs /sys/kernel/tracing) on a kernel with CONFIG_FTRACE_SYSCALLS"
    )
}

/// Check, before touching the kernel, what leaktrace needs from it and from the user.
pub fn preflight() -> anyhow::Result<()> {
    if !has_bpf_privileges() {
        bail!("leaktrace needs root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE: run it with sudo");
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        bail!(
            "this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): it needs CONFIG_UPROBE_EVENTS"
        );
    }
    Ok(())
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
pub(super) const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn has_bpf_privileges() -> bool {
    has_capabilities(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE])
}

/// Whether `cap` is in leaktrace's effective set (root's holds them all, unless dropped).
pub(super) fn has_capability(cap: u32) -> bool {
    has_capabilities(&[cap])
}

/// Whether all of `caps` are in the effective set (/proc/self/status read once).
fn has_capabilities(caps: &[u32]) -> bool {
    crate::procfs::own_effective_capabilities()
        .is_some_and(|effective| caps.iter().all(|cap| effective & (1 << cap) != 0))
}
