//! Hostile workflows against the sandbox: one test binary for the area (fewer links than
//! one binary per file), one attack surface per module. Run one module with e.g.
//! `cargo test -p warden-tests --test sandbox attacks::`.
//!
//! - [`attacks`]: the process boundary: escapes, the network, the file system.
//! - [`memory`]: nothing of one execution in a later execution's memory.
//! - [`redis`]: the workers' Redis credential is worth nothing.

mod attacks;
mod memory;
mod redis;
