//! ARCHITECTURE.md stays true: every file it cites exists, every test it
//! names as a guard exists, every bench is on its map, the store suite's size
//! is the one it states, and its lines stay readable in a terminal.

use std::path::{Path, PathBuf};

/// The longest line the document may have (its prose wraps at this width).
const MAX_LINE: usize = 120;

/// Where a cited path may start: the folders of code, tests and data.
const PATH_ROOTS: &[&str] = &[
    "src/",
    "tests/",
    "benches/",
    "migrations/",
    "scripts/",
    "testkit/",
    "config/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap()
}

/// The text outside fenced code blocks (the diagram).
fn prose(doc: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every inline code span (`` `…` ``) of the text.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Every path under [`PATH_ROOTS`] the text names, anywhere.
fn cited_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| is_path_char(c) || c == '<') {
            continue;
        }
        if PATH_ROOTS.iter().any(|r| text[i..].starts_with(r)) {
            let path: String = text[i..].chars().take_while(|&c| is_path_char(c)).collect();
            out.push(path.trim_end_matches('.').to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The files a `a::b::name` citation can point into: `tests/a.rs` (or the
/// `tests/a` folder given as a path), and the deepest `src` module the
/// leading segments name (`src/a/b.rs`, `src/a/b/mod.rs`, `src/a.rs`).
/// Also whether every segment but the last named a module.
fn candidate_files(segments: &[&str]) -> (Vec<PathBuf>, bool) {
    let root = root();
    let mut files = Vec::new();
    let first = segments[0];
    if first.starts_with("tests/") {
        let dir = root.join(first);
        files.extend(rust_files(&dir));
        files.push(dir.with_extension("rs"));
    } else {
        files.push(root.join("tests").join(format!("{first}.rs")));
    }
    let mut module = root.join("src");
    let mut deepest = None;
    let mut all_modules = true;
    for seg in segments {
        let file = [
            module.join(format!("{seg}.rs")),
            module.join(seg).join("mod.rs"),
        ]
        .into_iter()
        .find(|f| f.is_file());
        match file {
            Some(file) => {
                deepest = Some(file);
                module = module.join(seg);
            }
            None => {
                all_modules = false;
                break;
            }
        }
    }
    files.extend(deepest);
    files.retain(|f| f.is_file());
    (files, all_modules)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

/// Does `code` define an item called `name` (or, with `prefix`, one whose
/// name starts so: the document shortens long test names with `…`)?
fn defines(code: &str, name: &str, prefix: bool) -> bool {
    const KINDS: &[&str] = &[
        "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ",
    ];
    KINDS.iter().any(|kind| {
        code.match_indices(&format!("{kind}{name}")).any(|(i, m)| {
            let after = code[i + m.len()..].chars().next();
            let before = code[..i].chars().next_back();
            before.is_none_or(|c| !c.is_alphanumeric() && c != '_')
                && (prefix || after.is_none_or(|c| !c.is_alphanumeric() && c != '_'))
        })
    }) || code.contains(&format!("macro_rules! {name}"))
}

/// Does a code span name a test or an item by path (`file::test_name`,
/// `module::tests::name`, `store::{sqlite,postgres}::name`, `exif_tagging::*`)?
fn is_citation(span: &str) -> bool {
    let segments: Vec<&str> = span.trim_end_matches(['(', ')']).split("::").collect();
    segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_{},*…/".contains(c))
        })
}

/// Why a code span citing a test or an item does not hold, if it does not.
/// Spans that are not such citations (settings, SQL, types) pass.
fn check_citation(span: &str) -> Option<String> {
    if !is_citation(span) {
        return None;
    }
    let segments: Vec<&str> = span.trim_end_matches(['(', ')']).split("::").collect();
    let (files, all_modules) = candidate_files(&segments);
    if files.is_empty() {
        // `client::decode_page`: a path relative to some module; no file to hold it to.
        return segments[0]
            .starts_with("tests/")
            .then(|| format!("`{span}`: no such file"));
    }
    let last = *segments.last().unwrap();
    if last == "*" || all_modules {
        return None;
    }
    let (name, prefix) = match last.strip_suffix('…') {
        Some(start) => (start, true),
        None => (last, false),
    };
    let found = files.iter().any(|f| {
        let code = std::fs::read_to_string(f).unwrap_or_default();
        defines(&code, name, prefix)
    });
    (!found).then(|| {
        let names: Vec<String> = files.iter().map(|f| relative(f)).collect();
        format!("`{span}`: no `{name}` in {}", names.join(" or "))
    })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_path_the_document_cites_exists() {
    let text = prose(&document());
    let missing: Vec<String> = cited_paths(&text)
        .into_iter()
        .filter(|p| !root().join(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md cites paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_test_and_module_the_document_names_exists() {
    let text = prose(&document());
    let spans = code_spans(&text);
    let cited = spans.iter().filter(|s| is_citation(s)).count();
    // The invariants alone name well over a hundred tests: a parser that
    // finds few has gone blind, and would pass anything.
    assert!(cited >= 100, "only {cited} citations found");
    let wrong: Vec<String> = spans
        .iter()
        .filter_map(|span| check_citation(span))
        .collect();
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md names what does not exist:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_bench_is_on_the_code_map() {
    let text = prose(&document());
    let entry: String = text
        .split("\n- ")
        .find(|item| item.trim_start().starts_with("`benches/`"))
        .expect("a code map entry for `benches/`")
        .to_owned();
    let mut missing = Vec::new();
    for bench in rust_files(&root().join("benches")) {
        let name = bench.file_stem().unwrap().to_string_lossy().into_owned();
        if !entry.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "benches missing from the `benches/` entry: {missing:?}"
    );
}

/// The store suite's size as the document states it ("one suite of N
/// tests") is the number of tests `on_both_backends!` runs.
#[test]
fn the_store_suite_has_the_size_the_document_states() {
    let store = std::fs::read_to_string(root().join("tests/store.rs")).unwrap();
    let start = store
        .find("\non_both_backends!(")
        .expect("the suite's invocation")
        + 1;
    let body = &store[start..start + store[start..].find(");").unwrap()];
    let body = body.trim_start_matches("on_both_backends!(");
    let count = body.split(',').filter(|s| !s.trim().is_empty()).count();
    let text = prose(&document())
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let stated = text
        .split("one suite of ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("ARCHITECTURE.md states the store suite's size: \"one suite of N tests\"");
    assert_eq!(
        stated,
        count.to_string(),
        "the store suite runs {count} tests on both backends"
    );
}

#[test]
fn no_line_is_longer_than_the_documents_width() {
    let long: Vec<String> = document()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.chars().count() > MAX_LINE)
        .map(|(i, l)| format!("line {}: {} characters", i + 1, l.chars().count()))
        .collect();
    assert!(
        long.is_empty(),
        "ARCHITECTURE.md wraps at {MAX_LINE}:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_guard() {
    assert!(check_citation("store::counters_always_equal_a_group_by_count").is_none());
    assert!(check_citation("store::{sqlite,postgres}::release_costs_no_attempt").is_none());
    assert!(check_citation("archive::layout::tests::hostile_ids_never_become_paths").is_none());
    assert!(check_citation("cluster::two_daemons_share_one_queue_…").is_none());
    assert!(check_citation("store::collection_tasks").is_none());
    assert!(check_citation("store::a_test_that_was_never_written").is_some());
    assert!(check_citation("engine::refresh::tests::no_such_test").is_some());
    assert!(check_citation("cluster::no_test_starts_like_this_…").is_some());
    assert!(check_citation("tests/nowhere::x").is_some());
    assert_eq!(
        cited_paths("see `src/engine/dispatch.rs`, and src/store/. Not foo/src/x."),
        ["src/engine/dispatch.rs", "src/store/"]
    );
}
