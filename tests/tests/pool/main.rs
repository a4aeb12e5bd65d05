//! The pool, through real worker processes: one test binary for the area (fewer links
//! than one binary per file), one behaviour per module. Run one module with e.g.
//! `cargo test -p warden-tests --test pool lifecycle::`.
//!
//! - [`isolation`]: what one execution cannot do to the host or to the next one.
//! - [`lifecycle`]: cancellation, replaced templates, recycling, drain, start-up errors.
//! - [`outcomes`]: every way an execution can end.
//!
//! `pool_no_leaks` is a binary of its own: it counts this process's children and
//! descriptors, so no other test may share its process.

mod isolation;
mod lifecycle;
mod outcomes;
