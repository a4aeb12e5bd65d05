//! File-descriptor plumbing shared by the template and its children: the fixed fd
//! numbers, unbuffered writes, non-blocking mode, pidfds and fd-table hygiene.
//!
//! Writes go straight to the descriptor with `write(2)`: a forked child ends with
//! `_exit`, so any byte sitting in a Rust or Python buffer at that point would be lost.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

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

/// `fd` borrowed for one system call through nix. The functions below that take a
/// `RawFd` are called only with a descriptor that is open for the length of the call
/// (fd 3 once checked, fds 1 and 2, or one the caller owns); the two that must also
/// work on a closed number ([`is_socket`], [`ensure_std_fds`]) call libc instead.
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: open for the call, as above; the borrow never outlives the calling function.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(borrow(fd), buf) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Is `fd` readable (or at end of file, or failed) right now? Does not wait.
pub fn readable_now(fd: RawFd) -> bool {
    poll_in(fd, 0)
}

/// Waits up to `timeout_ms` (-1: forever) for `fd` to be readable, at end of file or
/// failed; says whether it is.
pub fn poll_in(fd: RawFd, timeout_ms: i32) -> bool {
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
    let mut fds = [PollFd::new(borrow(fd), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return n > 0 && fds[0].any().unwrap_or(true),
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(borrow(fd), FcntlArg::F_GETFL)?);
    fcntl(borrow(fd), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    let flags = FdFlag::from_bits_retain(fcntl(borrow(fd), FcntlArg::F_GETFD)?);
    fcntl(borrow(fd), FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Is `fd` an open socket?
pub fn is_socket(fd: RawFd) -> bool {
    // libc: `fd` may not be open at all, which nix's fstat (taking a BorrowedFd) cannot
    // be asked.
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
        // libc: this asks whether `fd` is open at all, which nix's fcntl cannot (it takes
        // a BorrowedFd, open by definition).
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let got = nix::fcntl::open(c"/dev/null", OFlag::O_RDWR, Mode::empty())?;
        if got.as_raw_fd() == fd {
            // The standard stream now: open for the life of the process.
            let _ = got.into_raw_fd();
        }
        // Otherwise lower numbers were open, so something raced us: `got` is closed
        // when dropped.
    }
    Ok(())
}

/// A pidfd for `pid` (Linux ≥ 5.3): becomes readable when the process exits, which lets
/// the template wait for its child in the same `poll` as its sockets. Always CLOEXEC.
pub fn pidfd_open(pid: nix::unistd::Pid) -> io::Result<OwnedFd> {
    // libc: nix has no pidfd_open.
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
    // libc: nix's dup3 wants `dst` as an OwnedFd, and it need not be open yet.
    // SAFETY: dup3 only manipulates the fd table.
    cvt(unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) }).map(drop)
}

/// Closes every descriptor numbered `first` or higher.
pub fn close_from(first: RawFd) {
    // libc: nix has no close_range (nor a close of a bare number: it takes an owner).
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
