//! The template's connection to the supervisor: the Unix socket inherited on fd 3.
//!
//! Blocking frame I/O with the configured maximum frame size. Reads use
//! [`warden_protocol::io`], which never reads past the end of the current frame, so
//! `poll` readiness on the fd stays meaningful between frames (there is no user-space
//! read buffer that could hide a buffered message from `poll`).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use warden_protocol::{io as frame_io, FromWorker, ToWorker};

use crate::error::WorkerError;
use crate::fds::{self, CONNECTION_FD};

pub struct Connection {
    stream: UnixStream,
    max_frame: usize,
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
        Ok(Connection { stream, max_frame })
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    pub fn send(&mut self, msg: &FromWorker, during: &'static str) -> Result<(), WorkerError> {
        frame_io::write(&mut self.stream, msg, self.max_frame)
            .map_err(WorkerError::connection(during))
    }

    /// Forwards frames that were already encoded (and validated) elsewhere, unchanged.
    pub fn send_raw(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(frames)
    }

    /// The next message; `Ok(None)` when the supervisor closed the connection.
    pub fn recv(&mut self, during: &'static str) -> Result<Option<ToWorker>, WorkerError> {
        frame_io::read(&mut self.stream, self.max_frame).map_err(WorkerError::connection(during))
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
