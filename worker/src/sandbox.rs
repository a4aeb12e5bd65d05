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
use std::path::{Path, PathBuf};

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
/// empty signal mask, whatever the process that started us left behind, except SIGPIPE
/// and SIGXFSZ, which stay ignored: CPython ignores them too, so a write to a closed
/// pipe raises `BrokenPipeError`, and one past the file-size limit `OSError`, instead of
/// silently killing the process.
pub fn reset_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    // Every standard signal (1 to 31), but SIGKILL and SIGSTOP, which cannot be changed.
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SIGXFSZ too, as CPython does: a write past RLIMIT_FSIZE then fails with
        // EFBIG (an OSError the workflow sees) instead of killing the process.
        let handler = if matches!(sig, Signal::SIGPIPE | Signal::SIGXFSZ) {
            SigHandler::SigIgn
        } else {
            SigHandler::SigDfl
        };
        // SAFETY: only the default and ignore dispositions are installed, never a Rust
        // function as a handler.
        let _ = unsafe { signal(sig, handler) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
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
pub fn die_with_template(template_pid: nix::unistd::Pid) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if nix::unistd::getppid() != template_pid {
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
    if limits.file_bytes > 0 {
        let n = limits.file_bytes;
        set_limit(Resource::RLIMIT_FSIZE, "file size", n, n)?;
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

/// The ids a child runs under: the template's *real* uid and gid, which the supervisor
/// set apart from its effective (and so saved) ones: the template runs as
/// `(real B, effective A, saved A)`, children as B. `None` when they are all the same
/// (a supervisor that is not root): then children keep the template's ids.
///
/// Read once, in the template ([`set_scratch`] does it at start-up): its ids never
/// change, and every child inherits the answer instead of asking the kernel again.
pub fn child_ids() -> Option<(libc::uid_t, libc::gid_t)> {
    static IDS: std::sync::OnceLock<Option<(libc::uid_t, libc::gid_t)>> =
        std::sync::OnceLock::new();
    *IDS.get_or_init(|| {
        let u = nix::unistd::getresuid().ok()?;
        let g = nix::unistd::getresgid().ok()?;
        (u.effective != u.real || g.effective != g.real).then(|| (u.real.as_raw(), g.real.as_raw()))
    })
}

/// Switches the calling child to [`child_ids`] for good: real, effective and saved, so
/// it can never switch back to the template's uid (its files, its signals) or gid (the
/// supervisor's firewall rule blocks the children's gid from every host service).
pub fn become_child_user() -> io::Result<()> {
    let Some((uid, gid)) = child_ids() else {
        return Ok(());
    };
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::setresgid(gid, gid, gid).map_err(io::Error::from)?;
    nix::unistd::setresuid(uid, uid, uid).map_err(io::Error::from)
}

/// The working directory of the template's next child: `<root>/<template pid>-<n>`.
/// The template names it before it forks, so that it, not each child, points Python's
/// `HOME`, `TMPDIR` and `tempfile` at it (`forked::fork_child`): run in the child, those
/// few lines of Python took about 30 copy-on-write page faults per execution, a sixth of
/// what the sandbox added to a child's.
pub fn next_scratch() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    scratch_root().join(format!("{}-{n}", std::process::id()))
}

/// Creates the calling child's scratch directory `dir` (mode 0700, owned by the child's
/// uid: called after [`become_child_user`]) and makes it the working directory.
///
/// A directory of that name can only be left by a dead template of the same pid (pids
/// are unique among live processes): one killed before it could clean up, under the
/// same root (a run directory that outlives its templates). It is removed and made anew.
pub fn enter_scratch(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let make = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    if let Err(e) = make() {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        std::fs::remove_dir_all(dir)?;
        make()?;
    }
    std::env::set_current_dir(dir)
}

/// Where children make their working directories, and what the template empties after
/// each execution. Set once by the template at start-up ([`set_scratch`]).
static SCRATCH: std::sync::OnceLock<Scratch> = std::sync::OnceLock::new();

#[derive(Debug)]
struct Scratch {
    root: PathBuf,
    /// `PRIVATE_TMP_DIRS` when those are the template's own mounts, with the change time
    /// (`ctime`, which no unprivileged process can set) each had when last emptied: an
    /// unchanged directory has had nothing created or removed in it since, and is not
    /// read again.
    tmp: std::sync::Mutex<Vec<(PathBuf, Option<ChangeTime>)>>,
    /// Kept when found in a cleaned directory: the scratch root and the template's own
    /// working directory (both in the private `/tmp` of a root supervisor's template).
    kept: Vec<PathBuf>,
}

/// Records the scratch root (created here if missing) and whether the tmp directories
/// are private to this template.
pub fn set_scratch(root: PathBuf, private_tmp: bool) -> io::Result<()> {
    let _ = child_ids();
    std::fs::create_dir_all(&root)?;
    let tmp = if private_tmp {
        warden_protocol::limits::PRIVATE_TMP_DIRS
            .iter()
            .map(|d| (PathBuf::from(d), None))
            .collect()
    } else {
        Vec::new()
    };
    let mut kept = vec![root.clone()];
    kept.extend(std::env::current_dir().ok());
    let _ = SCRATCH.set(Scratch {
        root,
        tmp: std::sync::Mutex::new(tmp),
        kept,
    });
    Ok(())
}

/// The scratch root ([`set_scratch`]); the current directory if none was set.
pub fn scratch_root() -> PathBuf {
    SCRATCH
        .get()
        .map(|s| s.root.clone())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// After a child is gone (reaped, its escapees swept): removes its working directory
/// `dir` and empties the private tmp directories that changed, acting as the children's
/// uid when they have one of their own. Nothing an execution wrote outlives it. Called
/// after the next spare is forked (off the critical path), which is safe: the spare runs
/// no workflow before the template hands it an execution, after this.
pub fn clean_after(dir: &Path) {
    let Some(s) = SCRATCH.get() else {
        return;
    };
    as_children(|| {
        // Most executions leave their directory empty: one rmdir.
        if std::fs::remove_dir(dir).is_err() {
            remove(dir);
        }
        let mut tmp = s.tmp.lock().unwrap_or_else(|p| p.into_inner());
        for (dir, seen) in tmp.iter_mut() {
            let now = changed_at(dir);
            if now.is_some() && now == *seen {
                continue;
            }
            empty(dir, &s.kept);
            *seen = changed_at(dir);
        }
    });
}

/// A directory's `ctime`: seconds and nanoseconds.
type ChangeTime = (i64, i64);

fn changed_at(dir: &Path) -> Option<ChangeTime> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .map(|m| (m.ctime(), m.ctime_nsec()))
}

/// Runs `f` with the children's uid as the effective one (when they have their own).
fn as_children(f: impl FnOnce()) {
    let own = nix::unistd::geteuid();
    let switched =
        child_ids().and_then(|(uid, _)| nix::unistd::seteuid(nix::unistd::Uid::from_raw(uid)).ok());
    f();
    if switched.is_some() {
        if let Err(e) = nix::unistd::seteuid(own) {
            // A template that cannot become itself again must not go on.
            eprintln!("warden-worker: cannot switch back to uid {own}: {e}");
            // SAFETY: ends the process at once.
            unsafe { libc::_exit(1) };
        }
    }
}

fn remove(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        eprintln!("warden-worker: cannot remove {}: {e}", path.display());
    }
}

/// Removes everything in `dir` but `kept`.
fn empty(dir: &Path, kept: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !kept.contains(&path) {
            remove(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_template_s_directory_of_the_same_name_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join(format!("{}-0", std::process::id()));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("left-by-a-dead-child"), "x").unwrap();
        let before = std::env::current_dir().unwrap();
        let entered = enter_scratch(&stale);
        let now = std::env::current_dir().unwrap();
        std::env::set_current_dir(before).unwrap();
        entered.expect("the stale directory is replaced");
        assert_eq!(now, stale);
        assert_eq!(std::fs::read_dir(&stale).unwrap().count(), 0);
    }

    /// `scripts/sandbox-cost` measures the sandbox against this code with the layers
    /// removed by a patch: a change to the lines it touches must update it too.
    #[test]
    fn the_measurement_patch_without_the_sandbox_still_applies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("patch")
            .args(["--dry-run", "--batch", "--forward", "-p1", "-d"])
            .arg(&root)
            .arg("-i")
            .arg(root.join("scripts/lib/without-sandbox.patch"))
            .output()
            .expect("run patch (Debian's patch package)");
        assert!(
            out.status.success(),
            "scripts/lib/without-sandbox.patch no longer applies; update it to remove the same layers: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn each_child_gets_a_directory_of_its_own() {
        let a = next_scratch();
        let b = next_scratch();
        assert_ne!(a, b);
        assert_eq!(a.parent(), b.parent());
    }
}
