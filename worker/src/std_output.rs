//! A fork-mode child's fds 1 and 2: never the template's (which are the supervisor's own
//! stdout and stderr), but one memfd of its own (both fds; one memfd costs half what
//! two do, and raw writes are rare), whose content becomes `info` log lines of its
//! execution when it ends (`os.write(2, ...)`, a C extension's `fprintf(stderr, ...)`, a
//! subprocess's output). Those lines then pass through the supervisor's redaction like
//! every other log line of the execution.
//!
//! `print` and `sys.stdout`/`sys.stderr` writes are captured line by line as they come
//! (see [`crate::python::capture`]); what reaches the raw fds is collected at the end
//! of the execution, after them, up to [`MAX_BYTES`] (the rest is dropped). The memfd
//! counts against the child's own memory and RLIMIT_FSIZE.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use warden_protocol::LogLevel;

use crate::python::capture;

/// How much of each fd's raw output becomes log lines.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Points fds 1 and 2 at one fresh memfd. Called in the child before any workflow code.
pub fn redirect() -> io::Result<()> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::unistd::{dup2_stderr, dup2_stdout};
    // Dropping it at the end closes the memfd's own number; fds 1 and 2 keep it.
    let m = memfd_create(c"warden-output", MFdFlags::empty())?;
    dup2_stdout(&m)?;
    dup2_stderr(&m)?;
    Ok(())
}

/// Turns what was written to fds 1 and 2 into log lines of the running execution
/// (inside its capture window).
pub fn drain() {
    let bytes = read_from_start(1);
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        capture::emit(LogLevel::Info, line);
    }
}

fn read_from_start(fd: RawFd) -> Vec<u8> {
    // SAFETY: fds 1 and 2 stay open for the whole execution; they are only read here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let size = match nix::sys::stat::fstat(fd) {
        Ok(st) => st.st_size.max(0) as usize,
        Err(_) => return Vec::new(),
    };
    // Most executions write nothing there: no allocation at all.
    let mut buf = vec![0u8; size.min(MAX_BYTES)];
    let mut n = 0;
    while n < buf.len() {
        match nix::sys::uio::pread(fd, &mut buf[n..], n as libc::off_t) {
            Ok(0) | Err(_) => break,
            Ok(r) => n += r,
        }
    }
    buf.truncate(n);
    buf
}
