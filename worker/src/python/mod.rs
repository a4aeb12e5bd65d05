//! The embedded interpreter: start-up ([`interpreter`]), output capture and the
//! `_warden` native module ([`capture`]), and the bridge to the Python runner that
//! compiles and calls a workflow function ([`runner`], with its Python half in
//! `runner.py`).

pub mod capture;
pub mod interpreter;
pub mod runner;
