//! The source's layers depend one way, down: a test over the text of `src/`. Each file's
//! `crate::` paths (outside comments and test modules) may name only the layers below its own
//! (and its own). A path through the crate root (`crate::ResNet3d`) hides its layer and is
//! refused too, but for the error type.

use std::path::{Path, PathBuf};

/// Each layer and the layers its files may use, bottom up.
const LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("arch", &["error"]),
    ("kernels", &["arch", "error"]),
    ("ops", &["kernels", "arch", "error"]),
    ("model", &["ops", "arch", "error"]),
    ("frozen", &["model", "kernels", "arch", "error"]),
    ("weights", &["model", "arch", "error"]),
    ("preprocess", &["nifti", "error"]),
    ("nifti", &["preprocess", "error"]),
    ("data", &["preprocess", "error"]),
    ("explain", &["frozen", "model", "preprocess", "data", "arch", "error"]),
    ("train", &["model", "ops", "kernels", "data", "arch", "error"]),
    ("infer", &["frozen", "model", "preprocess", "data", "arch", "error"]),
    ("bench", &["model", "kernels", "arch", "error"]),
];

/// The leaf files the error type names (each imports nothing of the crate).
const ERROR_NAMES: &[&str] = &["arch", "weights", "data"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: comments and the test module at its end removed.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn layers_depend_one_way_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let layer = relative.split(['/', '.']).next().unwrap_or("");
        let Some((_, allowed)) = LAYERS.iter().find(|(l, _)| *l == layer) else {
            // lib.rs (re-exports) and the crate's own test module.
            assert!(
                ["lib", "differential"].contains(&layer),
                "{relative}: a file outside the layers"
            );
            continue;
        };
        let text = code(&std::fs::read_to_string(file).unwrap());
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            seen += 1;
            let ok = name == layer
                || allowed.contains(&name.as_str())
                || ["Error", "Result"].contains(&name.as_str())
                || (layer == "error" && ERROR_NAMES.contains(&name.as_str()));
            if !ok {
                wrong.push(format!("{relative} uses crate::{name}"));
            }
        }
    }
    assert!(seen > 100, "only {seen} paths found: is the test reading src/?");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
