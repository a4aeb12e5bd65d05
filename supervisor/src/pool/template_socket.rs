//! Async frame I/O on a template's socket: a read buffer driven by
//! [`warden_protocol::frame::check`], and whole-frame writes.
//!
//! `read` is cancel-safe (bytes already read stay in the buffer), so the template task
//! can `select!` on it next to its command channel.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warden_protocol::frame::{self, FrameError, PREFIX_LEN};
use warden_protocol::{FromWorker, ToWorker};

/// The supervisor's end of one template's socket.
pub struct TemplateSocket {
    stream: UnixStream,
    buf: Vec<u8>,
    max_frame: usize,
}

impl TemplateSocket {
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// The next message, `Ok(None)` on a clean close between frames.
    pub async fn read(&mut self) -> Result<Option<FromWorker>, FrameError> {
        loop {
            match frame::check(&self.buf, self.max_frame) {
                Ok(total) => {
                    let msg = frame::decode(&self.buf[PREFIX_LEN..total]);
                    self.buf.drain(..total);
                    return msg.map(Some);
                }
                Err(FrameError::Incomplete) => {}
                Err(e) => return Err(e),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated {
                        got: self.buf.len(),
                        want: self.buf.len() + 1,
                    })
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn write(&mut self, msg: &ToWorker) -> Result<(), FrameError> {
        let bytes = frame::encode(msg, self.max_frame)?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }
}
