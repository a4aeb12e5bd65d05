//! Waiting for children, reading what they cost, and making sure nothing outlives an
//! execution.
//!
//! The template is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every descendant of
//! an execution whose parent dies is reparented to the template rather than to init,
//! including processes that left the execution's process group with `setsid` or a
//! double fork. After each execution [`sweep`] SIGKILLs and reaps every remaining child
//! until there is none: no stray process and no zombie survives an execution.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use warden_protocol::ExitKind;

use crate::procfs;

/// Upper bound on kill-and-reap rounds in one sweep. Each round kills every child it
/// sees; new children only appear when a killed process's own children are reparented,
/// so a sweep converges quickly. The bound only guards against a kernel surprise.
const MAX_SWEEP_ROUNDS: usize = 1000;

pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// What an execution cost, as reported in `Ended`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub peak_memory_bytes: u64,
    pub user_cpu_us: u64,
    pub system_cpu_us: u64,
}

impl Usage {
    fn from_rusage(ru: &libc::rusage) -> Usage {
        let us =
            |tv: libc::timeval| (tv.tv_sec.max(0) as u64) * 1_000_000 + tv.tv_usec.max(0) as u64;
        Usage {
            // Linux reports ru_maxrss in KiB.
            peak_memory_bytes: (ru.ru_maxrss.max(0) as u64) * 1024,
            user_cpu_us: us(ru.ru_utime),
            system_cpu_us: us(ru.ru_stime),
        }
    }

    /// This process's usage so far (reuse mode).
    pub fn of_self() -> Usage {
        use nix::sys::resource::{getrusage, UsageWho};
        getrusage(UsageWho::RUSAGE_SELF)
            .map(|ru| Usage::from_rusage(ru.as_ref()))
            .unwrap_or_default()
    }
}

/// SIGKILLs the process group led by `pid` (and `pid` itself, in case it has not joined
/// its own group yet). "No such process" is not an error: it means there is nothing left.
pub fn kill_group(pid: Pid) {
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// Has `pid` exited? Leaves it a zombie (`WNOWAIT`), so its pid, and with it the
/// process-group id, cannot be reused before we kill the rest of its group.
pub fn has_exited(pid: Pid, block: bool) -> io::Result<bool> {
    let mut flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        match waitid(Id::Pid(pid), flags) {
            // With WNOHANG and nothing to report.
            Ok(status) => return Ok(status != WaitStatus::StillAlive),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps `pid` and returns how it ended and what it used.
pub fn reap(pid: Pid) -> io::Result<(ExitKind, Usage)> {
    let mut status = 0;
    // libc: nix has no wait4 (the child's own resource usage comes with it).
    // SAFETY: wait4 only writes into the status and zeroed rusage we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let ret = unsafe { libc::wait4(pid.as_raw(), &mut status, libc::__WALL, &mut ru) };
        if ret == pid.as_raw() {
            break;
        }
        let err = io::Error::last_os_error();
        if ret < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(err);
    }
    let exit = if libc::WIFSIGNALED(status) {
        ExitKind::Signaled(libc::WTERMSIG(status))
    } else {
        ExitKind::Exited(libc::WEXITSTATUS(status))
    };
    Ok((exit, Usage::from_rusage(&ru)))
}

/// Kills and reaps every child the template still has, then every zombie; returns how
/// many processes it had to kill. Called after an execution's child was reaped and
/// before the next spare is forked (and at exit, after the spare was discarded), when
/// the template has no legitimate children: anything found here escaped an execution.
pub fn sweep() -> usize {
    let mut killed = 0;
    for _ in 0..MAX_SWEEP_ROUNDS {
        if !reap_zombies() {
            // The common case, answered by one system call instead of reading /proc.
            return killed;
        }
        let children = procfs::children();
        if children.is_empty() {
            return killed;
        }
        for &pid in &children {
            // A child that made itself a group leader may have taken others with it.
            let _ = killpg(pid, Signal::SIGKILL);
            if kill(pid, Signal::SIGKILL) != Err(Errno::ESRCH) {
                killed += 1;
            }
        }
        for &pid in &children {
            // Blocking: a SIGKILLed process dies promptly. Errors mean another wait
            // already reaped it, which is what we want anyway.
            while waitpid(pid, Some(WaitPidFlag::__WALL)) == Err(Errno::EINTR) {}
        }
    }
    eprintln!(
        "warden-worker: children still appearing after {MAX_SWEEP_ROUNDS} kill rounds; giving up"
    );
    killed
}

/// Reaps every child that has already exited, without blocking. Returns whether any
/// child (running or stopped) is left.
fn reap_zombies() -> bool {
    let any_child = Pid::from_raw(-1);
    loop {
        match waitpid(any_child, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return false,
            // Cannot tell: let the caller look in /proc.
            Err(_) => return true,
        }
    }
}
