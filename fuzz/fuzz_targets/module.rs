//! A traced process's module file (a target may plant any file at a module's path, or map one
//! it wrote), as the unwinder (.eh_frame/.debug_frame) and the symbolizer (symbols, DWARF) read
//! it. Input: 2 × 8 bytes of pcs (offsets into the module), 256 bytes of stack, then the file.
#![no_main]

const PCS: usize = 2;
const STACK: usize = 256;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if bytes.len() < PCS * 8 + STACK {
        return;
    }
    let (pcs, rest) = bytes.split_at(PCS * 8);
    let (stack, elf) = rest.split_at(STACK);
    let pcs: Vec<u64> = pcs
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    leaktrace::fuzzing::module(elf, &pcs, stack);
});
