//! No import cycle between modules.
//!
//! A small scanner reads every file under `src/` (comments, strings and
//! `#[cfg(test)]` items blanked out), finds each reference from one module to
//! another — `use` trees, inline paths such as `crate::api::Limits` anywhere in
//! code, and `super::`/`self::` paths resolved to the module they name — and
//! checks that, under every parent module, the graph of its children is
//! acyclic. A child's whole subtree counts as the child, so `config` reaching
//! `api` and `api::validate` reaching `config` is a cycle between `config` and
//! `api`. A module using its own ancestor or descendant is not a cycle: a
//! parent is made of its children.
//!
//! A grep of `use crate::` lines misses most of these: both cycles found when
//! this test was written ran through an inline path or `super::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below the crate root: `["engine", "dispatch"]`.
type ModPath = Vec<String>;

/// Edges tolerated for now, as (from, to) module paths: a reference from the
/// first subtree into the second is left out of the graph.
///
/// ALLOW-LIST — the lead removes this entry when merging: `config` names
/// `api::Limits`, and the branch that moves `Limits` into `config` (wt-http)
/// ends that edge. The test fails while an entry names an edge that no longer
/// exists, so a stale entry cannot linger.
const ALLOWED_EDGES: &[(&str, &str)] = &[("config", "api")];

/// One module reaching another, with where it does.
#[derive(Debug, Clone)]
struct Reference {
    from: ModPath,
    to: ModPath,
    /// `src/config.rs:12: crate::api::Limits`
    site: String,
}

/// Every `.rs` file under `src` with the module it defines (`main.rs`, the
/// binary, is not part of the library's graph).
fn module_files(src: &Path) -> Vec<(PathBuf, ModPath)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap();
                let mut parts: ModPath = rel
                    .iter()
                    .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                    .collect();
                let last = parts.last().unwrap().clone();
                if parts.len() == 1 && last == "main" {
                    continue;
                }
                if last == "mod" || (parts.len() == 1 && last == "lib") {
                    parts.pop();
                }
                out.push((path, parts));
            }
        }
    }
    out.sort();
    out
}

/// The code with comments, string and char literals blanked to spaces (line
/// breaks kept, so line numbers hold).
fn strip_comments_and_literals(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        let end = if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            block_comment_end(&c, i)
        } else if c[i] == '"' {
            string_end(&c, i + 1)
        } else if !ident_before && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) {
            raw_string_end(&c, i).unwrap_or(i)
        } else if c[i] == '\'' {
            char_literal_end(&c, i).unwrap_or(i)
        } else {
            i
        };
        if end == i {
            out.push(c[i]);
            i += 1;
        } else {
            out.extend(c[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        }
    }
    out
}

/// Index just past a (nestable) block comment opening at `i`.
fn block_comment_end(c: &[char], i: usize) -> usize {
    let (mut depth, mut j) = (0, i);
    while j < c.len() {
        if c[j] == '/' && c.get(j + 1) == Some(&'*') {
            depth += 1;
            j += 2;
        } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    c.len()
}

/// Index just past the closing quote of a string whose body starts at `j`.
fn string_end(c: &[char], mut j: usize) -> usize {
    while j < c.len() {
        match c[j] {
            '\\' => j += 2,
            '"' => return j + 1,
            _ => j += 1,
        }
    }
    c.len()
}

/// `r"…"`, `r#"…"#`, `br"…"` at `i`: index past its end, if it is one.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i + if c[i] == 'b' { 2 } else { 1 };
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    (j + 1..c.len())
        .find(|&k| c[k..].starts_with(&closing))
        .map(|k| k + closing.len())
}

/// `'x'`, `'\n'`, `'\u{…}'` at `i` (not a lifetime): index past its end.
fn char_literal_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        return (i + 2..c.len()).find(|&k| c[k] == '\'').map(|k| k + 1);
    }
    (c.get(i + 2) == Some(&'\'')).then_some(i + 3)
}

/// Blanks every item under `#[cfg(test)]`: test code may reach anywhere.
fn blank_test_items(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i < c.len() {
        if !c[i..].starts_with(&marker) {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut depth = 0usize;
        while j < c.len() {
            match c[j] {
                '{' => depth += 1,
                '}' if depth <= 1 => break,
                '}' => depth -= 1,
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let end = (j + 1).min(c.len());
        for ch in &mut c[i..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = j + 1;
    }
    c.into_iter().collect()
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Expands a `use` tree (`crate::a::{b, c::{d, self}}`) into its paths.
fn expand_use_tree(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (k, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand_use_tree)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// The module a path names, seen from `current`: the longest prefix that is a
/// module. `None` for a path into another crate or to nothing known.
fn resolve(path: &str, current: &ModPath, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let segments: Vec<&str> = path
        .split("::")
        .map(|s| s.split(" as ").next().unwrap_or(s).trim_start_matches('$'))
        .filter(|s| !s.is_empty())
        .collect();
    let (mut at, rest) = match segments.first()? {
        &"crate" => (Vec::new(), &segments[1..]),
        &"self" => (current.clone(), &segments[1..]),
        &"super" => {
            let ups = segments.iter().take_while(|s| **s == "super").count();
            let keep = current.len().checked_sub(ups)?;
            (current[..keep].to_vec(), &segments[ups..])
        }
        first => {
            // A bare path resolves only if it names a child module.
            let mut child = current.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            (child, &segments[1..])
        }
    };
    for seg in rest {
        let mut next = at.clone();
        next.push(seg.to_string());
        if !modules.contains(&next) {
            break;
        }
        at = next;
    }
    Some(at)
}

/// Every path a file's code names: its `use` trees expanded, and every
/// inline path starting with `crate`, `super` or `self`, with its line.
fn paths_in(code: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = code.chars().collect();
    let line_at = |i: usize| c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
    let word_at = |i: usize, w: &str| {
        c[i..].starts_with(&w.chars().collect::<Vec<_>>())
            && (i == 0 || !(is_ident_char(c[i - 1]) || c[i - 1] == ':'))
            && c.get(i + w.len()).is_none_or(|&ch| !is_ident_char(ch))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if word_at(i, "use") {
            let end = (i..c.len()).find(|&j| c[j] == ';').unwrap_or(c.len());
            let tree: String = c[i + 3..end].iter().collect();
            out.extend(expand_use_tree(&tree).into_iter().map(|p| (line_at(i), p)));
            i = end;
        } else if ["crate", "super", "self"].iter().any(|w| word_at(i, w))
            && c[i..]
                .iter()
                .skip_while(|ch| is_ident_char(**ch))
                .take(2)
                .eq(&[':', ':'])
        {
            let end = (i..c.len())
                .find(|&j| !(is_ident_char(c[j]) || c[j] == ':'))
                .unwrap_or(c.len());
            out.push((line_at(i), c[i..end].iter().collect()));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every reference between two modules in `files` (path, module, code).
fn references(files: &[(String, ModPath, String)]) -> Vec<Reference> {
    let modules: BTreeSet<ModPath> = files.iter().map(|(_, m, _)| m.clone()).collect();
    let mut out = Vec::new();
    for (name, module, code) in files {
        let code = blank_test_items(&strip_comments_and_literals(code));
        for (line, path) in paths_in(&code) {
            let Some(to) = resolve(&path, module, &modules) else {
                continue;
            };
            out.push(Reference {
                from: module.clone(),
                to,
                site: format!("{name}:{line}: {path}"),
            });
        }
    }
    out
}

/// The sibling edge a reference makes: under their deepest common ancestor,
/// the child holding `from` reaches the child holding `to`. `None` when one
/// module contains the other.
fn sibling_edge(r: &Reference) -> Option<(ModPath, String, String)> {
    let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
    if common == r.from.len() || common == r.to.len() {
        return None;
    }
    Some((
        r.from[..common].to_vec(),
        r.from[common].clone(),
        r.to[common].clone(),
    ))
}

fn is_within(module: &ModPath, prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split("::").collect();
    module.len() >= prefix.len() && module.iter().zip(&prefix).all(|(a, b)| a == b)
}

/// Edges between siblings, per parent: `(from, to)` -> the sites that make it.
type Levels = BTreeMap<ModPath, BTreeMap<(String, String), Vec<String>>>;

fn sibling_graph(refs: &[Reference]) -> Levels {
    let mut levels = Levels::new();
    for r in refs {
        if let Some((parent, a, b)) = sibling_edge(r) {
            let sites = levels.entry(parent).or_default().entry((a, b)).or_default();
            sites.push(r.site.clone());
        }
    }
    levels
}

/// The cycles of one level's graph: its strongly connected components of
/// more than one module, each with the edges inside it.
fn cycles(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<Vec<(String, String)>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges.keys() {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) {
            continue;
        }
        let component: BTreeSet<String> = reaches[n]
            .iter()
            .filter(|m| reaches[m].contains(*n))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        if component.len() > 1 {
            out.push(
                edges
                    .keys()
                    .filter(|(a, b)| component.contains(a) && component.contains(b))
                    .cloned()
                    .collect(),
            );
        }
    }
    out
}

/// Each cycle, readably: the level, then every edge in it with its sites.
fn describe_cycles(levels: &Levels) -> Vec<String> {
    let mut out = Vec::new();
    for (parent, edges) in levels {
        let level = if parent.is_empty() {
            "crate".to_owned()
        } else {
            format!("crate::{}", parent.join("::"))
        };
        for cycle in cycles(edges) {
            let members: BTreeSet<&String> = cycle.iter().flat_map(|(a, b)| [a, b]).collect();
            let members: Vec<&str> = members.into_iter().map(String::as_str).collect();
            let mut text = format!(
                "a cycle among the children of {level}: {}",
                members.join(", ")
            );
            for edge in &cycle {
                let sites = &edges[edge];
                let shown: Vec<&str> = sites.iter().take(2).map(String::as_str).collect();
                text += &format!("\n  {} -> {}: {}", edge.0, edge.1, shown.join("; "));
                if sites.len() > 2 {
                    text += &format!(" (+{} more)", sites.len() - 2);
                }
            }
            out.push(text);
        }
    }
    out
}

fn read_src() -> Vec<(String, ModPath, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    module_files(&root.join("src"))
        .into_iter()
        .map(|(path, module)| {
            let code = std::fs::read_to_string(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            (name, module, code)
        })
        .collect()
}

#[test]
fn no_module_reaches_back_into_a_module_that_uses_it() {
    let refs = references(&read_src());
    let (allowed, kept): (Vec<_>, Vec<_>) = refs.into_iter().partition(|r| {
        ALLOWED_EDGES
            .iter()
            .any(|(from, to)| is_within(&r.from, from) && is_within(&r.to, to))
    });
    for (from, to) in ALLOWED_EDGES {
        assert!(
            allowed
                .iter()
                .any(|r| is_within(&r.from, from) && is_within(&r.to, to)),
            "ALLOWED_EDGES lets {from} reach {to}, but nothing does any more: remove the entry"
        );
    }
    let found = describe_cycles(&sibling_graph(&kept));
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The scanner itself, on a made-up crate: it must see references through
/// `super::`, inline paths and nested `use` trees, and must not see them in
/// comments, strings or test modules.
fn fake_crate(files: &[(&str, &str)]) -> Vec<(String, ModPath, String)> {
    files
        .iter()
        .map(|(module, code)| {
            let path: ModPath = if module.is_empty() {
                Vec::new()
            } else {
                module.split("::").map(str::to_owned).collect()
            };
            (format!("src/{module}"), path, code.to_string())
        })
        .collect()
}

#[test]
fn the_scanner_finds_cycles_through_super_and_inline_paths() {
    let files = fake_crate(&[
        ("", "pub mod engine; pub mod config;"),
        ("engine", "mod a; mod b; use self::a::X; fn f() { b::g() }"),
        ("engine::a", "pub fn f() { super::b::g(); }"),
        ("engine::b", "use super::{a::{self, X}, Ctx};"),
        ("config", "pub struct S { l: crate::engine::Limits }"),
        ("api", "fn f() -> crate::config::S { todo!() }"),
    ]);
    let found = describe_cycles(&sibling_graph(&references(&files)));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("children of crate::engine"), "{found:?}");
    assert!(
        found[0].contains("a -> b: src/engine::a:1: super::b::g"),
        "{found:?}"
    );
    assert!(
        found[0].contains("b -> a: src/engine::b:1: super::a::self"),
        "{found:?}"
    );
}

#[test]
fn the_scanner_ignores_comments_strings_tests_and_parents_using_children() {
    let files = fake_crate(&[
        ("", "pub mod a; pub mod b;"),
        ("a", "use crate::b::T; fn f() { a::child::go() } mod child;"),
        ("a::child", "use super::super::a::Thing; use crate::a::X;"),
        (
            "b",
            "/// [`crate::a::X`]\n// crate::a::Y\nconst S: &str = \"crate::a::Z\";\n\
             const R: &str = r#\"crate::a::W\"#; fn f<'a>(x: &'a str) -> char { 'x' }\n\
             #[cfg(test)]\nmod tests { use crate::a::X; }",
        ),
    ]);
    let found = describe_cycles(&sibling_graph(&references(&files)));
    assert!(found.is_empty(), "{found:?}");
    let b_to_a = references(&files)
        .into_iter()
        .filter(|r| r.from == ["b"] && r.to.first().is_some_and(|m| m == "a"))
        .count();
    assert_eq!(b_to_a, 0);
}
