//! `leaktrace report FILE`: a saved snapshot as a readable report, in plain text for a terminal
//! or in Markdown for a ticket.
use std::{fmt::Write as _, time::Duration};

use super::read::{RecordedFrame, RecordedHeap, RecordedProcess, RecordedSite, RecordedSnapshot};
use crate::{
    format::{self, human_bytes},
    schema::{Counters, ExitStatus, SiteCounters},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportStyle {
    Text,
    Markdown,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// Sites shown per process.
    pub top: usize,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only sites whose oldest outstanding block is at least this old.
    pub min_age: Option<Duration>,
    /// Add outstanding bytes by function and the call tree (`--tree`).
    pub tree: bool,
    pub style: ReportStyle,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{file} has no process with pid {pid} (it has {available})")]
    NoSuchPid {
        file: String,
        pid: u32,
        available: String,
    },
}

/// The report on `snapshot`; `file` names it in the heading.
pub fn render_report(
    snapshot: &RecordedSnapshot,
    file: &str,
    options: &ReportOptions,
) -> Result<String, ReportError> {
    let processes: Vec<&RecordedProcess> = snapshot
        .processes
        .iter()
        .filter(|p| options.pid.is_none_or(|pid| p.pid == pid))
        .collect();
    if let (Some(pid), true) = (options.pid, processes.is_empty()) {
        let available = snapshot
            .processes
            .iter()
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ReportError::NoSuchPid {
            file: file.to_string(),
            pid,
            available,
        });
    }
    let mut out = String::new();
    let run = if snapshot.complete {
        "the final snapshot of its run"
    } else {
        "taken while tracing was still running"
    };
    match options.style {
        ReportStyle::Text => {
            let _ = writeln!(out, "leaktrace report: {file}");
            let _ = writeln!(
                out,
                "Snapshot of {}, after {} of tracing ({run}).",
                snapshot.generated_at,
                format::age(Some(snapshot.duration_s))
            );
        }
        ReportStyle::Markdown => {
            let _ = writeln!(out, "## leaktrace report: {}", code(file));
            let _ = writeln!(
                out,
                "\nSnapshot of {}, after {} of tracing ({run}).",
                snapshot.generated_at,
                format::age(Some(snapshot.duration_s))
            );
        }
    }
    for process in processes {
        let sites = SiteSelection::of(process, options);
        let words = Words::for_process(snapshot.growth_sites(process));
        match options.style {
            ReportStyle::Text => text_process(&mut out, process, &sites, options, words),
            ReportStyle::Markdown => markdown_process(&mut out, process, &sites, options, words),
        }
    }
    Ok(out)
}

/// The sites a report shows for one process, and why the others are not shown.
struct SiteSelection<'a> {
    shown: Vec<&'a RecordedSite>,
    /// Outstanding sites (and old enough) beyond `--top`.
    beyond_top: usize,
    /// Sites with nothing outstanding.
    freed: usize,
    /// Outstanding sites younger than `--min-age`.
    too_young: usize,
}

impl<'a> SiteSelection<'a> {
    fn of(process: &'a RecordedProcess, options: &ReportOptions) -> Self {
        let outstanding: Vec<&RecordedSite> = process
            .sites
            .iter()
            .filter(|s| s.counters.outstanding_count > 0 || s.counters.outstanding_bytes > 0)
            .collect();
        let freed = process.sites.len() - outstanding.len();
        let mut shown: Vec<&RecordedSite> = outstanding
            .iter()
            .copied()
            .filter(|s| match options.min_age {
                None => true,
                Some(min) => s
                    .counters
                    .oldest_age_s
                    .is_some_and(|a| a >= min.as_secs_f64()),
            })
            .collect();
        let too_young = outstanding.len() - shown.len();
        shown.sort_by_key(|s| (s.leak_rank, std::cmp::Reverse(s.counters.outstanding_bytes)));
        let beyond_top = shown.len().saturating_sub(options.top);
        shown.truncate(options.top);
        SiteSelection {
            shown,
            beyond_top,
            freed,
            too_young,
        }
    }

    /// Why some sites are not listed, e.g. "2 more below the top 10; 1 with nothing outstanding".
    fn hidden(&self, options: &ReportOptions) -> Option<String> {
        let mut parts = Vec::new();
        if self.beyond_top > 0 {
            parts.push(format!(
                "{} more below the top {} (--top)",
                self.beyond_top, options.top
            ));
        }
        if self.too_young > 0 {
            let min = options.min_age.map(|d| format::age(Some(d.as_secs_f64())));
            parts.push(format!(
                "{} younger than {} (--min-age)",
                self.too_young,
                min.unwrap_or_default()
            ));
        }
        if self.freed > 0 {
            parts.push(format!("{} with nothing outstanding", self.freed));
        }
        (!parts.is_empty()).then(|| format!("Not shown: {}.", parts.join("; ")))
    }
}

fn status(process: &RecordedProcess) -> String {
    match (process.alive, process.exit) {
        (true, _) => "alive at this snapshot".to_string(),
        (false, Some(ExitStatus::Code(code))) => format!("exited with status {code}"),
        (false, Some(ExitStatus::Signal(signal))) => match signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        },
        (false, None) => "exited (status unknown: not launched by leaktrace)".to_string(),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL, e.g. the OOM killer",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// How a process's numbers read: exact mode's blocks and allocations, or growth mode's heap
/// growth and growth events (written under the same field names, docs/json-schema.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Words {
    growth: bool,
}

impl Words {
    fn for_process(growth: bool) -> Self {
        Self { growth }
    }

    /// "50000 B outstanding in 500 blocks", or "4194304 B of heap growth still mapped (1 growth
    /// event)".
    fn held(self, counters: &SiteCounters) -> String {
        if self.growth {
            format!(
                "{} of heap growth still mapped ({})",
                exact_bytes(counters.outstanding_bytes),
                events(counters.allocated_count)
            )
        } else {
            format!(
                "{} outstanding in {}",
                exact_bytes(counters.outstanding_bytes),
                blocks(counters.outstanding_count)
            )
        }
    }

    /// The Markdown site table's size and count columns, and a site's values there.
    fn columns(self) -> (&'static str, &'static str) {
        if self.growth {
            ("still mapped", "growth events")
        } else {
            ("outstanding", "blocks")
        }
    }

    fn count(self, counters: &SiteCounters) -> u64 {
        if self.growth {
            counters.allocated_count
        } else {
            counters.outstanding_count
        }
    }
}

/// The process summary as (label, value) rows.
fn summary(process: &RecordedProcess, words: Words) -> Vec<(&'static str, String)> {
    let totals = if words.growth {
        vec![(
            "heap growth",
            format!(
                "{} still mapped of {} grown, in {}",
                exact_bytes(process.outstanding_bytes),
                human_bytes(process.allocated_bytes),
                events(process.allocated_count)
            ),
        )]
    } else {
        vec![
            (
                "outstanding",
                format!(
                    "{} in {}",
                    exact_bytes(process.outstanding_bytes),
                    blocks(process.outstanding_count)
                ),
            ),
            (
                "allocations",
                format!(
                    "{} allocations ({}), {} frees",
                    process.allocated_count,
                    human_bytes(process.allocated_bytes),
                    process.freed_count
                ),
            ),
        ]
    };
    let mut rows = vec![
        ("executable", process.exe.clone()),
        ("status", status(process)),
    ];
    rows.extend(totals);
    rows.extend([
        (
            "bytes processed",
            process
                .bytes_processed
                .map(exact_bytes)
                .unwrap_or_else(|| "unknown (/proc/PID/io was not readable)".to_string()),
        ),
        ("counters", counters_summary(&process.counters)),
    ]);
    if words.growth {
        rows.push((
            "tracing",
            "growth mode: the syscalls that grew its heap, with their stacks; its malloc family was not traced".to_string(),
        ));
    } else if process.exact == Some(false) {
        rows.push((
            "tracing",
            "heap syscalls only (system-wide): its malloc family was not traced".to_string(),
        ));
    }
    if let Some(heap) = &process.heap {
        rows.extend(heap_rows(heap));
    }
    rows
}

/// The kernel's view of the heap, for the fields the snapshot has.
fn heap_rows(heap: &RecordedHeap) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    let mut brk = Vec::new();
    if let Some(bytes) = heap.brk_bytes {
        brk.push(format!(
            "{} above the start of the heap",
            human_bytes(bytes)
        ));
    }
    match (heap.brk_calls, heap.brk_failures) {
        (Some(calls), Some(failed)) => brk.push(format!("{calls} brk calls, {failed} failed")),
        (Some(calls), None) => brk.push(format!("{calls} brk calls")),
        (None, Some(failed)) => brk.push(format!("{failed} failed brk calls")),
        (None, None) => {}
    }
    if !brk.is_empty() {
        rows.push(("program break", brk.join(", ")));
    }
    if let Some(fallbacks) = &heap.fallback_mmaps {
        rows.push((
            "mmap fallbacks",
            if fallbacks.count == 0 {
                "none".to_string()
            } else {
                format!(
                    "{} ({}): malloc mapped memory because brk could not grow the heap",
                    fallbacks.count,
                    human_bytes(fallbacks.bytes)
                )
            },
        ));
    }
    let mut anon = Vec::new();
    if let Some(bytes) = heap.anon_mmap_outstanding_bytes {
        anon.push(format!("{} still mapped", human_bytes(bytes)));
    }
    if let Some(bytes) = heap.anon_reserved_bytes {
        anon.push(format!("{} reserved without access", human_bytes(bytes)));
    }
    if !anon.is_empty() {
        rows.push(("anonymous mmaps", anon.join(", ")));
    }
    if let Some(rss) = heap.rss_bytes {
        let mut text = human_bytes(rss);
        if let Some(growth) = heap.rss_growth_bytes {
            text.push_str(&format!(
                " ({} since tracing started",
                format::signed_bytes(growth)
            ));
            match heap.explained_share {
                Some(share) if share.is_finite() => text.push_str(&format!(
                    "; {:.0}% of that is outstanding traced allocations)",
                    share * 100.0
                )),
                _ => text.push(')'),
            }
        }
        rows.push(("RSS", text));
    }
    rows
}

/// The site's share of the heap's mappings, when the snapshot has it and it is not all zero.
fn site_heap_line(site: &RecordedSite) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(count) = site.fallback_mmap_count.filter(|&c| c > 0) {
        parts.push(format!(
            "{count} mmap fallbacks ({})",
            human_bytes(site.fallback_mmap_bytes.unwrap_or(0))
        ));
    }
    if let Some(bytes) = site.direct_mmap_bytes.filter(|&b| b > 0) {
        parts.push(format!(
            "{} mapped directly (large blocks)",
            human_bytes(bytes)
        ));
    }
    if let Some(bytes) = site.anon_mmap_bytes.filter(|&b| b > 0) {
        parts.push(format!("{} of anonymous mappings", human_bytes(bytes)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn counters_summary(c: &Counters) -> String {
    if !c.any() {
        return "all zero: the numbers are exact".to_string();
    }
    format!(
        "dropped allocations {}, stack errors {}, lost events {}, unknown frees {}",
        c.dropped_allocations, c.stack_errors, c.lost_events, c.unknown_frees
    )
}

/// What each non-zero counter means for the numbers, or None when all are zero.
fn counters_warning(c: &Counters) -> Option<String> {
    if !c.any() {
        return None;
    }
    let mut reasons = Vec::new();
    if c.dropped_allocations > 0 {
        reasons.push(format!(
            "{} allocations were not recorded because a map was full (raise --max-allocations / --max-stacks)",
            c.dropped_allocations
        ));
    }
    if c.stack_errors > 0 {
        reasons.push(format!(
            "{} stacks were not captured (those sites keep only their caller)",
            c.stack_errors
        ));
    }
    if c.lost_events > 0 {
        reasons.push(format!(
            "{} events were lost (heap-syscall records when the ring buffer was full, probes that did not pair up): the figures they touch may be off by that much",
            c.lost_events
        ));
    }
    if c.unknown_frees > 0 {
        reasons.push(format!(
            "{} frees of blocks not seen allocated (allocated before tracing started, dropped, or freed inside glibc)",
            c.unknown_frees
        ));
    }
    Some(format!(
        "WARNING: the numbers may be incomplete: {}.",
        reasons.join("; ")
    ))
}

/// "48.8 KiB (50000 bytes)", "14 bytes".
fn exact_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{} ({bytes} bytes)", human_bytes(bytes))
    }
}

fn events(count: u64) -> String {
    if count == 1 {
        "1 growth event".to_string()
    } else {
        format!("{count} growth events")
    }
}

fn blocks(count: u64) -> String {
    if count == 1 {
        "1 block".to_string()
    } else {
        format!("{count} blocks")
    }
}

fn site_heading(site: &RecordedSite) -> String {
    format::site_label(&site.frames)
}

fn growth_line(site: &RecordedSite, words: Words) -> String {
    let g = &site.growth;
    let oldest = if words.growth {
        "first growth"
    } else {
        "oldest block"
    };
    format!(
        "{} per MiB processed (R² {}), {} per minute (R² {}), class {}, {oldest} {}",
        format::slope(g.bytes_per_mib_processed),
        format::r2(g.r2_processed),
        format::slope(g.bytes_per_min),
        format::r2(g.r2_time),
        g.class,
        format::age(site.counters.oldest_age_s)
    )
}

/// One frame: name, source location, and where it is in its module when not symbolized.
fn frame_columns(frame: &RecordedFrame) -> (String, String) {
    let mut name = format::frame_name(frame);
    if frame.inlined {
        name.push_str(" [inlined]");
    }
    let location = match (format::frame_location(frame), &frame.function) {
        (Some(location), _) => location,
        // A named frame without source: say where it is so it can be looked up.
        (None, Some(_)) => format::module_offset(frame).unwrap_or_default(),
        (None, None) => String::new(),
    };
    (name, location)
}

fn frame_lines(site: &RecordedSite, indent: &str) -> String {
    let columns: Vec<(String, String)> = site.frames.iter().map(frame_columns).collect();
    let width = columns
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (name, location) in columns {
        let line = format!("{indent}{name:<width$}  {location}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if site.frames.is_empty() {
        let _ = writeln!(out, "{indent}(no frames: the stack was not captured)");
    }
    out
}

fn text_process(
    out: &mut String,
    process: &RecordedProcess,
    sites: &SiteSelection,
    options: &ReportOptions,
    words: Words,
) {
    let _ = writeln!(out, "\npid {} ({})", process.pid, process.comm);
    for (label, value) in summary(process, words) {
        let _ = writeln!(out, "  {label:<16} {value}");
    }
    if let Some(warning) = counters_warning(&process.counters) {
        let _ = writeln!(out, "  {warning}");
    }
    text_estimate(out, process, options);
    if sites.shown.is_empty() {
        let _ = writeln!(out, "\n  No sites to show.");
    } else if words.growth {
        let _ = writeln!(
            out,
            "\n  What grew the heap (the allocations that crossed its top, often large temporaries: no leak verdict):"
        );
    } else {
        let _ = writeln!(out, "\n  Sites by leak rank (1 = the most likely leak):");
    }
    for site in &sites.shown {
        let _ = writeln!(
            out,
            "\n  #{} {}: {}",
            site.leak_rank,
            site_heading(site),
            words.held(&site.counters)
        );
        let _ = writeln!(out, "     growth: {}", growth_line(site, words));
        if let Some(heap) = site_heap_line(site) {
            let _ = writeln!(out, "     heap: {heap}");
        }
        out.push_str(&frame_lines(site, "       "));
    }
    if let Some(hidden) = sites.hidden(options) {
        let _ = writeln!(out, "\n  {hidden}");
    }
    if let Some(go) = &process.go {
        let _ = writeln!(out);
        for line in super::go_text::go_lines(go, options.top) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if options.tree {
        let _ = writeln!(out);
        out.push_str(&super::tree::tree_section(process, "  "));
    }
}

/// Growth mode: how many bursts ran, what they sampled, and what they cost against the budget.
fn bursts_line(bursts: &crate::schema::BurstReport) -> String {
    let mut line = format!(
        "{} bursts, {:.2} s of allocations sampled; cost {:.2}% of a CPU from {} probe hits, {} on \
         the target's own CPU time; budget {}%",
        bursts.bursts,
        bursts.sampled_s,
        bursts.measured_overhead_pct,
        bursts.probe_hits,
        bursts
            .target_cpu_overhead_pct
            .map_or_else(|| "not measured".to_string(), |pct| format!("{pct:.2}%")),
        bursts.budget_pct
    );
    if let Some(why) = &bursts.unavailable {
        let _ = write!(line, " (no bursts: {why})");
    }
    line
}

/// Growth mode: the bursts' estimate, by estimate rank.
fn text_estimate(out: &mut String, process: &RecordedProcess, options: &ReportOptions) {
    if let Some(bursts) = &process.bursts {
        let _ = writeln!(out, "  {:<16} {}", "bursts", bursts_line(bursts));
    }
    if process.estimated_sites.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n  Leak estimate from bursts of exact tracing (sampled blocks that survive; 1 = the most likely leak):"
    );
    for site in ranked_estimates(process, options.top) {
        let interval = &site.surviving_bytes_per_s_interval;
        let _ = writeln!(
            out,
            "\n  #{} {}: ~{:.0} B/s surviving (95%: {:.0}..{:.0}), {} samples of {} allocations seen, {}",
            site.estimate_rank,
            crate::format::site_name(&site.frames),
            site.surviving_bytes_per_s,
            interval.low,
            interval.high,
            site.samples,
            site.allocations_seen,
            crate::format::class_label(site.class)
        );
    }
}

/// `text` as inline code that survives a Markdown table cell.
fn code(text: &str) -> String {
    let text = text.replace('|', "\\|").replace(['\n', '\r'], " ");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// Plain text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn markdown_process(
    out: &mut String,
    process: &RecordedProcess,
    sites: &SiteSelection,
    options: &ReportOptions,
    words: Words,
) {
    let _ = writeln!(
        out,
        "\n### pid {} {}: {}\n",
        process.pid,
        code(&process.comm),
        status(process)
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, value) in summary(process, words) {
        let value = if label == "executable" {
            code(&value)
        } else {
            cell(&value)
        };
        let _ = writeln!(out, "| {label} | {value} |");
    }
    if let Some(warning) = counters_warning(&process.counters) {
        let _ = writeln!(out, "\n> **{}**", cell(&warning));
    }
    markdown_estimate(out, process, options);
    if sites.shown.is_empty() {
        let _ = writeln!(out, "\nNo sites to show.");
    } else {
        let (size, count) = words.columns();
        let _ = writeln!(
            out,
            "\n| rank | {size} | {count} | per MiB processed | per minute | R² (MiB / min) | class | oldest | site |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for site in &sites.shown {
            let g = &site.growth;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                site.leak_rank,
                exact_bytes(site.counters.outstanding_bytes),
                words.count(&site.counters),
                format::slope(g.bytes_per_mib_processed),
                format::slope(g.bytes_per_min),
                format::r2(g.r2_processed),
                format::r2(g.r2_time),
                cell(&g.class),
                format::age(site.counters.oldest_age_s),
                code(&format::site_label(&site.frames)),
            );
        }
    }
    for site in &sites.shown {
        let _ = writeln!(
            out,
            "\n#### #{} {}: {}\n",
            site.leak_rank,
            code(&site_heading(site)),
            words.held(&site.counters)
        );
        if let Some(heap) = site_heap_line(site) {
            let _ = writeln!(out, "Heap: {}.\n", cell(&heap));
        }
        // A fence longer than any backtick run in the frames, so no name can close it early.
        let frames = frame_lines(site, "");
        let fence = "`".repeat(longest_backtick_run(&frames).max(2) + 1);
        let _ = write!(out, "{fence}text\n{frames}{fence}\n");
    }
    if let Some(hidden) = sites.hidden(options) {
        let _ = writeln!(out, "\n{}", cell(&hidden));
    }
    if let Some(go) = &process.go {
        let lines = super::go_text::go_lines(go, options.top).join("\n");
        let fence = "`".repeat(longest_backtick_run(&lines).max(2) + 1);
        let _ = write!(out, "\n#### Go runtime\n\n{fence}text\n{lines}\n{fence}\n");
    }
    if options.tree {
        let tree = super::tree::tree_section(process, "");
        let fence = "`".repeat(longest_backtick_run(&tree).max(2) + 1);
        let _ = write!(out, "\n#### Call tree\n\n{fence}text\n{tree}{fence}\n");
    }
}

/// Growth mode: the bursts' estimate as a table, by estimate rank. Every number in it is
/// estimated from samples, and says so.
fn markdown_estimate(out: &mut String, process: &RecordedProcess, options: &ReportOptions) {
    if process.bursts.is_none() && process.estimated_sites.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n#### Leak estimate from bursts of exact tracing (estimated)\n"
    );
    if let Some(bursts) = &process.bursts {
        let _ = writeln!(out, "{}.\n", cell(&bursts_line(bursts)));
    }
    if process.estimated_sites.is_empty() {
        let _ = writeln!(out, "No sampled allocation yet.");
        return;
    }
    let _ = writeln!(
        out,
        "| estimate rank | class | surviving B/s | 95% interval | recent B/s | samples | allocations seen | site |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---|");
    for site in ranked_estimates(process, options.top) {
        let interval = &site.surviving_bytes_per_s_interval;
        let _ = writeln!(
            out,
            "| {} | {} | ~{:.0} | {:.0}..{:.0} | {:.0} | {} | {} | {} |",
            site.estimate_rank,
            cell(crate::format::class_label(site.class)),
            site.surviving_bytes_per_s,
            interval.low,
            interval.high,
            site.recent_surviving_bytes_per_s,
            site.samples,
            site.allocations_seen,
            code(&crate::format::site_label(&site.frames)),
        );
    }
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// A process's estimated sites, most likely leak first, the first `top` of them.
fn ranked_estimates(
    process: &RecordedProcess,
    top: usize,
) -> impl Iterator<Item = &crate::schema::EstimatedSite> {
    let mut estimated: Vec<_> = process.estimated_sites.iter().collect();
    estimated.sort_by_key(|e| e.estimate_rank);
    estimated.into_iter().take(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        assert_eq!(code("operator|"), "`operator\\|`");
        assert_eq!(code("a`b"), "`` a`b ``");
        assert_eq!(cell("x\ny|z"), "x y\\|z");
        assert_eq!(longest_backtick_run("a ``` b `"), 3);
    }

    #[test]
    fn counters_warning_names_each_cause() {
        assert_eq!(counters_warning(&Counters::default()), None);
        let warning = counters_warning(&Counters {
            dropped_allocations: 2,
            unknown_frees: 5,
            ..Counters::default()
        })
        .expect("a warning");
        assert!(warning.starts_with("WARNING"), "{warning}");
        assert!(
            warning.contains("2 allocations were not recorded"),
            "{warning}"
        );
        assert!(warning.contains("5 frees"), "{warning}");
    }
}
