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
use std::os::fd::RawFd;

use warden_protocol::LogLevel;

use crate::python::capture;

/// How much of each fd's raw output becomes log lines.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Points fds 1 and 2 at one fresh memfd. Called in the child before any workflow code.
pub fn redirect() -> io::Result<()> {
    // SAFETY: memfd_create with a valid NUL-terminated name; dup2 and close on fds this
    // process owns.
    unsafe {
        let m = libc::memfd_create(c"warden-output".as_ptr(), 0);
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = if libc::dup2(m, 1) < 0 || libc::dup2(m, 2) < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(m);
        rc
    }
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
    // SAFETY: fstat on an fd we own into a zeroed stat buffer.
    let size = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Vec::new();
        }
        st.st_size.max(0) as usize
    };
    // Most executions write nothing there: no allocation at all.
    let mut buf = vec![0u8; size.min(MAX_BYTES)];
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let r = unsafe {
            libc::pread(
                fd,
                buf[n..].as_mut_ptr().cast(),
                buf.len() - n,
                n as libc::off_t,
            )
        };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    buf.truncate(n);
    buf
}
