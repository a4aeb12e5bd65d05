//! The `warden` module workflows import (the SDK, Python half in `sdk.py`): registered in
//! `sys.modules` once per template, before the runner loads, so that forked children
//! inherit it compiled and the start-up snapshot of reuse mode keeps it.
//!
//! Per execution the runner calls [`begin`] (hands the SDK the execution's context and
//! parameters; parsing is deferred to first use) and [`finish`] (collects the buffered
//! writes as `ExecutionResult.sdk_writes_json`, on every outcome: the supervisor applies
//! them only on success). The SDK's reads that the execution cannot answer itself go
//! through `_warden.request` (crate::python::request).

use std::ffi::CString;
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyModule;
use warden_protocol::Execute;

const SDK_SOURCE: &str = include_str!("sdk.py");
/// The filename of the SDK's code in tracebacks (its lines are registered in
/// `linecache`, so a traceback through it shows them).
const SDK_FILENAME: &str = "<warden-sdk>";

static MODULE: OnceLock<Py<PyModule>> = OnceLock::new();

/// Compiles `sdk.py` as the module `warden` and registers it in `sys.modules`.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let source = CString::new(SDK_SOURCE)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let module = PyModule::from_code(py, &source, c"<warden-sdk>", c"warden")?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("warden", &module)?;
    let lines = py
        .import("builtins")?
        .getattr("str")?
        .call_method1("splitlines", (SDK_SOURCE, true))?;
    py.import("linecache")?.getattr("cache")?.set_item(
        SDK_FILENAME,
        (SDK_SOURCE.len(), py.None(), lines, SDK_FILENAME),
    )?;
    let _ = MODULE.set(module.unbind());
    Ok(())
}

/// Starts the SDK's state for `e`. Never fails: an SDK that cannot start only makes
/// `warden` calls raise, it never stops the execution.
pub fn begin(py: Python<'_>, e: &Execute) {
    if let Some(m) = MODULE.get() {
        let _ = m
            .bind(py)
            .call_method1("_begin", (e.context_json.as_str(), e.params_json.as_str()));
    }
}

/// The execution's buffered writes as JSON (`""`: none), clearing the SDK's state.
pub fn finish(py: Python<'_>) -> String {
    MODULE
        .get()
        .and_then(|m| m.bind(py).call_method0("_finish").ok())
        .and_then(|v| v.extract::<String>().ok())
        .unwrap_or_default()
}
