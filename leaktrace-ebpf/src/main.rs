//! leaktrace's kernel side: uprobes on the malloc family that keep, per process, every
//! outstanding allocation and per-site totals, and tracepoints on the heap syscalls.
//!
//! Cost model: one trap per probe hit dominates (about 1-4 us here), so each program does at most
//! a few hash-map operations and one `bpf_get_stackid`, and only on successful allocations.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

// Leaves first: `maps`, `globals`, `counters` and `events` import none of the program modules,
// and `heap` and `probes` import none of each other.
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod globals;
#[cfg(target_arch = "bpf")]
mod heap;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod unwind;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

// GPL-compatible: bpf_probe_read_user and friends need it.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
