//! What tracing costs on this machine: one probe hit (exact mode) or one heap-growth event
//! (growth mode), measured at start on leaktrace's own process or on a child of it.
use anyhow::{anyhow, bail, Context as _};

use super::{monotonic_ns, Tracer};
use crate::cost;

/// What one probe hit costs on this machine, measured by [`Tracer::calibrate`].
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// Extra CPU time per probe hit (median over the rounds).
    pub ns_per_hit: f64,
    /// How long the whole calibration took, attaching and detaching included.
    pub took: std::time::Duration,
}

/// A child of leaktrace that, each time it is told to, revokes and grants write permission on
/// one page `events` times and reports how long that took (ns). Only async-signal-safe calls
/// happen in the child (leaktrace has threads).
struct GrowthLoop {
    pid: u32,
    go: std::fs::File,
    done: std::fs::File,
    exited: bool,
}

impl GrowthLoop {
    fn start(events: u32) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let pipe = || -> anyhow::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
            let mut fds = [0; 2];
            // SAFETY: valid out-array of two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                bail!("pipe: {}", std::io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just opened and are owned here only.
            Ok(unsafe {
                (
                    std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                    std::os::fd::OwnedFd::from_raw_fd(fds[1]),
                )
            })
        };
        let (go_read, go_write) = pipe()?;
        let (done_read, done_write) = pipe()?;
        let page = crate::target::page_size() as usize;
        // SAFETY: a fresh private anonymous mapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the child only makes async-signal-safe calls (read, write, mprotect,
        // clock_gettime, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            use std::os::fd::AsRawFd as _;
            let (input, output) = (go_read.as_raw_fd(), done_write.as_raw_fd());
            loop {
                let mut byte = 0u8;
                // SAFETY: a one-byte read into a local.
                if unsafe { libc::read(input, (&raw mut byte).cast(), 1) } != 1 {
                    // SAFETY: leaving the forked child without running any destructor.
                    unsafe { libc::_exit(0) };
                }
                let start = monotonic_ns();
                for _ in 0..events {
                    // SAFETY: our own page.
                    unsafe {
                        libc::mprotect(addr, page, libc::PROT_READ);
                        libc::mprotect(addr, page, libc::PROT_READ | libc::PROT_WRITE);
                    }
                }
                let took = monotonic_ns().saturating_sub(start).to_ne_bytes();
                // SAFETY: writes a local buffer.
                unsafe { libc::write(output, took.as_ptr().cast(), took.len()) };
            }
        }
        // SAFETY: the parent's copy of the page is not used.
        unsafe { libc::munmap(addr, page) };
        drop(go_read);
        drop(done_write);
        Ok(Self {
            pid: pid as u32,
            go: go_write.into(),
            done: done_read.into(),
            exited: false,
        })
    }

    /// One round; returns the child's time in ns.
    fn run(&mut self) -> anyhow::Result<u64> {
        use std::io::{Read as _, Write as _};
        self.go.write_all(&[1])?;
        let mut took = [0u8; 8];
        self.done
            .read_exact(&mut took)
            .context("the calibration child stopped")?;
        Ok(u64::from_ne_bytes(took))
    }

    fn finish(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if self.exited {
            return;
        }
        // SAFETY: our own child, not reaped yet: the pid cannot have been reused.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
        self.exited = true;
    }
}

impl Drop for GrowthLoop {
    fn drop(&mut self) {
        self.reap();
    }
}

/// This thread's CPU time (user + system), in ns: a probe hit runs in the thread's system time,
/// and unlike the wall clock this does not count the time the thread waited for a CPU (on a
/// loaded machine that doubled the calibrated cost, and with it what the budget thought bursts
/// cost).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU time of `pairs` x `malloc(64)` + `free` in this thread, in ns.
fn time_allocation_pairs(pairs: u32) -> u64 {
    let started = thread_cpu_ns();
    for _ in 0..pairs {
        // SAFETY: the block malloc returns (or NULL) is only handed back to free, once.
        unsafe {
            let block = libc::malloc(64);
            // Opaque to the optimizer, which would otherwise drop the pair.
            libc::free(std::hint::black_box(block));
        }
    }
    thread_cpu_ns().saturating_sub(started)
}

impl Tracer {
    /// Measure what one probe hit costs here, on leaktrace's own process: a loop of
    /// `malloc(64)` + `free` pairs timed without probes, then with the same probes the targets
    /// get, attached to our own pid. Call it before attaching any target, so that the hit
    /// counter only counts our own loop. The probes are detached and every map entry of ours is
    /// deleted before this returns, whatever happens in between.
    pub fn calibrate(&mut self) -> anyhow::Result<Calibration> {
        const ROUNDS: usize = 5;
        const PAIRS: u32 = 2_000;
        let started = std::time::Instant::now();
        let pid = std::process::id();
        let me = crate::target::inspect(pid).context("cannot find leaktrace's own libc")?;
        let allocator = me
            .allocators
            .primary()
            .context("cannot find leaktrace's own allocator")?;
        // The loop calls malloc and free: their probes, as the targets get them.
        let hooks: Vec<_> = allocator
            .hooks
            .iter()
            .filter(|h| h.symbol == "malloc" || h.symbol == "free")
            .cloned()
            .collect();
        let untraced: Vec<u64> = (0..ROUNDS).map(|_| time_allocation_pairs(PAIRS)).collect();
        let attached = self
            .attach_probes(pid, &allocator.file, &hooks)
            .context("cannot attach the calibration probes to leaktrace itself");
        let rounds = attached.as_ref().ok().map(|_| {
            untraced
                .iter()
                .map(|&untraced_ns| {
                    let before = self.probe_hits();
                    let traced_ns = time_allocation_pairs(PAIRS);
                    cost::Round {
                        untraced_ns,
                        traced_ns,
                        hits: self.probe_hits().saturating_sub(before),
                    }
                })
                .collect::<Vec<_>>()
        });
        let detached = match attached {
            Ok(probes) => self.detach_probes(probes.links),
            Err(err) => Err(err),
        };
        self.forget_process(pid);
        detached?;
        let rounds = rounds.unwrap_or_default();
        let ns_per_hit = cost::ns_per_hit(&rounds)
            .ok_or_else(|| anyhow!("the calibration loop caused no probe hits"))?;
        let calibration = Calibration {
            ns_per_hit,
            took: started.elapsed(),
        };
        log::debug!("calibration: {calibration:?} from {rounds:?}");
        Ok(calibration)
    }

    /// Growth mode's cost of one heap-growth event in the kernel (the tracepoints and the 16 KiB
    /// stack copy), measured on a child of leaktrace that grants write permission to a page
    /// `EVENTS` times, untraced and then traced, a few rounds. Its events are drained and
    /// dropped. Unwinding them in userspace is measured live (`UnwindStats`).
    pub fn calibrate_growth(&mut self) -> anyhow::Result<Calibration> {
        const ROUNDS: usize = 3;
        const EVENTS: u32 = 400;
        let started = std::time::Instant::now();
        let mut child = GrowthLoop::start(EVENTS)?;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let untraced_ns = child.run()?;
            self.trace_heap_of(child.pid)?;
            let traced_ns = child.run();
            self.untrace_heap_of(child.pid);
            let drained = self.drain_heap_events(|_| {});
            rounds.push(cost::Round {
                untraced_ns,
                traced_ns: traced_ns?,
                // Each round: one PROT_WRITE grant (with its stack copy) and one revocation.
                hits: (drained as u64 / 2).min(u64::from(EVENTS)),
            });
        }
        child.finish();
        let ns_per_hit = cost::ns_per_hit(&rounds)
            .ok_or_else(|| anyhow!("the calibration child's heap events never arrived"))?;
        Ok(Calibration {
            ns_per_hit,
            took: started.elapsed(),
        })
    }
}
