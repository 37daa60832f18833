//! A module's call frame information (`.eh_frame`, else `.debug_frame`) compiled into the rows
//! the eBPF walk follows: per pc range, CFA = rsp|rbp + offset (or dereferenced), where rbp was
//! saved, return address at CFA-8. gimli parses the CFI and runs each FDE's instructions; this
//! file only decides which of its rules the kernel side can follow. Rules it cannot follow are
//! rows of `cfa::UNSUPPORTED` (the walk stops there), never an approximation.
//!
//! A Go binary is compiled differently: its own code keeps frame pointers, and the CFI the Go
//! linker writes for it (`.debug_frame`) is not followed: it describes no rbp, and claims
//! `CFA = rsp + n` across the runtime's stack switches (asmcgocall, systemstack), where rsp is
//! on another stack. Only `.eh_frame` (the C objects cgo linked in) is compiled, and every pc
//! it does not cover is a `cfa::FRAME_POINTER` row: a lookup for a Go pc ends at the end of the
//! preceding C function's FDE, never on its rows. One more row crosses back from C to the
//! goroutine stack where asmcgocall keeps no frame pointer ([`go_cgo_return`]).
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Operation,
    Register, RegisterRule, UnwindContext, UnwindSection, UnwindTableRow,
};
use leaktrace_common::unwind::{cfa, rbp, UnwindRow, SIGNAL_RSP_OFFSET};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

const RSP: Register = Register(7);
const RBP: Register = Register(6);
const RA: Register = Register(16);
const RIP: u16 = 16;

/// At most this many rows per module (the eBPF row search takes 24 steps).
pub const MAX_ROWS: usize = 1 << 24;

/// The unwind sections of a module, as read from its file.
#[derive(Clone, Debug, Default)]
pub struct CfiSections {
    pub eh_frame: Option<(u64, Vec<u8>)>,
    pub debug_frame: Option<Vec<u8>>,
    pub text_svma: Option<u64>,
    pub got_svma: Option<u64>,
    /// A Go binary's: only `.eh_frame` is compiled, the rest is Go code (frame pointers).
    pub go: Option<GoCode>,
}

/// What a Go binary's rows need beyond its `.eh_frame`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoCode {
    /// asmcgocall's return site from C and its `cfa::GO_CGO_RETURN` row ([`go_cgo_return`]),
    /// when asmcgocall keeps no frame pointer.
    pub cgo_return: Option<(u64, UnwindRow)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("malformed call frame information: {0}")]
    Malformed(#[from] gimli::Error),
    #[error("more than {MAX_ROWS} unwind rows")]
    TooManyRows,
}

/// What compiling a module's CFI gave.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Sorted by pc, no two consecutive rows alike.
    pub rows: Vec<UnwindRow>,
    /// Rows whose rule the kernel cannot follow.
    pub unsupported: usize,
    /// FDEs that could not be parsed (skipped: their code has no rows).
    pub bad_entries: usize,
}

/// Compile `sections` into rows. Never panics on malformed input; the work is bounded by the
/// sections' size (each FDE's instructions are run once) and the rows by [`MAX_ROWS`].
pub fn compile(sections: &CfiSections) -> Result<Compiled, CompileError> {
    let mut ranges = Vec::new();
    let mut out = Compiled::default();
    if let Some((svma, data)) = &sections.eh_frame {
        let mut bases = BaseAddresses::default().set_eh_frame(*svma);
        if let Some(text) = sections.text_svma {
            bases = bases.set_text(text);
        }
        if let Some(got) = sections.got_svma {
            bases = bases.set_got(got);
        }
        let section = EhFrame::new(data, LittleEndian);
        collect(&section, &bases, &mut ranges, &mut out)?;
    } else if let (Some(data), None) = (&sections.debug_frame, &sections.go) {
        let mut section = DebugFrame::new(data, LittleEndian);
        section.set_address_size(8);
        collect(&section, &BaseAddresses::default(), &mut ranges, &mut out)?;
    }
    let gap = match &sections.go {
        Some(go) => {
            if let Some((pc, row)) = go.cgo_return {
                // Looked up one byte back, as every return address.
                ranges.push((pc.wrapping_sub(1), pc, row));
            }
            UnwindRow {
                cfa_rule: cfa::FRAME_POINTER,
                ..UnwindRow::default()
            }
        }
        None => UnwindRow::default(),
    };
    out.rows = merge(ranges, gap);
    out.unsupported = out
        .rows
        .iter()
        .filter(|r| r.cfa_rule == cfa::UNSUPPORTED)
        .count();
    Ok(out)
}

/// One FDE's rows: (start, end, row).
type Ranges = Vec<(u64, u64, UnwindRow)>;

fn collect<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    ranges: &mut Ranges,
    out: &mut Compiled,
) -> Result<(), CompileError>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            // The rest of the section cannot be walked past a broken length.
            Err(_) => {
                out.bad_entries += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) =
            partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset))
        else {
            out.bad_entries += 1;
            continue;
        };
        let signal = fde.is_signal_trampoline();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            out.bad_entries += 1;
            continue;
        };
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    if row.start_address() < row.end_address() {
                        let compiled = compile_row(section, row, signal);
                        ranges.push((row.start_address(), row.end_address(), compiled));
                    }
                    if ranges.len() > MAX_ROWS {
                        return Err(CompileError::TooManyRows);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    out.bad_entries += 1;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Sort the FDEs' rows, mark the gaps between them, before them (Go) and after them with `gap`
/// (`cfa::NONE`, or `cfa::FRAME_POINTER` in a Go binary) and drop rows that repeat the
/// previous rule.
fn merge(mut ranges: Ranges, gap: UnwindRow) -> Vec<UnwindRow> {
    ranges.sort_by_key(|(start, end, _)| (*start, *end));
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(ranges.len() + ranges.len() / 4);
    if gap.cfa_rule != cfa::NONE && !ranges.is_empty() {
        // Below the first FDE too (a search that finds no row counts a missing table).
        rows.push(gap);
    }
    let mut covered_to = 0u64;
    for (start, end, row) in ranges {
        if start < covered_to {
            // Overlapping FDEs (broken or hostile input): the first one wins.
            if end <= covered_to {
                continue;
            }
        }
        if !rows.is_empty() && start > covered_to {
            push(
                &mut rows,
                UnwindRow {
                    pc: covered_to,
                    ..gap
                },
            );
        }
        push(
            &mut rows,
            UnwindRow {
                pc: start.max(covered_to),
                ..row
            },
        );
        covered_to = end;
    }
    if !rows.is_empty() {
        push(
            &mut rows,
            UnwindRow {
                pc: covered_to,
                ..gap
            },
        );
    }
    rows
}

/// asmcgocall's return from C, when it keeps no frame pointer (Go 1.19's is a frameless
/// `NOSPLIT,$0-20` function; 1.22's and 1.25's start with `push %rbp; mov %rsp,%rbp`, and the
/// frame-pointer walk crosses them). `code` is the function's machine code at `address`.
///
/// After its call into C, asmcgocall goes back to the goroutine stack with
/// `mov G(%rsp),%rdi; mov HI(%rdi),%rsi; sub DEPTH(%rsp),%rsi; ...; mov %rsi,%rsp` (g, then
/// g.stack.hi, minus the depth it saved): the row does the same, with the offsets read from
/// those instructions (`SUBQ $64, SP` then 48/40 in Go 1.19, 8/0 later), not from a table of
/// versions. Any other code: no row, and the frame-pointer walk skips asmcgocall's caller
/// (runtime.cgocall) but goes on from rbp, which still holds that caller's frame.
pub fn go_cgo_return(code: &[u8], address: u64) -> Option<(u64, UnwindRow)> {
    if code.starts_with(&[0x55, 0x48, 0x89, 0xe5]) {
        return None;
    }
    (0..code.len()).find_map(|at| {
        let before = &code[..at];
        // Right after `call *%rax` or `call rel32`.
        let after_call = before.ends_with(&[0xff, 0xd0])
            || before.len() >= 5 && before[before.len() - 5] == 0xe8;
        if !after_call {
            return None;
        }
        let (g_at, stack_hi_at, tail) = match &code[at..] {
            // mov G(%rsp),%rdi; mov HI(%rdi),%rsi; sub ...
            [0x48, 0x8b, 0x7c, 0x24, g_at, 0x48, 0x8b, 0x77, stack_hi_at, 0x48, 0x2b, tail @ ..] => {
                (*g_at as i8, *stack_hi_at as i8, tail)
            }
            _ => return None,
        };
        let depth_at = match tail {
            // sub DEPTH(%rsp),%rsi
            [0x74, 0x24, depth_at, ..] => *depth_at as i8,
            // sub (%rsp),%rsi
            [0x34, 0x24, ..] => 0,
            _ => return None,
        };
        let row = UnwindRow {
            pc: 0,
            cfa_offset: deref_offset(i64::from(g_at), i64::from(stack_hi_at))?,
            param: i16::from(depth_at),
            cfa_rule: cfa::GO_CGO_RETURN,
            rbp_rule: rbp::UNCHANGED,
        };
        Some((address.wrapping_add(at as u64), row))
    })
}

fn push(rows: &mut Vec<UnwindRow>, row: UnwindRow) {
    if let Some(last) = rows.last_mut() {
        if last.pc == row.pc {
            *last = row;
            return;
        }
        if (UnwindRow { pc: 0, ..*last }) == (UnwindRow { pc: 0, ..row }) {
            return;
        }
    }
    rows.push(row);
}

fn unsupported() -> UnwindRow {
    UnwindRow {
        cfa_rule: cfa::UNSUPPORTED,
        ..UnwindRow::default()
    }
}

fn compile_row<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &UnwindTableRow<usize>,
    signal: bool,
) -> UnwindRow {
    let expression = |e: &gimli::UnwindExpression<usize>| -> Option<Vec<Operation<Slice<'a>>>> {
        let expression = e.get(section).ok()?;
        let encoding = gimli::Encoding {
            address_size: 8,
            format: gimli::Format::Dwarf32,
            version: 1,
        };
        let mut ops = expression.operations(encoding);
        let mut out = Vec::new();
        // Real CFA expressions have a dozen operations at most.
        while let Ok(Some(op)) = ops.next() {
            if out.len() >= 16 {
                return None;
            }
            out.push(op);
        }
        Some(out)
    };
    if signal {
        // glibc's __restore_rt: CFA = *(rsp + oRSP), every register at rsp + its offset in the
        // ucontext. The walk reads rip, rsp and rbp from there itself.
        let ok = match row.cfa() {
            CfaRule::Expression(e) => expression(e).is_some_and(|ops| {
                matches!(
                    ops.as_slice(),
                    [
                        Operation::RegisterOffset { register: RSP, offset, .. },
                        Operation::Deref { .. }
                    ] if *offset == SIGNAL_RSP_OFFSET as i64
                )
            }),
            _ => false,
        };
        return if ok {
            UnwindRow {
                cfa_rule: cfa::SIGNAL,
                ..UnwindRow::default()
            }
        } else {
            unsupported()
        };
    }
    match row.register(RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                cfa_rule: cfa::STOP,
                ..UnwindRow::default()
            }
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported(),
    }
    let (cfa_rule, offset, param) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let rule = match *register {
                RSP => cfa::RSP,
                RBP => cfa::RBP,
                _ => return unsupported(),
            };
            (rule, *offset, 0)
        }
        CfaRule::Expression(e) => match expression(e).as_deref() {
            // Stack realignment (`*(rbp - 8)`), and OpenSSL's assembly (`*(rsp + 24) + 8`).
            Some(
                [Operation::RegisterOffset {
                    register, offset, ..
                }, Operation::Deref { .. }, rest @ ..],
            ) => {
                let rule = match *register {
                    RSP => cfa::RSP_DEREF,
                    RBP => cfa::RBP_DEREF,
                    _ => return unsupported(),
                };
                let add = match rest {
                    [] => 0,
                    [Operation::PlusConstant { value }] => *value as i64,
                    _ => return unsupported(),
                };
                match deref_offset(*offset, add) {
                    Some(packed) => (rule, i64::from(packed), 0),
                    None => return unsupported(),
                }
            }
            // The .plt expression: rsp + off + ((rip & 15) >= k) << 3.
            Some(
                [Operation::RegisterOffset {
                    register: RSP,
                    offset,
                    ..
                }, Operation::RegisterOffset {
                    register: Register(RIP),
                    offset: 0,
                    ..
                }, Operation::UnsignedConstant { value: 15 }, Operation::And, Operation::UnsignedConstant { value: k }, Operation::Ge, Operation::UnsignedConstant { value: 3 }, Operation::Shl, Operation::Plus],
            ) if *k < 16 => (cfa::PLT, *offset, *k as i64),
            _ => return unsupported(),
        },
    };
    let Ok(cfa_offset) = i32::try_from(offset) else {
        return unsupported();
    };
    let (rbp_rule, param) = if cfa_rule == cfa::PLT {
        (rbp::UNCHANGED, param)
    } else {
        match row.register(RBP) {
            None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => {
                (rbp::UNCHANGED, 0)
            }
            Some(RegisterRule::Offset(at)) => match i16::try_from(at) {
                Ok(at) => (rbp::SAVED, i64::from(at)),
                Err(_) => (rbp::UNKNOWN, 0),
            },
            Some(_) => (rbp::UNKNOWN, 0),
        }
    };
    UnwindRow {
        pc: 0,
        cfa_offset,
        param: i16::try_from(param).unwrap_or(0),
        cfa_rule,
        rbp_rule,
    }
}

/// A dereferencing rule's offset and post-dereference addend, packed into `cfa_offset`
/// (`leaktrace_common::unwind::cfa::RSP_DEREF`).
fn deref_offset(offset: i64, add: i64) -> Option<i32> {
    let offset = i16::try_from(offset).ok()?;
    let add = i16::try_from(add).ok()?;
    Some((i32::from(add) << 16) | i32::from(offset as u16))
}

/// The row covering module address `pc` (what the eBPF search finds).
pub fn lookup(rows: &[UnwindRow], pc: u64) -> Option<&UnwindRow> {
    let index = rows.partition_point(|r| r.pc <= pc);
    rows.get(index.checked_sub(1)?)
}
