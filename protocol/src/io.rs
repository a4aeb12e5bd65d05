//! Blocking frame I/O over `std::io` streams, for the worker (which has no async runtime
//! so that it can fork safely) and for the template's relay of its child's frames.
//!
//! EOF before the first byte of a frame is a clean close (`Ok(None)`); EOF inside a frame
//! is [`FrameError::Truncated`].

use std::io::{ErrorKind, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::frame::{self, FrameError, PREFIX_LEN};

/// Reads one whole frame and returns it *with* its prefix, undecoded (the template uses
/// this to validate and forward its child's frames without re-encoding them).
pub fn read_raw<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix)?;
    if got == 0 {
        return Ok(None);
    }
    if got < PREFIX_LEN {
        return Err(FrameError::Truncated {
            got,
            want: PREFIX_LEN,
        });
    }
    let len = frame::body_len(prefix, max)?;
    let mut buf = vec![0u8; PREFIX_LEN + len];
    buf[..PREFIX_LEN].copy_from_slice(&prefix);
    let got = read_full(r, &mut buf[PREFIX_LEN..])?;
    if got < len {
        return Err(FrameError::Truncated {
            got: PREFIX_LEN + got,
            want: PREFIX_LEN + len,
        });
    }
    Ok(Some(buf))
}

/// Reads and decodes one message. `Ok(None)` means the peer closed between frames.
pub fn read<T: DeserializeOwned, R: Read>(r: &mut R, max: usize) -> Result<Option<T>, FrameError> {
    match read_raw(r, max)? {
        None => Ok(None),
        Some(buf) => frame::decode(&buf[PREFIX_LEN..]).map(Some),
    }
}

/// Encodes and writes one message with a single `write_all`.
pub fn write<T: Serialize, W: Write>(w: &mut W, msg: &T, max: usize) -> Result<(), FrameError> {
    let buf = frame::encode(msg, max)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
