//! Process-level isolation of a forked child, applied in the child before any user code
//! runs, plus the clean signal state the template hands down to every child.
//!
//! The supervisor has already sandboxed the template (scrubbed environment, own session,
//! no-new-privs, private cwd, maybe its own uid); what is added here is per execution:
//! its own process group (so one `killpg` stops everything it started), death with the
//! template, a minimal fd table, and the execution's rlimits.
//!
//! Reuse mode applies none of this per execution: the template runs the code itself and
//! rlimits cannot be lowered and raised again around a single call. There, the
//! supervisor enforces deadlines by killing the whole template.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use warden_protocol::ExecutionLimits;

use crate::fds::{self, CONNECTION_FD};

/// Makes the template (and every child it forks: the flag is copied by `fork`)
/// non-dumpable: no process of another uid, and none of the same uid, may `ptrace` it,
/// read or write its `/proc/PID/mem`, `environ` or fds, or `pidfd_getfd` from it. A
/// process may still read its own `/proc/self`. A program a child `exec`s is dumpable
/// again, which exposes only that program to the child that started it.
pub fn make_undumpable() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// Gives the template (and so every child it forks) default signal dispositions and an
/// empty signal mask, whatever the process that started us left behind, except SIGPIPE,
/// which stays ignored: CPython ignores it too, so a write to a closed pipe raises
/// `BrokenPipeError` in Python instead of silently killing the process.
pub fn reset_signals() {
    // SAFETY: sigaction/sigprocmask with fully initialised arguments; SIGKILL and SIGSTOP
    // are skipped because they cannot be changed.
    unsafe {
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let handler = if sig == libc::SIGPIPE {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            libc::signal(sig, handler);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Puts the calling process in a new process group whose id is its pid. The template
/// does the same from its side right after `fork`, so whichever runs first, a `Kill`
/// can never reach a child that is still in the template's group.
pub fn enter_own_group() -> io::Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
        .map_err(io::Error::from)
}

/// Arranges SIGKILL when the template dies, then checks it has not died already (the
/// classic race: if it died before `prctl`, we were reparented and no signal will come).
pub fn die_with_template(template_pid: i32) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if nix::unistd::getppid().as_raw() != template_pid {
        return Err("the template exited before the child started".into());
    }
    Ok(())
}

/// Leaves the child with exactly fds 0, 1, 2 and its output socket on fd 3 (replacing
/// the template's supervisor connection, which a child must never touch). Everything
/// else the template had open is closed. Fd 3 is close-on-exec so a program the
/// workflow runs cannot write into the execution's output.
pub fn isolate_fds(output_fd: i32) -> io::Result<()> {
    if output_fd != CONNECTION_FD {
        fds::dup_onto(output_fd, CONNECTION_FD)?;
    }
    fds::close_from(CONNECTION_FD + 1);
    Ok(())
}

/// Applies the execution's rlimits. Soft and hard limits are set together so the code
/// cannot raise them again; a requested value above the current hard limit is clamped to
/// it (a non-root process may only lower a hard limit). `0` means "no limit" for the
/// memory, CPU, file and process limits; core dumps are always disabled.
pub fn apply_limits(limits: &ExecutionLimits) -> Result<(), String> {
    set_limit(Resource::RLIMIT_CORE, "core size", 0, 0)?;
    if limits.memory_bytes > 0 {
        let n = limits.memory_bytes;
        set_limit(Resource::RLIMIT_AS, "address space", n, n)?;
    }
    if limits.cpu_seconds > 0 {
        // Soft limit first: SIGXCPU at the limit, SIGKILL one second later if ignored.
        let n = limits.cpu_seconds;
        set_limit(Resource::RLIMIT_CPU, "CPU time", n, n.saturating_add(1))?;
    }
    if limits.open_files > 0 {
        let n = limits.open_files;
        set_limit(Resource::RLIMIT_NOFILE, "open files", n, n)?;
    }
    if limits.processes > 0 {
        let n = limits.processes;
        set_limit(Resource::RLIMIT_NPROC, "processes", n, n)?;
    }
    Ok(())
}

fn set_limit(resource: Resource, name: &str, soft: u64, hard: u64) -> Result<(), String> {
    let (_, current_hard) =
        getrlimit(resource).map_err(|e| format!("cannot read the {name} limit: {e}"))?;
    let clamp = |v: u64| {
        if current_hard == RLIM_INFINITY {
            v
        } else {
            v.min(current_hard)
        }
    };
    let (soft, hard) = (clamp(soft), clamp(hard));
    setrlimit(resource, soft, hard)
        .map_err(|e| format!("cannot set the {name} limit to {soft}: {e}"))
}
