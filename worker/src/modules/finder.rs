//! The import hook: [`WorkspaceFinder`], a `sys.meta_path` finder and loader written in
//! Rust, and the process's module-cache state it serves from.
//!
//! One instance sits at `sys.meta_path[0]`. `find_spec` is one hash lookup of the full
//! dotted name in the snapshot's name table: a name that is not a workspace module is
//! declined at once (no Redis, no file system), so the standard library and installed
//! packages import as they would without it. Workspace names therefore shadow installed
//! ones, as a script's own directory does at the head of `sys.path`.
//!
//! Loading runs code compiled once per `(path, content hash)`: the template compiles every
//! module when it loads a snapshot, so forked children find the code objects already in
//! memory and import without compiling and without any Redis round trip. A module whose
//! content the snapshot lacks (its key was evicted) is a *miss*: the execution asks the
//! supervisor to re-cache it (`module_miss` request), which answers with the module, and
//! goes on.
//!
//! Integrity: only the paths of the supervisor's manifest are modules, and only content
//! whose SHA-256 (computed here) is the manifest's is compiled or run, whether it came
//! from a snapshot, a miss's answer or a read. A module whose cached copy does not match
//! is never run: importing it raises `ImportError` saying so, and the importing process
//! asks the supervisor to repair that copy (`module_miss` with `"mismatch": true`).
//!
//! What users see, as with files on disk:
//! - `__file__` and `__spec__.origin` are the workspace path (`shared/tickets.py`);
//!   packages have `__path__ == []` (the finder resolves submodules by name, so no
//!   path-based finder may go looking for them on the worker's file system);
//! - directories without `__init__.py` are namespace packages;
//! - relative imports work (`__package__` comes from the spec);
//! - tracebacks show workspace source lines (`get_source`, which `linecache` asks for);
//! - a syntax error is a `SyntaxError` whose filename is the workspace path.
//!
//! State is process-global behind a mutex that is never held while Python code runs
//! (importing a module runs its code, which imports more modules).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use pyo3::exceptions::{PyImportError, PyModuleNotFoundError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use super::index::Entry;
use super::source::{Cached, Digest, Manifest, RedisSource, Snapshot, Source};
use crate::python::request::{self, RequestError};

/// The request a miss sends; the supervisor re-caches the module and answers.
pub const MISS_OP: &str = "module_miss";

struct Workspace {
    /// What the supervisor says the workspace is (paths and content hashes).
    manifest: Manifest,
    snapshot: Snapshot,
    /// Compiled code by path, with the hash of the content it was compiled from.
    code: HashMap<String, (Digest, Py<PyAny>)>,
    /// Where misses are read from; `None`: the worker runs without a module cache.
    source: Option<RedisSource>,
    /// Why the snapshot could not be brought up to the generation an execution asked
    /// for. Importing a workspace name then fails with this, rather than running code
    /// that may be stale.
    unavailable: Option<String>,
}

static WORKSPACE: LazyLock<Mutex<Workspace>> = LazyLock::new(|| {
    Mutex::new(Workspace {
        manifest: Manifest::default(),
        snapshot: Snapshot::default(),
        code: HashMap::new(),
        source: None,
        unavailable: None,
    })
});

fn workspace() -> MutexGuard<'static, Workspace> {
    // Every update replaces whole values; a panic cannot leave one half-written.
    WORKSPACE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts a finder at the head of `sys.meta_path` and remembers where misses are read.
pub fn install(py: Python<'_>, source: Option<RedisSource>) -> PyResult<()> {
    workspace().source = source;
    let finder = Bound::new(py, WorkspaceFinder)?;
    let meta_path = py.import("sys")?.getattr("meta_path")?;
    meta_path.cast::<PyList>()?.insert(0, finder)?;
    Ok(())
}

/// A copy of the snapshot in use (to compute the next one from).
pub fn snapshot() -> Snapshot {
    workspace().snapshot.clone()
}

/// A copy of the manifest the supervisor sent last.
pub fn manifest() -> Manifest {
    workspace().manifest.clone()
}

/// The id of the manifest the supervisor sent last (0: none).
pub fn manifest_id() -> u64 {
    workspace().manifest.id
}

/// Takes the supervisor's new manifest. The snapshot is checked against it by the next
/// load (see `sync`).
pub fn set_manifest(manifest: Manifest) {
    workspace().manifest = manifest;
}

/// Whether the snapshot must be (re)loaded for an execution of `generation`: it was
/// checked against another manifest, a load failed, or the cache changed since.
pub fn needs_load(generation: u64) -> bool {
    let ws = workspace();
    ws.snapshot.manifest != ws.manifest.id
        || ws.unavailable.is_some()
        || ws.snapshot.generation != generation
}

pub fn source() -> Option<RedisSource> {
    workspace().source.clone()
}

/// Makes `snapshot` the one imports are served from: compiles what is new, forgets the
/// code of modules that changed or left, and clears any earlier "unavailable".
/// Returns how many modules were compiled.
pub fn replace(py: Python<'_>, snapshot: Snapshot) -> usize {
    let todo: Vec<(String, Source)> = {
        let mut ws = workspace();
        let files = &snapshot.files;
        ws.code.retain(|path, (hash, _)| {
            matches!(files.get(path), Some(Cached::Verified(src)) if &src.hash == hash)
        });
        let todo = files
            .iter()
            .filter_map(|(path, c)| Some((path, c.verified()?)))
            .filter(|(path, _)| !ws.code.contains_key(*path))
            .map(|(path, src)| (path.clone(), src.clone()))
            .collect();
        ws.snapshot = snapshot;
        ws.unavailable = None;
        todo
    };
    crate::python::interpreter::changed();
    let mut compiled = 0;
    for (path, src) in todo {
        // A module that does not compile is left for its import to report (with the
        // SyntaxError the user should see, in the execution that imports it).
        if let Ok(code) = compile(py, &path, &src.text) {
            workspace().code.insert(path, (src.hash, code));
            compiled += 1;
        }
    }
    compiled
}

/// Imports of workspace names fail with `reason` until the next successful [`replace`].
pub fn mark_unavailable(reason: String) {
    workspace().unavailable = Some(reason);
    crate::python::interpreter::changed();
}

fn compile(py: Python<'_>, path: &str, text: &str) -> PyResult<Py<PyAny>> {
    static COMPILE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let kwargs = PyDict::new(py);
    // Like a file on disk: the workflow runner's `from __future__` flags do not apply.
    kwargs.set_item("dont_inherit", true)?;
    let code = COMPILE
        .import(py, "builtins", "compile")?
        .call((text, path, "exec"), Some(&kwargs))?;
    Ok(code.unbind())
}

/// `ModuleNotFoundError(message)` with its `name` set, as the import system raises it.
fn not_found(py: Python<'_>, name: &str, message: String) -> PyErr {
    let err = PyModuleNotFoundError::new_err(message);
    let _ = err.value(py).setattr("name", name);
    err
}

/// The hook. Stateless itself: what it serves is the process's [`Workspace`].
#[pyclass(frozen, module = "_warden")]
pub struct WorkspaceFinder;

#[pymethods]
impl WorkspaceFinder {
    /// `importlib.abc.MetaPathFinder.find_spec`. `path` and `target` are ignored: the
    /// full dotted name alone decides.
    #[pyo3(signature = (fullname, path=None, target=None))]
    fn find_spec<'py>(
        slf: &Bound<'py, Self>,
        fullname: &str,
        path: Option<&Bound<'py, PyAny>>,
        target: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let _ = (path, target);
        let entry = {
            let ws = workspace();
            let Some(entry) = ws.snapshot.names.get(fullname) else {
                return Ok(None);
            };
            if let Some(why) = &ws.unavailable {
                return Err(PyImportError::new_err(format!(
                    "cannot import workspace module {fullname:?}: {why}"
                )));
            }
            entry.clone()
        };
        let py = slf.py();
        static MODULE_SPEC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let kwargs = PyDict::new(py);
        kwargs.set_item("origin", entry.file())?;
        kwargs.set_item("is_package", entry.is_package())?;
        // `has_location` stays false: the origin is a workspace path, not a file the
        // worker could open, and this spares the import system deriving a `__cached__`
        // path for it. `exec_module` sets `__file__` itself.
        let spec = MODULE_SPEC
            .import(py, "importlib.machinery", "ModuleSpec")?
            .call((fullname, slf), Some(&kwargs))?;
        Ok(Some(spec))
    }

    /// Default module creation.
    fn create_module(&self, spec: &Bound<'_, PyAny>) -> Option<Py<PyAny>> {
        let _ = spec;
        None
    }

    /// Runs the module's code in its namespace (nothing, for a namespace package).
    fn exec_module(&self, py: Python<'_>, module: &Bound<'_, PyAny>) -> PyResult<()> {
        let name: String = module.getattr("__spec__")?.getattr("name")?.extract()?;
        let entry = workspace().snapshot.names.get(&name).cloned();
        let path = match entry {
            Some(Entry::Namespace { .. }) => return Ok(()),
            Some(Entry::Module { path }) | Some(Entry::Package { path }) => path,
            None => {
                return Err(not_found(
                    py,
                    &name,
                    format!("No module named '{name}': it left the workspace while loading"),
                ))
            }
        };
        let code = code_for(py, &name, &path)?;
        module.setattr("__file__", &path)?;
        static EXEC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static WITHOUT_FRAMES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        // Through importlib's marker function, so that a traceback raised by the module's
        // code starts at the import statement, without importlib's own frames.
        WITHOUT_FRAMES
            .import(py, "importlib._bootstrap", "_call_with_frames_removed")?
            .call1((
                EXEC.import(py, "builtins", "exec")?,
                code,
                module.getattr("__dict__")?,
            ))?;
        Ok(())
    }

    /// The module's source, for `linecache` (tracebacks) and `inspect`.
    fn get_source(&self, fullname: &str) -> Option<String> {
        let ws = workspace();
        let path = ws.snapshot.names.get(fullname)?.file()?;
        let src = ws.snapshot.files.get(path)?.verified()?;
        Some(src.text.to_string())
    }

    fn is_package(&self, fullname: &str) -> PyResult<bool> {
        match workspace().snapshot.names.get(fullname) {
            Some(entry) => Ok(entry.is_package()),
            None => Err(PyImportError::new_err(format!(
                "{fullname:?} is not a workspace module"
            ))),
        }
    }

    /// `importlib.invalidate_caches()`: the snapshot changes only between executions.
    fn invalidate_caches(&self) {}

    fn __repr__(&self) -> String {
        let ws = workspace();
        format!(
            "<WorkspaceFinder generation={} modules={}>",
            ws.snapshot.generation,
            ws.snapshot.files.len()
        )
    }
}

/// The compiled code of `path`: from the cache when its hash matches, compiled (and
/// cached) otherwise, after a miss if the snapshot lacks the content.
fn code_for(py: Python<'_>, name: &str, path: &str) -> PyResult<Py<PyAny>> {
    let cached = {
        let ws = workspace();
        let cached = ws.snapshot.files.get(path).cloned();
        if let (Some(Cached::Verified(src)), Some((hash, code))) = (&cached, ws.code.get(path)) {
            if &src.hash == hash {
                return Ok(code.clone_ref(py));
            }
        }
        cached
    };
    let src = match cached {
        Some(Cached::Verified(src)) => src,
        Some(Cached::Mismatch) => return Err(mismatch(py, name, path)),
        Some(Cached::Missing) | None => refill(py, name, path)?,
    };
    let code = compile(py, path, &src.text)?;
    workspace()
        .code
        .insert(path.to_string(), (src.hash, code.clone_ref(py)));
    Ok(code)
}

/// A partial eviction: the manifest lists `path` but the cache had no content for it.
/// The supervisor re-caches it from the database (the worker never reads the database)
/// and answers with the module as the cache now holds it: a sandboxed child may not
/// connect to Redis (or any other service on the host). Without that answer (an older
/// supervisor, a test harness), the child reads the one key itself, where the sandbox
/// allows it. Either way the content is checked against the manifest before use.
fn refill(py: Python<'_>, name: &str, path: &str) -> PyResult<Source> {
    let args = format!("{{\"path\":{}}}", json_string(path));
    let (answer, note) = match request::call(py, MISS_OP, &args) {
        Ok(value) => (content_in(py, &value), String::new()),
        // The supervisor could not re-cache it: still worth one read (someone else may
        // have), and its reason goes in the error if that finds nothing either.
        Err(RequestError::Refused(why)) => (None, format!(" (the supervisor said: {why})")),
        Err(e) => (None, format!(" ({e})")),
    };
    let read = match (answer, source()) {
        (Some(content), _) => Ok(Some(content.into_bytes())),
        (None, Some(source)) => py.detach(|| source.read(path)),
        (None, None) => {
            return Err(not_found(
                py,
                name,
                format!(
                    "No module named '{name}': the module cache has no content for {path} \
                     and this worker has no Redis to read it from{note}"
                ),
            ))
        }
    };
    let content = match read {
        Ok(Some(content)) => content,
        Ok(None) => {
            return Err(not_found(
                py,
                name,
                format!(
                    "No module named '{name}': the workspace module {path} is no longer in \
                     the module cache{note}"
                ),
            ))
        }
        Err(e) => {
            return Err(PyImportError::new_err(format!(
                "cannot import workspace module {name:?}: {e}{note}"
            )))
        }
    };
    let expected = workspace().manifest.hashes.get(path).copied();
    let Some(expected) = expected else {
        return Err(not_found(
            py,
            name,
            format!("No module named '{name}': it left the workspace while loading"),
        ));
    };
    let cached = Cached::check(Some(&content), &expected);
    if let Some(slot) = workspace().snapshot.files.get_mut(path) {
        *slot = cached.clone();
    }
    match cached {
        Cached::Verified(src) => Ok(src),
        _ => Err(mismatch(py, name, path)),
    }
}

/// The cached copy of `path` does not hash to the manifest's: it is not run. Asks the
/// supervisor to rewrite it from the database and returns the `ImportError` the
/// execution gets.
fn mismatch(py: Python<'_>, name: &str, path: &str) -> PyErr {
    let args = format!("{{\"path\":{},\"mismatch\":true}}", json_string(path));
    let asked = match request::call(py, MISS_OP, &args) {
        Ok(_) => "the supervisor was asked to repair it".to_string(),
        Err(e) => format!("the supervisor could not be asked to repair it ({e})"),
    };
    let err = PyImportError::new_err(format!(
        "cannot import workspace module {name:?}: the cached copy of {path} does not match \
         the workspace (its content is not what the database holds), so it was not run; \
         {asked}"
    ));
    let _ = err.value(py).setattr("name", name);
    let _ = err.value(py).setattr("path", path);
    err
}

/// The module's content a `module_miss` answer carries (`{"content": ...}`), if any.
fn content_in(py: Python<'_>, value_json: &str) -> Option<String> {
    let v = py
        .import("json")
        .and_then(|json| json.call_method1("loads", (value_json,)))
        .ok()?;
    v.get_item("content").ok()?.extract().ok()
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a/b.py"), "\"a/b.py\"");
        assert_eq!(json_string("q\"\\\n"), "\"q\\\"\\\\\\u000a\"");
    }
}
