//! The template process: start-up, the handshake, and the message loop.
//!
//! Start-up order matters for the ~15 ms spawn-to-Hello budget and for safety: the
//! standard fds and signal state are made sane, the template becomes a child subreaper
//! (so nothing an execution starts can escape being killed and reaped), fd 3 is checked
//! before the comparatively slow interpreter start, and only then is Hello sent. The
//! module cache's first snapshot is loaded right after the handshake.
//!
//! The loop handles one execution at a time: the module snapshot is brought up to the
//! `Execute`'s generation (see [`crate::modules::sync`]), then it runs to its `Ended` before the
//! next message is read (in fork mode the supervisor connection is still watched during
//! the execution, for Kill and Shutdown; see [`crate::forked`]).

use pyo3::Python;
use warden_protocol::{FromWorker, Hello, Isolation, ToWorker, PROTOCOL_VERSION};

use crate::cli::Args;
use crate::connection::Connection;
use crate::error::WorkerError;
use crate::forked::{self, Next};
use crate::modules::source::RedisSource;
use crate::modules::sync::{self, Prepared};
use crate::python::interpreter;
use crate::{fds, modules, reap, reuse, sandbox};

pub fn run(args: &Args) -> Result<(), WorkerError> {
    fds::ensure_std_fds().map_err(WorkerError::os("opening /dev/null on closed standard fds"))?;
    sandbox::reset_signals();
    reap::become_subreaper().map_err(WorkerError::os("becoming a child subreaper"))?;
    let mut conn = Connection::inherit(args.max_frame)?;
    let python = interpreter::start()?;

    handshake(&mut conn, args, python.version.clone())?;
    // After Hello: a slow or absent Redis must not delay (or fail) the handshake.
    let cache = args
        .redis_url
        .as_deref()
        .map(|url| RedisSource::new(url, &args.key_prefix));
    Python::attach(|py| modules::sync::start(py, cache, args.isolation))?;

    loop {
        let next = match conn.recv("waiting for work")? {
            // The supervisor closed the connection: nothing left to do.
            None => Next::Exit,
            Some(ToWorker::Execute(e)) => {
                match Python::attach(|py| sync::prepare(py, &mut conn, &e, args.isolation))? {
                    Prepared::Skip(next) => next,
                    Prepared::Run => match args.isolation {
                        Isolation::Fork => forked::execute(&python.runner, &mut conn, &e)?,
                        Isolation::Reuse => reuse::execute(&python.runner, &mut conn, &e)?,
                    },
                }
            }
            // A Kill racing with the execution's Ended: that execution is already over.
            Some(ToWorker::Kill { .. }) => Next::Continue,
            // A reply for an execution that already ended.
            Some(ToWorker::Reply(_)) => Next::Continue,
            Some(ToWorker::Shutdown) => Next::Exit,
            Some(ToWorker::Welcome(_)) => {
                eprintln!("warden-worker: ignoring a second Welcome");
                Next::Continue
            }
        };
        if next == Next::Exit {
            reap::sweep();
            return Ok(());
        }
    }
}

fn handshake(
    conn: &mut Connection,
    args: &Args,
    python_version: String,
) -> Result<(), WorkerError> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: args.worker_id,
        pid: std::process::id(),
        isolation: args.isolation,
        python_version,
    };
    conn.send(&FromWorker::Hello(hello), "sending Hello")?;
    match conn.recv("waiting for Welcome")? {
        Some(ToWorker::Welcome(w)) if w.accepted && w.protocol_version == PROTOCOL_VERSION => {
            Ok(())
        }
        Some(ToWorker::Welcome(w)) if w.accepted => Err(WorkerError::Refused(format!(
            "the supervisor speaks protocol {} and this worker {PROTOCOL_VERSION}",
            w.protocol_version
        ))),
        Some(ToWorker::Welcome(w)) => Err(WorkerError::Refused(
            w.reason.unwrap_or_else(|| "no reason given".into()),
        )),
        Some(other) => Err(WorkerError::Unexpected {
            during: "waiting for Welcome",
            what: format!("{other:?}"),
        }),
        None => Err(WorkerError::Unexpected {
            during: "waiting for Welcome",
            what: "the connection closed".into(),
        }),
    }
}
