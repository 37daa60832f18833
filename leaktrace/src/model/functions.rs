//! Outstanding memory by function, the way pprof's flat/cumulative view and heaptrack's
//! top-down/bottom-up trees give it, computed once from a process's sites and read by every view
//! (JSON `functions[]`, `report --tree`, the dashboard's callers and callees views).
//!
//! - `self`: bytes of the stacks whose leaf (innermost frame) is the function, as in pprof;
//!   in exact mode the leaf is the allocator's caller, so wrappers such as `xmalloc` or
//!   `CRYPTO_zalloc` hold the self bytes and the user's functions the cumulative ones.
//! - `cumulative`: bytes of the stacks the function is on, each stack counted once per
//!   function even when it recurses, so `main`'s cumulative bytes are everything under it.
//!
//! A function is its name (or `module+0xoffset` when it has none, `format::frame_name`) in its
//! module: inlined frames count as the functions they are. Only the sites a snapshot reports are
//! counted (`--max-sites` may leave small ones out).
use std::collections::{HashMap, HashSet};

use crate::{
    format,
    frames::{basename, StackFrame},
    schema::FunctionReport,
};

/// What one site contributes: its frames (innermost first), outstanding bytes and blocks.
#[derive(Debug)]
pub struct StackCost<'a, F> {
    pub frames: &'a [F],
    pub bytes: u64,
    pub count: u64,
}

// By hand: a derive would require `F: Copy`, and only the reference is copied.
impl<F> Clone for StackCost<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for StackCost<'_, F> {}

/// The key a frame is aggregated by: its display name and its module's path.
fn function_key<F: StackFrame>(frame: &F) -> (String, Option<String>) {
    (
        format::frame_name(frame),
        frame.module().map(str::to_string),
    )
}

/// Every function on the stacks with its self and cumulative bytes and blocks, largest
/// cumulative first; among equals, callers before their callees (the function seen farthest
/// from a leaf first: in a chain that holds the same bytes all along, the user's function
/// comes before the library frames under it), then by name. Functions holding nothing are
/// left out.
pub fn function_totals<'a, F: StackFrame + 'a>(
    stacks: impl IntoIterator<Item = StackCost<'a, F>>,
) -> Vec<FunctionReport> {
    let mut by_key: HashMap<(String, Option<String>), FunctionReport> = HashMap::new();
    let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
    // Per function, the largest distance from a leaf it was seen at.
    let mut outermost: HashMap<(String, Option<String>), usize> = HashMap::new();
    for stack in stacks {
        if stack.bytes == 0 && stack.count == 0 {
            continue;
        }
        seen.clear();
        for (depth, frame) in stack.frames.iter().enumerate() {
            let key = function_key(frame);
            let entry = by_key.entry(key.clone()).or_insert_with(|| FunctionReport {
                function: key.0.clone(),
                module: key.1.clone(),
                ..FunctionReport::default()
            });
            if depth == 0 {
                entry.self_bytes = entry.self_bytes.saturating_add(stack.bytes);
                entry.self_count = entry.self_count.saturating_add(stack.count);
            }
            let distance = outermost.entry(key.clone()).or_default();
            *distance = (*distance).max(depth);
            // Recursion: a function appears once per stack in its cumulative numbers.
            if seen.insert(key) {
                entry.cumulative_bytes = entry.cumulative_bytes.saturating_add(stack.bytes);
                entry.cumulative_count = entry.cumulative_count.saturating_add(stack.count);
            }
        }
    }
    let mut functions: Vec<(usize, FunctionReport)> = by_key
        .into_iter()
        .map(|(key, f)| (outermost.get(&key).copied().unwrap_or(0), f))
        .collect();
    functions.sort_by(|(a_out, a), (b_out, b)| {
        b.cumulative_bytes
            .cmp(&a.cumulative_bytes)
            .then(b_out.cmp(a_out))
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.module.cmp(&b.module))
    });
    functions.into_iter().map(|(_, f)| f).collect()
}

/// Which way a call tree reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeDirection {
    /// Callers first (heaptrack's top-down): the outermost frames (`main`) are the roots and
    /// each node's children are the functions it called.
    CallersFirst,
    /// Callees first (bottom-up): the innermost frames are the roots and each node's children
    /// are the functions that called it.
    CalleesFirst,
}

/// One node of a call tree: one function on one path from a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallNode {
    pub function: String,
    /// The module's file name (not its path), when known.
    pub module: Option<String>,
    /// Outstanding bytes and blocks of the stacks through this path.
    pub bytes: u64,
    pub count: u64,
    /// Distance from the root (roots are at 0).
    pub depth: usize,
    pub parent: Option<usize>,
    /// Children, largest first.
    pub children: Vec<usize>,
}

/// A call tree of outstanding bytes: nodes in an arena, roots largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallTree {
    pub nodes: Vec<CallNode>,
    pub roots: Vec<usize>,
    /// Outstanding bytes of every stack in the tree.
    pub total_bytes: u64,
}

impl CallTree {
    /// The tree of `stacks`, read in `direction`. Stacks without frames and without bytes or
    /// blocks are left out.
    pub fn build<'a, F: StackFrame + 'a>(
        stacks: impl IntoIterator<Item = StackCost<'a, F>>,
        direction: TreeDirection,
    ) -> Self {
        let mut tree = CallTree::default();
        let mut index: HashMap<(Option<usize>, String, Option<String>), usize> = HashMap::new();
        for stack in stacks {
            if stack.frames.is_empty() || (stack.bytes == 0 && stack.count == 0) {
                continue;
            }
            tree.total_bytes = tree.total_bytes.saturating_add(stack.bytes);
            let path: Box<dyn Iterator<Item = &F>> = match direction {
                TreeDirection::CallersFirst => Box::new(stack.frames.iter().rev()),
                TreeDirection::CalleesFirst => Box::new(stack.frames.iter()),
            };
            let mut parent: Option<usize> = None;
            for (depth, frame) in path.enumerate() {
                let (function, module) = function_key(frame);
                let module = module.map(|m| basename(&m).to_string());
                let key = (parent, function, module);
                let node = match index.get(&key) {
                    Some(&node) => node,
                    None => {
                        let node = tree.nodes.len();
                        tree.nodes.push(CallNode {
                            function: key.1.clone(),
                            module: key.2.clone(),
                            bytes: 0,
                            count: 0,
                            depth,
                            parent,
                            children: Vec::new(),
                        });
                        match parent {
                            Some(p) => tree.nodes[p].children.push(node),
                            None => tree.roots.push(node),
                        }
                        index.insert(key, node);
                        node
                    }
                };
                let n = &mut tree.nodes[node];
                n.bytes = n.bytes.saturating_add(stack.bytes);
                n.count = n.count.saturating_add(stack.count);
                parent = Some(node);
            }
        }
        let nodes = &tree.nodes;
        let largest_first = |list: &mut Vec<usize>| {
            list.sort_by(|&a, &b| {
                nodes[b]
                    .bytes
                    .cmp(&nodes[a].bytes)
                    .then_with(|| nodes[a].function.cmp(&nodes[b].function))
            });
        };
        let mut roots = std::mem::take(&mut tree.roots);
        largest_first(&mut roots);
        let mut children: Vec<Vec<usize>> = tree
            .nodes
            .iter()
            .map(|n| {
                let mut c = n.children.clone();
                largest_first(&mut c);
                c
            })
            .collect();
        for (node, sorted) in tree.nodes.iter_mut().zip(children.iter_mut()) {
            node.children = std::mem::take(sorted);
        }
        tree.roots = roots;
        tree
    }

    /// The share of the tree's bytes under `node`, 0 when the tree holds nothing.
    pub fn share(&self, node: usize) -> f64 {
        match (self.nodes.get(node), self.total_bytes) {
            (Some(n), total) if total > 0 => n.bytes as f64 / total as f64,
            _ => 0.0,
        }
    }

    /// Bytes of the stacks that end at `node` (callers first: its own allocations; callees
    /// first: at a root, everything; deeper, the stacks that start there).
    pub fn self_bytes(&self, node: usize) -> u64 {
        self.nodes.get(node).map_or(0, |n| {
            let children: u64 = n.children.iter().map(|&c| self.nodes[c].bytes).sum();
            n.bytes.saturating_sub(children)
        })
    }

    /// The functions from a root down to `node`: what names a node across snapshots (node
    /// numbers change with every tree).
    pub fn path(&self, node: usize) -> Vec<String> {
        let mut path = Vec::new();
        let mut at = self.nodes.get(node).map(|_| node);
        while let Some(n) = at {
            path.push(self.nodes[n].function.clone());
            at = self.nodes[n].parent;
        }
        path.reverse();
        path
    }

    /// The node at `path`, if the tree still has it.
    pub fn find(&self, path: &[String]) -> Option<usize> {
        let (first, rest) = path.split_first()?;
        let mut node = *self
            .roots
            .iter()
            .find(|&&r| self.nodes[r].function == *first)?;
        for name in rest {
            node = *self.nodes[node]
                .children
                .iter()
                .find(|&&c| self.nodes[c].function == *name)?;
        }
        Some(node)
    }

    /// The nodes in display order (depth first, largest first) whose subtree holds at least
    /// `min_share` of the tree and whose ancestors all pass `expanded`.
    pub fn visible(&self, min_share: f64, expanded: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pending: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(node) = pending.pop() {
            if self.share(node) < min_share {
                continue;
            }
            out.push(node);
            if expanded(node) {
                pending.extend(self.nodes[node].children.iter().rev().copied());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        schema::Frame,
        synthetic::{frame, EXE, LIBC},
    };

    const CRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";

    fn cost(frames: &[Frame], bytes: u64, count: u64) -> StackCost<'_, Frame> {
        StackCost {
            frames,
            bytes,
            count,
        }
    }

    /// Two leaks under `handle` (one through libcrypto), one recursive, and a freed site.
    fn stacks() -> Vec<(Vec<Frame>, u64, u64)> {
        vec![
            (
                vec![
                    frame("CRYPTO_zalloc", CRYPTO, None),
                    frame("X509_STORE_CTX_new", CRYPTO, None),
                    frame("verify_request", EXE, Some(("app.c", 14))),
                    frame("handle", EXE, None),
                    frame("main", EXE, None),
                ],
                30_000,
                300,
            ),
            (
                vec![
                    frame("xmalloc", EXE, None),
                    frame("walk", EXE, None),
                    frame("walk", EXE, None),
                    frame("walk", EXE, None),
                    frame("handle", EXE, None),
                    frame("main", EXE, None),
                ],
                5_000,
                50,
            ),
            (
                vec![frame("strdup", LIBC, None), frame("main", EXE, None)],
                700,
                7,
            ),
            (vec![frame("free_me", EXE, None)], 0, 0),
        ]
    }

    fn find<'a>(functions: &'a [FunctionReport], name: &str) -> &'a FunctionReport {
        functions
            .iter()
            .find(|f| f.function == name)
            .unwrap_or_else(|| panic!("{name} missing from {functions:?}"))
    }

    #[test]
    fn self_is_the_leaf_and_cumulative_counts_each_stack_once() {
        let stacks = stacks();
        let functions = function_totals(stacks.iter().map(|(f, b, c)| cost(f, *b, *c)));
        let main = find(&functions, "main");
        assert_eq!((main.self_bytes, main.cumulative_bytes), (0, 35_700));
        assert_eq!(main.cumulative_count, 357);
        let handle = find(&functions, "handle");
        assert_eq!(handle.cumulative_bytes, 35_000);
        // Three frames of `walk` on one stack: its 5,000 bytes once.
        let walk = find(&functions, "walk");
        assert_eq!((walk.self_bytes, walk.cumulative_bytes), (0, 5_000));
        let zalloc = find(&functions, "CRYPTO_zalloc");
        assert_eq!(
            (zalloc.self_bytes, zalloc.cumulative_bytes),
            (30_000, 30_000)
        );
        assert_eq!(zalloc.module.as_deref(), Some(CRYPTO));
        // Largest cumulative first; nothing for a function that holds nothing.
        assert_eq!(functions[0].function, "main");
        assert!(functions.iter().all(|f| f.function != "free_me"));
        let self_sum: u64 = functions.iter().map(|f| f.self_bytes).sum();
        assert_eq!(self_sum, 35_700);
    }

    #[test]
    fn unnamed_frames_are_functions_named_by_module_and_offset() {
        let unnamed = Frame {
            function: None,
            offset: Some(0xfff3c),
            ..frame("x", CRYPTO, None)
        };
        let frames = [unnamed, frame("main", EXE, None)];
        let functions = function_totals([cost(&frames, 10, 1)]);
        // Equal cumulative bytes: the caller first.
        assert_eq!(functions[0].function, "main");
        assert_eq!(functions[1].function, "libcrypto.so.3+0xfff3c");
        assert_eq!(functions[1].self_bytes, 10);
    }

    #[test]
    fn callers_first_tree_puts_everything_under_main() {
        let stacks = stacks();
        let tree = CallTree::build(
            stacks.iter().map(|(f, b, c)| cost(f, *b, *c)),
            TreeDirection::CallersFirst,
        );
        assert_eq!(tree.total_bytes, 35_700);
        assert_eq!(tree.roots.len(), 1);
        let main = &tree.nodes[tree.roots[0]];
        assert_eq!((main.function.as_str(), main.bytes), ("main", 35_700));
        let names = |ids: &[usize]| -> Vec<(String, u64)> {
            ids.iter()
                .map(|&i| (tree.nodes[i].function.clone(), tree.nodes[i].bytes))
                .collect()
        };
        assert_eq!(
            names(&main.children),
            [("handle".to_string(), 35_000), ("strdup".to_string(), 700)]
        );
        // Pruned at 5%: strdup (2%) and everything under it go; recursion stays nested.
        let visible = tree.visible(0.05, |_| true);
        let shown: Vec<(usize, &str)> = visible
            .iter()
            .map(|&i| (tree.nodes[i].depth, tree.nodes[i].function.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (0, "main"),
                (1, "handle"),
                (2, "verify_request"),
                (3, "X509_STORE_CTX_new"),
                (4, "CRYPTO_zalloc"),
                (2, "walk"),
                (3, "walk"),
                (4, "walk"),
                (5, "xmalloc"),
            ]
        );
        assert_eq!(tree.visible(0.0, |_| false).len(), 1);
        // Self bytes: what ends at the node; paths name nodes across trees.
        let handle = main.children[0];
        assert_eq!(tree.self_bytes(handle), 0);
        assert_eq!(tree.self_bytes(main.children[1]), 700);
        let walk3 = visible[7];
        let path = tree.path(walk3);
        assert_eq!(path, ["main", "handle", "walk", "walk", "walk"]);
        assert_eq!(tree.find(&path), Some(walk3));
        assert_eq!(
            tree.find(&["main".to_string(), "nowhere".to_string()]),
            None
        );
        assert_eq!(tree.find(&[]), None);
    }

    #[test]
    fn callees_first_tree_starts_at_the_leaves() {
        let stacks = stacks();
        let tree = CallTree::build(
            stacks.iter().map(|(f, b, c)| cost(f, *b, *c)),
            TreeDirection::CalleesFirst,
        );
        let roots: Vec<(&str, u64)> = tree
            .roots
            .iter()
            .map(|&i| (tree.nodes[i].function.as_str(), tree.nodes[i].bytes))
            .collect();
        assert_eq!(
            roots,
            [
                ("CRYPTO_zalloc", 30_000),
                ("xmalloc", 5_000),
                ("strdup", 700)
            ]
        );
        assert_eq!(
            tree.nodes[tree.roots[0]].module.as_deref(),
            Some("libcrypto.so.3")
        );
    }

    #[test]
    fn empty_trees_have_no_share() {
        let tree = CallTree::build(
            std::iter::empty::<StackCost<'_, Frame>>(),
            TreeDirection::CallersFirst,
        );
        assert!(tree.roots.is_empty());
        assert_eq!(tree.share(0), 0.0);
        assert!(tree.visible(0.0, |_| true).is_empty());
        assert!(function_totals(std::iter::empty::<StackCost<'_, Frame>>()).is_empty());
    }
}
