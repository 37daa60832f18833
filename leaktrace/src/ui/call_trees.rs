//! The state of the dashboard's call-tree views (callers first, callees first): the trees of
//! the site table's sites, built once per snapshot (and when the focus or the filter changes)
//! by the model (`model::CallTree`), which nodes are open, and the selection. No drawing here
//! (`draw/call_tree.rs`), no I/O.
use std::collections::HashSet;

use super::cursor::Cursor;
use crate::model::{CallTree, StackCost, TreeDirection};
use crate::schema::Frame;

/// Nodes holding at least this share of the tree are open until the user closes them, so the
/// heavy paths show at once ("everything under X" on one line, X's callees below it).
pub const AUTO_OPEN_SHARE: f64 = 0.1;

/// What the sites screen shows; `v` steps through them in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteView {
    /// One row per site (the default).
    Sites,
    /// A top-down tree: outermost callers (`main`) first, their callees under them.
    Callers,
    /// A bottom-up tree: the allocator's callers first, who called them under them.
    Callees,
}

impl SiteView {
    pub fn next(self) -> Self {
        match self {
            SiteView::Sites => SiteView::Callers,
            SiteView::Callers => SiteView::Callees,
            SiteView::Callees => SiteView::Sites,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SiteView::Sites => "sites",
            SiteView::Callers => "callers (top-down)",
            SiteView::Callees => "callees (bottom-up)",
        }
    }
}

/// One tree view: the tree, the nodes opened or closed against [`AUTO_OPEN_SHARE`] (by path,
/// so they stay so across snapshots), the visible rows and the selection.
#[derive(Clone, Debug)]
pub(crate) struct TreeView {
    direction: TreeDirection,
    pub tree: CallTree,
    /// Paths whose open/closed state the user flipped.
    flipped: HashSet<Vec<String>>,
    /// Visible node ids, in display order.
    pub rows: Vec<usize>,
    pub cursor: Cursor,
    /// The sites changed since the tree was built (it is rebuilt when next shown).
    pub stale: bool,
}

impl TreeView {
    pub fn new(direction: TreeDirection) -> Self {
        Self {
            direction,
            tree: CallTree::default(),
            flipped: HashSet::new(),
            rows: Vec::new(),
            cursor: Cursor::default(),
            stale: true,
        }
    }

    /// Rebuild the tree from `stacks`, keeping the selected node selected when it is still
    /// there.
    pub fn rebuild<'a>(
        &mut self,
        stacks: impl IntoIterator<Item = StackCost<'a, Frame>>,
        page: usize,
    ) {
        let selected = self.selected().map(|n| self.tree.path(n));
        self.tree = CallTree::build(stacks, self.direction);
        self.stale = false;
        self.refresh_rows();
        if let Some(node) = selected.and_then(|p| self.tree.find(&p)) {
            if let Some(row) = self.rows.iter().position(|&r| r == node) {
                self.cursor.selected = row;
            }
        }
        self.cursor.follow(self.rows.len(), page);
    }

    fn refresh_rows(&mut self) {
        let rows = self.tree.visible(0.0, |n| self.is_open(n));
        self.rows = rows;
    }

    /// Whether `node`'s children are shown.
    pub fn is_open(&self, node: usize) -> bool {
        let has_children = self
            .tree
            .nodes
            .get(node)
            .is_some_and(|n| !n.children.is_empty());
        let by_default = self.tree.share(node) >= AUTO_OPEN_SHARE;
        // The path is only built when something was flipped: this runs for every row drawn.
        let flipped = !self.flipped.is_empty() && self.flipped.contains(&self.tree.path(node));
        has_children && (by_default != flipped)
    }

    pub fn selected(&self) -> Option<usize> {
        self.rows.get(self.cursor.selected).copied()
    }

    fn set_open(&mut self, node: usize, open: bool, page: usize) {
        if self.is_open(node) != open {
            let path = self.tree.path(node);
            if !self.flipped.remove(&path) {
                self.flipped.insert(path);
            }
            self.refresh_rows();
            if let Some(row) = self.rows.iter().position(|&r| r == node) {
                self.cursor.selected = row;
            }
            self.cursor.follow(self.rows.len(), page);
        }
    }

    /// Enter: open the selected node, or close it when open.
    pub fn toggle(&mut self, page: usize) {
        if let Some(node) = self.selected() {
            let open = self.is_open(node);
            self.set_open(node, !open, page);
        }
    }

    /// Right: open the selected node.
    pub fn open(&mut self, page: usize) {
        if let Some(node) = self.selected() {
            self.set_open(node, true, page);
        }
    }

    /// Left: close the selected node, or, when it is closed, go to its parent.
    pub fn close(&mut self, page: usize) {
        let Some(node) = self.selected() else {
            return;
        };
        if self.is_open(node) {
            self.set_open(node, false, page);
        } else if let Some(parent) = self.tree.nodes[node].parent {
            if let Some(row) = self.rows.iter().position(|&r| r == parent) {
                self.cursor.go_to(row, self.rows.len(), page);
            }
        }
    }

    pub fn move_by(&mut self, delta: isize, page: usize) {
        self.cursor.move_by(delta, self.rows.len(), page);
    }

    pub fn go_to(&mut self, end: bool, page: usize) {
        let len = self.rows.len();
        self.cursor.go_to(if end { len } else { 0 }, len, page);
    }

    pub fn follow(&mut self, page: usize) {
        self.cursor.follow(self.rows.len(), page);
    }
}
