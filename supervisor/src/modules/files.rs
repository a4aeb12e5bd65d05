//! Module files on disk, for `warden module push`: which `.py` files the arguments name,
//! the workspace path each one gets, and its content hash.
//!
//! Paths keep their place relative to the current directory, like `git add`: run from
//! the workspace root, `warden module push shared` stores `shared/__init__.py`,
//! `shared/tickets.py`, ...; `warden module push .` stores everything under it. An
//! argument outside the current directory keeps its own name as the top
//! (`/src/ws/shared` → `shared/...`). `--prefix lib` puts everything under `lib/`.
//!
//! A workspace path is `/`-separated and relative, every directory is a Python
//! identifier and the file is `<identifier>.py`: only such paths are importable. A
//! directory walk skips hidden entries, `__pycache__`, files that are not `.py`, and
//! `.py` files whose path is not importable (reported); a file named explicitly must be
//! importable.
//!
//! The name a module is imported as follows from its path ([`module_name`]):
//! `shared/tickets.py` is `shared.tickets`, `shared/__init__.py` is the package
//! `shared`; a directory without `__init__.py` is a namespace package (the worker's
//! `worker/src/modules/index.rs` has the full rule and its precedence).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ModuleError;

/// One module to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Workspace path, e.g. `shared/tickets.py`.
    pub path: String,
    pub content: String,
    /// [`content_hash`] of `content`.
    pub hash: String,
}

impl ModuleFile {
    pub fn new(path: impl Into<String>, content: impl Into<String>) -> ModuleFile {
        let content = content.into();
        ModuleFile {
            path: path.into(),
            hash: content_hash(&content),
            content,
        }
    }
}

/// What the arguments of a push came to.
#[derive(Debug, Default)]
pub struct Collected {
    /// Sorted by path, no duplicates.
    pub files: Vec<ModuleFile>,
    /// `.py` files a directory walk found but cannot store, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The hex SHA-256 of a module's content: what the cache and the push compare.
pub fn content_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// Why `path` cannot be a workspace module path, if it cannot.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.starts_with('/') {
        return Err("it must be relative to the workspace root".into());
    }
    let Some(stem) = path.strip_suffix(".py") else {
        return Err("it is not a .py file".into());
    };
    let parts: Vec<&str> = stem.split('/').collect();
    if let Some(bad) = parts.iter().find(|p| !is_identifier(p)) {
        return Err(format!(
            "{bad:?} is not a Python identifier, so it could not be imported"
        ));
    }
    if parts == ["__init__"] {
        return Err("a top-level __init__.py belongs to no package".into());
    }
    Ok(())
}

/// The dotted name a module at workspace path `path` is imported as (`path` passed
/// [`check_path`]): `shared/tickets.py` → `shared.tickets`, `shared/__init__.py` →
/// `shared`. The worker's finder derives the same names (`worker/src/modules/index.rs`).
pub fn module_name(path: &str) -> String {
    let stem = path.strip_suffix(".py").unwrap_or(path);
    let stem = stem.strip_suffix("/__init__").unwrap_or(stem);
    stem.replace('/', ".")
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Reads the modules the arguments name (files, or directories walked recursively),
/// relative to `cwd`, under `prefix`.
pub fn collect(
    args: &[PathBuf],
    prefix: Option<&str>,
    cwd: &Path,
) -> Result<Collected, ModuleError> {
    let prefix = prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty());
    if let Some(p) = prefix {
        for part in p.split('/') {
            if !is_identifier(part) {
                return Err(ModuleError::InvalidPath {
                    path: p.to_string(),
                    reason: format!("the prefix part {part:?} is not a Python identifier"),
                });
            }
        }
    }
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Collected::default();
    for arg in args {
        // Relative arguments are relative to `cwd`, not to whatever the process's
        // working directory happens to be.
        let full = cwd.join(arg);
        let meta = std::fs::metadata(&full).map_err(|source| ModuleError::File {
            path: arg.clone(),
            source,
        })?;
        let base = workspace_base(arg, cwd);
        let mut files = Vec::new();
        if meta.is_dir() {
            walk(&full, &base, &mut files)?;
        } else {
            files.push((full.clone(), base.clone(), true));
        }
        for (file, rel, explicit) in files {
            let mut path = rel.join("/");
            if let Some(p) = prefix {
                path = format!("{p}/{path}");
            }
            if let Err(reason) = check_path(&path) {
                if explicit {
                    return Err(ModuleError::InvalidPath { path, reason });
                }
                out.skipped.push((file, reason));
                continue;
            }
            if let Some(other) = found.get(&path) {
                if other != &file {
                    return Err(ModuleError::InvalidPath {
                        path,
                        reason: format!(
                            "both {} and {} would be stored there",
                            other.display(),
                            file.display()
                        ),
                    });
                }
                continue;
            }
            found.insert(path, file);
        }
    }
    for (path, file) in found {
        let content = std::fs::read_to_string(&file).map_err(|source| ModuleError::File {
            path: file.clone(),
            source,
        })?;
        out.files.push(ModuleFile::new(path, content));
    }
    Ok(out)
}

/// The workspace path components of `arg` itself (see the module comment).
fn workspace_base(arg: &Path, cwd: &Path) -> Vec<String> {
    let absolute = if arg.is_absolute() {
        arg.to_path_buf()
    } else {
        cwd.join(arg)
    };
    let absolute = normalize(&absolute);
    let cwd = normalize(cwd);
    match absolute.strip_prefix(&cwd) {
        Ok(rel) => components(rel),
        // Outside the current directory: the argument's own name is the top.
        Err(_) => absolute
            .file_name()
            .map(|n| vec![n.to_string_lossy().into_owned()])
            .unwrap_or_default(),
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// Every `.py` file under `dir`, with its workspace path components (`base` + its path
/// below `dir`).
fn walk(
    dir: &Path,
    base: &[String],
    out: &mut Vec<(PathBuf, Vec<String>, bool)>,
) -> Result<(), ModuleError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ModuleError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<_> =
        entries
            .collect::<Result<_, _>>()
            .map_err(|source| ModuleError::File {
                path: dir.to_path_buf(),
                source,
            })?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| ModuleError::File {
            path: path.clone(),
            source,
        })?;
        let mut rel = base.to_vec();
        rel.push(name.clone());
        if kind.is_dir() {
            walk(&path, &rel, out)?;
        } else if name.ends_with(".py") {
            out.push((path, rel, false));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("shared/tickets.py"), "shared.tickets");
        assert_eq!(module_name("shared/__init__.py"), "shared");
        assert_eq!(module_name("shared/util/text.py"), "shared.util.text");
        assert_eq!(module_name("lib/shared/__init__.py"), "lib.shared");
        assert_eq!(module_name("top.py"), "top");
    }

    fn paths(c: &Collected) -> Vec<&str> {
        c.files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            content_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn paths_must_be_importable() {
        assert!(check_path("shared/tickets.py").is_ok());
        assert!(check_path("shared/__init__.py").is_ok());
        assert!(check_path("__init__.py").is_err());
        assert!(check_path("/abs.py").is_err());
        assert!(check_path("a/../b.py").is_err());
        assert!(check_path("my-mod.py").unwrap_err().contains("identifier"));
        assert!(check_path("notes.txt").unwrap_err().contains(".py"));
        assert!(check_path("a//b.py").is_err());
    }

    #[test]
    fn directories_keep_their_relative_paths() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path();
        write(root, "shared/__init__.py", "");
        write(root, "shared/tickets.py", "T = 1\n");
        write(root, "shared/util/text.py", "");
        write(root, "shared/__pycache__/x.cpython-311.py", "");
        write(root, "shared/.hidden/y.py", "");
        write(root, "shared/README.md", "");
        write(root, "shared/bad-name.py", "");
        let c = collect(&[PathBuf::from("shared")], None, root).unwrap();
        assert_eq!(
            paths(&c),
            [
                "shared/__init__.py",
                "shared/tickets.py",
                "shared/util/text.py"
            ]
        );
        assert_eq!(c.files[1].content, "T = 1\n");
        assert_eq!(c.files[1].hash, content_hash("T = 1\n"));
        assert_eq!(c.skipped.len(), 1);
        assert!(c.skipped[0].0.ends_with("bad-name.py"));

        let c = collect(&[PathBuf::from(".")], Some("lib/"), root).unwrap();
        assert_eq!(paths(&c)[0], "lib/shared/__init__.py");

        let c = collect(&[PathBuf::from("./shared/tickets.py")], None, root).unwrap();
        assert_eq!(paths(&c), ["shared/tickets.py"]);

        // Outside the current directory: the argument's name is the top.
        let elsewhere = tempfile::tempdir().unwrap();
        let c = collect(&[root.join("shared")], None, elsewhere.path()).unwrap();
        assert_eq!(paths(&c)[0], "shared/__init__.py");
    }

    #[test]
    fn explicit_files_that_cannot_be_imported_are_errors() {
        let ws = tempfile::tempdir().unwrap();
        write(ws.path(), "bad-name.py", "");
        let err = collect(&[PathBuf::from("bad-name.py")], None, ws.path()).unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
        let err = collect(&[PathBuf::from("missing.py")], None, ws.path()).unwrap_err();
        assert!(err.to_string().contains("missing.py"), "{err}");
        let err = collect(&[PathBuf::from(".")], Some("bad-prefix"), ws.path()).unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
    }
}
