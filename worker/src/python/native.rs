//! The native module Python code sees as `_warden`: one place that lists what the worker
//! exposes to Python, each item implemented in the file that owns its concern.
//!
//! - `emit_log(level, message)`: output capture ([`crate::python::capture`]).
//! - `request(op, args_json) -> str`: ask the supervisor and wait for its answer
//!   ([`crate::python::request`]).
//! - `WorkspaceFinder`: the class of the import hook that serves workspace modules from
//!   the module cache ([`crate::modules::finder`]); one instance sits first in
//!   `sys.meta_path`.

#[pyo3::pymodule]
pub mod _warden {
    #[pymodule_export]
    use crate::modules::finder::WorkspaceFinder;
    #[pymodule_export]
    use crate::python::capture::emit_log;
    #[pymodule_export]
    use crate::python::request::request;
}
