//! The kernel side as userspace drives it: load the eBPF object (`load`), check the machine
//! first (`preflight`), hook allocators and register processes (`attach`), measure what a probe
//! hit costs (`calibrate`), drain the maps (`read`) and decode the heap ring buffer (`records`).
//! Every map, global and program is named by a constant of `leaktrace_common::names`.
use anyhow::anyhow;
use aya::{maps::MapData, programs::UProbe, Ebpf};

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
