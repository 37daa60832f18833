#![no_std]
// The programs live in the `leaktrace` binary target (src/main.rs); this library target only
// exists so that `cargo check --workspace` has something to check on the host.
