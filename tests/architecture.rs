//! docs/ARCHITECTURE.md stays true: every source module is in its code map (once), and no
//! module imports a module that imports it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source files of the library crates, relative to the repository.
fn sources() -> Vec<String> {
    let mut files = Vec::new();
    for d in ["src", "codec/src"] {
        rust_files(&root().join(d), &mut files);
    }
    let mut v: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    v.sort();
    v
}

/// The backticked paths of each row of the "Code map" table.
fn code_map() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc.split("## Code map").nth(1).expect("a Code map section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---") && !l.starts_with("| path"))
        .map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn every_source_module_is_in_the_code_map_once() {
    let rows = code_map();
    let entries: Vec<&String> = rows.iter().flatten().collect();
    let mut seen = BTreeSet::new();
    for e in &entries {
        assert!(seen.insert(e.as_str()), "{e} has two rows in the code map");
    }
    let covered = |f: &str| {
        entries.iter().any(|e| {
            f == e.as_str()
                || (e.ends_with('/') && f.starts_with(e.as_str()))
                || (f.ends_with("/mod.rs") && f.trim_end_matches("mod.rs") == e.as_str())
        })
    };
    let missing: Vec<String> = sources().into_iter().filter(|f| !covered(f)).collect();
    assert!(
        missing.is_empty(),
        "modules missing from docs/ARCHITECTURE.md's code map: {missing:?}"
    );
}

/// `src/graph/ops/mod.rs` -> ["graph", "ops"], `src/lib.rs` -> [].
fn module_of(file: &str) -> Vec<String> {
    let rel = file
        .strip_prefix("src/")
        .or_else(|| file.strip_prefix("codec/src/"))
        .unwrap();
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let files: Vec<String> = sources()
        .into_iter()
        .filter(|f| f.starts_with("src/"))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let resolve = |path: Vec<String>| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            let segs: Vec<&str> = word.split("::").collect();
            let target: Vec<String> = match segs.first() {
                Some(&"crate") => segs[1..].iter().map(|s| s.to_string()).collect(),
                Some(&"super") => {
                    let ups = segs.iter().take_while(|s| **s == "super").count();
                    // `super` of a mod.rs is its parent's sibling scope.
                    let is_mod = f.ends_with("/mod.rs");
                    let base_len = me
                        .len()
                        .saturating_sub(ups)
                        .saturating_add(usize::from(is_mod))
                        .min(me.len());
                    let mut t = me[..base_len.min(me.len())].to_vec();
                    t.extend(segs[ups..].iter().map(|s| s.to_string()));
                    t
                }
                _ => continue,
            };
            let Some(t) = resolve(target) else { continue };
            // A module and its ancestors or descendants belong together.
            if t.starts_with(&me) || me.starts_with(&t) {
                continue;
            }
            edges.entry(me.clone()).or_default().insert(t);
        }
    }
    let mut cycles = Vec::new();
    for (a, outs) in &edges {
        for b in outs {
            if a < b && edges.get(b).is_some_and(|o| o.contains(a)) {
                cycles.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other: {cycles:?}"
    );
}
