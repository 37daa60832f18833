//! Where an entry uprobe goes inside a function. A uprobe whose probed instruction the kernel
//! cannot emulate is single-stepped out of line: a second trap on every hit. Moving the probe
//! a few instructions into the function, onto one the kernel emulates, saves that trap, provided
//! the entry program still sees what it would have seen at the function's first byte: the
//! arguments, the stack pointer and the return address at `[rsp]`.
#[cfg(test)]
use std::path::Path;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register,
};

/// Instructions placement is willing to step over before it gives up.
const MAX_SKIPPED: usize = 4;

/// Registers the entry program reads: the System V argument registers, and `rsp` (return
/// address at `[rsp]`, nested-call detection). An instruction writing any part of one of these
/// cannot be stepped over.
const PRESERVED: [Register; 7] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
    Register::RSP,
];

/// Whether the kernel emulates `bytes` (one whole instruction) instead of single-stepping it
/// (arch/x86/kernel/uprobes.c: `branch_setup_xol_ops`, `push_setup_xol_ops`). Conservative:
/// only the forms every kernel with those paths accepts, and no prefixes (the kernel refuses
/// 0x66 on branches; other prefixes are left out rather than reasoned about), except the REX.B
/// (0x41) of `push %r8`..`push %r15`.
pub fn is_emulated(bytes: &[u8]) -> bool {
    match *bytes {
        // push %rax..%rdi, push %r8..%r15.
        [0x50..=0x57] | [0x41, 0x50..=0x57] => true,
        // nop (one byte; longer nops are only emulated by newer kernels).
        [0x90] => true,
        // jcc rel8, jmp rel8.
        [0x70..=0x7f, _] | [0xeb, _] => true,
        // jmp rel32, call rel32.
        [0xe9, _, _, _, _] | [0xe8, _, _, _, _] => true,
        // jcc rel32.
        [0x0f, 0x80..=0x8f, _, _, _, _] => true,
        _ => false,
    }
}

/// Why an instruction cannot be stepped over.
fn may_skip(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
    if instruction.is_invalid() || instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return false;
    }
    !info
        .used_registers()
        .iter()
        .any(|r| writes(r.access()) && PRESERVED.contains(&r.register().full_register()))
}

/// The offset into a function, whose first bytes are `code`, at which its entry probe should
/// go: that of the first instruction the kernel emulates, when every instruction before it falls
/// through, writes no memory and leaves the argument registers and `rsp` alone; otherwise 0.
/// At most [`MAX_SKIPPED`] instructions are stepped over.
pub fn entry_probe_offset(code: &[u8]) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    let mut offset = 0usize;
    for _ in 0..=MAX_SKIPPED {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        // An instruction cut off by the end of `code` decodes as invalid.
        if instruction.is_invalid() {
            break;
        }
        let end = offset + instruction.len();
        let Some(bytes) = code.get(offset..end) else {
            break;
        };
        if is_emulated(bytes) {
            return offset as u64;
        }
        if !may_skip(&instruction, &mut info) {
            break;
        }
        offset = end;
    }
    0
}

/// Errors reading a function's code from an ELF file.
#[cfg(test)]
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error(transparent)]
    Read(#[from] crate::target_files::Unreadable),
    #[error("{0} is not an ELF file")]
    NotElf(String),
    #[error("{path} does not export {function}")]
    NoSymbol { path: String, function: String },
    #[error("{function} in {path} lies outside the file's sections")]
    Outside { path: String, function: String },
}

/// Up to `len` bytes of an exported function's code, from its first byte (fewer at the end of
/// its section). A versioned name (`malloc@@GLIBC_2.2.5`) matches its base name.
#[cfg(test)]
pub fn function_code(path: &Path, function: &str, len: usize) -> Result<Vec<u8>, CodeError> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let data = crate::target_files::read(path)?;
    let file =
        object::File::parse(&*data).map_err(|_| CodeError::NotElf(path.display().to_string()))?;
    let no_symbol = || CodeError::NoSymbol {
        path: path.display().to_string(),
        function: function.to_string(),
    };
    let outside = || CodeError::Outside {
        path: path.display().to_string(),
        function: function.to_string(),
    };
    let symbol = file
        .dynamic_symbols()
        .filter(|s| s.is_definition())
        .find(|s| s.name().ok().and_then(|n| n.split('@').next()) == Some(function))
        .ok_or_else(no_symbol)?;
    let section = file
        .section_by_index(symbol.section_index().ok_or_else(outside)?)
        .map_err(|_| outside())?;
    let (section_offset, section_size) = section.file_range().ok_or_else(outside)?;
    let into_section = symbol
        .address()
        .checked_sub(section.address())
        .filter(|&at| at < section_size)
        .ok_or_else(outside)?;
    let start = usize::try_from(section_offset + into_section).map_err(|_| outside())?;
    let section_end = usize::try_from(section_offset + section_size).map_err(|_| outside())?;
    let end = start.saturating_add(len).min(section_end).min(data.len());
    data.get(start..end).map(<[u8]>::to_vec).ok_or_else(outside)
}

/// Where `function`'s entry probe goes in the ELF file at `path` (0 when its code cannot be read).
#[cfg(test)]
pub fn entry_probe_offset_in(path: &Path, function: &str) -> u64 {
    match function_code(path, function, BODY_BYTES) {
        Ok(code) => probe_offset_for(&code),
        Err(err) => {
            log::debug!("{err}; its entry probe stays at +0");
            0
        }
    }
}

/// Where the entry probe goes in a function whose code (from its first byte, up to a few KiB)
/// is `code`: [`entry_probe_offset`], unless a branch in the function lands before it.
pub fn probe_offset_for(code: &[u8]) -> u64 {
    let offset = entry_probe_offset(code);
    if offset > 0 && jumped_into(code, offset) {
        log::debug!("+{offset} is a branch target; the probes stay at +0");
        return 0;
    }
    offset
}

/// Bytes of a function decoded to look for branches back into its first instructions.
pub const BODY_BYTES: usize = 4096;

/// Whether a direct branch in `code` (a function's start and what follows) lands inside its
/// first `offset` bytes, past the entry: a probe moved there would fire again on that path.
pub fn jumped_into(code: &[u8], offset: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            continue;
        }
        let direct = matches!(
            instruction.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
        );
        if direct && (1..=offset).contains(&instruction.near_branch_target()) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_back_into_the_skipped_instructions_is_seen() {
        // test %rdi,%rdi; je +0x10; ... jmp back to +3 (eb rel8 from 0x20: 3 - 0x22 = -0x1f)
        let mut code = vec![0x48, 0x85, 0xff, 0x74, 0x10];
        code.resize(0x20, 0x90);
        code.extend_from_slice(&[0xeb, 0xe1]);
        assert!(jumped_into(&code, 3));
        // A jump back to the entry itself is fine (the probe point is not on that path).
        let mut to_entry = code.clone();
        to_entry[0x21] = 0xde; // 0 - 0x22
        assert!(!jumped_into(&to_entry, 3));
        assert!(!jumped_into(&code[..0x20], 3));
    }

    #[test]
    fn glibc_2_36_free_skips_its_test_of_rdi() {
        // test %rdi,%rdi; je rel32; push %rbp
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(entry_probe_offset(&free), 3);
    }

    #[test]
    fn an_emulated_first_instruction_stays_at_the_entry() {
        // glibc 2.36 malloc: push %r12; push %rbp
        assert_eq!(entry_probe_offset(&[0x41, 0x54, 0x55, 0x53]), 0);
        assert_eq!(entry_probe_offset(&[0x55, 0x48, 0x89, 0xe5]), 0);
    }

    #[test]
    fn writing_an_argument_register_stops_the_scan() {
        // test %rdi,%rdi; mov %rsi,%rdi; je rel8
        assert_eq!(
            entry_probe_offset(&[0x48, 0x85, 0xff, 0x48, 0x89, 0xf7, 0x74, 0x05]),
            0
        );
        // mov %rsi,%rax; mul %rdx (writes rdx); jo rel8: glibc 2.36's reallocarray.
        let reallocarray = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
        ];
        assert_eq!(entry_probe_offset(&reallocarray), 0);
        // A 32-bit write (xor %ecx,%ecx) clobbers rcx too.
        assert_eq!(entry_probe_offset(&[0x31, 0xc9, 0x74, 0x05]), 0);
        // So does a byte write (mov $1,%r9b).
        assert_eq!(entry_probe_offset(&[0x41, 0xb1, 0x01, 0x74, 0x05]), 0);
    }

    #[test]
    fn writing_a_scratch_register_is_fine() {
        // mov %rsi,%rax; jmp rel8
        assert_eq!(entry_probe_offset(&[0x48, 0x89, 0xf0, 0xeb, 0x05]), 3);
    }

    #[test]
    fn moving_the_stack_pointer_stops_the_scan() {
        // sub $8,%rsp; je rel8
        assert_eq!(entry_probe_offset(&[0x48, 0x83, 0xec, 0x08, 0x74, 0x05]), 0);
    }

    #[test]
    fn endbr64_is_stepped_over() {
        // endbr64; push %rbp
        assert_eq!(entry_probe_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
    }

    #[test]
    fn a_memory_store_stops_the_scan() {
        // mov %rax,0x10(%rip); je rel8
        let store = [0x48, 0x89, 0x05, 0x10, 0x00, 0x00, 0x00, 0x74, 0x05];
        assert_eq!(entry_probe_offset(&store), 0);
        // A memory read is fine: cmpb $0,0x140e71(%rip); je rel8 (glibc 2.36's memalign).
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(entry_probe_offset(&memalign), 7);
    }

    #[test]
    fn control_flow_stops_the_scan() {
        // ret; push %rbp
        assert_eq!(entry_probe_offset(&[0xc3, 0x55]), 0);
        // jmp *%rax; push %rbp
        assert_eq!(entry_probe_offset(&[0xff, 0xe0, 0x55]), 0);
        // syscall; push %rbp
        assert_eq!(entry_probe_offset(&[0x0f, 0x05, 0x55]), 0);
    }

    #[test]
    fn the_scan_is_bounded() {
        // Five harmless instructions (mov %rsi,%rax) before a push: too far.
        let mut code = [0x48, 0x89, 0xf0].repeat(5);
        code.push(0x55);
        assert_eq!(entry_probe_offset(&code), 0);
        let mut code = [0x48, 0x89, 0xf0].repeat(4);
        code.push(0x55);
        assert_eq!(entry_probe_offset(&code), 12);
    }

    #[test]
    fn truncated_or_empty_code_stays_at_the_entry() {
        assert_eq!(entry_probe_offset(&[]), 0);
        // test %rdi,%rdi; then half a je rel32.
        assert_eq!(entry_probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0x00]), 0);
    }

    #[test]
    fn only_the_kernel_s_emulated_forms_count() {
        assert!(is_emulated(&[0x41, 0x57]));
        assert!(is_emulated(&[0x0f, 0x84, 0, 0, 0, 0]));
        assert!(is_emulated(&[0xe8, 0, 0, 0, 0]));
        // 66-prefixed branch, REX.W push, long nop, xchg %ax,%ax: single-stepped.
        assert!(!is_emulated(&[0x66, 0xe9, 0, 0]));
        assert!(!is_emulated(&[0x48, 0x55]));
        assert!(!is_emulated(&[0x0f, 0x1f, 0x00]));
        assert!(!is_emulated(&[0x66, 0x90]));
        assert!(!is_emulated(&[0x48, 0x85, 0xff]));
    }

    /// This machine's libc: every chosen offset lands on an instruction the kernel emulates,
    /// and Debian 12's glibc 2.36 `free` goes to +3.
    #[test]
    fn this_machine_s_libc() {
        // Bytes of a function's start to decode.
        const PROLOGUE_BYTES: usize = 64;
        let me = crate::target::inspect(std::process::id()).expect("inspect self");
        let libc = &me.allocators.primary().expect("glibc").file;
        for function in leaktrace_common::AllocFn::ALL
            .iter()
            .map(|f| f.symbol())
            .chain(["free"])
        {
            let Ok(code) = function_code(libc, function, PROLOGUE_BYTES) else {
                println!("{function}: not exported");
                continue;
            };
            let offset = entry_probe_offset(&code);
            println!("{function}+{offset}");
            if offset > 0 {
                let mut decoder =
                    Decoder::with_ip(64, &code[offset as usize..], 0, DecoderOptions::NONE);
                let len = decoder.decode().len();
                assert!(is_emulated(&code[offset as usize..offset as usize + len]));
            }
        }
        assert_eq!(entry_probe_offset_in(libc, "free"), 3);
        assert_eq!(entry_probe_offset_in(libc, "malloc"), 0);
        assert_eq!(entry_probe_offset_in(libc, "no_such_function"), 0);
    }
}
