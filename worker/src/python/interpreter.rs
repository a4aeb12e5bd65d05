//! Starting the embedded interpreter, once per template.
//!
//! `_warden` is registered as a built-in module before initialisation, then the runner
//! (`runner.py`) is loaded, which pre-imports everything an execution needs (json,
//! traceback, linecache, logging, inspect, io) and installs output capture. `asyncio` is
//! deliberately not imported here: it would add ~25 ms to every template's start-up and
//! most workflows are synchronous; the runner imports it on first use.
//!
//! The interpreter is never finalised: forked children end with `_exit`, and the
//! template exits without tearing down Python (it holds nothing that needs flushing,
//! since all output is written unbuffered).

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;

use crate::error::WorkerError;
use crate::python::native::_warden;
use crate::python::runner::Runner;

pub struct Interpreter {
    pub runner: Runner,
    /// `sys.version`, reported in Hello.
    pub version: String,
}

pub fn start() -> Result<Interpreter, WorkerError> {
    // SAFETY-relevant ordering: must run before the interpreter is initialised, which
    // nothing else in this process does.
    pyo3::append_to_inittab!(_warden);
    Python::initialize();
    Python::attach(|py| -> PyResult<Interpreter> {
        // Before the runner, whose start-up ends by freezing the collector's view of
        // everything loaded so far (the SDK included).
        crate::python::sdk::install(py)?;
        let runner = Runner::load(py)?;
        let version = py.import("sys")?.getattr("version")?.extract::<String>()?;
        Ok(Interpreter { runner, version })
    })
    .map_err(|e| WorkerError::Python(Python::attach(|py| describe(py, &e))))
}

/// Bumped whenever the template changes interpreter state that forked children inherit
/// (a new module snapshot, the finder's error, a module imported for an execution): a
/// child forked in advance under an older state must not run an execution
/// (see `forked::Spare`).
static STATE: AtomicU64 = AtomicU64::new(0);

/// Records that the template's interpreter state changed (see [`STATE`]).
pub fn changed() {
    STATE.fetch_add(1, Ordering::Relaxed);
}

/// The current version of the template's interpreter state (see [`STATE`]).
pub fn state() -> u64 {
    STATE.load(Ordering::Relaxed)
}

/// `Type: message` plus the traceback, for errors that end the worker.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let mut text = err.to_string();
    if let Some(tb) = err.traceback(py) {
        if let Ok(formatted) = tb.format() {
            text = format!("{formatted}{text}");
        }
    }
    text
}
