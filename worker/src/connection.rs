//! The template's connection to the supervisor: the Unix socket inherited on fd 3.
//!
//! Blocking frame I/O with the configured maximum frame size. Reads use
//! [`warden_protocol::io`], which never reads past the end of the current frame, so
//! `poll` readiness on the fd stays meaningful between frames (there is no user-space
//! read buffer that could hide a buffered message from `poll`).
//!
//! Every frame read is zeroed once decoded, and frames held to be sent are zeroed once
//! written (see [`crate::wipe`]): they carry executions' sources, params, secrets and
//! results, which the children forked for later executions must not inherit.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use warden_protocol::frame::PREFIX_LEN;
use warden_protocol::{frame, io as frame_io, FrameError, FromWorker, ToWorker};
use zeroize::Zeroize;

use crate::error::WorkerError;
use crate::fds::{self, CONNECTION_FD};
use crate::wipe::Buffer;

pub struct Connection {
    stream: UnixStream,
    max_frame: usize,
    /// Encoded frames held back to go out with the next write: every write wakes the
    /// supervisor, so frames sent back to back (Started, a child's Result, Ended) share
    /// one. Order is kept: whatever is sent next is written after them. Zeroed as it is
    /// written.
    held: Buffer,
    /// Messages read while an execution ran that are for after it: in fork mode the
    /// supervisor sends the next execution's `Modules` and `Execute` ahead, so the
    /// template finds its next `Execute` without waiting for a round trip.
    /// [`Connection::next`] returns these first, in order.
    queued: std::collections::VecDeque<ToWorker>,
}

impl Connection {
    /// Takes ownership of fd 3. Fails clearly when the worker was started by hand without
    /// a supervisor socket there.
    pub fn inherit(max_frame: usize) -> Result<Connection, WorkerError> {
        if !fds::is_socket(CONNECTION_FD) {
            return Err(WorkerError::Usage(format!(
                "fd {CONNECTION_FD} is not a socket: warden-worker must be started by the \
                 supervisor with its connection on fd {CONNECTION_FD}"
            )));
        }
        // The supervisor left the fd inheritable so it survived our exec; nothing we
        // start (a reuse-mode `os.system`, say) may inherit it in turn.
        fds::set_cloexec(CONNECTION_FD).map_err(WorkerError::os("marking fd 3 close-on-exec"))?;
        // SAFETY: fd 3 is an open socket (checked above) that nothing else in this
        // process owns; from now on this value is its only owner.
        let stream = unsafe { UnixStream::from_raw_fd(CONNECTION_FD) };
        Ok(Connection {
            stream,
            max_frame,
            held: Buffer::new(),
            queued: std::collections::VecDeque::new(),
        })
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends `msg` now, after anything held.
    pub fn send(&mut self, msg: &FromWorker, during: &'static str) -> Result<(), WorkerError> {
        if self.held.is_empty() {
            return frame_io::write(&mut self.stream, msg, self.max_frame)
                .map_err(WorkerError::connection(during));
        }
        self.hold(msg, during)?;
        self.flush()
            .map_err(|e| WorkerError::connection(during)(FrameError::Io(e)))
    }

    /// Queues `msg` to go out with the next write (see `held`).
    pub fn hold(&mut self, msg: &FromWorker, during: &'static str) -> Result<(), WorkerError> {
        let mut bytes =
            frame::encode_exact(msg, self.max_frame).map_err(WorkerError::connection(during))?;
        self.held.extend(&bytes);
        bytes.zeroize();
        Ok(())
    }

    /// Queues frames that were already encoded (and validated) elsewhere.
    pub fn hold_raw(&mut self, frames: &[u8]) {
        self.held.extend(frames);
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Writes whatever is held.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.held.is_empty() {
            let written = self.stream.write_all(self.held.data());
            // Sent or not (the supervisor is gone), these bytes are done with.
            self.held.clear();
            written?;
        }
        Ok(())
    }

    /// Forwards frames that were already encoded (and validated) elsewhere, unchanged,
    /// after anything held.
    pub fn send_raw(&mut self, frames: &[u8]) -> std::io::Result<()> {
        if self.held.is_empty() {
            return self.stream.write_all(frames);
        }
        self.held.extend(frames);
        self.flush()
    }

    /// Keeps a message read during an execution for [`Connection::next`] after it.
    pub fn queue(&mut self, msg: ToWorker) {
        self.queued.push_back(msg);
    }

    /// Is a message waiting in [`Connection::queue`]?
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The id of the `Execute` waiting in [`Connection::queue`], if any: a child forked
    /// now inherits it (see `forked::Spare`).
    pub fn queued_execution(&self) -> Option<&str> {
        self.queued.iter().find_map(|m| match m {
            ToWorker::Execute(e) => Some(e.execution_id.as_str()),
            _ => None,
        })
    }

    /// The next message for the idle template: what [`Connection::queue`] kept, in
    /// order, else the next one read.
    pub fn next(&mut self, during: &'static str) -> Result<Option<ToWorker>, WorkerError> {
        match self.queued.pop_front() {
            Some(msg) => Ok(Some(msg)),
            None => self.recv(during),
        }
    }

    /// The next message read from the socket (never one [`Connection::queue`] kept);
    /// `Ok(None)` when the supervisor closed the connection.
    /// The frame's bytes are zeroed once decoded (the message's own strings are the
    /// caller's to wipe: [`crate::wipe::to_worker`]).
    pub fn recv(&mut self, during: &'static str) -> Result<Option<ToWorker>, WorkerError> {
        // read_raw allocates the frame's exact size once: no growth leaves a copy.
        let Some(mut bytes) = frame_io::read_raw(&mut self.stream, self.max_frame)
            .map_err(WorkerError::connection(during))?
        else {
            return Ok(None);
        };
        let msg = frame::decode(&bytes[PREFIX_LEN..]);
        bytes.zeroize();
        msg.map(Some).map_err(WorkerError::connection(during))
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
