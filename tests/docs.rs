//! The documentation holds together: every relative link and anchor in README.md and docs/
//! resolves, every flag `voxd serve --help` prints is documented in docs/configuration.md, and the
//! command line accepts the store flags where people type them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a page outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchors a page defines: its headings (duplicates numbered as GitHub does) and
/// `<a id="…">` tags.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for line in prose(text) {
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let s = slug(heading);
                let n = seen.entry(s.clone()).or_insert(0);
                out.insert(if *n == 0 {
                    s.clone()
                } else {
                    format!("{s}-{n}")
                });
                *n += 1;
            }
        }
        let mut rest = line;
        while let Some(i) = rest.find("<a id=\"") {
            let after = &rest[i + 7..];
            if let Some(j) = after.find('"') {
                out.insert(after[..j].to_string());
            }
            rest = after;
        }
    }
    out
}

/// The targets of the markdown links `[text](target)` on a page, outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(j) = after.find(')') else { break };
            out.push(after[..j].to_string());
            rest = &after[j..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_some_and(|e| e == "md") {
                let there = std::fs::read_to_string(&file).unwrap();
                if !anchors(&there).contains(anchor) {
                    broken.push(format!("{}: {target} (no such anchor)", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} relative links found: is the reader broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_a_broken_anchor() {
    let page = "# Title\n\n## Two words\n\n<a id=\"x\"></a>\n```\n## not a heading\n```\n";
    let a = anchors(page);
    assert!(a.contains("title") && a.contains("two-words") && a.contains("x"));
    assert!(!a.contains("not-a-heading"));
    assert_eq!(
        links("see [a](b.md#c) and `[no](code)`, [d](#e)"),
        ["b.md#c", "code", "#e"]
    );
    assert_eq!(slug("Tools (function calling)"), "tools-function-calling");
    assert_eq!(
        slug("PostgreSQL + pgvector (shared by replicas)"),
        "postgresql--pgvector-shared-by-replicas"
    );
}

/// The long flags in a `--help` text.
fn flags(help: &str) -> Vec<String> {
    let mut out: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '(')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '-'))
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|f| f.len() > 2)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_serve_flag_is_documented() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = flags(&help);
    assert!(
        flags.len() > 50 && flags.contains(&"--kb-url".to_string()),
        "{flags:?}"
    );
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| *f != "--help" && *f != "--version" && !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags of `voxd serve` missing from docs/configuration.md: {missing:?}"
    );
}

/// `voxd kb` with the store flag after the action, as people type it, and before it.
#[test]
fn kb_store_flags_work_after_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb.sqlite");
    let doc = dir.path().join("hours.md");
    std::fs::write(
        &doc,
        "# Opening hours\n\nThe Harbour Library is open from 9 to 5 on weekdays.\n",
    )
    .unwrap();
    let voxd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "voxd {args:?}: {stdout}{stderr}");
        stdout
    };
    let kb = kb.to_str().unwrap();
    voxd(&["kb", "add", "--kb", kb, doc.to_str().unwrap()]);
    let listed = voxd(&["kb", "--kb", kb, "list", "--json"]);
    let docs: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(docs.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(docs[0]["title"], "Opening hours");
    let found = voxd(&[
        "kb",
        "search",
        "when is the library open",
        "--kb",
        kb,
        "--json",
    ]);
    assert!(found.contains("Harbour Library"), "{found}");
}

#[test]
fn pages_are_where_the_readme_says() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.lines().count() <= 300,
        "README.md is a landing page: the reference goes to docs/"
    );
    for page in pages().iter().skip(1) {
        let name = page.strip_prefix(root()).unwrap();
        let name = name.to_str().unwrap();
        assert!(
            readme.contains(&format!("]({name})")),
            "README.md does not link {name}"
        );
    }
    assert!(Path::new(&root().join("docs/configuration.md")).exists());
}
