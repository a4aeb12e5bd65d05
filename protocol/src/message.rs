//! The messages exchanged between the supervisor and a worker template.
//!
//! One connection per template: an inherited Unix socketpair (fd 3 in the worker).
//! The template speaks first with [`Hello`]; the supervisor answers [`Welcome`]
//! (accepted, or refused with a reason, e.g. a version mismatch). Then, per execution:
//!
//! ```text
//! supervisor                      template                     child (fork mode)
//!   Execute  ───────────────────▶  fork ───────────────────────▶ runs the function
//!            ◀─────────────────── Started {pid}
//!            ◀──────── relayed ──────────────────────────────── Log*, Result
//!   Kill?    ───────────────────▶  killpg(child)
//!            ◀─────────────────── Ended {exit, rusage}  (after the child is reaped)
//! ```
//!
//! In reuse mode the template runs the function itself and sends the same sequence, with
//! [`ExitKind::InProcess`] in `Ended`. `Ended` is always the last message for an
//! execution, so the supervisor finalises on it: with the `Result` if one came, and as a
//! crash with the exit code or signal otherwise.

use serde::{Deserialize, Serialize};

use crate::limits::ExecutionLimits;

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Execute is most of the traffic and lives only while it is sent or run: boxing it would
// cost an allocation per execution to save bytes on the rare small messages.
#[allow(clippy::large_enum_variant)]
pub enum ToWorker {
    Welcome(Welcome),
    Execute(Execute),
    /// Kill the execution's process group now (deadline passed, or cancelled). The
    /// supervisor knows why; the worker only needs to stop it.
    Kill {
        execution_id: String,
    },
    /// Finish (no execution is running) and exit.
    Shutdown,
    /// The answer to a [`Request`] of the running execution (relayed to the child).
    Reply(Reply),
    /// The workspace's modules and the hash of each, as the supervisor read them from
    /// the database: the only content the worker will import from the module cache.
    /// Sent when a template becomes ready and before an [`Execute`] whose
    /// `modules_manifest` the template was not sent yet; never per execution otherwise.
    Modules(ModuleManifest),
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Hello(Hello),
    Started(Started),
    Log(Log),
    Result(ExecutionResult),
    Ended(Ended),
    /// The running execution asks the supervisor for something (a module the cache
    /// lost, an SDK read). It blocks until the matching [`Reply`].
    Request(Request),
    /// A fork-mode child's answer to [`Code::Wanted`]: `marshal.dumps` of the code it
    /// compiled (empty: not reusable, e.g. its compilation warned). Only ever the first
    /// frame of a child that was asked for it; the template keeps it and never relays it.
    Compiled(Vec<u8>),
}

impl FromWorker {
    /// The variant's name, for logs and errors ("unexpected Result before hello").
    pub fn kind(&self) -> &'static str {
        match self {
            FromWorker::Hello(_) => "Hello",
            FromWorker::Started(_) => "Started",
            FromWorker::Log(_) => "Log",
            FromWorker::Result(_) => "Result",
            FromWorker::Ended(_) => "Ended",
            FromWorker::Request(_) => "Request",
            FromWorker::Compiled(_) => "Compiled",
        }
    }
}

/// First message of a template: who it is and which protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The id the supervisor gave this template on its command line.
    pub worker_id: u64,
    pub pid: u32,
    pub isolation: Isolation,
    /// `sys.version` of the embedded interpreter.
    pub python_version: String,
}

/// The supervisor's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub accepted: bool,
    /// Why the template was refused, when it was.
    pub reason: Option<String>,
}

/// How executions are isolated from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// A fresh forked child per execution (the default): nothing leaks between runs.
    Fork,
    /// The template runs executions itself (trusted code only): fastest, but state an
    /// execution leaves in the interpreter can be seen by the next.
    Reuse,
}

/// Run one workflow function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execute {
    pub execution_id: String,
    /// The workflow's path, used as the code's filename so tracebacks point at it.
    pub path: String,
    pub source: String,
    /// Name of the function to call.
    pub function: String,
    /// A JSON object; its keys become keyword arguments.
    pub params_json: String,
    /// A JSON object describing the execution (workflow name, org, caller, attempt,
    /// deadline) for the workflow SDK; `{}` when there is none.
    pub context_json: String,
    /// The module cache's generation the supervisor saw for this batch (0: no module
    /// cache). A template whose snapshot is older reloads it before running.
    pub modules_generation: u64,
    /// The [`ModuleManifest::id`] this execution's workspace imports are checked
    /// against (sent before, in [`ToWorker::Modules`]); 0 with no module cache.
    pub modules_manifest: u64,
    pub limits: ExecutionLimits,
    /// The organization it runs for (empty: none or unknown). A fork-mode template keeps
    /// compiled code for one organization at a time (see [`Code`]).
    pub org: String,
    /// The workflow's compiled code, as the template hands it to its child (fork mode
    /// only; the supervisor always sends [`Code::None`]).
    pub code: Code,
}

/// Compiled code a fork-mode template hands down with an [`Execute`].
///
/// Compiling even a two-line function costs more than running it, yet a fork-mode
/// template must not compile user code itself: every later child, of any organization,
/// would inherit the result. Instead the child compiles, and — before any of the
/// workflow's code has run, so the bytes are still trustworthy — sends the marshalled
/// code back in its first frame ([`FromWorker::Compiled`]). The template keeps it, for
/// the same organization's later executions only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Code {
    /// Compile the source; send nothing back.
    #[default]
    None,
    /// Compile the source and send the marshalled code back as the first frame
    /// ([`FromWorker::Compiled`], empty when it cannot be reused), before running any of
    /// it.
    Wanted,
    /// `marshal.dumps` of the source's code, from an earlier child of the same
    /// organization on this template: load it instead of compiling.
    Cached(Vec<u8>),
}

/// Every workspace module path with the SHA-256 of its content, taken from PostgreSQL
/// (never from Redis). The worker computes the hash of every module it reads from the
/// cache itself and imports only content whose hash is the one listed here; the index
/// of importable names is built from these paths too, so nothing written into Redis
/// alone can become importable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// Changes whenever the list does (per supervisor process; never 0).
    pub id: u64,
    /// `(path, sha256(content))`, sorted by path.
    pub modules: Vec<(String, [u8; 32])>,
}

/// The execution's child process exists (fork mode) or the template began running it
/// (reuse mode: `pid` is the template's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub execution_id: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// One line of output: `print` (info), `sys.stderr` (error) or a `logging` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub execution_id: String,
    /// 0, 1, 2, ... within the execution, in the order the lines were produced.
    pub seq: u32,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
    pub level: LogLevel,
    pub message: String,
}

/// What the function produced. Sent once, before [`Ended`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub execution_id: String,
    pub outcome: Outcome,
    /// Wall time of the call itself (compile + call + JSON encoding), microseconds.
    pub duration_us: u64,
    /// Log lines dropped because the execution passed its log cap.
    pub logs_dropped: u32,
    /// The SDK writes the execution buffered (config, kv, ROI), as a JSON array, applied
    /// by the supervisor in the transaction that records the result, only on success.
    /// Empty when there are none.
    pub sdk_writes_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The return value, as JSON text.
    Success { result_json: String },
    /// An exception, or a result that could not be returned (not JSON, too large).
    Failed(ErrorInfo),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// e.g. `ValueError`, `SyntaxError`, `ResultNotSerializable`.
    pub error_type: String,
    pub message: String,
    /// Python-formatted traceback; empty when there is none.
    pub traceback: String,
}

/// How the execution's process ended. The last message for an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub execution_id: String,
    pub exit: ExitKind,
    /// Peak resident memory of the child (fork) or of the template so far (reuse).
    pub peak_memory_bytes: u64,
    pub user_cpu_us: u64,
    pub system_cpu_us: u64,
    /// The template's own resident memory now (for reuse-mode recycling).
    pub worker_rss_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    /// The child exited with this code.
    Exited(i32),
    /// The child was killed by this signal.
    Signaled(i32),
    /// Reuse mode: the template ran the execution itself and is still alive.
    InProcess,
    /// The child's output broke the protocol (garbage, oversized frame); it was killed.
    ProtocolError(String),
}

/// A question from a running execution. `op` names what is asked (`module_miss`,
/// `config_secret`, `kv_get`, ...); `args_json` is a JSON object. New operations need no
/// protocol change: an unknown `op` gets an error [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub execution_id: String,
    /// Unique within the execution; the reply carries it back.
    pub request_id: u32,
    pub op: String,
    pub args_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub execution_id: String,
    pub request_id: u32,
    pub outcome: ReplyOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyOutcome {
    /// The answer, as JSON.
    Ok { value_json: String },
    /// Why there is no answer, for a person.
    Err { message: String },
}
