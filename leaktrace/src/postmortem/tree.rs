//! `leaktrace report --tree`: a process's outstanding memory by function and as a call tree,
//! callers first (heaptrack's top-down view, pprof's cumulative view), pruned to the subtrees
//! that hold at least [`MIN_SHARE`] of it. The numbers are the model's (`model::functions`);
//! this file only writes them.
use std::fmt::Write as _;

use super::read::RecordedProcess;
use crate::{
    format::{self, human_bytes},
    frames::basename,
    model::{CallTree, TreeDirection},
};

/// Subtrees holding less than this share of the process's outstanding bytes are left out.
pub const MIN_SHARE: f64 = 0.01;
/// Functions listed by cumulative bytes.
const TOP_FUNCTIONS: usize = 15;
/// Lines of the call tree at most: a deep tree is cut, and says so.
const MAX_TREE_LINES: usize = 200;

/// The functions and the call tree of `process`, each line starting with `indent`.
pub fn tree_section(process: &RecordedProcess, indent: &str) -> String {
    let mut out = String::new();
    let functions = process.functions();
    if functions.is_empty() {
        let _ = writeln!(
            out,
            "{indent}No outstanding memory with a stack: no call tree."
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{indent}Functions by outstanding bytes on their stacks (cumulative; self: stacks that end there):"
    );
    let _ = writeln!(
        out,
        "{indent}  {:>11} {:>11}  FUNCTION",
        "CUMULATIVE", "SELF"
    );
    for f in functions.iter().take(TOP_FUNCTIONS) {
        let module = f
            .module
            .as_deref()
            .map(|m| format!("  [{}]", basename(m)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}  {:>11} {:>11}  {}{module}",
            human_bytes(f.cumulative_bytes),
            human_bytes(f.self_bytes),
            f.function
        );
    }
    if functions.len() > TOP_FUNCTIONS {
        let _ = writeln!(
            out,
            "{indent}  ... {} more functions (all of them are in the JSON's functions[])",
            functions.len() - TOP_FUNCTIONS
        );
    }
    let tree = CallTree::build(process.stack_costs(), TreeDirection::CallersFirst);
    let _ = writeln!(
        out,
        "\n{indent}Call tree, callers first ({} in all; subtrees under {:.0}% left out):",
        human_bytes(tree.total_bytes),
        MIN_SHARE * 100.0
    );
    let visible = tree.visible(MIN_SHARE, |_| true);
    for &node in visible.iter().take(MAX_TREE_LINES) {
        let n = &tree.nodes[node];
        let module = n
            .module
            .as_deref()
            .map(|m| format!("  [{m}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}  {:>11} {:>5.1}%  {}{}{module}",
            human_bytes(n.bytes),
            tree.share(node) * 100.0,
            "  ".repeat(n.depth),
            format::truncate_middle(&n.function, 120),
        );
    }
    if visible.len() > MAX_TREE_LINES {
        let _ = writeln!(
            out,
            "{indent}  ... {} more lines (see `leaktrace export --format svg` for the whole tree)",
            visible.len() - MAX_TREE_LINES
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postmortem::read::{RecordedFrame, RecordedSite};
    use crate::schema::SiteCounters;

    fn frame(function: &str) -> RecordedFrame {
        RecordedFrame {
            module: Some("/tmp/app".into()),
            function: Some(function.into()),
            ..RecordedFrame::default()
        }
    }

    fn site(bytes: u64, names: &[&str]) -> RecordedSite {
        RecordedSite {
            counters: SiteCounters {
                outstanding_bytes: bytes,
                outstanding_count: 1,
                ..SiteCounters::default()
            },
            frames: names.iter().map(|n| frame(n)).collect(),
            ..RecordedSite::default()
        }
    }

    #[test]
    fn the_tree_puts_everything_under_main_and_prunes_small_subtrees() {
        let mut process = RecordedProcess {
            sites: vec![
                site(99_000, &["xmalloc", "load", "main"]),
                site(500, &["xmalloc", "tiny", "main"]),
            ],
            ..RecordedProcess::default()
        };
        process.functions = Some(crate::model::function_totals(process.stack_costs()));
        let text = tree_section(&process, "  ");
        assert!(text.contains("     97.2 KiB 100.0%  main  [app]"), "{text}");
        assert!(
            text.contains("     96.7 KiB  99.5%    load  [app]"),
            "{text}"
        );
        assert!(text.contains("      xmalloc  [app]"), "{text}");
        // In the list of functions, not in the pruned tree.
        assert_eq!(text.matches("tiny").count(), 1, "{text}");
    }

    #[test]
    fn no_stacks_no_tree() {
        let process = RecordedProcess::default();
        assert!(tree_section(&process, "").contains("no call tree"));
    }
}
