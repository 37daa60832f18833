//! How fast growth mode unwinds a stack copy in userspace (warm: modules already read), so that
//! it keeps up with the heap-growth events the eBPF side sends. The copy is 16 KiB of this
//! thread's own stack taken 24 calls deep, as the eBPF program would send it.
//!
//! `cargo bench -p leaktrace --bench unwind` prints medians; it asserts nothing.
use std::time::Instant;

use leaktrace::bench::{StackCopy, StackUnwinder};

const DEPTH: u32 = 24;
const UNWINDS: usize = 20_000;
const ROUNDS: usize = 7;

#[inline(never)]
fn deep(depth: u32) -> (u64, u64, u64, Vec<u8>) {
    if depth > 0 {
        let copy = deep(depth - 1);
        // Keeps the recursion from becoming a loop or a tail call.
        std::hint::black_box(depth);
        return copy;
    }
    leaktrace::bench::own_stack_copy()
}

fn main() {
    let (ip, sp, bp, bytes) = deep(DEPTH);
    let copy = StackCopy {
        ip,
        sp,
        bp,
        bytes: &bytes,
    };
    let pid = std::process::id();
    let mut unwinder = StackUnwinder::new();
    let cold = Instant::now();
    let (frames, _) = unwinder.unwind(pid, &copy);
    let cold = cold.elapsed();
    let mut per_event = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..UNWINDS {
            std::hint::black_box(unwinder.unwind(pid, &copy));
        }
        per_event.push(start.elapsed().as_nanos() as f64 / UNWINDS as f64);
    }
    per_event.sort_by(f64::total_cmp);
    let median = per_event[ROUNDS / 2];
    println!(
        "unwind: {} frames; first (reads the modules) {:.1} ms; warm median {:.0} ns per stack \
         ({:.0} ns per frame, {:.0}k stacks/s on one core)",
        frames.len(),
        cold.as_secs_f64() * 1e3,
        median,
        median / frames.len() as f64,
        1e6 / median
    );
}
