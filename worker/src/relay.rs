//! Validation and forwarding of a forked child's frames to the supervisor.
//!
//! The child runs untrusted code, so its output socket is untrusted input: every frame
//! must decode to a `Log`, a `Request` or (once, last) a `Result` for the execution being
//! run, and fit in the maximum frame size. Valid frames are forwarded as the exact bytes the child
//! wrote (no re-encode). The first invalid frame marks the relay broken: the caller
//! kills the child's process group and reports `ExitKind::ProtocolError`, and nothing
//! more from that child is forwarded.
//!
//! The socket is read non-blocking into a buffer and frames are cut out with
//! [`frame::check`], rather than with a blocking "read one frame": a child that writes
//! half a frame and then stalls must not stop the template from hearing a `Kill`.
//!
//! A child that was asked for its compiled code ([`warden_protocol::Code::Wanted`]) sends
//! it as its first frame, before any of the workflow's code has run; the relay takes it
//! out of the stream for the template ([`Relay::take_code`]) and never forwards it.
//! `Compiled` anywhere else (not first, or not asked for) is a violation: it can only
//! be the workflow's own forgery.
//!
//! The child's bytes are its execution's logs, requests and result: the buffer, the
//! stack chunk they are read into and the messages decoded to validate them are zeroed
//! once used (see [`crate::wipe`]), so no later child inherits them.

use std::io::{self, ErrorKind, Read};

use warden_protocol::frame::{self, FrameError, PREFIX_LEN};
use warden_protocol::FromWorker;
use zeroize::Zeroize;

use crate::wipe::{self, Buffer};

/// How much one `pump` reads at most before returning to `poll`. Kept small on purpose:
/// right after a fork every page the template writes is a copy-on-write fault, and a
/// zeroed 64 KiB stack buffer alone cost 16 of them per execution.
const CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub struct Relay {
    execution_id: String,
    max_frame: usize,
    buf: Buffer,
    result_seen: bool,
    broken: Option<String>,
    /// The child was asked for its compiled code and no frame has arrived yet.
    code_expected: bool,
    /// What it sent in answer.
    code: Option<Vec<u8>>,
}

/// What one [`Relay::pump`] saw on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Read (and forwarded what was whole), or nothing was ready.
    Progress,
    /// Nothing more is buffered right now.
    WouldBlock,
    /// The child's end is closed (or the socket failed): stop polling it.
    Eof,
    /// A protocol violation: stop polling it, kill the child.
    Broken,
}

impl Relay {
    /// `code_expected`: the child was sent [`warden_protocol::Code::Wanted`], so its
    /// first frame may be [`FromWorker::Compiled`].
    pub fn new(execution_id: &str, max_frame: usize, code_expected: bool) -> Relay {
        Relay {
            execution_id: execution_id.to_string(),
            max_frame,
            buf: Buffer::new(),
            result_seen: false,
            broken: None,
            code_expected,
            code: None,
        }
    }

    /// The compiled code the child sent as its first frame, if it was asked for it and
    /// did (empty: it had none to offer).
    pub fn take_code(&mut self) -> Option<Vec<u8>> {
        self.code.take()
    }

    /// Why the relay stopped, if the child broke the protocol.
    pub fn violation(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Marks the child as having broken the protocol in a way only the caller can see
    /// (it does not read the replies to its requests). The first reason is kept.
    pub fn fail(&mut self, reason: String) {
        if self.broken.is_none() {
            self.broken = Some(reason);
            self.buf.clear();
        }
    }

    /// Reads one chunk from `src` (non-blocking) and passes every whole, valid frame to
    /// `forward` in one call. An error from `forward` means the supervisor is gone and is
    /// returned as is; problems with the child's bytes are never errors, only [`Pumped::Broken`].
    pub fn pump<R: Read>(
        &mut self,
        src: &mut R,
        forward: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<Pumped> {
        if self.broken.is_some() {
            return Ok(Pumped::Broken);
        }
        let mut chunk = [0u8; CHUNK];
        let n = loop {
            match src.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Pumped::WouldBlock),
                // ECONNRESET and the like: the child is gone; whatever it left is in `buf`.
                Err(_) => return Ok(Pumped::Eof),
            }
        };
        if n == 0 {
            return Ok(Pumped::Eof);
        }
        self.buf.extend(&chunk[..n]);
        // The stack is inherited by the next spare too.
        chunk[..n].zeroize();

        let mut used = 0;
        let mut violation = None;
        if self.code_expected {
            match self.take_code_frame() {
                Ok(()) => {}
                Err(FrameError::Incomplete) => return Ok(Pumped::Progress),
                Err(e) => violation = Some(format!("bad frame from the child: {e}")),
            }
        }
        while violation.is_none() {
            match frame::check(&self.buf.data()[used..], self.max_frame) {
                Ok(total) => {
                    let body = &self.buf.data()[used + PREFIX_LEN..used + total];
                    match validate(body, &self.execution_id, self.result_seen) {
                        Ok(kind) => {
                            self.result_seen |= kind == Kind::Result;
                            used += total;
                        }
                        Err(reason) => {
                            violation = Some(reason);
                            break;
                        }
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(e) => {
                    violation = Some(format!("bad frame from the child: {e}"));
                    break;
                }
            }
        }
        // Frames before a violation were valid and are forwarded; nothing after it is.
        if used > 0 {
            let sent = forward(&self.buf.data()[..used]);
            self.buf.consume(used);
            sent?;
        }
        if let Some(reason) = violation {
            self.broken = Some(reason);
            self.buf.clear();
            return Ok(Pumped::Broken);
        }
        Ok(Pumped::Progress)
    }

    /// Looks at the child's first frame once it is whole: its compiled code is taken out
    /// of the buffer (never forwarded); anything else is left for the normal path.
    fn take_code_frame(&mut self) -> Result<(), FrameError> {
        let total = frame::check(self.buf.data(), self.max_frame)?;
        self.code_expected = false;
        let body = &self.buf.data()[PREFIX_LEN..total];
        match frame::decode::<FromWorker>(body) {
            Ok(FromWorker::Compiled(code)) => {
                self.code = Some(code);
                self.buf.consume(total);
            }
            // Validated (and decoded again) on the normal path; this copy is wiped.
            Ok(mut other) => wipe::from_worker(&mut other),
            Err(_) => {}
        }
        Ok(())
    }

    /// Whether the child's Result has been relayed (it is the child's last frame).
    pub fn result_seen(&self) -> bool {
        self.result_seen
    }

    /// Forwards everything still buffered on the socket, until it would block or ends.
    /// Only called once the child and everything else that could write to it are dead,
    /// so this is bounded by the socket buffer.
    pub fn drain<R: Read>(
        &mut self,
        src: &mut R,
        forward: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            match self.pump(src, forward)? {
                Pumped::Progress => continue,
                Pumped::WouldBlock | Pumped::Eof | Pumped::Broken => return Ok(()),
            }
        }
    }

    /// Describes a partial frame left over when the output ended, if there is one.
    pub fn leftover(&self) -> Option<String> {
        if self.broken.is_some() || self.buf.is_empty() {
            return None;
        }
        Some(format!(
            "the child's output ended in the middle of a frame ({} bytes of an unfinished frame)",
            self.buf.len()
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Log,
    Result,
    /// The child asks the supervisor something; the template relays the Reply back.
    Request,
}

/// Is `body` a frame a child may send for `execution_id` at this point?
pub fn validate(body: &[u8], execution_id: &str, result_seen: bool) -> Result<Kind, String> {
    let mut msg: FromWorker =
        frame::decode(body).map_err(|e| format!("undecodable frame from the child: {e}"))?;
    let checked = check(&msg, execution_id, result_seen);
    wipe::from_worker(&mut msg);
    checked
}

fn check(msg: &FromWorker, execution_id: &str, result_seen: bool) -> Result<Kind, String> {
    let (kind, id) = match msg {
        FromWorker::Log(log) => (Kind::Log, &log.execution_id),
        FromWorker::Result(result) => (Kind::Result, &result.execution_id),
        FromWorker::Request(request) => (Kind::Request, &request.execution_id),
        FromWorker::Hello(_) => return Err(forbidden("Hello")),
        FromWorker::Compiled(_) => {
            return Err(
                "the child sent compiled code other than as its first frame, or unasked \
                 (only the workflow itself could have written it)"
                    .to_string(),
            )
        }
        FromWorker::Started(_) => return Err(forbidden("Started")),
        FromWorker::Ended(_) => return Err(forbidden("Ended")),
    };
    if id != execution_id {
        return Err(format!(
            "the child sent a frame for execution {id:?} while running {execution_id:?}"
        ));
    }
    if result_seen {
        return Err("the child sent a frame after its Result".to_string());
    }
    Ok(kind)
}

fn forbidden(what: &str) -> String {
    format!("the child sent a {what} message, which only the template may send")
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_protocol::{ExecutionResult, Log, LogLevel, Outcome, Started};

    const MAX: usize = 1024 * 1024;

    fn log(id: &str, seq: u32) -> Vec<u8> {
        let msg = FromWorker::Log(Log {
            execution_id: id.into(),
            seq,
            timestamp_us: 1,
            level: LogLevel::Info,
            message: format!("line {seq}"),
        });
        frame::encode(&msg, MAX).unwrap()
    }

    fn result(id: &str) -> Vec<u8> {
        let msg = FromWorker::Result(ExecutionResult {
            execution_id: id.into(),
            outcome: Outcome::Success {
                result_json: "1".into(),
            },
            duration_us: 1,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        });
        frame::encode(&msg, MAX).unwrap()
    }

    /// A reader that hands out its bytes a few at a time and then says WouldBlock once
    /// before every further chunk, like a non-blocking socket fed by a slow writer.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        blocked: bool,
        eof: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            if self.blocked {
                self.blocked = false;
                return Err(ErrorKind::WouldBlock.into());
            }
            self.blocked = true;
            let n = self.step.min(self.data.len() - self.pos).min(out.len());
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn run(data: Vec<u8>, step: usize, eof: bool) -> (Relay, Vec<u8>) {
        run_asked(data, step, eof, false)
    }

    fn run_asked(data: Vec<u8>, step: usize, eof: bool, asked: bool) -> (Relay, Vec<u8>) {
        let mut relay = Relay::new("e1", MAX, asked);
        let mut src = Trickle {
            data,
            pos: 0,
            step,
            blocked: false,
            eof,
        };
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let got = relay
                .pump(&mut src, &mut |b: &[u8]| {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            if matches!(got, Pumped::Eof | Pumped::Broken) {
                break;
            }
        }
        (relay, out)
    }

    #[test]
    fn forwards_valid_frames_byte_for_byte_even_when_split_across_reads() {
        let mut data = log("e1", 0);
        data.extend(log("e1", 1));
        data.extend(result("e1"));
        let (relay, out) = run(data.clone(), 3, true);
        assert_eq!(out, data);
        assert_eq!(relay.violation(), None);
        assert_eq!(relay.leftover(), None);
    }

    #[test]
    fn garbage_breaks_the_relay_and_forwards_only_what_came_before() {
        let mut data = log("e1", 0);
        let good = data.clone();
        data.extend(b"\x00\x00\x00\x05hello garbage");
        data.extend(log("e1", 1));
        let (relay, out) = run(data, 1000, true);
        assert_eq!(out, good);
        assert!(relay.violation().unwrap().contains("undecodable"));
    }

    #[test]
    fn an_oversized_length_prefix_is_rejected_before_the_body_arrives() {
        let (relay, out) = run(vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], 1000, false);
        assert!(out.is_empty());
        assert!(relay
            .violation()
            .unwrap()
            .contains("larger than the maximum"));
    }

    #[test]
    fn a_frame_for_another_execution_is_a_violation() {
        let (relay, out) = run(log("other", 0), 1000, true);
        assert!(out.is_empty());
        assert!(relay.violation().unwrap().contains("\"other\""));
    }

    #[test]
    fn template_only_messages_are_violations() {
        let started = FromWorker::Started(Started {
            execution_id: "e1".into(),
            pid: 1,
        });
        let (relay, _) = run(frame::encode(&started, MAX).unwrap(), 1000, true);
        assert!(relay.violation().unwrap().contains("Started"));
    }

    #[test]
    fn requests_for_the_running_execution_are_forwarded_and_others_are_violations() {
        let req = |id: &str| {
            frame::encode(
                &FromWorker::Request(warden_protocol::Request {
                    execution_id: id.into(),
                    request_id: 1,
                    op: "module_miss".into(),
                    args_json: "{}".into(),
                }),
                MAX,
            )
            .unwrap()
        };
        let mut data = req("e1");
        data.extend(result("e1"));
        let (relay, out) = run(data.clone(), 7, true);
        assert_eq!(out, data);
        assert_eq!(relay.violation(), None);
        let (relay, out) = run(req("e2"), 1000, true);
        assert!(out.is_empty());
        assert!(relay.violation().unwrap().contains("\"e2\""));
    }

    #[test]
    fn nothing_may_follow_the_result() {
        let mut data = result("e1");
        let good = data.clone();
        data.extend(log("e1", 5));
        let (relay, out) = run(data, 1000, true);
        assert_eq!(out, good);
        assert!(relay.violation().unwrap().contains("after its Result"));
    }

    #[test]
    fn output_ending_mid_frame_is_reported_as_leftover() {
        let mut data = log("e1", 0);
        let whole = data.clone();
        data.extend(&log("e1", 1)[..6]);
        let (relay, out) = run(data, 1000, true);
        assert_eq!(out, whole);
        assert_eq!(relay.violation(), None);
        assert!(relay.leftover().unwrap().contains("middle of a frame"));
    }

    fn compiled(code: &[u8]) -> Vec<u8> {
        frame::encode(&FromWorker::Compiled(code.to_vec()), MAX).unwrap()
    }

    #[test]
    fn compiled_code_asked_for_is_taken_first_and_never_forwarded() {
        let mut data = compiled(b"marshalled");
        let rest = [log("e1", 0), result("e1")].concat();
        data.extend(&rest);
        for step in [1, 5, 1000] {
            let (mut relay, out) = run_asked(data.clone(), step, true, true);
            assert_eq!(out, rest, "step {step}");
            assert_eq!(relay.violation(), None);
            assert_eq!(relay.take_code().as_deref(), Some(&b"marshalled"[..]));
        }
    }

    #[test]
    fn a_child_asked_for_code_may_send_none_and_its_frames_pass() {
        let data = [log("e1", 0), result("e1")].concat();
        let (mut relay, out) = run_asked(data.clone(), 3, true, true);
        assert_eq!(out, data);
        assert_eq!(relay.violation(), None);
        assert_eq!(relay.take_code(), None);
    }

    #[test]
    fn compiled_code_unasked_or_not_first_is_a_forgery() {
        // Unasked: the workflow wrote it (the child sends none unless asked).
        let (mut relay, out) = run_asked(compiled(b"evil"), 1000, true, false);
        assert!(out.is_empty());
        assert!(relay.violation().unwrap().contains("compiled code"));
        assert_eq!(relay.take_code(), None);
        // Asked, but after another frame: the workflow's code was already running.
        let mut data = log("e1", 0);
        let good = data.clone();
        data.extend(compiled(b"evil"));
        let (mut relay, out) = run_asked(data, 1000, true, true);
        assert_eq!(out, good);
        assert!(relay.violation().unwrap().contains("compiled code"));
        assert_eq!(relay.take_code(), None);
        // Asked, sent first, then again.
        let data = [compiled(b"ok"), compiled(b"evil")].concat();
        let (mut relay, _) = run_asked(data, 1000, true, true);
        assert!(relay.violation().unwrap().contains("compiled code"));
        assert_eq!(relay.take_code().as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn a_supervisor_write_error_is_returned_not_swallowed() {
        let mut relay = Relay::new("e1", MAX, false);
        let mut src = io::Cursor::new(log("e1", 0));
        let err = relay
            .pump(&mut src, &mut |_: &[u8]| {
                Err(io::Error::from(ErrorKind::BrokenPipe))
            })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    }
}
