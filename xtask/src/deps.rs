//! `cargo xtask deps`: the import cycles between leaktrace's modules.
//!
//! The crate's module tree is read from its `mod` declarations, starting at `lib.rs` (a module is
//! a file, a directory with its `mod.rs`, or an inline `mod { }`). Every path that names a module
//! of the crate (`use crate::...`, `use super::...`, `self::...`, a child module's name, and the
//! same paths in code and inside macro calls) is resolved to the module it names. A reference
//! from module A to module B becomes an edge between the two siblings where their paths part
//! (`model::x -> report::y` is `model -> report`): a module using its parent's items or its own
//! submodules is no edge. Test code (`#[cfg(test)]`) may use anything and is left out.
//! A cycle is a loop of such edges among the children of one module, e.g.
//! `model -> report -> unwind -> tracer -> model`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Cycles printed per strongly connected group of modules, at most.
const MAX_CYCLES_PER_GROUP: usize = 50;

/// A module's path from the crate root (`["ui", "draw"]`); empty for the root.
type ModPath = Vec<String>;

/// Prints the cycles of the crate whose root is `src/lib.rs`; an error when there is one.
pub fn run(src: &Path) -> Result<()> {
    let graph = ModuleGraph::load(src)?;
    let cycles = graph.cycles();
    if cycles.is_empty() {
        println!(
            "deps: no import cycle between {} modules of {}",
            graph.modules.len(),
            src.display()
        );
        return Ok(());
    }
    println!(
        "deps: import cycles between the modules of {} (test code excluded):",
        src.display()
    );
    for cycle in &cycles {
        println!("  {}", cycle.display(&graph));
    }
    bail!(
        "{} import cycle(s) between {} modules",
        cycles.len(),
        graph.modules.len()
    )
}

/// One reference that makes an edge: the file and line of its first use.
#[derive(Clone)]
struct Evidence {
    file: PathBuf,
    line: usize,
    path: String,
}

struct ModuleGraph {
    /// Every module of the crate (test modules left out).
    modules: Vec<ModPath>,
    /// Edges between siblings: (from, to) module paths, with the first reference seen.
    edges: BTreeMap<(ModPath, ModPath), Evidence>,
}

/// A loop of sibling modules, the first repeated at the end when printed.
#[derive(Debug, PartialEq, Eq)]
struct Cycle(Vec<ModPath>);

impl Cycle {
    fn display<'a>(&'a self, graph: &'a ModuleGraph) -> impl fmt::Display + 'a {
        CycleDisplay { cycle: self, graph }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.iter().map(|m| m.join("::")).collect();
        if let Some(first) = names.first().cloned() {
            names.push(first);
        }
        names
    }
}

struct CycleDisplay<'a> {
    cycle: &'a Cycle,
    graph: &'a ModuleGraph,
}

impl fmt::Display for CycleDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cycle.names().join(" -> "))?;
        let nodes = &self.cycle.0;
        for (i, from) in nodes.iter().enumerate() {
            let to = &nodes[(i + 1) % nodes.len()];
            if let Some(e) = self.graph.edges.get(&(from.clone(), to.clone())) {
                write!(
                    f,
                    "\n      {} -> {}: {}:{} ({})",
                    from.join("::"),
                    to.join("::"),
                    e.file.display(),
                    e.line,
                    e.path
                )?;
            }
        }
        Ok(())
    }
}

impl ModuleGraph {
    fn load(src: &Path) -> Result<ModuleGraph> {
        let root = src.join("lib.rs");
        let mut modules = Vec::new();
        let mut references = Vec::new();
        load_file(&root, src, Vec::new(), &mut modules, &mut references)?;
        let known: BTreeSet<&ModPath> = modules.iter().collect();
        let mut edges = BTreeMap::new();
        for r in references {
            if let Some(edge) = sibling_edge(&r.from, &r.to, &known) {
                edges.entry(edge).or_insert(r.evidence);
            }
        }
        Ok(ModuleGraph { modules, edges })
    }

    /// Every elementary cycle among the children of each module, deterministic order.
    fn cycles(&self) -> Vec<Cycle> {
        let mut by_parent: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            let parent = from[..from.len() - 1].to_vec();
            by_parent
                .entry(parent)
                .or_default()
                .extend([from.clone(), to.clone()]);
        }
        let mut cycles = Vec::new();
        for nodes in by_parent.values() {
            let nodes: Vec<&ModPath> = nodes.iter().collect();
            let index = |m: &ModPath| nodes.iter().position(|n| *n == m);
            let mut adjacency = vec![Vec::new(); nodes.len()];
            for (from, to) in self.edges.keys() {
                if let (Some(a), Some(b)) = (index(from), index(to)) {
                    adjacency[a].push(b);
                }
            }
            for group in strongly_connected(&adjacency) {
                let found = elementary_cycles(&adjacency, &group, MAX_CYCLES_PER_GROUP);
                cycles.extend(
                    found
                        .into_iter()
                        .map(|c| Cycle(c.into_iter().map(|i| nodes[i].clone()).collect())),
                );
            }
        }
        cycles
    }
}

/// The edge between the sibling modules where `from` and `to` part, if `to` names a module
/// other than `from`'s own ancestors and descendants.
fn sibling_edge(
    from: &ModPath,
    to: &[String],
    known: &BTreeSet<&ModPath>,
) -> Option<(ModPath, ModPath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common >= from.len() || common >= to.len() {
        return None;
    }
    let a = from[..=common].to_vec();
    let b = to[..=common].to_vec();
    known.contains(&b).then_some((a, b))
}

/// A path used in module `from`, resolved to the crate path it names.
struct Reference {
    from: ModPath,
    to: Vec<String>,
    evidence: Evidence,
}

/// Parses `file` (module `path`) and the files of its `mod x;` declarations.
fn load_file(
    file: &Path,
    dir: &Path,
    path: ModPath,
    modules: &mut Vec<ModPath>,
    references: &mut Vec<Reference>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let syntax =
        syn::parse_file(&text).with_context(|| format!("cannot parse {}", file.display()))?;
    let mut collector = Collector {
        file,
        scopes: vec![Scope::new(path.clone(), &syntax.items)],
        references,
        modules,
        out_of_line: Vec::new(),
    };
    collector.modules.push(path);
    collector.visit_file(&syntax);
    for (child, name) in std::mem::take(&mut collector.out_of_line) {
        let (child_file, child_dir) = child_file(file, dir, &child, &name)?;
        load_file(&child_file, &child_dir, child, modules, references)?;
    }
    Ok(())
}

/// The file of module `name` declared as `mod name;` in `parent` (`dir` holds the children of
/// a `lib.rs` or `mod.rs`), and the directory of its own children.
fn child_file(
    parent: &Path,
    dir: &Path,
    child: &ModPath,
    name: &str,
) -> Result<(PathBuf, PathBuf)> {
    let is_dir_module = parent
        .file_name()
        .is_some_and(|n| n == "lib.rs" || n == "mod.rs" || n == "main.rs");
    let base = if is_dir_module {
        dir.to_path_buf()
    } else {
        let stem = parent.file_stem().unwrap_or_default();
        dir.join(stem)
    };
    let flat = base.join(format!("{name}.rs"));
    if flat.is_file() {
        return Ok((flat, base.join(name)));
    }
    let nested = base.join(name).join("mod.rs");
    if nested.is_file() {
        return Ok((nested, base.join(name)));
    }
    bail!(
        "module {} has no file ({} or {})",
        child.join("::"),
        flat.display(),
        nested.display()
    )
}

/// A module being visited: its path and the names of its child modules.
struct Scope {
    path: ModPath,
    children: BTreeSet<String>,
}

impl Scope {
    fn new(path: ModPath, items: &[syn::Item]) -> Scope {
        let children = items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Mod(m) if !is_test_only(&m.attrs) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect();
        Scope { path, children }
    }
}

struct Collector<'a> {
    file: &'a Path,
    scopes: Vec<Scope>,
    references: &'a mut Vec<Reference>,
    modules: &'a mut Vec<ModPath>,
    /// `mod x;` declarations met: (module path, name), loaded after this file.
    out_of_line: Vec<(ModPath, String)>,
}

impl Collector<'_> {
    fn scope(&self) -> &Scope {
        // The file's own scope is pushed first and never popped.
        &self.scopes[self.scopes.len() - 1]
    }

    /// Records `segments` (as written) if it names something of this crate.
    fn reference(&mut self, segments: &[String], line: usize) {
        let scope = self.scope();
        let Some(to) = resolve(&scope.path, &scope.children, segments) else {
            return;
        };
        self.references.push(Reference {
            from: scope.path.clone(),
            to,
            evidence: Evidence {
                file: self.file.to_path_buf(),
                line,
                path: segments.join("::"),
            },
        });
    }
}

/// The crate path that `segments`, used in module `module` with child modules `children`,
/// names; `None` for paths outside the crate (std, dependencies, local names).
fn resolve(
    module: &[String],
    children: &BTreeSet<String>,
    segments: &[String],
) -> Option<Vec<String>> {
    let first = segments.first()?;
    match first.as_str() {
        "crate" => Some(segments[1..].to_vec()),
        "self" => Some([module, &segments[1..]].concat()),
        "super" => {
            let supers = segments.iter().take_while(|s| *s == "super").count();
            let base = module.get(..module.len().checked_sub(supers)?)?;
            Some([base, &segments[supers..]].concat())
        }
        name if children.contains(name) => Some([module, segments].concat()),
        _ => None,
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_test_only(&m.attrs) {
            return;
        }
        let mut path = self.scope().path.clone();
        path.push(m.ident.to_string());
        match &m.content {
            Some((_, items)) => {
                self.modules.push(path.clone());
                self.scopes.push(Scope::new(path, items));
                for item in items {
                    self.visit_item(item);
                }
                self.scopes.pop();
            }
            None => self.out_of_line.push((path, m.ident.to_string())),
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_test_only(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_test_only(&u.attrs) {
            return;
        }
        let line = u.use_token.span.start().line;
        let mut paths = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut paths);
        for p in paths {
            self.reference(&p, line);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.reference(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        for (segments, line) in token_paths(m.tokens.clone()) {
            self.reference(&segments, line);
        }
        syn::visit::visit_macro(self, m);
    }
}

/// Every path a `use` tree imports (`use a::{b, c::*}`: `a::b`, `a::c`).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(with(prefix, &n.ident)),
        syn::UseTree::Rename(r) => out.push(with(prefix, &r.ident)),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

/// `prefix::ident`, or `prefix` alone for `self` (`use a::{self}` imports `a`).
fn with(prefix: &[String], ident: &syn::Ident) -> Vec<String> {
    let mut path = prefix.to_vec();
    if ident != "self" || path.is_empty() {
        path.push(ident.to_string());
    }
    path
}

/// The `a::b::c` paths in a macro's tokens (its arguments are not parsed as Rust), with the line
/// of their first segment.
fn token_paths(tokens: TokenStream) -> Vec<(Vec<String>, usize)> {
    let mut flat = Vec::new();
    flatten(tokens, &mut flat);
    let mut paths = Vec::new();
    let mut i = 0;
    while i < flat.len() {
        let TokenTree::Ident(first) = &flat[i] else {
            i += 1;
            continue;
        };
        let mut segments = vec![first.to_string()];
        let mut j = i + 1;
        while let (
            Some(TokenTree::Punct(a)),
            Some(TokenTree::Punct(b)),
            Some(TokenTree::Ident(next)),
        ) = (flat.get(j), flat.get(j + 1), flat.get(j + 2))
        {
            if a.as_char() != ':' || b.as_char() != ':' {
                break;
            }
            segments.push(next.to_string());
            j += 3;
        }
        if segments.len() > 1 {
            paths.push((segments, first.span().start().line));
        }
        i = j;
    }
    paths
}

fn flatten(tokens: TokenStream, out: &mut Vec<TokenTree>) {
    for token in tokens {
        match token {
            TokenTree::Group(g) => flatten(g.stream(), out),
            other => out.push(other),
        }
    }
}

/// Tarjan's strongly connected components with more than one node.
fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    fn connect(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.adjacency[v] {
            match s.index[w] {
                None => {
                    connect(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort_unstable();
                s.groups.push(group);
            }
        }
    }
    let n = adjacency.len();
    let mut state = State {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            connect(&mut state, v);
        }
    }
    state.groups.sort();
    state.groups
}

/// The elementary cycles inside `group`, each starting at its smallest node, at most `limit`.
fn elementary_cycles(adjacency: &[Vec<usize>], group: &[usize], limit: usize) -> Vec<Vec<usize>> {
    fn extend(
        adjacency: &[Vec<usize>],
        group: &[usize],
        path: &mut Vec<usize>,
        limit: usize,
        out: &mut Vec<Vec<usize>>,
    ) {
        let start = path[0];
        let Some(&last) = path.last() else { return };
        let mut next: Vec<usize> = adjacency[last]
            .iter()
            .copied()
            .filter(|w| group.contains(w) && *w >= start)
            .collect();
        next.sort_unstable();
        next.dedup();
        for w in next {
            if out.len() >= limit {
                return;
            }
            if w == start {
                out.push(path.clone());
            } else if !path.contains(&w) {
                path.push(w);
                extend(adjacency, group, path, limit, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for &start in group {
        extend(adjacency, group, &mut vec![start], limit, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path relative to the crate's src, contents) into a fresh directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn cycles_of(files: &[(&str, &str)]) -> Vec<String> {
        let dir = tree(files);
        let graph = ModuleGraph::load(dir.path()).expect("loads");
        graph
            .cycles()
            .iter()
            .map(|c| c.names().join(" -> "))
            .collect()
    }

    #[test]
    fn a_cycle_through_four_modules_is_found() {
        let cycles = cycles_of(&[
            (
                "lib.rs",
                "pub mod model; pub mod report; pub mod tracer; pub mod unwind;",
            ),
            ("model.rs", "use crate::report::SiteReport;"),
            ("report.rs", "use crate::{unwind::{self, Frame}, cli};"),
            ("unwind.rs", "pub fn f() { crate::tracer::load(); }"),
            ("tracer.rs", "use super::model::Sites;"),
        ]);
        assert_eq!(cycles, ["model -> report -> unwind -> tracer -> model"]);
    }

    #[test]
    fn std_paths_submodules_and_parents_make_no_cycle() {
        let cycles = cycles_of(&[
            (
                "lib.rs",
                "pub mod ui; pub mod model; use std::collections::BTreeMap; use ui::App;",
            ),
            ("model.rs", "use std::fmt; use crate::ui::format::bytes;"),
            (
                "ui/mod.rs",
                "mod draw; pub mod format; pub struct App; use self::draw::render;",
            ),
            (
                "ui/draw.rs",
                "use super::{App, format}; use crate::ui::format::bytes;",
            ),
            (
                "ui/format.rs",
                "pub fn bytes() {} fn f() { let _ = super::App; }",
            ),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn a_cycle_between_submodules_is_named_with_its_parent() {
        let cycles = cycles_of(&[
            ("lib.rs", "pub mod ui;"),
            ("ui/mod.rs", "mod draw; mod live;"),
            ("ui/draw.rs", "use super::live::State;"),
            (
                "ui/live.rs",
                "fn f() { format!(\"{}\", crate::ui::draw::panel()); }",
            ),
        ]);
        assert_eq!(cycles, ["ui::draw -> ui::live -> ui::draw"]);
    }

    #[test]
    fn test_code_and_inline_modules_are_handled() {
        let cycles = cycles_of(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            (
                "a.rs",
                "use crate::b::X; #[cfg(test)] mod tests { use crate::b::Y; }",
            ),
            (
                "b.rs",
                "pub mod inner { pub fn g() { super::super::a::f(); } } \
                 #[cfg(test)] fn only_in_tests() { crate::a::f(); }",
            ),
        ]);
        assert_eq!(cycles, ["a -> b -> a"]);

        let cycles = cycles_of(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "#[cfg(test)] mod tests { use crate::a::f; }"),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn every_cycle_of_a_group_is_listed() {
        let cycles = cycles_of(&[
            ("lib.rs", "mod a; mod b; mod c;"),
            ("a.rs", "use crate::b::X; use crate::c::Y;"),
            ("b.rs", "use crate::a::Z;"),
            ("c.rs", "use crate::a::Z;"),
        ]);
        assert_eq!(cycles, ["a -> b -> a", "a -> c -> a"]);
    }

    #[test]
    fn paths_are_resolved_against_the_module_using_them() {
        let children: BTreeSet<String> = ["child".to_string()].into();
        let module = vec!["ui".to_string(), "draw".to_string()];
        let p = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            resolve(&module, &children, &p("crate::model::X")),
            Some(p("model::X"))
        );
        assert_eq!(
            resolve(&module, &children, &p("super::App")),
            Some(p("ui::App"))
        );
        assert_eq!(
            resolve(&module, &children, &p("super::super::cli")),
            Some(p("cli"))
        );
        assert_eq!(
            resolve(&module, &children, &p("self::child::f")),
            Some(p("ui::draw::child::f"))
        );
        assert_eq!(
            resolve(&module, &children, &p("child::f")),
            Some(p("ui::draw::child::f"))
        );
        assert_eq!(resolve(&module, &children, &p("std::fmt")), None);
        assert_eq!(
            resolve(&module, &children, &p("super::super::super::x")),
            None
        );
    }
}
