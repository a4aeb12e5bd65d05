//! Workspace modules end to end: one test binary for the area (fewer links than one
//! binary per file), one behaviour per module. Run one module with e.g.
//! `cargo test -p warden-tests --test modules sync::`.
//!
//! - [`cli`]: `warden module push|list|rm` and `warden workflow push DIR`.
//! - [`integrity`]: a poisoned Redis copy of a module is never run.
//! - [`push_checks`]: what `workflow push`, `module push` and `submit` check first.
//! - [`resolver`]: workspace imports through real workers, in both isolation modes.
//! - [`serve`]: the module cache through `warden serve`.
//! - [`sync`]: the module cache, supervisor side.
//!
//! `modules_isolation` (no database URL reaches a worker) is a binary of its own: it sets
//! the process environment, which no other test may share.

mod cli;
mod integrity;
mod push_checks;
mod resolver;
mod serve;
mod sync;
