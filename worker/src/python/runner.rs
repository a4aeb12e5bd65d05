//! The bridge to `runner.py`: runs one execution in the current process and writes its
//! Log frames and its single Result frame to an output fd.
//!
//! Fork mode calls [`Runner::run`] in the child with the child's socket; reuse mode calls
//! it in the template with the supervisor connection. The frames are identical, which is
//! what lets the template relay a child's bytes without re-encoding them.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyModule, PyString};
use warden_protocol::{
    frame, Code, ErrorInfo, Execute, ExecutionResult, FrameError, FromWorker, Outcome,
};

use crate::fds;
use crate::python::{capture, request};
use crate::request::Side;

const RUNNER_SOURCE: &str = include_str!("runner.py");

/// Caps on the error fields of a Result, so that a gigantic exception message cannot
/// make the one frame that matters most unsendable.
const MAX_ERROR_TYPE: usize = 1024;
const MAX_MESSAGE: usize = 64 * 1024;
const MAX_TRACEBACK: usize = 256 * 1024;

pub struct Runner {
    module: Py<PyModule>,
}

impl Runner {
    /// Compiles and runs `runner.py` as the module `_warden_runner`.
    pub fn load(py: Python<'_>) -> PyResult<Runner> {
        let source = CString::new(RUNNER_SOURCE)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let module = PyModule::from_code(py, &source, c"<warden-runner>", c"_warden_runner")?;
        Ok(Runner {
            module: module.unbind(),
        })
    }

    /// Runs `e`, writing its Log frames to `fd` as they come (the first one after
    /// `preamble`, in the same write), and returns what is left to send: the preamble if
    /// nothing was written, then the encoded Result. The caller sends it — at once (a
    /// forked child), or with Ended in one write (reuse mode: one wake-up of the
    /// supervisor for a quick execution). An error means the fd's reader is gone.
    /// Requests the code makes (`_warden.request`) go out on the same fd, from `side`.
    pub fn run(
        &self,
        py: Python<'_>,
        e: &Execute,
        fd: RawFd,
        side: Side,
        max_frame: usize,
        preamble: Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        // First, before anything of the workflow runs (see `code_cache`).
        let code = match side {
            Side::Child => self.code_for(py, e, fd, max_frame)?,
            // A template's own connection is the supervisor's: nothing is handed down.
            Side::Template => None,
        };
        capture::begin(fd, &e.execution_id, &e.limits, max_frame, preamble);
        request::begin(fd, side, &e.execution_id, max_frame);
        let _ = self.call(py, "begin_output", ());
        let started = Instant::now();
        crate::python::sdk::begin(py, e);
        let outcome = self.execute(py, e, code);
        let sdk_writes_json = crate::python::sdk::finish(py);
        let duration_us = started.elapsed().as_micros() as u64;
        // Partial last lines belong before the Result.
        let _ = self.call(py, "finish_output", ());
        if side == Side::Child {
            // What reached fds 1 and 2 directly (a child's own memfds).
            crate::std_output::drain();
        }
        request::end();
        let report = capture::end();
        if let Some(err) = report.write_error {
            return Err(err);
        }
        let result = ExecutionResult {
            execution_id: e.execution_id.clone(),
            outcome,
            duration_us,
            logs_dropped: report.logs_dropped,
            sdk_writes_json,
        };
        let mut out = report.unsent;
        out.extend_from_slice(&encode_result(result, max_frame)?);
        Ok(out)
    }

    /// The execution's code when its template handed it down, or compiled here when the
    /// template asked for it — then sent back at once, as the child's first frame
    /// ([`FromWorker::Compiled`]; empty when there is nothing reusable). `None`: the
    /// runner compiles the source itself.
    fn code_for<'py>(
        &self,
        py: Python<'py>,
        e: &Execute,
        fd: RawFd,
        max_frame: usize,
    ) -> io::Result<Option<Bound<'py, PyAny>>> {
        match &e.code {
            Code::None => Ok(None),
            Code::Cached(bytes) => Ok(self
                .call(py, "load_code", (PyBytes::new(py, bytes),))
                .ok()
                .filter(|c| !c.is_none())),
            Code::Wanted => {
                let (code, bytes): (Option<Bound<'py, PyAny>>, Vec<u8>) = self
                    .call(py, "compile_code", (e.path.as_str(), e.source.as_str()))
                    .and_then(|r| r.extract())
                    .unwrap_or((None, Vec::new()));
                let frame = frame::encode(&FromWorker::Compiled(bytes), max_frame)
                    .or_else(|_| frame::encode(&FromWorker::Compiled(Vec::new()), max_frame))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                fds::write_all(fd, &frame)?;
                Ok(code)
            }
        }
    }

    fn execute(&self, py: Python<'_>, e: &Execute, code: Option<Bound<'_, PyAny>>) -> Outcome {
        let args = (
            e.path.as_str(),
            e.source.as_str(),
            e.function.as_str(),
            e.params_json.as_str(),
            e.limits.max_result_bytes,
            code,
        );
        match self.call(py, "execute", args) {
            Ok(ret) => outcome_from_python(&ret),
            // The runner never raises by design; if it does (it ran out of memory while
            // formatting, say) report what it raised rather than losing the execution.
            Err(err) => Outcome::Failed(ErrorInfo {
                error_type: err
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "WorkerError".into()),
                message: format!("the worker's runner failed: {err}"),
                traceback: String::new(),
            }),
        }
    }

    /// State a reuse-mode execution may change (see `runner.snapshot`).
    /// Loads, once, what an execution's source shows it will need and that the
    /// template does not import at start-up: `asyncio` (~25-40 ms to import) for
    /// `async def` workflows. Done in the template before forking, so every later child
    /// inherits it instead of importing it again; start-up stays fast for templates
    /// that never see async code. Errors are ignored (the child reports them).
    /// Records an interpreter state change when it imports something.
    pub fn prepare_for(&self, py: Python<'_>, e: &Execute) {
        if e.source.contains("async ") && !is_imported(py, "asyncio") {
            let _ = py.import("asyncio");
            crate::python::interpreter::changed();
        }
    }

    /// Runs a trivial execution whose output goes nowhere, so that a child forked in
    /// advance takes its copy-on-write faults (interpreter structures, allocator arenas,
    /// the runner's own objects) before its real execution arrives rather than during
    /// it. Writes nothing to any descriptor: the function logs nothing, and its Result
    /// is dropped.
    pub fn warm_up(&self, py: Python<'_>, fd: RawFd, max_frame: usize) {
        let e = Execute {
            execution_id: "warm-up".into(),
            path: "<warden-warm-up>".into(),
            source: "def run(x):\n    return {\"y\": x * 2}\n".into(),
            function: "run".into(),
            params_json: r#"{"x": 1}"#.into(),
            context_json: "{}".into(),
            modules_generation: 0,
            modules_manifest: 0,
            limits: Default::default(),
            org: String::new(),
            code: Code::None,
        };
        let _ = self.run(py, &e, fd, Side::Child, max_frame, Vec::new());
    }

    pub fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, "snapshot", ())
    }

    /// Undoes what a reuse-mode execution changed (see `runner.restore`).
    pub fn restore(&self, py: Python<'_>, state: Bound<'_, PyAny>) -> PyResult<()> {
        self.call(py, "restore", (state,)).map(drop)
    }

    fn call<'py, A: pyo3::call::PyCallArgs<'py>>(
        &self,
        py: Python<'py>,
        name: &str,
        args: A,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.module.bind(py).getattr(name)?.call1(args)
    }
}

fn is_imported(py: Python<'_>, name: &str) -> bool {
    py.import("sys")
        .and_then(|sys| sys.getattr("modules"))
        .and_then(|m| m.contains(name))
        .unwrap_or(false)
}

/// `(True, result_json)` or `(False, error_type, message, traceback)` from `runner.execute`.
fn outcome_from_python(ret: &Bound<'_, PyAny>) -> Outcome {
    let item = |i: usize| ret.get_item(i).map(|v| text(&v)).unwrap_or_default();
    let ok = ret.get_item(0).and_then(|v| v.is_truthy()).unwrap_or(false);
    if ok {
        Outcome::Success {
            result_json: item(1),
        }
    } else {
        Outcome::Failed(ErrorInfo {
            error_type: item(1),
            message: item(2),
            traceback: item(3),
        })
    }
}

/// A Python str as Rust text, replacing what is not valid UTF-8.
fn text(value: &Bound<'_, PyAny>) -> String {
    match value.cast::<PyString>() {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => value
            .str()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Writes the execution's one Result frame (see [`encode_result`]).
pub fn write_result(fd: RawFd, result: ExecutionResult, max_frame: usize) -> io::Result<()> {
    fds::write_all(fd, &encode_result(result, max_frame)?)
}

/// The execution's one Result frame, encoded so that it can always be sent: error fields
/// are capped, and a success too large for a frame becomes `ResultTooLarge`.
pub fn encode_result(mut result: ExecutionResult, max_frame: usize) -> io::Result<Vec<u8>> {
    if let Outcome::Failed(info) = &mut result.outcome {
        let quarter = max_frame / 4;
        cap(&mut info.error_type, MAX_ERROR_TYPE.min(quarter));
        cap(&mut info.message, MAX_MESSAGE.min(quarter));
        cap(&mut info.traceback, MAX_TRACEBACK.min(quarter));
    }
    let (execution_id, duration_us, logs_dropped) = (
        result.execution_id.clone(),
        result.duration_us,
        result.logs_dropped,
    );
    let bytes = match frame::encode(&FromWorker::Result(result), max_frame) {
        Ok(bytes) => bytes,
        Err(err) => {
            let (error_type, message) = match err {
                FrameError::TooLarge { len, max } => (
                    "ResultTooLarge",
                    format!(
                        "the result frame would be {len} bytes, more than the maximum frame \
                         size of {max} bytes"
                    ),
                ),
                other => ("WorkerError", format!("cannot encode the result: {other}")),
            };
            let fallback = ExecutionResult {
                execution_id,
                outcome: Outcome::Failed(ErrorInfo {
                    error_type: error_type.into(),
                    message,
                    traceback: String::new(),
                }),
                duration_us,
                logs_dropped,
                sdk_writes_json: String::new(),
            };
            frame::encode(&FromWorker::Result(fallback), max_frame)
                .map_err(|e| io::Error::other(e.to_string()))?
        }
    };
    Ok(bytes)
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn cap(s: &mut String, max: usize) {
    const MARK: &str = "… [truncated]";
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn sent(result: ExecutionResult, max_frame: usize) -> ExecutionResult {
        let (a, mut b) = UnixStream::pair().unwrap();
        write_result(a.as_raw_fd(), result, max_frame).unwrap();
        drop(a);
        let mut buf = Vec::new();
        b.read_to_end(&mut buf).unwrap();
        match frame::parse::<FromWorker>(&buf, max_frame).unwrap().0 {
            FromWorker::Result(r) => r,
            other => panic!("not a Result: {other:?}"),
        }
    }

    #[test]
    fn a_success_too_big_for_a_frame_becomes_result_too_large() {
        let r = sent(
            ExecutionResult {
                execution_id: "e".into(),
                outcome: Outcome::Success {
                    result_json: "1".repeat(10_000),
                },
                duration_us: 1,
                logs_dropped: 0,
                sdk_writes_json: String::new(),
            },
            4096,
        );
        match r.outcome {
            Outcome::Failed(info) => {
                assert_eq!(info.error_type, "ResultTooLarge");
                assert!(info.message.contains("4096"), "{}", info.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_error_fields_are_capped_so_the_result_still_fits() {
        let r = sent(
            ExecutionResult {
                execution_id: "e".into(),
                outcome: Outcome::Failed(ErrorInfo {
                    error_type: "E".into(),
                    message: "m".repeat(100_000),
                    traceback: "t".repeat(100_000),
                }),
                duration_us: 1,
                logs_dropped: 0,
                sdk_writes_json: String::new(),
            },
            4096,
        );
        match r.outcome {
            Outcome::Failed(info) => assert!(info.message.ends_with("[truncated]")),
            other => panic!("{other:?}"),
        }
    }
}
