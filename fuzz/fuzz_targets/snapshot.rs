//! A snapshot file, as `leaktrace report`, `export` and `diff` read it: any bytes give a
//! one-line error or a rendering, never a panic, a hang or unbounded memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    leaktrace::fuzzing::snapshot(bytes);
});
