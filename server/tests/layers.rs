//! The dependency rule (ARCHITECTURE.md): every `crate::` path in a layer's folder names
//! the same layer, a layer below it, or a side module. Reads the source as text, so it
//! also catches paths written inline (`crate::x::f()`), not only `use` lines. Comments are
//! skipped (a doc link is not a dependency).
use std::fs;
use std::path::Path;

/// The layers, top first. A layer may use the layers after it.
const LAYERS: &[&str] = &[
    "transport",
    "conn",
    "api",
    "cluster",
    "webhooks",
    "conversation",
    "push",
    "session",
    "media",
    "keys",
    "search",
    "store",
];
/// Beside the layers: any layer may use them; they use no layer.
const SIDE: &[&str] = &["security", "clock", "error", "chat_first", "background", "ops"];
/// The composition root: it may use everything, and nothing may use it.
const ROOT: &[&str] = &["app", "config", "main", "lib"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to: its top folder under `src/`, or its file stem.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` in code (not comments) of `text`, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups are not used in this crate; refuse them so none slips by.
            if name.is_empty() {
                out.push((n + 1, after.chars().take(20).collect()));
            } else {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

/// Why `from` may not use `to`, if it may not.
fn violation(from: &str, to: &str) -> Option<String> {
    if from == to || ROOT.contains(&from) {
        return None;
    }
    if ROOT.contains(&to) {
        return Some(format!("{from} uses the composition root {to}"));
    }
    if SIDE.contains(&from) {
        return (!SIDE.contains(&to)).then(|| format!("side module {from} uses layer {to}"));
    }
    if SIDE.contains(&to) {
        return None;
    }
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    match (rank(from), rank(to)) {
        (Some(a), Some(b)) if b > a => None,
        (Some(_), Some(_)) => Some(format!("{from} imports upward into {to}")),
        _ => Some(format!(
            "{from} → {to}: a module the rule does not know (add it to tests/layers.rs)"
        )),
    }
}

#[test]
fn every_import_between_server_layers_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = fs::read_to_string(file).unwrap();
        for (line, to) in crate_paths(&text) {
            if let Some(why) = violation(&from, &to) {
                problems.push(format!("{}:{line}: {why}", file.strip_prefix(&src).unwrap().display()));
            }
        }
    }
    assert!(problems.is_empty(), "upward imports:\n{}", problems.join("\n"));
}

#[test]
fn every_module_of_the_crate_has_a_place_in_the_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in fs::read_dir(&src).unwrap() {
        let name = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let known = LAYERS.contains(&name.as_str()) || SIDE.contains(&name.as_str()) || ROOT.contains(&name.as_str());
        assert!(known, "src/{name} is in no layer of tests/layers.rs");
    }
}

#[test]
fn the_rule_itself_refuses_upward_imports() {
    assert!(violation("store", "conversation").is_some());
    assert!(violation("session", "cluster").is_some());
    assert!(violation("conn", "transport").is_some());
    assert!(violation("security", "store").is_some());
    assert!(violation("api", "app").is_some());
    assert!(violation("transport", "conn").is_none());
    assert!(violation("cluster", "session").is_none());
    assert!(violation("store", "clock").is_none());
    let found = crate_paths("use crate::session::hub::Hub; // crate::app\nlet x = crate::clock::now_ms();");
    assert_eq!(found, vec![(1, "session".to_string()), (2, "clock".to_string())]);
}
