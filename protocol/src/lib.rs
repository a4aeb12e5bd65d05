//! The wire contract between the Warden supervisor and its worker processes.
//!
//! Layout:
//! - [`frame`]: the frame format (u32 big-endian length, then a bincode 2 body), with a
//!   cheap [`frame::check`] ("is a whole frame buffered?") kept apart from decoding, and a
//!   maximum frame size enforced before anything is allocated.
//! - [`io`]: blocking read/write of whole frames over any `Read`/`Write` (the worker has
//!   no async runtime; the supervisor drives [`frame::check`] from its own buffer).
//! - [`message`]: the messages in each direction ([`ToWorker`], [`FromWorker`]) and the
//!   structs they carry. JSON payloads (params, results) travel as strings: bincode's
//!   serde path cannot decode `serde_json::Value`.
//! - [`limits`]: per-execution resource limits and their defaults.
//!
//! This crate does no I/O policy and links neither tokio, sqlx nor pyo3, so both the
//! worker and the CLI link it cheaply.

pub mod frame;
pub mod io;
pub mod limits;
pub mod message;
pub mod url;

pub use frame::FrameError;
pub use limits::ExecutionLimits;
pub use message::*;
pub use url::redact_url;

/// Bumped whenever a message changes shape. Both sides exchange it in the handshake
/// ([`Hello`] / [`Welcome`]) and refuse to talk across versions.
pub const PROTOCOL_VERSION: u32 = 5;
