//! docs/threat-model.md names, for every "cannot", the test that proves it:
//! each name must be a test that exists, so the document cannot drift from
//! the suite (a renamed or removed test fails here).

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, recursively (skipping build output).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The tests the document names: backticked paths whose last segment is a test name.
fn named_tests(doc: &str) -> Vec<String> {
    doc.split('`').skip(1).step_by(2).filter(|s| s.contains("::") && !s.contains(' ')).map(|s| s.to_string()).collect()
}

#[test]
fn every_test_the_threat_model_names_exists() {
    let doc = std::fs::read_to_string(workspace().join("docs/threat-model.md")).unwrap();
    let names = named_tests(&doc);
    assert!(names.len() > 50, "the threat model names {} tests", names.len());
    let mut files = Vec::new();
    sources(&workspace().join("crates"), &mut files);
    let text: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<Vec<_>>().join("\n");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let f = n.rsplit("::").next().unwrap_or(n);
            !(text.contains(&format!("fn {f}()")) || text.contains(&format!("fn {f}(store")))
        })
        .collect();
    assert!(missing.is_empty(), "docs/threat-model.md names tests that do not exist: {missing:?}");
}
