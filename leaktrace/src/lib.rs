//! leaktrace: exact eBPF memory-leak tracing of running processes or a launched command.
//!
//! The binary calls [`run`] and [`postmortem::run`]. Everything else is crate-private, so that
//! the compiler reports dead code; the few items the integration tests, benches and examples
//! need are re-exported below, each for a named reader.
mod allocator;
mod bursts;
pub mod cli;
mod cost;
mod format;
mod frames;
mod golang;
mod growth;
mod heap;
mod model;
mod output;
mod placement;
pub mod postmortem;
mod privileges;
mod procfs;
mod report;
/// Every serialized type: the `leaktrace/1` snapshot (docs/json-schema.md).
pub mod schema;
mod serve;
mod session;
mod symbolize;
#[doc(hidden)]
pub mod synthetic;
mod table;
mod target;
mod target_files;
mod tracer;
mod ui;
mod unwind;
pub mod unwind_tables;

pub use session::run;

/// For the `dashboard` example and the `ui_draw` bench: the dashboard on synthetic snapshots.
#[doc(hidden)]
pub mod dashboard {
    pub use crate::ui::{run_terminal, Action, App, Event, Key, Live, Update};
}

/// For the fuzz targets in `fuzz/` (cargo-fuzz, run by `cargo xtask fuzz`): the readers of
/// untrusted input, fed bytes instead of a target's files and a user's snapshots.
#[doc(hidden)]
pub mod fuzzing {
    use std::{fs::File, io::Write as _, path::Path};

    use crate::postmortem::{export, read, text};

    /// A snapshot file as `report`, `export` and `diff` read and render it.
    pub fn snapshot(bytes: &[u8]) {
        let Ok(snapshot) = read::parse_snapshot(bytes, "fuzz.json") else {
            return;
        };
        let options = text::ReportOptions {
            top: 10,
            pid: None,
            min_age: None,
            style: text::ReportStyle::Text,
            tree: true,
        };
        let _ = text::render_report(&snapshot, "fuzz.json", &options);
        let _ = export::folded(&snapshot, "fuzz.json");
        let _ = export::pprof_gz(&snapshot, "fuzz.json");
        let _ = crate::postmortem::diff::diff(&snapshot, &snapshot);
    }

    /// A target's module file, as the unwinders and the symbolizer read it: headers, sections,
    /// `.eh_frame`/`.debug_frame` (unwinding a stack made of `stack` from each of `pcs` in
    /// userspace, and compiled into exact mode's in-kernel tables), and symbols and DWARF line
    /// info (blazesym, through the same pinned-descriptor path).
    pub fn module(elf: &[u8], pcs: &[u64], stack: &[u8]) {
        let Some(file) = memfd_with(elf) else {
            return;
        };
        let path = Path::new("fuzz-module.so");
        let Ok(for_unwind) = file.try_clone() else {
            return;
        };
        let elf = crate::target_files::Elf::new(path, for_unwind);
        crate::unwind::fuzz_module(&elf, pcs, stack);
        // Exact mode's tables: the CFI compiled into rows, looked up at the pcs.
        if let Ok(cfi) = crate::unwind_tables::ModuleCfi::read(&elf) {
            if let Ok(compiled) = crate::unwind_tables::compile(&cfi.sections) {
                for pc in pcs {
                    let _ = crate::unwind_tables::lookup(&compiled.rows, *pc);
                }
            }
        }
        crate::symbolize::fuzz_module(file, pcs);
    }

    fn memfd_with(bytes: &[u8]) -> Option<File> {
        let fd =
            rustix::fs::memfd_create("leaktrace-fuzz", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
        let mut file = File::from(fd);
        file.write_all(bytes).ok()?;
        Some(file)
    }
}

/// For the `unwind` bench: the userspace unwinder on a copy of the bench's own stack.
#[doc(hidden)]
pub mod bench {
    pub use crate::{
        tracer::StackCopy,
        unwind::{own_stack_copy, StackUnwinder},
    };
}

/// For the privileged Go tests: leaktrace's per-version layout tables against a Go binary's
/// own DWARF.
#[doc(hidden)]
pub mod go_layouts {
    pub use crate::golang::tables_against_dwarf;
}
