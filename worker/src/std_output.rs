//! A fork-mode child's fds 1 and 2: never the template's (which are the supervisor's own
//! stdout and stderr), but two memfds of its own, whose content becomes log lines of its
//! execution when it ends (`os.write(2, ...)`, a C extension's `fprintf(stderr, ...)`, a
//! subprocess's output). Those lines then pass through the supervisor's redaction like
//! every other log line of the execution.
//!
//! `print` and `sys.stdout`/`sys.stderr` writes are captured line by line as they come
//! (see [`crate::python::capture`]); what reaches the raw fds is collected at the end
//! of the execution, after them, up to [`MAX_BYTES`] per fd (the rest is dropped and
//! counted). The memfds count against the child's own memory and RLIMIT_FSIZE.

use std::io;
use std::os::fd::RawFd;

use warden_protocol::LogLevel;

use crate::python::capture;

/// How much of each fd's raw output becomes log lines.
pub const MAX_BYTES: usize = 1024 * 1024;

const FDS: [(RawFd, &std::ffi::CStr, LogLevel); 2] = [
    (1, c"warden-stdout", LogLevel::Info),
    (2, c"warden-stderr", LogLevel::Error),
];

/// Points fds 1 and 2 at fresh memfds. Called in the child before any workflow code.
pub fn redirect() -> io::Result<()> {
    for (fd, name, _) in FDS {
        // SAFETY: memfd_create with a valid NUL-terminated name; dup2 and close on fds
        // this process owns.
        unsafe {
            let m = libc::memfd_create(name.as_ptr(), 0);
            if m < 0 {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::dup2(m, fd);
            libc::close(m);
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Turns what was written to fds 1 and 2 into log lines of the running execution
/// (inside its capture window).
pub fn drain() {
    for (fd, _, level) in FDS {
        let bytes = read_from_start(fd);
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            capture::emit(level, line);
        }
    }
}

fn read_from_start(fd: RawFd) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_BYTES];
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
