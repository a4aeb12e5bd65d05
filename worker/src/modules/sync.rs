//! The template's side of the module cache: take the supervisor's manifest (the
//! workspace's paths and content hashes, from the database, over the socket) and bring
//! the snapshot in line with it before an execution runs (before the fork, so the child
//! inherits it).
//!
//! ```text
//! Modules(manifest)  (idle: sent when the template is ready, and when it changes)
//!   ─▶ load what the snapshot lacks or holds under another hash ─▶ check ─▶ compile
//! Execute{modules_generation: g, modules_manifest: id}
//!   g == 0 ─▶ run                                        (no module cache)
//!   id is not the manifest received ─▶ workspace imports fail ─▶ run
//!   snapshot checked against that manifest at generation g ─▶ run
//!                                                          (steady state: no Redis at all)
//!   otherwise ─▶ load from Redis (what the snapshot lacks; hash fields of the rest) ─▶ run
//!                 └▶ Wiped (no generation key: FLUSHALL, restart)
//!                     ─▶ Request module_miss {} on fd 3 ─▶ supervisor refills
//!                     ─▶ load again ─▶ run
//!                 └▶ error ─▶ workspace imports fail with the reason ─▶ run
//! ```
//!
//! An execution that follows a push therefore never runs the old code, and never runs
//! code the database does not hold: a copy whose hash is not the manifest's stays in
//! the snapshot as a mismatch, which its import reports (see `finder`).

use pyo3::prelude::*;
use warden_protocol::{
    Ended, Execute, ExitKind, FromWorker, Isolation, ModuleManifest, ReplyOutcome, Request,
};

use super::finder::{self, MISS_OP};
use super::source::{Loaded, RedisSource, SourceError};
use crate::connection::Connection;
use crate::error::WorkerError;
use crate::forked::Next;
use crate::procfs;
use crate::request::{self as exchange, Interrupted, Side};

/// What the template does with an `Execute` after [`prepare`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Prepared {
    /// Run it.
    Run,
    /// Do not run it: the supervisor killed it (already reported) or went away.
    Skip(Next),
}

/// Installs the finder. Nothing is loaded until the supervisor sends the manifest: what
/// Redis holds is not to be trusted (nor compiled) without it.
pub fn start(py: Python<'_>, source: Option<RedisSource>) -> Result<(), WorkerError> {
    finder::install(py, source)
        .map_err(|e| WorkerError::Python(format!("cannot install the module finder: {e}")))
}

/// A manifest from the supervisor, while idle. A template that has loaded nothing yet
/// (it was just started) loads and compiles what it lists now, so its first execution
/// finds it ready; otherwise the `Execute` that follows does it, in one pass with its
/// generation's check. A failed load is left for that execution's [`prepare`] to retry
/// (and report).
pub fn receive(py: Python<'_>, manifest: ModuleManifest, isolation: Isolation) {
    if manifest.id == finder::manifest_id() {
        return;
    }
    finder::set_manifest(manifest.into());
    let Some(source) = finder::source() else {
        return;
    };
    if finder::snapshot().manifest != 0 {
        return;
    }
    if let Ok(Loaded::Snapshot(s)) = load(py, &source, None) {
        finder::replace(py, s);
        freeze(py, isolation);
    }
}

/// `generation`: what the snapshot is for; `None`: the generation Redis had when read.
fn load(
    py: Python<'_>,
    source: &RedisSource,
    generation: Option<u64>,
) -> Result<Loaded, SourceError> {
    let (manifest, current) = (finder::manifest(), finder::snapshot());
    py.detach(|| source.load(&manifest, &current, generation))
}

/// Brings the snapshot in line with the execution's manifest (see the module comment).
pub fn prepare(
    py: Python<'_>,
    conn: &mut Connection,
    e: &Execute,
    isolation: Isolation,
) -> Result<Prepared, WorkerError> {
    if e.modules_generation == 0 {
        return Ok(Prepared::Run);
    }
    let Some(source) = finder::source() else {
        // No cache configured: there is nothing to bring up to date.
        return Ok(Prepared::Run);
    };
    if finder::manifest_id() != e.modules_manifest {
        finder::mark_unavailable(format!(
            "this worker was not sent the workspace's module hashes (manifest {}), so it \
             cannot check what it would import",
            e.modules_manifest
        ));
        return Ok(Prepared::Run);
    }
    if !finder::needs_load(e.modules_generation) {
        return Ok(Prepared::Run);
    }
    match load(py, &source, Some(e.modules_generation)) {
        Ok(Loaded::Snapshot(s)) => {
            finder::replace(py, s);
            freeze(py, isolation);
            return Ok(Prepared::Run);
        }
        Ok(Loaded::Wiped) => {}
        Err(err) => {
            // Said once here for the operator (the supervisor logs our stderr), and to
            // every execution that imports a workspace module.
            eprintln!("warden-worker: cannot load the module cache: {err}");
            finder::mark_unavailable(format!("the module cache could not be read: {err}"));
            return Ok(Prepared::Run);
        }
    }
    // Wiped after the supervisor checked it: ask it to refill, then read again.
    let request = Request {
        execution_id: e.execution_id.clone(),
        // Children number theirs from 1.
        request_id: 0,
        op: MISS_OP.to_string(),
        args_json: "{}".to_string(),
    };
    let bytes = exchange::encode(&request, conn.max_frame()).map_err(WorkerError::Python)?;
    conn.send_raw(&bytes)
        .map_err(|err| WorkerError::Connection {
            during: "asking the supervisor to refill the module cache",
            source: err.into(),
        })?;
    let conn_fd = std::os::fd::AsRawFd::as_raw_fd(conn);
    let mut later = Vec::new();
    let reply = exchange::wait_for_reply_keeping(
        conn_fd,
        Side::Template,
        conn.max_frame(),
        &request,
        Some(&mut later),
    );
    for msg in later {
        conn.queue(msg);
    }
    match reply {
        Ok(ReplyOutcome::Ok { .. }) => match load(py, &source, Some(e.modules_generation)) {
            Ok(Loaded::Snapshot(s)) => {
                finder::replace(py, s);
                freeze(py, isolation);
            }
            Ok(Loaded::Wiped) => finder::mark_unavailable(
                "the module cache in Redis is empty even after the supervisor refilled it".into(),
            ),
            Err(err) => {
                finder::mark_unavailable(format!("the module cache could not be read: {err}"))
            }
        },
        Ok(ReplyOutcome::Err { message }) => finder::mark_unavailable(format!(
            "the module cache is empty and the supervisor could not refill it: {message}"
        )),
        Err(Interrupted::Killed) => {
            killed_before_start(conn, e)?;
            return Ok(Prepared::Skip(Next::Continue));
        }
        Err(Interrupted::Shutdown) => {
            killed_before_start(conn, e)?;
            return Ok(Prepared::Skip(Next::Exit));
        }
        Err(Interrupted::Closed) => return Ok(Prepared::Skip(Next::Exit)),
        Err(Interrupted::Failed(why)) => {
            return Err(WorkerError::Unexpected {
                during: "waiting for the supervisor to refill the module cache",
                what: why,
            })
        }
    }
    Ok(Prepared::Run)
}

/// The execution was killed before it had a process: its Ended, as if killed.
fn killed_before_start(conn: &mut Connection, e: &Execute) -> Result<(), WorkerError> {
    conn.send(
        &FromWorker::Ended(Ended {
            execution_id: e.execution_id.clone(),
            exit: ExitKind::Signaled(nix::sys::signal::Signal::SIGKILL as i32),
            peak_memory_bytes: 0,
            user_cpu_us: 0,
            system_cpu_us: 0,
            worker_rss_bytes: procfs::rss_bytes(),
        }),
        "sending Ended",
    )
}

/// Fork mode: moves what the snapshot allocated (code objects) to the collector's
/// permanent generation, as `runner.py` does at start-up, so that forked children's
/// collections do not walk (and copy-on-write fault) the whole workspace's code. Not in
/// reuse mode, where it would also make permanent whatever garbage earlier executions
/// left for the collector.
fn freeze(py: Python<'_>, isolation: Isolation) {
    if isolation == Isolation::Fork {
        let _ = py.import("gc").and_then(|gc| gc.call_method0("freeze"));
    }
}
