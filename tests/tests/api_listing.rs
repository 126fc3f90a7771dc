//! `docs/API.md` lists the public surface: every item each crate's `lib.rs` re-exports, and its
//! public namespaces. This holds the list to the code both ways, so the document cannot drift.

use std::collections::BTreeSet;
use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names a `lib.rs` makes public at its root: `pub use` items (their last path segment,
/// or their alias) and `pub mod` names. Modules behind a feature, and what an inline one
/// holds, are skipped.
fn exported(lib: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut statement = String::new();
    let mut in_use = false;
    let mut gated = false;
    let mut in_gated_block = false;
    for raw in lib.lines() {
        if in_gated_block {
            in_gated_block = raw != "}";
            continue;
        }
        let line = raw.trim();
        if line.starts_with("#[cfg(") {
            gated = true;
            continue;
        }
        if let Some(module) = line.strip_prefix("pub mod ") {
            in_gated_block = gated && line.ends_with('{');
            if !gated {
                names.insert(module.trim_end_matches([';', ' ', '{']).to_owned());
            }
            gated = false;
            continue;
        }
        gated = false;
        if line.starts_with("pub use ") {
            in_use = true;
            statement.clear();
        }
        if in_use {
            statement.push_str(line);
            if line.ends_with(';') {
                in_use = false;
                let body = statement
                    .trim_start_matches("pub use ")
                    .trim_end_matches(';');
                let items = match (body.find('{'), body.rfind('}')) {
                    (Some(open), Some(close)) => body[open + 1..close].to_owned(),
                    _ => body.to_owned(),
                };
                for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    let name = item.rsplit(" as ").next().unwrap_or(item);
                    let name = name.rsplit("::").next().unwrap_or(name);
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// The names in backquotes in one `### \`crate\`` section of the listing.
fn listed(doc: &str, krate: &str) -> BTreeSet<String> {
    let heading = format!("### `{krate}`");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/API.md has no section {heading}"));
    let rest = &doc[start + heading.len()..];
    let section = &rest[..rest.find("\n### ").unwrap_or(rest.len())];
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_listing_matches_every_crates_exports() {
    let doc = read("docs/API.md");
    for (krate, lib) in [
        ("ratelimit_core", "ratelimit-core/src/lib.rs"),
        ("ratelimit_tower", "ratelimit-tower/src/lib.rs"),
        ("ratelimit_axum", "ratelimit-axum/src/lib.rs"),
    ] {
        let exported = exported(&read(lib));
        assert!(exported.len() > 10, "{lib}: read only {exported:?}");
        let listed = listed(&doc, krate);
        let missing: Vec<_> = exported.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "{krate}: exported, not in docs/API.md: {missing:?}"
        );
        // Names a section mentions beyond the root exports: the namespaces' contents, the
        // section's own words. Each must still exist somewhere in the crate's sources.
        let sources = std::fs::read_dir(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(lib.trim_end_matches("lib.rs")),
        )
        .expect("src")
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .collect::<String>();
        let gone: Vec<_> = listed
            .difference(&exported)
            .filter(|name| !sources.contains(name.as_str()))
            .collect();
        assert!(
            gone.is_empty(),
            "{krate}: in docs/API.md, not in the crate: {gone:?}"
        );
    }
}
