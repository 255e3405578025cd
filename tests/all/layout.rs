//! The shape of `host/src`, checked: imports point down, and files stay short.
//!
//! **Imports point down** (STYLE.md, habit 1). Every `.rs` file under
//! `host/src` is parsed with `syn`, starting from the two crate roots the
//! package has: `lib.rs` (the `sluice` library) and `main.rs` (the `sluice`
//! binary, whose `mod cli;` tree is its own crate; its `sluice::…` paths go to
//! the library, another crate, and are no edge here). Each module, file or
//! inline (`mod tests { … }`), gets its path (`supervisor/connector.rs` is
//! `supervisor::connector`, a `mod.rs` is its folder). Every path that
//! starts with `crate::`, `super::` or `self::` — in `use` trees (grouped
//! ones too), in types and expressions, and in the tokens of macro calls —
//! is resolved to the deepest module it names. A reference from module F to
//! module T, where neither is an ancestor of the other, is an edge between
//! the two children of their nearest common ancestor that hold F and T: for
//! every parent module its direct children are the nodes, and A → B when
//! anything in A's subtree uses anything in B's. A child using its ancestor,
//! or a parent reaching into its children, is no edge. The test fails on any
//! cycle among siblings and prints, per cycle, every edge in it with the
//! `file:line` of one reference. The fix for a cycle is a small module below
//! both users holding what they share.
//!
//! **Files stay short.** No `.rs` file under `host/src` has more than
//! [`MAX_LINES`] lines, unless one of its first ten lines is a comment (`//`
//! or `//!`) whose text starts with `Long:` and goes on with the reason, as
//! in `// Long: the log's recovery tests need the whole log in view.`

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The most lines a file under `host/src` has without a stated reason.
const MAX_LINES: usize = 600;

/// A module's path inside its crate, `[]` for the crate root.
type ModPath = Vec<String>;

/// One reference from a module to a module, and where it is written.
#[derive(Debug, Clone)]
struct Reference {
    from: ModPath,
    to: ModPath,
    file: PathBuf,
    line: usize,
}

/// One crate of the package: its modules, and the references between them.
#[derive(Debug)]
struct Crate {
    name: &'static str,
    references: Vec<Reference>,
}

/// The `host` package's folder: cargo's `CARGO_MANIFEST_DIR` when it runs
/// the test (so the check can be pointed at another copy of the tree), else
/// where the test was built.
fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn src_dir() -> PathBuf {
    package_dir().join("src")
}

fn relative(path: &Path) -> String {
    let package = package_dir();
    let root = package.parent().unwrap_or(&package);
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading host/src") {
            let path = entry.expect("reading host/src").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A parsed file and the module it is.
struct SourceFile {
    path: PathBuf,
    module: ModPath,
    ast: syn::File,
}

/// Loads the crate rooted at `root` (`lib.rs` or `main.rs`), following its
/// `mod name;` declarations to `name.rs` or `name/mod.rs`.
fn load_crate(name: &'static str, root: &Path, seen: &mut BTreeSet<PathBuf>) -> Crate {
    let mut files = Vec::new();
    let mut todo = vec![(root.to_path_buf(), ModPath::new())];
    while let Some((path, module)) = todo.pop() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| {
            panic!("parsing {}:{}: {e}", relative(&path), e.span().start().line)
        });
        // Where this module's own `mod x;` files live: beside a crate root
        // or a `mod.rs`, in a folder named after the module otherwise.
        let is_dir_owner = module.is_empty() || path.file_name().is_some_and(|f| f == "mod.rs");
        let child_dir = if is_dir_owner {
            path.parent().expect("a file has a folder").to_path_buf()
        } else {
            path.with_extension("")
        };
        collect_mod_files(&ast.items, &child_dir, &module, &mut todo);
        seen.insert(path.clone());
        files.push(SourceFile { path, module, ast });
    }

    let mut modules = BTreeSet::new();
    for file in &files {
        modules.insert(file.module.clone());
        collect_inline_modules(&file.ast.items, &file.module, &mut modules);
    }
    let mut references = Vec::new();
    for file in &files {
        let mut visitor = RefVisitor {
            file: &file.path,
            stack: vec![file.module.clone()],
            modules: &modules,
            out: &mut references,
        };
        visitor.visit_file(&file.ast);
    }
    Crate { name, references }
}

/// Queues the files of the `mod name;` items of a module (inline modules'
/// own `mod name;` items live in a subfolder named after them).
fn collect_mod_files(
    items: &[syn::Item],
    dir: &Path,
    module: &ModPath,
    todo: &mut Vec<(PathBuf, ModPath)>,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        let name = m.ident.to_string();
        let mut child = module.clone();
        child.push(name.clone());
        match &m.content {
            Some((_, inner)) => collect_mod_files(inner, &dir.join(&name), &child, todo),
            None => {
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let path = if flat.exists() { flat } else { nested };
                assert!(
                    path.exists(),
                    "no file for `mod {name};` in {}",
                    dir.display()
                );
                todo.push((path, child));
            }
        }
    }
}

fn collect_inline_modules(items: &[syn::Item], module: &ModPath, out: &mut BTreeSet<ModPath>) {
    for item in items {
        if let syn::Item::Mod(m) = item
            && let Some((_, inner)) = &m.content
        {
            let mut child = module.clone();
            child.push(m.ident.to_string());
            out.insert(child.clone());
            collect_inline_modules(inner, &child, out);
        }
    }
}

/// Walks a file, keeping track of the (inline) module it is in, and records
/// every `crate::`/`super::`/`self::` path as a [`Reference`].
struct RefVisitor<'a> {
    file: &'a Path,
    stack: Vec<ModPath>,
    modules: &'a BTreeSet<ModPath>,
    out: &'a mut Vec<Reference>,
}

impl RefVisitor<'_> {
    fn current(&self) -> &ModPath {
        self.stack.last().expect("always in a module")
    }

    /// Records the module `segments` (a path as written) names, if it
    /// starts with `crate`, `super` or `self`.
    fn record(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else {
            return;
        };
        let here = self.current().clone();
        let (mut base, rest) = match first.as_str() {
            "crate" => (ModPath::new(), &segments[1..]),
            "self" | "super" => {
                let mut base = here.clone();
                let mut rest = segments;
                if rest.first().is_some_and(|s| s == "self") {
                    rest = &rest[1..];
                }
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            _ => return,
        };
        // The deepest module the path names; what follows is an item.
        for segment in rest {
            let mut deeper = base.clone();
            deeper.push(segment.clone());
            if self.modules.contains(&deeper) {
                base = deeper;
            } else {
                break;
            }
        }
        self.out.push(Reference {
            from: here,
            to: base,
            file: self.file.to_path_buf(),
            line,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            syn::UseTree::Glob(g) => {
                let line = g.star_token.span.start().line;
                self.record(prefix, line);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        // `use a::{self}` names `a` itself.
        if ident != "self" || path.is_empty() {
            path.push(ident.to_string());
        }
        self.record(&path, ident.span().start().line);
    }

    /// `crate :: a :: b` sequences in a macro call's tokens (`format!`,
    /// `tracing::info!`, `matches!` …), which `syn` leaves unparsed.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if (id == "crate" || id == "super" || id == "self")
                        && is_path_sep(&tokens, i + 1) =>
                {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while is_path_sep(&tokens, j) {
                        let TokenTree::Ident(next) = &tokens[j + 2] else {
                            break;
                        };
                        segments.push(next.to_string());
                        j += 3;
                    }
                    self.record(&segments, line);
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Whether `tokens[i..]` starts with `::` followed by an identifier.
fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(_)))
            if a.as_char() == ':' && b.as_char() == ':'
    )
}

impl<'ast> Visit<'ast> for RefVisitor<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            let mut inner = self.current().clone();
            inner.push(m.ident.to_string());
            self.stack.push(inner);
            for item in items {
                self.visit_item(item);
            }
            self.stack.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            if let Some(first) = p.segments.first() {
                self.record(&segments, first.ident.span().start().line);
            }
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    // `pub(in crate::x)` and `pub(super)` are visibility, not use.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

fn is_ancestor(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// One edge between siblings, with its first reference and how many there are.
#[derive(Debug)]
struct Edge {
    example: Reference,
    count: usize,
}

/// Sibling edges, per parent module: parent -> (from child, to child) -> edge.
type Edges = BTreeMap<ModPath, BTreeMap<(String, String), Edge>>;

fn sibling_edges(krate: &Crate) -> Edges {
    let mut edges = Edges::new();
    for r in &krate.references {
        if is_ancestor(&r.from, &r.to) || is_ancestor(&r.to, &r.from) {
            continue;
        }
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        let parent = r.from[..common].to_vec();
        let key = (r.from[common].clone(), r.to[common].clone());
        edges
            .entry(parent)
            .or_default()
            .entry(key)
            .and_modify(|e| e.count += 1)
            .or_insert_with(|| Edge {
                example: r.clone(),
                count: 1,
            });
    }
    edges
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), Edge>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        next: BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn connect(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.next.get(v).cloned().unwrap_or_default() {
                if !self.index.contains_key(w) {
                    self.connect(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    let mut nodes = BTreeSet::new();
    for (a, b) in edges.keys() {
        tarjan.next.entry(a.as_str()).or_default().push(b.as_str());
        nodes.insert(a.as_str());
        nodes.insert(b.as_str());
    }
    for v in nodes {
        if !tarjan.index.contains_key(v) {
            tarjan.connect(v);
        }
    }
    tarjan.found
}

fn show(krate: &Crate, module: &[String]) -> String {
    if module.is_empty() {
        format!("{} (crate root)", krate.name)
    } else {
        module.join("::")
    }
}

/// Every cycle among siblings in `krate`, one paragraph each.
fn report_cycles(krate: &Crate) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, edges) in &sibling_edges(krate) {
        for component in cycles(edges) {
            let mut text = format!(
                "cycle in {} among {{{}}}:\n",
                show(krate, parent),
                component.join(", ")
            );
            for ((a, b), edge) in edges {
                if component.contains(a) && component.contains(b) {
                    let r = &edge.example;
                    let _ = writeln!(
                        text,
                        "  {a} -> {b}: {}:{} ({} uses {}; {} reference{} in all)",
                        relative(&r.file),
                        r.line,
                        show(krate, &r.from),
                        show(krate, &r.to),
                        edge.count,
                        if edge.count == 1 { "" } else { "s" },
                    );
                }
            }
            found.push(text);
        }
    }
    found
}

fn crates() -> Vec<Crate> {
    let src = src_dir();
    let mut seen = BTreeSet::new();
    let crates = vec![
        load_crate("sluice", &src.join("lib.rs"), &mut seen),
        load_crate("sluice (binary)", &src.join("main.rs"), &mut seen),
    ];
    let stray: Vec<String> = rust_files(&src)
        .into_iter()
        .filter(|f| !seen.contains(f))
        .map(|f| relative(&f))
        .collect();
    assert!(
        stray.is_empty(),
        "files no crate root reaches through `mod`: {stray:?}"
    );
    crates
}

#[test]
fn module_imports_point_down() {
    let crates = crates();
    // The check sees references, or it would pass on anything.
    let total: usize = crates.iter().map(|c| c.references.len()).sum();
    assert!(total > 100, "only {total} references found in host/src");
    let found: Vec<String> = crates.iter().flat_map(report_cycles).collect();
    assert!(
        found.is_empty(),
        "{} import cycle(s) between sibling modules in host/src; move what both \
         sides share into a small module below both:\n\n{}",
        found.len(),
        found.join("\n")
    );
}

/// Whether one of the first ten lines is a `// Long: <reason>` comment.
fn states_why_long(text: &str) -> bool {
    text.lines().take(10).any(|line| {
        let line = line.trim_start();
        let Some(comment) = line.strip_prefix("//") else {
            return false;
        };
        let comment = comment.trim_start_matches(['/', '!']).trim_start();
        comment
            .get(..5)
            .is_some_and(|head| head.eq_ignore_ascii_case("long:"))
            && !comment[5..].trim().is_empty()
    })
}

#[test]
fn files_are_short_or_say_why() {
    let mut long = Vec::new();
    for file in rust_files(&src_dir()) {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let lines = text.lines().count();
        if lines > MAX_LINES && !states_why_long(&text) {
            long.push(format!("  {}: {lines} lines", relative(&file)));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines without a `// Long: <reason>` comment in \
         their first 10 lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_long_marker_needs_a_reason() {
    assert!(states_why_long(
        "//! Module.\n// Long: one table of tests.\n"
    ));
    assert!(states_why_long(
        "//! Long: the recovery tests need the log.\n"
    ));
    assert!(!states_why_long("// Long:\n"));
    assert!(!states_why_long("// a long story\n"));
    assert!(!states_why_long(&format!(
        "{}// Long: too late\n",
        "\n".repeat(10)
    )));
}

/// **The broker is a seam.** Above `broker/`, the host holds a
/// `broker::HostBroker` and calls the `Broker` trait; no file outside
/// `host/src/broker/` names a kind of broker, so a second kind is a new
/// folder under `broker/` and nothing else.
#[test]
fn nothing_above_the_broker_names_a_kind_of_broker() {
    let src = src_dir();
    let mut named = Vec::new();
    for file in rust_files(&src) {
        if file.starts_with(src.join("broker")) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file is readable");
        for (i, line) in text.lines().enumerate() {
            if line.contains("EmbeddedLog") || line.contains("broker::embedded") {
                named.push(format!("{}:{}: {}", relative(&file), i + 1, line.trim()));
            }
        }
    }
    assert!(
        named.is_empty(),
        "outside broker/, name `broker::HostBroker` and the `Broker` trait:\n{}",
        named.join("\n")
    );
}
