//! The kernel side as userspace drives it: load the eBPF object (`load`), check the machine
//! first (`preflight`), hook allocators and register processes (`attach`), measure what a probe
//! hit costs (`calibrate`), drain the maps (`read`) and decode the heap ring buffer (`records`).
//! Every map, global and program is named by a constant of `leaktrace_common::names`.
use anyhow::anyhow;
use aya::{
    maps::MapData,
    programs::{trace_point::TracePointLinkId, uprobe::UProbeLinkId, UProbe},
    Ebpf,
};

mod attach;
mod burst;
mod calibrate;
mod load;
mod preflight;
mod read;
mod records;

pub use burst::RunningBurst;
pub use load::{Capacity, Scope};
pub use preflight::preflight;
pub use read::{MapsReader, MapsReading};
pub use records::{HeapRecord, StackCopy};

/// The loaded eBPF object: its programs, its maps and the heap ring buffer.
pub struct Tracer {
    ebpf: Ebpf,
    heap_events: aya::maps::RingBuf<MapData>,
    /// Every attachment, so that all of them are detached at once at the end (dropping the
    /// object would close them one after another, each waiting for an RCU grace period).
    links: Vec<AttachedLink>,
}

/// One program attached somewhere: the process it was attached for (uprobes), and its link.
pub(crate) struct AttachedLink {
    pid: Option<u32>,
    program: &'static str,
    id: LinkId,
}

pub(crate) enum LinkId {
    UProbe(UProbeLinkId),
    TracePoint(TracePointLinkId),
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Err(err) = self.detach_all() {
            log::warn!("{err:#}");
        }
    }
}

impl Tracer {
    fn map(&self, name: &str) -> anyhow::Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| missing_map(name))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))
    }

    fn uprobe(&mut self, name: &str) -> anyhow::Result<&mut UProbe> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("eBPF object lacks program {name}"))?;
        Ok(program.try_into()?)
    }
}

fn missing_map(name: &str) -> anyhow::Error {
    anyhow!("eBPF object lacks map {name}")
}

/// CLOCK_MONOTONIC now, in the same time base as `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Tracer {
    /// End the run without waiting for the kernel to unregister every probe. Closing a uprobe or
    /// tracepoint perf event takes the kernel's `event_mutex` and waits for a grace period under
    /// it: 29 of them take 2.5 s even from 29 threads (docs/architecture.md, "Exit"). A forked
    /// child keeps the perf events and BPF objects and closes them when it exits; this process
    /// disables and drops its own references at once (instantly, as the child still holds them)
    /// and returns. The probes stop running at once; the kernel finishes the unregistering in
    /// the background. Falls back to detaching here when the child cannot be made.
    pub fn release_in_background(mut self) {
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` is a valid array of two descriptors to fill.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        let [parent_gone, parent_done] = pipe;
        let handed_over = kernel_object_fds();
        let others: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| !handed_over.contains(fd) && *fd != parent_gone)
            .collect();
        // SAFETY: the child calls only async-signal-safe functions (close, read, _exit) on
        // memory allocated before the fork, so the other threads' locks do not matter.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for &fd in &others {
                // SAFETY: closing inherited descriptors in the child (standard streams, sockets,
                // files, the pipe's write end), so that nobody waits on them while the probes go.
                unsafe { libc::close(fd) };
            }
            let mut byte = 0u8;
            // SAFETY: a one-byte read into a local; it returns when the parent has dropped its
            // references (it closes the pipe's write end), so the last reference is ours.
            unsafe { libc::read(parent_gone, (&raw mut byte).cast(), 1) };
            // SAFETY: exits the child without running the parent's destructors; the kernel
            // closes the perf events and BPF objects it still holds.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            log::debug!("cannot fork to detach in the background; detaching here");
        }
        if let Err(err) = self.detach_all() {
            log::warn!("{err:#}");
        }
        drop(self);
        // SAFETY: our own pipe's descriptors, closed once.
        unsafe {
            libc::close(parent_gone);
            libc::close(parent_done);
        }
    }
}

/// This process's descriptors of kernel objects: perf events (probes) and BPF programs, maps
/// and links.
fn kernel_object_fds() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target.starts_with("anon_inode:[perf_event]")
                    || target.starts_with("anon_inode:bpf")
            })
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}
