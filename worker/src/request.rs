//! One blocking Request/Reply exchange with the supervisor, from the process that runs
//! the execution.
//!
//! ```text
//! fork mode:   child ──Request──▶ its socket ──▶ template (validates, forwards) ──▶ fd 3
//!              child ◀──Reply─── its socket ◀── template (running id only)    ◀── fd 3
//! reuse mode:  template ──Request──▶ fd 3,  reads fd 3 until the Reply
//! ```
//!
//! The caller writes the Request frame itself (through a writer it chooses, so that the
//! frame cannot interleave with Log frames another thread is writing on the same fd),
//! then [`wait_for_reply`] reads frames from the same fd until the Reply carrying the
//! request's id. What else may arrive depends on the side:
//! - [`Side::Child`]: the fd is the child's end of its output socket; the template only
//!   ever writes Replies for this execution there. EOF means the template is gone.
//! - [`Side::Template`]: the fd is the supervisor connection, which also carries Kill
//!   and Shutdown. A Kill for this execution or a Shutdown ends the wait
//!   ([`Interrupted`]); the caller decides what that means where it is.
//!
//! There is no timeout: the execution's deadline is the supervisor's, and it kills the
//! execution (or the template, in reuse mode) when it passes.

use std::io::{self, Read};
use std::os::fd::RawFd;

use warden_protocol::{frame, io as frame_io, FromWorker, ReplyOutcome, Request, ToWorker};

/// Which end of which socket the exchange runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A forked child, on its output socket (the template relays both ways).
    Child,
    /// The template itself (reuse mode, or the template's own requests), on the
    /// supervisor connection.
    Template,
}

/// Why a wait ended without a Reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupted {
    /// The supervisor asked to kill this execution (template side only).
    Killed,
    /// The supervisor asked the worker to stop (template side only).
    Shutdown,
    /// The other end closed the connection.
    Closed,
    /// The connection failed or carried something that is not our protocol.
    Failed(String),
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupted::Killed => f.write_str("the execution was killed"),
            Interrupted::Shutdown => f.write_str("the worker is shutting down"),
            Interrupted::Closed => f.write_str("the connection to the supervisor closed"),
            Interrupted::Failed(why) => write!(f, "the connection to the supervisor failed: {why}"),
        }
    }
}

/// The Request frame for `request`, ready to write.
pub fn encode(request: &Request, max_frame: usize) -> Result<Vec<u8>, String> {
    frame::encode(&FromWorker::Request(request.clone()), max_frame)
        .map_err(|e| format!("cannot send request `{}`: {e}", request.op))
}

/// Reads `fd` until the Reply to `request`.
pub fn wait_for_reply(
    fd: RawFd,
    side: Side,
    max_frame: usize,
    request: &Request,
) -> Result<ReplyOutcome, Interrupted> {
    wait_for_reply_keeping(fd, side, max_frame, request, None)
}

/// [`wait_for_reply`], keeping in `later` (when given) the next execution's `Modules` and
/// `Execute` that a fork-mode supervisor sends ahead (see `Connection::queue`): they are
/// the template's to handle once this execution is over.
pub fn wait_for_reply_keeping(
    fd: RawFd,
    side: Side,
    max_frame: usize,
    request: &Request,
    mut later: Option<&mut Vec<ToWorker>>,
) -> Result<ReplyOutcome, Interrupted> {
    let mut reader = FdReader(fd);
    loop {
        let msg = match frame_io::read::<ToWorker, _>(&mut reader, max_frame) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(Interrupted::Closed),
            Err(e) => return Err(Interrupted::Failed(e.to_string())),
        };
        match msg {
            ToWorker::Reply(reply)
                if reply.execution_id == request.execution_id
                    && reply.request_id == request.request_id =>
            {
                return Ok(reply.outcome)
            }
            // A reply to an earlier request that nobody waits for any more, or for an
            // execution that already ended: nothing to do with this one.
            ToWorker::Reply(_) => {}
            ToWorker::Kill { execution_id } if side == Side::Template => {
                if execution_id == request.execution_id {
                    return Err(Interrupted::Killed);
                }
                // A Kill racing with the end of an earlier execution.
            }
            ToWorker::Shutdown if side == Side::Template => return Err(Interrupted::Shutdown),
            msg @ (ToWorker::Execute(_) | ToWorker::Modules(_))
                if side == Side::Template && later.is_some() =>
            {
                if let Some(later) = later.as_mut() {
                    later.push(msg);
                }
            }
            ToWorker::Execute(e) if side == Side::Template => eprintln!(
                "warden-worker: supervisor bug: Execute {:?} while {:?} is running; ignored",
                e.execution_id, request.execution_id
            ),
            ToWorker::Welcome(_) if side == Side::Template => {
                eprintln!("warden-worker: ignoring an unexpected Welcome during a request")
            }
            ToWorker::Modules(_) if side == Side::Template => eprintln!(
                "warden-worker: supervisor bug: a module manifest during a request; ignored"
            ),
            // The template writes nothing but Replies on a child's socket.
            other => {
                return Err(Interrupted::Failed(format!(
                    "unexpected {} while waiting for a reply",
                    kind(&other)
                )))
            }
        }
    }
}

fn kind(msg: &ToWorker) -> &'static str {
    match msg {
        ToWorker::Welcome(_) => "Welcome",
        ToWorker::Execute(_) => "Execute",
        ToWorker::Kill { .. } => "Kill",
        ToWorker::Shutdown => "Shutdown",
        ToWorker::Reply(_) => "Reply",
        ToWorker::Modules(_) => "Modules",
    }
}

/// `Read` over a descriptor this code does not own (no close on drop). Reads go straight
/// to `read(2)`: nothing is buffered past the current frame, which the template's loop
/// (reuse mode) depends on when it takes over the connection again.
struct FdReader(RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the descriptor stays open while the reader is in use (its owner keeps
        // it); it is only read.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        Ok(nix::unistd::read(fd, buf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use warden_protocol::Reply;

    const MAX: usize = 1 << 20;

    fn request(id: u32) -> Request {
        Request {
            execution_id: "e1".into(),
            request_id: id,
            op: "kv_get".into(),
            args_json: "{}".into(),
        }
    }

    fn reply(exec: &str, id: u32, value: &str) -> ToWorker {
        ToWorker::Reply(Reply {
            execution_id: exec.into(),
            request_id: id,
            outcome: ReplyOutcome::Ok {
                value_json: value.into(),
            },
        })
    }

    fn feed(msgs: &[ToWorker]) -> UnixStream {
        let (mut a, b) = UnixStream::pair().unwrap();
        for m in msgs {
            frame_io::write(&mut a, m, MAX).unwrap();
        }
        drop(a);
        b
    }

    #[test]
    fn skips_replies_to_other_requests_and_returns_the_matching_one() {
        let s = feed(&[
            reply("e1", 1, "\"old\""),
            reply("e0", 2, "0"),
            reply("e1", 2, "42"),
        ]);
        let got = wait_for_reply(s.as_raw_fd(), Side::Child, MAX, &request(2)).unwrap();
        assert_eq!(
            got,
            ReplyOutcome::Ok {
                value_json: "42".into()
            }
        );
    }

    #[test]
    fn eof_before_the_reply_is_closed() {
        let s = feed(&[]);
        let got = wait_for_reply(s.as_raw_fd(), Side::Child, MAX, &request(1));
        assert_eq!(got, Err(Interrupted::Closed));
    }

    #[test]
    fn a_template_side_wait_ends_on_kill_for_this_execution_or_shutdown() {
        let s = feed(&[
            ToWorker::Kill {
                execution_id: "other".into(),
            },
            ToWorker::Kill {
                execution_id: "e1".into(),
            },
        ]);
        let got = wait_for_reply(s.as_raw_fd(), Side::Template, MAX, &request(1));
        assert_eq!(got, Err(Interrupted::Killed));
        let s = feed(&[ToWorker::Shutdown]);
        let got = wait_for_reply(s.as_raw_fd(), Side::Template, MAX, &request(1));
        assert_eq!(got, Err(Interrupted::Shutdown));
    }

    #[test]
    fn a_child_never_accepts_anything_but_replies() {
        let s = feed(&[ToWorker::Shutdown]);
        let got = wait_for_reply(s.as_raw_fd(), Side::Child, MAX, &request(1));
        assert!(matches!(got, Err(Interrupted::Failed(m)) if m.contains("Shutdown")));
    }
}
