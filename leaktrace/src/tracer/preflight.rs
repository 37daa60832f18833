//! What leaktrace needs from the kernel and the user, checked before touching the kernel.
use std::path::Path;

use anyhow::bail;

/// Where tracefs is (mounting it if it is not, as root may).
pub(super) fn ensure_tracefs() -> anyhow::Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
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

fn has_bpf_privileges() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = crate::procfs::own_effective_capabilities().unwrap_or(0);
    [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]
        .iter()
        .all(|cap| effective & (1 << cap) != 0)
}
