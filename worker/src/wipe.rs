//! Overwriting an execution's bytes in the template once it is done with them.
//!
//! A fork-mode child is a copy of its template's whole memory, freed heap and stack
//! included: whatever bytes of an execution the template still has when it forks the
//! next spare, every later execution of the slot can read in its own address space,
//! whichever organization it belongs to. So every buffer of the template that holds an
//! execution's bytes is overwritten with zeros (with [`zeroize`], whose writes the
//! compiler may not elide) as soon as the bytes are used, and at the latest before the
//! next spare is forked:
//!
//! - the `Execute` (decoded: [`execute`]; its frame as read: `Connection::recv`; its
//!   handoff to the child: [`Buffer`], encoded with `frame::encode_exact`);
//! - the Replies to the child's requests (secrets: decoded, [`to_worker`]; re-encoded,
//!   queued: [`Buffer`]);
//! - the child's frames (logs, requests, its result: the relay's [`Buffer`] and its stack
//!   chunk, the frames decoded to be validated, [`from_worker`]; the connection's held
//!   bytes, a [`Buffer`]).
//!
//! Growth is where copies escape: a `Vec` that reallocates frees its old block with the
//! bytes still in it. [`Buffer`] never lets that happen (it zeroes the old block before
//! letting it go), and frames are encoded into allocations of their exact size.
//!
//! What this does not cover: the kernel's socket buffers (not the template's memory);
//! bytes a decode that failed half-way had already copied into the strings it dropped
//! (only a child's invalid frame: that child's own bytes, never another's); the module
//! cache's reply to a template's miss request (no execution data); and reuse mode, where
//! the template runs the code itself and every execution sees what earlier ones left in
//! the process (reuse templates are bound to one organization instead).

use warden_protocol::{
    Code, Execute, ExitKind, FromWorker, Outcome, Reply, ReplyOutcome, ToWorker,
};
use zeroize::Zeroize;

/// A buffer emptied at zero above this capacity gives its block back rather than keep
/// it for the next execution (one large Result must not make the template, and so every
/// later child, bigger for good).
const KEEP_AT_MOST: usize = 1024 * 1024;

/// A byte queue whose bytes are zeroed as they are consumed, when it is cleared or
/// dropped, and before a block it outgrew is freed.
///
/// Invariant: every byte of the allocation outside `bytes[start..]` is zero (or was
/// never written).
#[derive(Debug, Default)]
pub struct Buffer {
    bytes: Vec<u8>,
    /// Bytes before this were consumed (and zeroed).
    start: usize,
}

impl Buffer {
    pub fn new() -> Buffer {
        Buffer::default()
    }

    /// Takes `bytes` as the buffer's content (and allocation).
    pub fn from_vec(bytes: Vec<u8>) -> Buffer {
        let mut b = Buffer { bytes, start: 0 };
        // Its spare capacity may hold anything: make the invariant true.
        zero_spare(&mut b.bytes);
        b
    }

    /// The bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `more`. When it does not fit, the live bytes move to a new block and the
    /// old one is zeroed before it is freed.
    pub fn extend(&mut self, more: &[u8]) {
        if self.bytes.capacity() - self.bytes.len() < more.len() {
            let live = self.len();
            let want = (live + more.len()).max(2 * live).max(1024);
            let mut grown = Vec::with_capacity(want);
            grown.extend_from_slice(self.data());
            let mut old = std::mem::replace(&mut self.bytes, grown);
            old[self.start..].zeroize();
            self.start = 0;
        }
        self.bytes.extend_from_slice(more);
    }

    /// Drops the first `n` bytes (zeroed).
    pub fn consume(&mut self, n: usize) {
        let end = self.start + n.min(self.len());
        self.bytes[self.start..end].zeroize();
        self.start = end;
        if self.start == self.bytes.len() {
            self.reset();
        }
    }

    /// Drops every byte (zeroed).
    pub fn clear(&mut self) {
        self.bytes[self.start..].zeroize();
        self.reset();
    }

    /// Empty again; everything is zero already.
    fn reset(&mut self) {
        self.bytes.clear();
        self.start = 0;
        if self.bytes.capacity() > KEEP_AT_MOST {
            self.bytes = Vec::new();
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.bytes[self.start..].zeroize();
    }
}

fn zero_spare(v: &mut Vec<u8>) {
    v.spare_capacity_mut().zeroize();
}

/// Zeroes every string of `e` (whole allocations, spare capacity included) and leaves
/// them empty.
pub fn execute(e: &mut Execute) {
    let Execute {
        execution_id,
        path,
        source,
        function,
        params_json,
        context_json,
        modules_generation: _,
        modules_manifest: _,
        limits: _,
        org,
        code,
    } = e;
    for s in [
        execution_id,
        path,
        source,
        function,
        params_json,
        context_json,
        org,
    ] {
        s.zeroize();
    }
    if let Code::Cached(bytes) = code {
        bytes.zeroize();
    }
    *code = Code::None;
}

/// Zeroes every string of a message from the supervisor (an `Execute`, a `Reply`).
pub fn to_worker(msg: &mut ToWorker) {
    match msg {
        ToWorker::Execute(e) => execute(e),
        ToWorker::Reply(r) => reply(r),
        ToWorker::Kill { execution_id } => execution_id.zeroize(),
        // Module paths and hashes: the workspace's, the same for every organization.
        ToWorker::Welcome(_) | ToWorker::Modules(_) | ToWorker::Shutdown => {}
    }
}

/// Zeroes every string of a Reply (its value may be a secret).
pub fn reply(r: &mut Reply) {
    r.execution_id.zeroize();
    match &mut r.outcome {
        ReplyOutcome::Ok { value_json } => value_json.zeroize(),
        ReplyOutcome::Err { message } => message.zeroize(),
    }
}

/// Zeroes every string of a message from a child (its logs, requests and result).
pub fn from_worker(msg: &mut FromWorker) {
    match msg {
        FromWorker::Log(l) => {
            l.execution_id.zeroize();
            l.message.zeroize();
        }
        FromWorker::Request(r) => {
            r.execution_id.zeroize();
            r.op.zeroize();
            r.args_json.zeroize();
        }
        FromWorker::Result(r) => {
            r.execution_id.zeroize();
            r.sdk_writes_json.zeroize();
            match &mut r.outcome {
                Outcome::Success { result_json } => result_json.zeroize(),
                Outcome::Failed(info) => {
                    info.error_type.zeroize();
                    info.message.zeroize();
                    info.traceback.zeroize();
                }
            }
        }
        FromWorker::Started(s) => s.execution_id.zeroize(),
        FromWorker::Ended(e) => {
            e.execution_id.zeroize();
            if let ExitKind::ProtocolError(reason) = &mut e.exit {
                reason.zeroize();
            }
        }
        FromWorker::Compiled(code) => code.zeroize(),
        FromWorker::Hello(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation of `b`, spare capacity included; callers only look at bytes
    /// that were written.
    fn allocation(b: &Buffer) -> &[u8] {
        // SAFETY: the allocation is `capacity` bytes long; the tests read only the bytes
        // they had the buffer write (u8 has no invalid values).
        unsafe { std::slice::from_raw_parts(b.bytes.as_ptr(), b.bytes.capacity()) }
    }

    #[test]
    fn consumed_and_cleared_bytes_are_zeroed_in_place() {
        let mut b = Buffer::from_vec(vec![7u8; 100]);
        b.consume(40);
        assert_eq!(b.data(), &[7u8; 60][..]);
        assert!(allocation(&b)[..40].iter().all(|&x| x == 0));
        b.extend(&[9u8; 50]);
        // It grew: the live bytes moved to the start of a new block.
        assert_eq!(b.len(), 110);
        b.clear();
        assert!(b.is_empty());
        assert!(allocation(&b)[..110].iter().all(|&x| x == 0));
    }

    #[test]
    fn growing_keeps_the_live_bytes_in_order() {
        let mut b = Buffer::new();
        let mut want = Vec::new();
        for i in 0..200u8 {
            b.extend(&[i; 37]);
            want.extend_from_slice(&[i; 37]);
            if i % 3 == 0 {
                b.consume(20);
                want.drain(..20);
            }
            assert_eq!(b.data(), &want[..]);
        }
    }

    #[test]
    fn messages_are_wiped_to_empty_strings() {
        let mut e = Execute {
            source: "secret source".into(),
            params_json: "{\"p\": 1}".into(),
            ..Default::default()
        };
        execute(&mut e);
        assert!(e.source.is_empty() && e.params_json.is_empty());
    }
}
