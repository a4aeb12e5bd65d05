//! Frame format: a 4-byte big-endian body length, then the bincode-2 encoded message.
//!
//! Decoding is split in two steps, as in mini-redis: [`check`] looks only at the length
//! prefix and says whether a whole frame is buffered (or that the announced length is
//! over the limit, before any allocation), and [`decode`] turns a complete body into a
//! message. "Not enough bytes yet" is the typed variant [`FrameError::Incomplete`].

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Default maximum body size: 16 MiB. Results and log lines are capped well below it.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Upper bound on any configured maximum; also the bincode decode limit, so a length
/// field *inside* a body can never make the decoder reserve more than this.
pub const HARD_MAX_FRAME: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HARD_MAX_FRAME>()
}

/// Everything that can go wrong reading or writing a frame. None of these is a panic.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The buffer does not hold a whole frame yet: read more and try again.
    #[error("incomplete frame")]
    Incomplete,
    /// The announced (or encoded) body is larger than the agreed maximum.
    #[error("frame of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A whole frame arrived but its body is not a message we know: garbage, or a peer
    /// speaking another protocol version.
    #[error("undecodable frame body ({len} bytes): {reason}")]
    Decode { len: usize, reason: String },
    /// The message could not be encoded (should not happen for our own types).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// An I/O error on the underlying stream.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (prefix + body). Fails with [`FrameError::TooLarge`] rather
/// than producing a frame the peer would reject.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; PREFIX_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - PREFIX_LEN;
    if len > max.min(HARD_MAX_FRAME) {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// [`encode`], into an allocation of exactly the frame's size: the message is measured
/// first and then written once, so no partial copy of it is left behind in memory that
/// a growing buffer freed. For frames whose bytes must not outlive their use (the worker
/// overwrites them once sent).
pub fn encode_exact<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = size.bytes_written;
    if len > max.min(HARD_MAX_FRAME) {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut out = vec![0u8; PREFIX_LEN + len];
    out[..PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    let written = bincode::serde::encode_into_slice(msg, &mut out[PREFIX_LEN..], config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if written != len {
        return Err(FrameError::Encode(format!(
            "measured {len} bytes, wrote {written}"
        )));
    }
    Ok(out)
}

/// Reads the length prefix at the start of `buf`. Returns the *total* frame length
/// (prefix + body) when the whole frame is buffered.
pub fn check(buf: &[u8], max: usize) -> Result<usize, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Err(FrameError::Incomplete);
    };
    let len = body_len(prefix.try_into().expect("4 bytes"), max)?;
    if buf.len() < PREFIX_LEN + len {
        return Err(FrameError::Incomplete);
    }
    Ok(PREFIX_LEN + len)
}

/// Validates a length prefix against the maximum.
pub fn body_len(prefix: [u8; PREFIX_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max.min(HARD_MAX_FRAME) {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one message from a complete body (without the prefix). Trailing bytes after
/// the message are an error: a frame holds exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let bad = |reason: String| FrameError::Decode {
        len: body.len(),
        reason,
    };
    let (msg, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| bad(e.to_string()))?;
    if used != body.len() {
        return Err(bad(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// [`check`] then [`decode`]: parses the frame at the start of `buf` and returns the
/// message with the number of bytes it used.
pub fn parse<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<(T, usize), FrameError> {
    let total = check(buf, max)?;
    Ok((decode(&buf[PREFIX_LEN..total])?, total))
}
