//! Output capture, Rust half: `_warden.emit_log` and the per-execution log sink.
//!
//! `runner.py` turns `print`, `sys.stderr` and `logging` into `_warden.emit_log(level,
//! line)` calls; this module numbers the lines, applies the execution's log caps,
//! truncates oversized lines, and writes each kept line as one `Log` frame straight to
//! the output fd (the child's socket in fork mode, the supervisor connection in reuse
//! mode). Nothing is buffered: a forked child ends with `_exit`.
//!
//! The sink is process-global (one execution at a time per process). It lives behind a
//! `Mutex` because pyo3 requires it, not because there is contention: the GIL is held
//! whenever Python calls in, and the template never forks while holding the lock.

use std::borrow::Cow;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use warden_protocol::{frame, ExecutionLimits, FromWorker, Log, LogLevel};

use crate::fds;

/// Longest message kept for one line; longer ones are cut and marked.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
const TRUNCATED_MARK: &str = "… [truncated]";
/// Room for everything in a Log frame besides the message and the execution id.
const LOG_FRAME_OVERHEAD: usize = 64;

static SINK: Mutex<Option<LogSink>> = Mutex::new(None);

fn sink() -> MutexGuard<'static, Option<LogSink>> {
    // A panic while holding the lock cannot leave the sink half-updated in a way that
    // matters more than losing output, so poisoning is ignored.
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one execution's log lines go, and how many it may keep.
#[derive(Debug)]
struct LogSink {
    fd: RawFd,
    max_frame: usize,
    lines: LineCounter,
    write_error: Option<io::Error>,
    /// Frames the caller wants written before this execution's first frame (reuse
    /// mode's Started), sent with that frame in one write; or handed back by [`end`].
    preamble: Vec<u8>,
}

impl LogSink {
    /// Writes `bytes` to the sink's fd, after the preamble if it is still pending.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.preamble.is_empty() {
            return fds::write_all(self.fd, bytes);
        }
        self.preamble.extend_from_slice(bytes);
        let all = std::mem::take(&mut self.preamble);
        fds::write_all(self.fd, &all)
    }
}

/// Numbering, caps and truncation, apart from any I/O so they can be tested alone.
#[derive(Debug)]
pub struct LineCounter {
    execution_id: String,
    line_cap: usize,
    max_lines: u32,
    max_bytes: u64,
    next_seq: u32,
    kept_lines: u32,
    kept_bytes: u64,
    capped: bool,
    dropped: u32,
}

impl LineCounter {
    pub fn new(execution_id: &str, limits: &ExecutionLimits, max_frame: usize) -> LineCounter {
        let room = max_frame.saturating_sub(LOG_FRAME_OVERHEAD + execution_id.len());
        LineCounter {
            execution_id: execution_id.to_string(),
            line_cap: MAX_LINE_BYTES.min(room).max(TRUNCATED_MARK.len() + 1),
            max_lines: limits.max_log_lines,
            max_bytes: limits.max_log_bytes,
            next_seq: 0,
            kept_lines: 0,
            kept_bytes: 0,
            capped: false,
            dropped: 0,
        }
    }

    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// The Log to send for this line, if it is kept. When a line would pass the cap, the
    /// line is dropped and one warning saying so is sent in its place; every later line
    /// is only counted.
    pub fn admit(&mut self, level: LogLevel, message: &str) -> Option<Log> {
        if self.capped {
            self.dropped = self.dropped.saturating_add(1);
            return None;
        }
        let message = message.strip_suffix('\n').unwrap_or(message);
        let message = truncate(message, self.line_cap);
        let len = message.len() as u64;
        if self.kept_lines >= self.max_lines || self.kept_bytes + len > self.max_bytes {
            self.capped = true;
            self.dropped = self.dropped.saturating_add(1);
            let warning = format!(
                "log limit reached ({} lines / {} bytes): further output dropped",
                self.max_lines, self.max_bytes
            );
            return Some(self.log(LogLevel::Warning, warning));
        }
        self.kept_lines += 1;
        self.kept_bytes += len;
        Some(self.log(level, message.into_owned()))
    }

    fn log(&mut self, level: LogLevel, message: String) -> Log {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Log {
            execution_id: self.execution_id.clone(),
            seq,
            timestamp_us: now_us(),
            level,
            message,
        }
    }
}

/// Cuts `message` to at most `cap` bytes (on a character boundary), marking the cut.
fn truncate(message: &str, cap: usize) -> Cow<'_, str> {
    if message.len() <= cap {
        return Cow::Borrowed(message);
    }
    let mut end = cap.saturating_sub(TRUNCATED_MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATED_MARK}", &message[..end]))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What an execution's log sink saw, collected when it ends.
#[derive(Debug)]
pub struct SinkReport {
    pub logs_dropped: u32,
    /// The first failed write: the reader of the output fd is gone.
    pub write_error: Option<io::Error>,
    /// The preamble, if no frame was written (so it is still the caller's to send).
    pub unsent: Vec<u8>,
}

/// Starts capturing for one execution: lines go to `fd` as Log frames, the first one
/// after `preamble` (encoded frames; may be empty) in the same write.
pub fn begin(
    fd: RawFd,
    execution_id: &str,
    limits: &ExecutionLimits,
    max_frame: usize,
    preamble: Vec<u8>,
) {
    *sink() = Some(LogSink {
        fd,
        max_frame,
        lines: LineCounter::new(execution_id, limits, max_frame),
        write_error: None,
        preamble,
    });
}

/// Stops capturing; later output (template start-up, between executions) goes to the
/// worker's own stderr.
pub fn end() -> SinkReport {
    match sink().take() {
        Some(s) => SinkReport {
            logs_dropped: s.lines.dropped(),
            write_error: s.write_error,
            unsent: s.preamble,
        },
        None => SinkReport {
            logs_dropped: 0,
            write_error: None,
            unsent: Vec::new(),
        },
    }
}

/// Sends one line (see [`LineCounter::admit`]).
pub fn emit(level: LogLevel, message: &str) {
    let mut guard = sink();
    let Some(sink) = guard.as_mut() else {
        // Not inside an execution: this is the worker's own output.
        let line = format!(
            "warden-worker [{}] {}\n",
            level.as_str(),
            message.trim_end()
        );
        let _ = fds::write_all(2, line.as_bytes());
        return;
    };
    if sink.write_error.is_some() {
        return;
    }
    let Some(log) = sink.lines.admit(level, message) else {
        return;
    };
    let written = frame::encode(&FromWorker::Log(log), sink.max_frame)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|bytes| sink.write(&bytes));
    if let Err(e) = written {
        sink.write_error = Some(e);
    }
}

fn parse_level(level: &str) -> Option<LogLevel> {
    Some(match level {
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warning" => LogLevel::Warning,
        "error" => LogLevel::Error,
        "critical" => LogLevel::Critical,
        _ => return None,
    })
}

/// Writes an already-encoded frame to `fd` under the log sink's lock, so that it cannot
/// interleave with a Log line another thread is writing to the same fd (see
/// [`crate::python::request`]).
pub fn write_frame(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut guard = sink();
    match guard.as_mut() {
        // After the preamble, when one is pending for this fd.
        Some(s) if s.fd == fd => s.write(bytes),
        _ => fds::write_all(fd, bytes),
    }
}

/// `_warden.emit_log(level, message)`: emits one log line for the running execution.
/// `level` is one of debug, info, warning, error, critical. Strings that are not valid
/// UTF-8 (lone surrogates) are sent with replacement characters rather than failing the
/// caller's `print`.
#[pyo3::pyfunction]
pub fn emit_log(level: &str, message: &Bound<'_, PyString>) -> PyResult<()> {
    let level = parse_level(level).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown log level {level:?} (expected debug, info, warning, error or critical)"
        ))
    })?;
    emit(level, &message.to_string_lossy());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: u32, bytes: u64) -> ExecutionLimits {
        ExecutionLimits {
            max_log_lines: lines,
            max_log_bytes: bytes,
            ..ExecutionLimits::default()
        }
    }

    #[test]
    fn numbers_lines_and_strips_one_trailing_newline() {
        let mut c = LineCounter::new("e", &limits(10, 1000), 1 << 20);
        let a = c.admit(LogLevel::Info, "a\n").unwrap();
        let b = c.admit(LogLevel::Error, "b\n\n").unwrap();
        assert_eq!((a.seq, a.message.as_str()), (0, "a"));
        assert_eq!(
            (b.seq, b.message.as_str(), b.level),
            (1, "b\n", LogLevel::Error)
        );
    }

    #[test]
    fn the_line_cap_sends_one_warning_then_counts_drops() {
        let mut c = LineCounter::new("e", &limits(2, 1000), 1 << 20);
        assert!(c.admit(LogLevel::Info, "1").is_some());
        assert!(c.admit(LogLevel::Info, "2").is_some());
        let w = c.admit(LogLevel::Info, "3").unwrap();
        assert_eq!(w.level, LogLevel::Warning);
        assert_eq!(w.seq, 2);
        assert_eq!(
            w.message,
            "log limit reached (2 lines / 1000 bytes): further output dropped"
        );
        assert!(c.admit(LogLevel::Info, "4").is_none());
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn the_byte_cap_counts_message_bytes() {
        let mut c = LineCounter::new("e", &limits(100, 10), 1 << 20);
        assert!(c.admit(LogLevel::Info, "12345").is_some());
        assert!(c.admit(LogLevel::Info, "12345").is_some());
        assert_eq!(
            c.admit(LogLevel::Info, "x").unwrap().level,
            LogLevel::Warning
        );
        assert_eq!(c.dropped(), 1);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary_and_marked() {
        let mut c = LineCounter::new("e", &limits(10, 1 << 30), 1 << 20);
        let long = "é".repeat(MAX_LINE_BYTES);
        let log = c.admit(LogLevel::Info, &long).unwrap();
        assert!(log.message.len() <= MAX_LINE_BYTES);
        assert!(log.message.ends_with(TRUNCATED_MARK));
    }

    #[test]
    fn a_small_max_frame_shrinks_the_line_cap_so_frames_always_encode() {
        let max_frame = 4096;
        let mut c = LineCounter::new("e", &limits(10, 1 << 30), max_frame);
        let log = c.admit(LogLevel::Info, &"x".repeat(10_000)).unwrap();
        assert!(frame::encode(&FromWorker::Log(log), max_frame).is_ok());
    }
}
