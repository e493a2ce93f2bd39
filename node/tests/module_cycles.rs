//! No crate of the workspace has a module cycle: the modules of each crate form a one-way
//! stack, so that each can be read, tested and changed knowing only those below it. CI runs
//! this check as a step of its own (`.ci/run`, "module cycles"). For the node, a second test
//! holds the stack to the layers `node/src/lib.rs` describes ([`NODE_LAYERS`]).
//!
//! Why our own check: `cargo-modules` (the usual tool) needs a newer rustc in its current
//! release, and its last release for our toolchain did not finish building within nine
//! minutes on a CI machine (it compiles much of rust-analyzer). This check parses the
//! sources with `syn`, as the compiler would see them, and finds cycles with petgraph's
//! strongly connected components.
//!
//! The graph, for each crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, `tests/*.rs`,
//! `benches/*.rs`, `examples/*.rs`):
//! - a node is a module in a file of its own; an inline module (`mod x { .. }`) belongs to
//!   the file it is written in, and `#[cfg(test)]` items are left out (tests may look
//!   anywhere);
//! - an edge goes from a module to another when its code names it: `use` declarations and
//!   paths in code (including in macro calls) that start with `crate::`, `super::`,
//!   `self::` or a child module's name. Declaring a child (`mod x;`) is not an edge, and
//!   neither are doc comments: they may point anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};
use syn::visit::Visit;

/// One crate's module graph.
#[derive(Default)]
struct Graph {
    /// Every module (inline ones too), as `crate::a::b`, mapped to the file module it is in.
    modules: BTreeMap<String, String>,
    /// Paths named in each file module: (module path where named, path, as written).
    named: Vec<(String, Vec<String>, Vec<String>)>,
    errors: Vec<String>,
}

fn has_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| matches!(m, syn::Meta::Path(p) if p.is_ident("test")))
    })
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Walks one file: records its modules and the paths its code names.
struct FileVisitor<'g> {
    graph: &'g mut Graph,
    /// The file module this file is.
    file_module: String,
    /// The module the visitor is in now (inline modules push onto it).
    current: Vec<String>,
    /// Where the files of child modules declared here live.
    child_dir: PathBuf,
    /// The directory of this file (for `#[path]`).
    file_dir: PathBuf,
}

impl FileVisitor<'_> {
    fn name(&mut self, segments: Vec<String>) {
        if !segments.is_empty() {
            self.graph
                .named
                .push((self.file_module.clone(), self.current.clone(), segments));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => self.name(prefix.clone()),
            syn::UseTree::Name(n) => {
                let mut p = prefix.clone();
                p.push(n.ident.to_string());
                self.name(p);
            }
            syn::UseTree::Rename(r) => {
                let mut p = prefix.clone();
                if r.ident != "self" {
                    p.push(r.ident.to_string());
                }
                self.name(p);
            }
            syn::UseTree::Glob(_) => self.name(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths in a macro's tokens: `crate::a::b`, `super::x`, `self::x`.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let flat: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            match &flat[i] {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id)
                    if *id == "crate" || *id == "super" || *id == "self" =>
                {
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    loop {
                        let colons = matches!((&flat.get(j), &flat.get(j + 1)),
                            (Some(proc_macro2::TokenTree::Punct(a)), Some(proc_macro2::TokenTree::Punct(b)))
                            if a.as_char() == ':' && b.as_char() == ':');
                        match (colons, flat.get(j + 2)) {
                            (true, Some(proc_macro2::TokenTree::Ident(next))) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.name(segs);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for FileVisitor<'_> {
    // Doc comments and other attributes name nothing the module depends on.
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}

    // `pub(super)` and `pub(in crate::x)` say who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => &[],
        };
        if has_cfg_test(attrs) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let name = m.ident.to_string();
        let mut path = self.current.clone();
        path.push(name.clone());
        let key = path.join("::");
        match &m.content {
            Some((_, items)) => {
                self.graph.modules.insert(key, self.file_module.clone());
                self.current.push(name.clone());
                let saved = self.child_dir.clone();
                self.child_dir = self.child_dir.join(&name);
                for item in items {
                    self.visit_item(item);
                }
                self.child_dir = saved;
                self.current.pop();
            }
            None => {
                let file = match path_attr(&m.attrs) {
                    Some(p) => self.file_dir.join(p),
                    None => {
                        let flat = self.child_dir.join(format!("{name}.rs"));
                        if flat.exists() {
                            flat
                        } else {
                            self.child_dir.join(&name).join("mod.rs")
                        }
                    }
                };
                load(self.graph, &file, path);
            }
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.name(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        self.tokens(m.tokens.clone());
    }
}

/// Load the file module `module` (e.g. `crate::api`) from `file`, and its children.
fn load(graph: &mut Graph, file: &Path, module: Vec<String>) {
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            graph.errors.push(format!("{}: {e}", file.display()));
            return;
        }
    };
    let parsed = match syn::parse_file(&src) {
        Ok(f) => f,
        Err(e) => {
            graph.errors.push(format!("{}: {e}", file.display()));
            return;
        }
    };
    let key = module.join("::");
    graph.modules.insert(key.clone(), key.clone());
    let file_dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    // `mod.rs`, and crate roots, keep their children beside them; `a.rs` keeps them in `a/`.
    let child_dir = if stem == "mod" || module.len() == 1 {
        file_dir.clone()
    } else {
        file_dir.join(stem)
    };
    let mut v = FileVisitor {
        graph,
        file_module: key,
        current: module,
        child_dir,
        file_dir,
    };
    for item in &parsed.items {
        v.visit_item(item);
    }
}

/// The file module a path named in `current` (inside file module `from`) leads to, if it
/// leads to one of this crate's modules.
fn resolve(graph: &Graph, current: &[String], segs: &[String]) -> Option<String> {
    let mut abs: Vec<String> = match segs[0].as_str() {
        "crate" => segs.to_vec(),
        "self" => current.iter().chain(&segs[1..]).cloned().collect(),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let keep = current.len().checked_sub(ups)?.max(1);
            current[..keep]
                .iter()
                .chain(&segs[ups..])
                .cloned()
                .collect()
        }
        first => {
            // A child module's name (2018 paths are relative to the current module).
            let mut child = current.to_vec();
            child.push(first.to_string());
            if !graph.modules.contains_key(&child.join("::")) {
                return None;
            }
            current.iter().chain(segs).cloned().collect()
        }
    };
    while !abs.is_empty() {
        if let Some(file) = graph.modules.get(&abs.join("::")) {
            return Some(file.clone());
        }
        abs.pop();
    }
    None
}

/// Cycles tolerated for now: the crate root, relative to the workspace, and the modules of
/// the cycle (each tolerated as it stands or smaller, never larger). Empty since the
/// operator's and the node agent's cycles were broken (2026-12-05); an entry whose cycle is
/// gone fails the check, so the list cannot go stale.
const KNOWN: &[(&str, &[&str])] = &[];

/// A crate's cycle: its modules, and a description naming an example of each edge in it.
type Cycle = (BTreeSet<String>, Vec<String>);

/// The cycles of one crate: each a set of modules, with an example of every edge inside it.
fn cycles(root: &Path) -> Result<Vec<Vec<String>>, Vec<String>> {
    Ok(cycle_sets(root)?
        .into_iter()
        .map(|(_, lines)| lines)
        .collect())
}

/// A crate's file modules, and its edges with an example path for each.
type Edges = (BTreeSet<String>, BTreeMap<(String, String), String>);

fn edges(root: &Path) -> Result<Edges, Vec<String>> {
    let mut graph = Graph::default();
    load(&mut graph, root, vec!["crate".into()]);
    if !graph.errors.is_empty() {
        return Err(graph.errors);
    }
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, current, segs) in &graph.named {
        if let Some(to) = resolve(&graph, current, segs)
            && to != *from
        {
            edges
                .entry((from.clone(), to))
                .or_insert_with(|| segs.join("::"));
        }
    }
    Ok((graph.modules.into_values().collect(), edges))
}

fn cycle_sets(root: &Path) -> Result<Vec<Cycle>, Vec<String>> {
    let (modules, edges) = edges(root)?;
    let mut g = DiGraph::<String, ()>::new();
    let mut index: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for file in &modules {
        index.insert(file.clone(), g.add_node(file.clone()));
    }
    for (from, to) in edges.keys() {
        g.add_edge(index[from], index[to], ());
    }
    let mut out = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&g) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<String> = scc.iter().map(|i| g[*i].clone()).collect();
        let mut lines = vec![format!(
            "cycle among {}:",
            members
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )];
        for ((from, to), via) in &edges {
            if members.contains(from) && members.contains(to) {
                lines.push(format!("  {from} -> {to}   (names `{via}`)"));
            }
        }
        out.push((members, lines));
    }
    Ok(out)
}

/// Every crate root of the workspace member in `dir`.
fn crate_roots(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for f in ["src/lib.rs", "src/main.rs"] {
        if dir.join(f).exists() {
            roots.push(dir.join(f));
        }
    }
    for sub in ["src/bin", "tests", "benches", "examples"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                if p.extension().is_some_and(|e| e == "rs") {
                    Some(p)
                } else if p.join("main.rs").exists() {
                    Some(p.join("main.rs"))
                } else {
                    None
                }
            })
            .collect();
        found.sort();
        roots.extend(found);
    }
    roots
}

/// The members listed in the workspace's Cargo.toml.
fn members(workspace: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(workspace.join("Cargo.toml")).unwrap();
    let start = manifest.find("members").expect("a workspace members list");
    let list = &manifest[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .map(|s| workspace.join(s))
        .collect()
}

#[test]
fn no_crate_of_the_workspace_has_a_module_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut report = Vec::new();
    let mut checked = 0;
    let mut known_seen = BTreeSet::new();
    for member in members(workspace) {
        let roots = crate_roots(&member);
        assert!(!roots.is_empty(), "no crate root in {}", member.display());
        for root in roots {
            checked += 1;
            let rel = root
                .strip_prefix(workspace)
                .unwrap_or(&root)
                .display()
                .to_string();
            match cycle_sets(&root) {
                Ok(found) => {
                    for (modules, lines) in found {
                        let known = KNOWN.iter().position(|(r, m)| {
                            *r == rel && modules.iter().all(|x| m.contains(&x.as_str()))
                        });
                        match known {
                            Some(k) => {
                                known_seen.insert(k);
                                println!(
                                    "known cycle, tolerated for now, in {rel}: {}",
                                    lines.join("\n")
                                );
                            }
                            None => report.push(format!("{rel}: {}", lines.join("\n"))),
                        }
                    }
                }
                Err(errors) => report.push(format!("{rel}: {}", errors.join("\n"))),
            }
        }
    }
    for (k, (root, modules)) in KNOWN.iter().enumerate() {
        if !known_seen.contains(&k) {
            report.push(format!(
                "the known cycle in {root} among {modules:?} is gone: remove it from KNOWN"
            ));
        }
    }
    assert!(checked >= 5, "only {checked} crate roots found");
    assert!(
        report.is_empty(),
        "module cycles (a module must not depend, directly or not, on one that depends on it):\n{}",
        report.join("\n\n")
    );
    println!("{checked} crate roots checked: no module cycle but the known ones above");
}

/// The node's layers, bottom to top, as `node/src/lib.rs` describes them: a module may use
/// modules of its own layer or below, never above. (Within a layer, the cycle check keeps
/// the order one-way.) Each module is named by its path; a prefix covers its children.
const NODE_LAYERS: &[&[&str]] = &[
    // Storage and commands.
    &["types", "store", "identity", "metrics", "background"],
    // Configuration, TLS, credentials, and what both HTTP ports share.
    &["config", "auth", "tls", "web", "listener"],
    // Peer traffic and the write path below HTTP.
    &[
        "network",
        "batcher",
        "readindex",
        "watchdog",
        "snapshots",
        "forward",
        "forward::client",
    ],
    // The shared state.
    &["app"],
    // The client API and the peer server, with the leader-side of forwarding.
    &["api", "peer", "forward::leader", "forward::serve"],
    &["node"],
    // The command line, which no server module may use.
    &["cli"],
];

fn node_layer(module: &str) -> Option<usize> {
    let name = module.strip_prefix("crate::")?;
    let mut best: Option<(usize, usize)> = None;
    for (layer, names) in NODE_LAYERS.iter().enumerate() {
        for n in *names {
            let covers = name == *n || name.starts_with(&format!("{n}::"));
            if covers && best.is_none_or(|(len, _)| n.len() > len) {
                best = Some((n.len(), layer));
            }
        }
    }
    best.map(|(_, layer)| layer)
}

#[test]
fn the_node_is_a_one_way_stack_of_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let (modules, edges) = edges(&root).unwrap();
    let unplaced: Vec<&String> = modules
        .iter()
        .filter(|m| *m != "crate" && node_layer(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer of NODE_LAYERS: {unplaced:?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| {
            // The crate root declares the modules and re-exports `pki` (another crate's).
            from != "crate" && to != "crate" && node_layer(from).unwrap() < node_layer(to).unwrap()
        })
        .map(|((from, to), via)| format!("{from} -> {to} (names `{via}`)"))
        .collect();
    assert!(
        upward.is_empty(),
        "modules that use a layer above their own:\n{}",
        upward.join("\n")
    );
}

/// A crate of `files` (path, source) in a temporary directory; its root is `src/lib.rs`.
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, src) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, src).unwrap();
    }
    dir
}

#[test]
fn a_cycle_is_found_and_named() {
    let dir = fixture(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A(pub B);\n"),
        ("src/b.rs", "pub struct B(pub Box<crate::c::C>);\n"),
        // A path in a macro call counts as well.
        (
            "src/c/mod.rs",
            "pub struct C;\nfn f() { let _ = format!(\"{:?}\", std::mem::size_of::<crate::a::A>()); let _ = vec![super::a::A::default]; }\n",
        ),
    ]);
    let found = cycles(&dir.path().join("src/lib.rs")).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let text = found[0].join("\n");
    assert!(
        text.contains("cycle among crate::a, crate::b, crate::c"),
        "{text}"
    );
    assert!(text.contains("crate::b -> crate::c"), "{text}");
    assert!(text.contains("crate::c -> crate::a"), "{text}");
}

#[test]
fn one_way_stacks_tests_docs_and_declarations_make_no_cycle() {
    let dir = fixture(&[
        (
            "src/lib.rs",
            "//! Uses [`crate::top`].\npub mod top;\npub mod low;\n",
        ),
        // A parent that declares children and uses them; children that use their siblings.
        (
            "src/top/mod.rs",
            "pub mod left;\npub mod right;\npub use left::L;\n",
        ),
        (
            "src/top/left.rs",
            "pub struct L(pub super::right::R, pub crate::low::Low);\n",
        ),
        (
            "src/top/right.rs",
            "/// See [`crate::top::left::L`].\npub struct R;\n",
        ),
        // Test code and doc comments may point up the stack.
        (
            "src/low.rs",
            "/// Used by [`crate::top`].\npub struct Low;\n#[cfg(test)]\nmod tests {\n    use crate::top::L;\n}\n",
        ),
    ]);
    assert_eq!(
        cycles(&dir.path().join("src/lib.rs")).unwrap(),
        Vec::<Vec<String>>::new()
    );
}

#[test]
fn a_parent_and_child_that_use_each_other_are_a_cycle() {
    let dir = fixture(&[
        ("src/lib.rs", "pub mod api;\n"),
        (
            "src/api/mod.rs",
            "pub mod kv;\npub mod other;\npub struct Error;\npub fn router() { kv::get(); other::f(); }\n",
        ),
        (
            "src/api/kv.rs",
            "pub fn get() -> Option<super::Error> { None }\n",
        ), // Visibility is not use: `other` is below `api`, not in a cycle with it.
        (
            "src/api/other.rs",
            "pub(super) fn f() {}\npub(in crate::api) fn g() {}\n",
        ),
    ]);
    let found = cycles(&dir.path().join("src/lib.rs")).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0][0].ends_with("cycle among crate::api, crate::api::kv:"),
        "{found:?}"
    );
}
