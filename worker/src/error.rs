//! The worker's error type. Every failure the template hits ends up here, is printed
//! once by `main` with its cause, and picks the process exit code; nothing panics.
//!
//! Failures of a single execution (a crashing child, garbage on its socket, a failing
//! `fork`) are *not* errors of the worker: they are reported to the supervisor in that
//! execution's `Result`/`Ended` and the template carries on.

use std::io;

use warden_protocol::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The supervisor answered Hello with `accepted: false`.
    #[error("the supervisor refused this worker: {0}")]
    Refused(String),
    /// The supervisor connection broke or carried something that is not our protocol.
    #[error("supervisor connection failed while {during}: {source}")]
    Connection {
        during: &'static str,
        #[source]
        source: FrameError,
    },
    /// The supervisor spoke out of turn (e.g. no Welcome after Hello).
    #[error("unexpected message from the supervisor while {during}: {what}")]
    Unexpected { during: &'static str, what: String },
    /// The embedded interpreter could not be started or the runner could not be loaded.
    #[error("cannot start the embedded Python interpreter: {0}")]
    Python(String),
    /// A system call the template itself depends on failed.
    #[error("{during}: {source}")]
    Os {
        during: &'static str,
        #[source]
        source: io::Error,
    },
}

impl WorkerError {
    pub fn os(during: &'static str) -> impl FnOnce(io::Error) -> WorkerError {
        move |source| WorkerError::Os { during, source }
    }

    pub fn connection(during: &'static str) -> impl FnOnce(FrameError) -> WorkerError {
        move |source| WorkerError::Connection { during, source }
    }

    /// Exit codes: 2 = refused at the handshake (as the supervisor's contract says),
    /// 64 = usage (EX_USAGE), 1 = anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Refused(_) => 2,
            WorkerError::Usage(_) => 64,
            _ => 1,
        }
    }
}
