//! The embedded interpreter: start-up ([`interpreter`]), the `_warden` native module
//! ([`native`]) with output capture ([`capture`]) and requests to the supervisor
//! ([`request`]), the bridge to the Python runner that compiles and calls a workflow
//! function ([`runner`], with its Python half in `runner.py`), and the `warden` SDK
//! module workflows import ([`sdk`], with its Python half in `sdk.py`).

pub mod capture;
pub mod interpreter;
pub mod native;
pub mod request;
pub mod runner;
pub mod sdk;
