//! Post-mortem tooling: reading saved snapshots back after the traced process is gone.
//! `leaktrace report`, `leaktrace diff` and `leaktrace export`; no privileges needed.
pub mod diff;
pub mod export;
mod go_text;
pub mod pprof;
pub mod read;
pub mod text;
pub mod tree;

use std::{
    io::{self, Write as _},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    cli::{DiffArgs, ExportArgs, ExportFormat, PostmortemCommand, ReportArgs, ReportFormat},
    output::{write_atomically, Access},
};

/// Run one post-mortem subcommand.
pub fn run(command: PostmortemCommand) -> anyhow::Result<()> {
    match command {
        PostmortemCommand::Report(args) => report(&args),
        PostmortemCommand::Diff(args) => diff(&args),
        PostmortemCommand::Export(args) => export(&args),
    }
}

fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let snapshot = read::read_snapshot(&args.file)?;
    let options = text::ReportOptions {
        top: args.top,
        pid: args.pid,
        min_age: args.min_age,
        tree: args.tree,
        style: match args.format {
            ReportFormat::Text => text::ReportStyle::Text,
            ReportFormat::Markdown => text::ReportStyle::Markdown,
        },
    };
    let report = text::render_report(&snapshot, &shown(&args.file), &options)?;
    print(report.as_bytes())
}

fn diff(args: &DiffArgs) -> anyhow::Result<()> {
    let old = read::read_snapshot(&args.old)?;
    let new = read::read_snapshot(&args.new)?;
    // Two Go snapshots compare through their heap profiles even without allocation sites.
    if old.go_heap_site_count() == 0 || new.go_heap_site_count() == 0 {
        old.require_sites(&shown(&args.old))?;
        new.require_sites(&shown(&args.new))?;
    }
    let changes = diff::diff(&old, &new);
    let text = diff::render_diff(&changes, &shown(&args.old), &shown(&args.new), args.top);
    print(text.as_bytes())
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let snapshot = read::read_snapshot(&args.file)?;
    let name = shown(&args.file);
    if args.format == ExportFormat::GoHeap {
        snapshot.require_go_heap_sites(&name)?;
    } else {
        snapshot.require_sites(&name)?;
    }
    let bytes = match args.format {
        ExportFormat::Pprof => export::pprof_gz(&snapshot, &name)?,
        ExportFormat::GoHeap => export::go_heap_pprof_gz(&snapshot, &name)?,
        ExportFormat::Folded => export::folded(&snapshot, &name)?.into_bytes(),
        ExportFormat::Svg => export::svg(&snapshot, &name)?,
    };
    if args.output == Path::new("-") {
        return print(&bytes);
    }
    // Atomically, like the snapshots: a viewer never opens half a file.
    write_atomically(&args.output, &bytes, Access::from_private(args.private))
        .with_context(|| format!("cannot write {}", args.output.display()))
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to standard output"),
    }
}
