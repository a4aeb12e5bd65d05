//! The workspace module cache, worker side: an import resolver that reads only Redis
//! (never the database), from a snapshot the template loads and its children inherit.
//!
//! Layout:
//! - [`keys`]: the Redis key names (mirroring the supervisor's).
//! - [`index`]: which dotted names the cached paths make importable, and as what.
//! - [`source`]: reading a snapshot, or one module, from Redis.
//! - [`finder`]: the `sys.meta_path` hook (Rust) and the process's cache state,
//!   including compiled code by content hash and the miss path.
//! - [`sync`]: the template's part: start-up load, and catching up with the generation
//!   an `Execute` carries before it runs.
//!
//! Steady state: the supervisor reads the generation once per batch; a template whose
//! snapshot has that generation runs its executions with no Redis command at all.

pub mod finder;
pub mod index;
pub mod keys;
pub mod source;
pub mod sync;
