//! File-descriptor plumbing shared by the template and its children: the fixed fd
//! numbers, unbuffered writes, non-blocking mode, pidfds and fd-table hygiene.
//!
//! Writes go straight to the descriptor with `write(2)`: a forked child ends with
//! `_exit`, so any byte sitting in a Rust or Python buffer at that point would be lost.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The supervisor connection in the template. In a forked child the same number is the
/// execution's output socket (see [`crate::sandbox::isolate_fds`]), so the frame writer
/// never has to know which process it runs in.
pub const CONNECTION_FD: RawFd = 3;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice for its length; the fd is only written to.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Is `fd` readable (or at end of file, or failed) right now? Does not wait.
pub fn readable_now(fd: RawFd) -> bool {
    poll_in(fd, 0)
}

/// Waits up to `timeout_ms` (-1: forever) for `fd` to be readable, at end of file or
/// failed; says whether it is.
pub fn poll_in(fd: RawFd, timeout_ms: libc::c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n >= 0 {
            return n > 0 && p.revents != 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on an fd we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on an fd we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Is `fd` an open socket?
pub fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes into the zeroed struct we pass.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/null if the parent closed them), so that
/// no socket we create later lands on a standard stream number where a stray `print` to
/// the real stdout would write into it.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: open with a static NUL-terminated path; the result is checked.
        let got = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) })?;
        if got != fd {
            // Lower numbers were open, so this can only happen if something raced us.
            // SAFETY: closing the descriptor we just opened.
            unsafe { libc::close(got) };
        }
    }
    Ok(())
}

/// A pidfd for `pid` (Linux ≥ 5.3): becomes readable when the process exits, which lets
/// the template wait for its child in the same `poll` as its sockets. Always CLOEXEC.
pub fn pidfd_open(pid: nix::unistd::Pid) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `dup3(src, dst, O_CLOEXEC)`: `dst` now refers to `src`'s file and will not survive an
/// `exec` of a program the user starts.
pub fn dup_onto(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup3 only manipulates the fd table.
    cvt(unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) }).map(drop)
}

/// Closes every descriptor numbered `first` or higher.
pub fn close_from(first: RawFd) {
    // SAFETY: close_range only manipulates the fd table.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if ret == 0 {
        return;
    }
    // Kernels before 5.9 lack close_range: close what /proc says is open instead.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let open: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first)
        .collect();
    for fd in open {
        // SAFETY: closing descriptors is always memory-safe.
        unsafe { libc::close(fd) };
    }
}
