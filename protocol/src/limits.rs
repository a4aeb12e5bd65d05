//! Per-execution resource limits, sent with every [`crate::Execute`] and applied by the
//! worker's child (fork mode) before it runs any user code.

use serde::{Deserialize, Serialize};

pub const MIB: u64 = 1024 * 1024;

/// Limits for one execution. `0` means "no limit" for the rlimit-backed fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionLimits {
    /// Address-space limit (RLIMIT_AS) in bytes. Python raises `MemoryError` past it.
    pub memory_bytes: u64,
    /// CPU-time limit (RLIMIT_CPU) in seconds: a backstop behind the wall-clock deadline.
    pub cpu_seconds: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Processes for the execution's user (RLIMIT_NPROC): contains fork bombs. Only
    /// enforced for non-root users, which is why workers run under their own uid when
    /// the supervisor is root.
    pub processes: u64,
    /// Log lines kept per execution; further lines are counted and dropped.
    pub max_log_lines: u32,
    /// Log bytes kept per execution (message text).
    pub max_log_bytes: u64,
    /// Largest JSON result, in bytes; a larger one fails the execution with a clear error.
    pub max_result_bytes: u64,
    /// Largest file the execution may write (RLIMIT_FSIZE), in bytes; a write past it
    /// fails with `EFBIG` (`OSError: File too large`). 0: no limit.
    pub file_bytes: u64,
}

/// The directories a root supervisor gives each template a private, size-limited tmpfs
/// on (`--private-tmp`), which the template empties after every execution.
pub const PRIVATE_TMP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

impl Default for ExecutionLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1024 * MIB,
            cpu_seconds: 0,
            open_files: 256,
            processes: 64,
            max_log_lines: 10_000,
            max_log_bytes: 4 * MIB,
            max_result_bytes: 4 * MIB,
            file_bytes: 256 * MIB,
        }
    }
}
