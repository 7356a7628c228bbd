//! The hub's layers (ARCHITECTURE.md): each module names only modules of its own layer or of
//! layers below it, and no two modules import each other, directly or round a loop.
//!
//! Reads `cloud-hub/src` as text: every `crate::a::b` path in code (comments and doc links are
//! left out) is an edge from the file's module to module `a::b` (or `a` when `b` is an item of
//! `a`'s own file). A failure names the file, the line and the layers involved. Test code
//! (`tests.rs` files and `#[cfg(test)] mod` blocks) must point down too, but may use a sibling
//! that uses its module (a series test writes through the store), so it is left out of the
//! loop check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. `lib.rs` (the `Hub` that wires the layers) and `config.rs` are the `app`
/// layer; `main.rs` is the CLI on top. `cases` and `web` are reserved for the governance
/// workflows and the embedded page.
const LAYERS: &[&str] = &[
    "support", "storage", "ingest", "platform", "fleet", "cases", "http", "web", "app", "bench",
    "cli",
];

fn layer_of_top(top: &str) -> &'static str {
    match top {
        "lib" | "config" => "app",
        "main" | "model_cli" | "rollout_cli" => "cli",
        other => LAYERS
            .iter()
            .find(|l| **l == other)
            .copied()
            .unwrap_or_else(|| panic!("module `{other}` is in no layer: add it to LAYERS")),
    }
}

fn rank(layer: &str) -> usize {
    LAYERS.iter().position(|l| *l == layer).unwrap()
}

struct Source {
    file: PathBuf,
    /// `["ingest", "mqtt"]` for `ingest/mqtt/front.rs`; `["ingest"]` for `ingest/mod.rs`.
    module: Vec<String>,
    text: String,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources(src: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let rel = file.strip_prefix(src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = std::fs::read_to_string(&file).unwrap();
            Source { file, module, text }
        })
        .collect()
}

/// The line without its `//` comment (a `//` inside a string literal is rare enough in `use`
/// paths to ignore).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every `crate::` path in `line`, as its segments (up to three).
fn crate_paths(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `my_crate::…`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, C}` on one line: each item is a path of its own.
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                out.extend(crate_paths(&format!("crate::{}", item.trim())));
            }
            continue;
        }
        let mut segs = Vec::new();
        let mut s = rest;
        while segs.len() < 3 {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            if end == 0 {
                break;
            }
            segs.push(s[..end].to_string());
            s = &s[end..];
            match s.strip_prefix("::") {
                Some(t) => s = t,
                None => break,
            }
        }
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

#[test]
fn layers_point_down_and_modules_do_not_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = sources(&src);
    // Modules that have a file: a path's target is the longest of these that prefixes it.
    let known: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut upward = Vec::new();
    // Edges between modules at depth 2 (`storage::store`, `ingest::mqtt`), for the loop check.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let unit = |m: &[String]| m.iter().take(2).cloned().collect::<Vec<_>>().join("::");
    for s in &sources {
        let from_layer = layer_of_top(&s.module[0]);
        let mut in_test = s
            .module
            .last()
            .is_some_and(|m| m == "tests" || m.ends_with("_tests"));
        let mut after_cfg_test = false;
        for (n, line) in s.text.lines().enumerate() {
            let t = line.trim_start();
            if after_cfg_test && (t.starts_with("mod ") || t.starts_with("pub(crate) mod ")) {
                // An inline test module runs to the end of the file (by convention, last).
                in_test |= t.ends_with('{');
            }
            if !t.is_empty() {
                after_cfg_test = t.starts_with("#[cfg(test)]");
            }
            for path in crate_paths(code(line)) {
                let target: Vec<String> = (1..=path.len())
                    .rev()
                    .map(|k| path[..k].to_vec())
                    .find(|p| known.contains(p))
                    .unwrap_or_else(|| vec!["lib".to_string()]);
                let to_layer = layer_of_top(&target[0]);
                let at = format!("{}:{}", s.file.display(), n + 1);
                if rank(to_layer) > rank(from_layer) {
                    upward.push(format!(
                        "{at}: `{}` ({from_layer}) names `crate::{}` ({to_layer})",
                        s.module.join("::"),
                        path.join("::"),
                    ));
                }
                let (a, b) = (unit(&s.module), unit(&target));
                if a != b && !b.is_empty() && !in_test {
                    edges.entry(a).or_default().entry(b).or_insert(at);
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "a lower layer names a higher one (order: {LAYERS:?}):\n{}",
        upward.join("\n")
    );

    // Depth-first search for a loop; report it with where each step is imported.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flat_map(|e| e.keys()) {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|x| x == m).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(n, &edges, &mut state, &mut Vec::new()) {
                let steps: Vec<String> = cycle
                    .windows(2)
                    .map(|w| format!("{} → {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
                    .collect();
                panic!("modules import each other in a loop:\n{}", steps.join("\n"));
            }
        }
    }
}

#[test]
fn path_scanner_reads_code_paths_only() {
    assert_eq!(
        crate_paths(code(
            "use crate::storage::store::{Store, WriteBatch}; // crate::http"
        )),
        vec![vec!["storage", "store"]]
    );
    assert_eq!(
        crate_paths("use crate::{Hub, ingest::mqtt::front};"),
        vec![vec!["Hub"], vec!["ingest", "mqtt", "front"]]
    );
    assert!(crate_paths("let x = my_crate::a::b;").is_empty());
    assert_eq!(crate_paths("crate::Hub::start"), vec![vec!["Hub", "start"]]);
}
