//! The crate's shape, checked: no import circle spans two top-level modules.
//!
//! The module graph has an edge A → B for every `crate::B` path written in A's code (in a `use`
//! or in an expression), and every `super::B` that climbs out of A to the crate root, outside
//! comments and `#[cfg(test)]` items. A circle through two top-level modules means neither can
//! be read, tested or replaced without the other; this test fails on one and prints it.
//! `cargo test --test architecture -- --nocapture` prints the whole graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_import_circle_spans_two_top_level_modules() {
    let graph = module_graph(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")));
    for (m, deps) in &graph {
        let deps: Vec<_> = deps.iter().map(String::as_str).collect();
        println!("{m:>12} → {}", deps.join(" "));
    }
    let circles: Vec<_> = strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    let shown: Vec<String> = circles
        .iter()
        .map(|c| format!("{} modules: {}", c.len(), c.join(" ")))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles across top-level modules:\n{}\n(an edge: a `crate::NAME` path in code)",
        shown.join("\n")
    );
}

#[test]
fn the_readme_code_map_lists_every_module_after_those_it_uses() {
    let graph = module_graph(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")));
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let map = readme
        .split("## Code map")
        .nth(1)
        .and_then(|m| m.split("```").nth(1))
        .expect("README.md has a code map in a code block");
    // The map's order: the first `src/NAME` of each line that starts with one.
    let order: Vec<&str> = map
        .lines()
        .filter_map(|l| l.strip_prefix("src/"))
        .map(|l| {
            l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap()
        })
        .collect();
    let missing: Vec<_> = graph
        .keys()
        .filter(|m| !order.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's code map leaves out {missing:?}"
    );
    let mut late = Vec::new();
    for (i, m) in order.iter().enumerate() {
        for dep in graph.get(*m).into_iter().flatten() {
            if !order[..i].contains(&dep.as_str()) {
                late.push(format!("{m} uses {dep}, listed after it"));
            }
        }
    }
    assert!(
        late.is_empty(),
        "README code map out of order:\n{}",
        late.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_should() {
    // Paths in `use` trees, expressions and `super::` from a top-level file are edges;
    // comments, strings and `#[cfg(test)]` items are not.
    let src = r#"
        //! [`crate::doc`] is a comment.
        use crate::{a::X, b::{self, Y}};
        use super::c;
        fn f() { crate::d::g(); let s = "crate::string"; let c = '{'; }
        #[cfg(test)]
        mod tests { use crate::tested; fn h() { let _ = "}"; } }
        #[cfg(test)]
        use crate::tested_too;
        fn after() -> crate::e::T { todo!() }
    "#;
    let names = edges(src, 0);
    let names: Vec<_> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let graph = Graph::from([
        ("a".into(), BTreeSet::from(["b".into()])),
        ("b".into(), BTreeSet::from(["c".into()])),
        ("c".into(), BTreeSet::from(["a".into(), "d".into()])),
        ("d".into(), BTreeSet::new()),
    ]);
    let sccs = strongly_connected(&graph);
    assert!(
        sccs.contains(&vec!["a".into(), "b".into(), "c".into()]),
        "{sccs:?}"
    );
}

/// Every top-level module of the library (`src/NAME.rs` or `src/NAME/`) and the modules it uses.
fn module_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let deps = graph.entry(name.clone()).or_default();
        for (file, depth) in rust_files(&path, 0) {
            let text = fs::read_to_string(&file).unwrap();
            deps.extend(edges(&text, depth).into_iter().filter(|d| *d != name));
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

/// The `.rs` files under `path` with their depth below the crate root: `src/x.rs` and
/// `src/x/mod.rs` are at 0 (their `super` is the crate), `src/x/y.rs` at 1, and so on.
/// A `#[cfg(test)] mod NAME;` file is the test's, not the module's: `tests.rs` is skipped.
fn rust_files(path: &Path, depth: usize) -> Vec<(PathBuf, usize)> {
    if path.is_file() {
        let stem = path.file_stem().unwrap();
        let ok = path.extension().is_some_and(|e| e == "rs") && stem != "tests";
        let depth = if stem == "mod" { depth - 1 } else { depth };
        return if ok {
            vec![(path.into(), depth)]
        } else {
            vec![]
        };
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path(), depth + 1));
    }
    files
}

/// The top-level module names a file's code refers to.
fn edges(text: &str, depth: usize) -> BTreeSet<String> {
    let code = without_tests(&strip_comments_and_strings(text));
    let mut found = BTreeSet::new();
    let climb = "super::".repeat(depth + 1);
    for root in ["crate::", climb.as_str()] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if root != "crate::" && rest.starts_with("super::") {
                continue;
            }
            names_at(rest, &mut found);
        }
    }
    found
}

/// The first path segment(s) at the start of `rest`: `name` or each first name of a `{…}` tree.
fn names_at(rest: &str, found: &mut BTreeSet<String>) {
    let rest = rest.trim_start();
    if let Some(tree) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item_start = true;
        let mut i = 0;
        let bytes = tree.as_bytes();
        while i < bytes.len() {
            match bytes[i] {
                b'{' => depth += 1,
                b'}' if depth == 0 => break,
                b'}' => depth -= 1,
                b',' if depth == 0 => item_start = true,
                c if item_start && depth == 0 && (c.is_ascii_alphabetic() || c == b'_') => {
                    let end = tree[i..]
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .map_or(tree.len(), |e| i + e);
                    found.insert(tree[i..end].to_owned());
                    item_start = false;
                    i = end;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        return;
    }
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end > 0 {
        found.insert(rest[..end].to_owned());
    }
}

/// `text` with comments removed and string and char literals emptied, so that what is left
/// is code whose braces balance.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if raw_string_hashes(&b[i..]).is_some() => {
                let hashes = raw_string_hashes(&b[i..]).unwrap();
                let close = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                let end = text[body..].find(&close).map_or(b.len(), |e| body + e);
                out.push_str("\"\"");
                i = end + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
                i += 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                let close = if b.get(i + 1) == Some(&b'\\') {
                    text[i + 2..].find('\'').map(|e| i + 2 + e)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    text[i + 1..]
                        .chars()
                        .next()
                        .filter(|c| !c.is_ascii())
                        .map(|c| i + 1 + c.len_utf8())
                        .filter(|&e| b.get(e) == Some(&b'\''))
                };
                match close {
                    Some(e) => {
                        out.push_str("' '");
                        i = e + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let ch = text[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// `Some(n)` if `b` starts a raw string `r#…#"` with n hashes (and is not part of a name).
fn raw_string_hashes(b: &[u8]) -> Option<usize> {
    let hashes = b[1..].iter().take_while(|&&c| c == b'#').count();
    (b.get(1 + hashes) == Some(&b'"')).then_some(hashes)
}

/// `code` without the items marked `#[cfg(test)]`: up to the end of their `;` or `{…}` block.
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Tarjan's strongly connected components, each sorted.
fn strongly_connected(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            scc.sort();
            s.out.push(scc);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}
