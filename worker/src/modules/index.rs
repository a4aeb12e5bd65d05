//! From workspace paths to importable names: which dotted name is a module, a regular
//! package or a namespace package. Pure data, built once per snapshot, so that the
//! finder answers any `find_spec` with a single hash lookup.
//!
//! | path in the cache           | name       | kind                                  |
//! |-----------------------------|------------|---------------------------------------|
//! | `shared/tickets.py`         | `shared.tickets` | module                          |
//! | `shared/__init__.py`        | `shared`   | package                               |
//! | `tools/text/slug.py` (no `tools/__init__.py`) | `tools` | namespace package      |
//!
//! Precedence follows CPython's file finder: a directory with `__init__.py` beats a
//! `name.py` next to it, which beats a directory without one. Paths that cannot be
//! imported (not `.py`, a component that is not an identifier, a top-level
//! `__init__.py`) get no name.

use std::collections::HashMap;

/// What a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `a/b.py`.
    Module { path: String },
    /// `a/b/__init__.py`: a package whose code is that file.
    Package { path: String },
    /// `a/b/` holds workspace modules but no `__init__.py`.
    Namespace { dir: String },
}

impl Entry {
    /// The file whose content the entry runs, if it has one.
    pub fn file(&self) -> Option<&str> {
        match self {
            Entry::Module { path } | Entry::Package { path } => Some(path),
            Entry::Namespace { .. } => None,
        }
    }

    pub fn is_package(&self) -> bool {
        !matches!(self, Entry::Module { .. })
    }

    fn rank(&self) -> u8 {
        match self {
            Entry::Package { .. } => 3,
            Entry::Module { .. } => 2,
            Entry::Namespace { .. } => 1,
        }
    }
}

/// The name `path` is imported as, and whether it is a package's `__init__.py`. `None`
/// for paths that cannot be imported.
pub fn module_name(path: &str) -> Option<(String, bool)> {
    let stem = path.strip_suffix(".py")?;
    let parts: Vec<&str> = stem.split('/').collect();
    if !parts.iter().all(|p| is_identifier(p)) {
        return None;
    }
    match parts.split_last() {
        Some((&"__init__", [])) => None,
        Some((&"__init__", dirs)) => Some((dirs.join("."), true)),
        _ => Some((parts.join("."), false)),
    }
}

/// Every importable name of the workspace whose module paths are `paths`.
pub fn build<'a>(paths: impl IntoIterator<Item = &'a str>) -> HashMap<String, Entry> {
    let mut names: HashMap<String, Entry> = HashMap::new();
    let mut put = |name: String, entry: Entry| match names.get(&name) {
        Some(old) if old.rank() >= entry.rank() => {}
        _ => {
            names.insert(name, entry);
        }
    };
    for path in paths {
        let Some((name, is_init)) = module_name(path) else {
            continue;
        };
        // Every directory above a module can be imported as a (namespace) package.
        let dirs: Vec<&str> = path.split('/').collect();
        let depth = dirs.len() - 1;
        for i in 1..=depth {
            if is_init && i == depth {
                break;
            }
            put(
                dirs[..i].join("."),
                Entry::Namespace {
                    dir: dirs[..i].join("/"),
                },
            );
        }
        let entry = if is_init {
            Entry::Package {
                path: path.to_string(),
            }
        } else {
            Entry::Module {
                path: path.to_string(),
            }
        };
        put(name, entry);
    }
    names
}

/// A Python identifier (ASCII letters, digits and `_`, or any Unicode letter or digit;
/// not starting with a digit). Keywords pass: `importlib` can still import them.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(p: &str) -> Entry {
        Entry::Module { path: p.into() }
    }
    fn package(p: &str) -> Entry {
        Entry::Package { path: p.into() }
    }
    fn namespace(d: &str) -> Entry {
        Entry::Namespace { dir: d.into() }
    }

    #[test]
    fn names_of_paths() {
        assert_eq!(
            module_name("shared/tickets.py"),
            Some(("shared.tickets".into(), false))
        );
        assert_eq!(
            module_name("shared/__init__.py"),
            Some(("shared".into(), true))
        );
        assert_eq!(module_name("top.py"), Some(("top".into(), false)));
        assert_eq!(module_name("__init__.py"), None);
        assert_eq!(module_name("my-mod.py"), None);
        assert_eq!(module_name("a/9b.py"), None);
        assert_eq!(module_name("a//b.py"), None);
        assert_eq!(module_name("README.md"), None);
        assert_eq!(module_name("a/b.pyc"), None);
    }

    #[test]
    fn packages_modules_and_namespaces() {
        let names = build([
            "shared/__init__.py",
            "shared/tickets.py",
            "shared/util/text.py",
            "tools/slug.py",
        ]);
        assert_eq!(names["shared"], package("shared/__init__.py"));
        assert_eq!(names["shared.tickets"], module("shared/tickets.py"));
        assert_eq!(names["shared.util"], namespace("shared/util"));
        assert_eq!(names["shared.util.text"], module("shared/util/text.py"));
        assert_eq!(names["tools"], namespace("tools"));
        assert_eq!(names["tools.slug"], module("tools/slug.py"));
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn precedence_is_cpythons_whatever_the_order() {
        for paths in [
            ["a.py", "a/__init__.py", "a/b.py"],
            ["a/b.py", "a/__init__.py", "a.py"],
        ] {
            assert_eq!(build(paths)["a"], package("a/__init__.py"));
        }
        for paths in [["a.py", "a/b.py"], ["a/b.py", "a.py"]] {
            assert_eq!(build(paths)["a"], module("a.py"));
        }
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("_x1"));
        assert!(is_identifier("café"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("a.b"));
    }
}
