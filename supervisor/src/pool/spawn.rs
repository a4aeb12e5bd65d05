//! Starting one template process inside its sandbox.
//!
//! Applied between fork and exec (so before any worker code runs), in this order:
//! 1. its end of the socketpair becomes fd 3 (the only inherited descriptor besides
//!    stdin=/dev/null, stdout/stderr);
//! 2. `setsid`: its own session and process group, so one `killpg` reaches it and
//!    anything it left in its group;
//! 3. optionally a new network namespace (needs root; do it before dropping root);
//! 4. when the supervisor is root: a mount namespace of its own with private tmpfs on
//!    `/tmp`, `/var/tmp` and `/dev/shm` (size-limited; the template empties them after
//!    every execution), the children's scratch root in that `/tmp`; then drop to the
//!    slot's ids ([`super::uids`]): effective (and, after exec, saved) uid/gid the
//!    template's, *real* uid/gid the children's, so the template can hand its children
//!    an identity of their own without any privilege (no supplementary groups; RLIMIT_NPROC is only
//!    enforced for non-root users);
//! 5. parent-death signal SIGKILL — after the uid change, which clears it — then check
//!    the parent did not already die;
//! 6. no-new-privileges, and core dumps off.
//!
//! The environment is cleared to an allow-list: whatever the supervisor holds
//! (DATABASE_URL, secrets) never reaches a worker.
//!
//! Parent-death signal follows the *thread* that forked: templates must be spawned from
//! a thread that lives as long as the pool (a runtime worker thread, never a
//! `spawn_blocking` thread, which exits when idle).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{self, Gid, Pid, Uid};
use tokio::process::{Child, Command};
use warden_protocol::Isolation;

use super::config::{PoolConfig, PoolError};
use super::uids::SlotIds;

/// The variables a worker may see, besides the ones we set. Values come from the
/// supervisor's environment when present.
const ENV_ALLOW_LIST: &[&str] = &["LANG", "LC_ALL", "TZ"];

/// A freshly started template: not yet said hello.
pub struct Spawned {
    pub child: Child,
    pub socket: tokio::net::UnixStream,
    /// Also its process group's id (it leads its own group).
    pub pid: nix::unistd::Pid,
}

/// Starts the template for `slot` (its `worker_id` on the command line is `worker_id`).
pub fn spawn_template(
    cfg: &PoolConfig,
    slot: usize,
    worker_id: u64,
    packages: Option<&Path>,
) -> Result<Spawned, PoolError> {
    let workdir = cfg.run_dir.join(format!("w{slot}"));
    let ids = cfg.slot_ids.get(slot).copied();
    prepare_workdir(&workdir, ids.map(|i| i.template))?;
    // Children's working directories: in the template's private /tmp when it gets one
    // (created there between fork and exec), else beside its working directory.
    let scratch = match ids {
        Some(_) => PathBuf::from(PRIVATE_SCRATCH),
        None => {
            let dir = cfg.run_dir.join(format!("s{slot}"));
            prepare_workdir(&dir, None)?;
            dir
        }
    };

    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| PoolError::WorkerStart(format!("socketpair: {e}")))?;
    ours.set_nonblocking(true)
        .map_err(|e| PoolError::WorkerStart(format!("socketpair: {e}")))?;
    let theirs: OwnedFd = theirs.into();

    // With a private /tmp, the binary is executed through a descriptor opened now: the
    // tmpfs mounted between fork and exec would hide a binary that lives under /tmp.
    let binary = match ids {
        Some(_) => Some(std::fs::File::open(&cfg.worker_bin).map_err(|source| {
            PoolError::WorkerBinary {
                path: cfg.worker_bin.clone(),
                source,
            }
        })?),
        None => None,
    };
    let mut cmd = match &binary {
        Some(f) => {
            let mut c = Command::new(format!("/proc/self/fd/{}", f.as_raw_fd()));
            c.arg0(&cfg.worker_bin);
            c
        }
        None => Command::new(&cfg.worker_bin),
    };
    cmd.arg("--worker-id")
        .arg(worker_id.to_string())
        .arg("--isolation")
        .arg(match cfg.isolation {
            Isolation::Fork => "fork",
            Isolation::Reuse => "reuse",
        })
        .arg("--max-frame")
        .arg(cfg.max_frame.to_string())
        .args(module_cache_args(cfg))
        .arg("--scratch-dir")
        .arg(&scratch)
        .args(ids.map(|_| "--private-tmp"))
        .current_dir(&workdir)
        .env_clear()
        .stdin(Stdio::null())
        // Pipes, never the supervisor's own stdout/stderr: what a worker prints becomes
        // a log event of the supervisor's, attributed to its slot ([`forward_output`]).
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let home = match ids {
        Some(_) => PathBuf::from(PRIVATE_HOME),
        None => workdir.clone(),
    };
    for (k, v) in worker_env(cfg, &home, packages) {
        cmd.env(k, v);
    }

    let fd = theirs.as_raw_fd();
    let parent = unistd::getpid();
    let netns = cfg.network_isolation;
    let mounts = ids.map(|ids| PrivateMounts::new(cfg.tmp_size, ids));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, setsid, unshare, mount, mkdir, chown,
    // setgroups, setresgid, setresuid, prctl, getppid, setrlimit, through nix's thin
    // wrappers); it allocates nothing (the mount arguments and paths are `CStr`s built
    // before the fork, which nix passes through as they are).
    unsafe {
        cmd.pre_exec(move || sandbox_child(fd, parent, netns, ids, mounts.as_ref()));
    }
    let mut child = cmd.spawn().map_err(|source| PoolError::WorkerBinary {
        path: cfg.worker_bin.clone(),
        source,
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_output(out, slot, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_output(err, slot, "stderr"));
    }
    drop(theirs);
    drop(binary);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap_or(0) as i32);
    let socket = tokio::net::UnixStream::from_std(ours)
        .map_err(|e| PoolError::WorkerStart(format!("socket: {e}")))?;
    Ok(Spawned { child, socket, pid })
}

/// Logs each line a template writes to its stdout or stderr (its own diagnostics; in
/// reuse mode also whatever workflow code writes to the raw fds) as a `tracing` event
/// with the slot and the stream: a workflow can neither forge the supervisor's own
/// output nor truncate its log file. Lines are capped at 4 KiB.
async fn forward_output(
    pipe: impl tokio::io::AsyncRead + Unpin,
    slot: usize,
    stream: &'static str,
) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(pipe).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&line[..line.len().min(4096)]);
        tracing::warn!(target: "warden::worker", slot, stream, "{}", line.escape_debug());
    }
}

/// `--key-prefix P` when the pool has a module cache. The URL (with its password) goes in
/// the environment ([`worker_env`]), never on the command line: `/proc/PID/cmdline` is
/// readable by every process on the host. Redis is the only store a worker reads; the
/// database URL never leaves the supervisor.
fn module_cache_args(cfg: &PoolConfig) -> Vec<String> {
    match &cfg.redis_url {
        Some(_) => vec!["--key-prefix".into(), cfg.key_prefix.clone()],
        None => Vec::new(),
    }
}

/// Where children's working directories go when the template has a private `/tmp`.
const PRIVATE_SCRATCH: &str = "/tmp/.warden-executions";
/// The template's own working directory (and HOME) when it has a private `/tmp`: the
/// run directory may itself be under the host's `/tmp`, which the private one hides.
const PRIVATE_HOME: &str = "/tmp/.warden-template";

/// The mount arguments of a template's private tmp directories, built before the fork
/// (nothing may be allocated between fork and exec).
struct PrivateMounts {
    targets: Vec<CString>,
    tmpfs: CString,
    options: CString,
    scratch: CString,
    home: CString,
    ids: SlotIds,
}

impl PrivateMounts {
    fn new(size: u64, ids: SlotIds) -> PrivateMounts {
        let c = |s: &str| CString::new(s).expect("no NUL in a constant");
        PrivateMounts {
            targets: warden_protocol::limits::PRIVATE_TMP_DIRS
                .iter()
                .map(|d| c(d))
                .collect(),
            tmpfs: c("tmpfs"),
            options: c(&format!("size={size},mode=1777,nr_inodes=65536")),
            scratch: c(PRIVATE_SCRATCH),
            home: c(PRIVATE_HOME),
            ids,
        }
    }
}

fn worker_env(cfg: &PoolConfig, workdir: &Path, packages: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("HOME".to_string(), workdir.display().to_string()),
        ("TMPDIR".to_string(), workdir.display().to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        ("PYTHONNOUSERSITE".to_string(), "1".to_string()),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    for key in ENV_ALLOW_LIST {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_string(), v));
        }
    }
    env.extend(cfg.worker_env.iter().cloned());
    // The runner puts the package set on `sys.path` (before the host's site-packages)
    // and imports the preloaded packages once, before any child is forked.
    if let Some(dir) = packages {
        env.push(("WARDEN_PACKAGES".to_string(), dir.display().to_string()));
    }
    if !cfg.preload.is_empty() {
        env.push(("WARDEN_PRELOAD".to_string(), cfg.preload.join(",")));
    }
    if let Some(url) = &cfg.redis_url {
        // Read and removed from its environment by the template at start-up, before
        // any child exists (see warden-worker's cli).
        env.push(("WARDEN_REDIS_URL".to_string(), url.clone()));
    }
    env
}

/// Creates the template's private working directory, owned by its uid.
fn prepare_workdir(dir: &Path, ids: Option<u32>) -> Result<(), PoolError> {
    let err = |source| PoolError::RunDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    if let Some(id) = ids {
        std::os::unix::fs::chown(dir, Some(id), Some(id)).map_err(err)?;
        // The run directory itself must be traversable by the worker's uid.
        if let Some(parent) = dir.parent() {
            let mode = std::fs::metadata(parent).map_err(err)?.permissions().mode();
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Runs in the forked child, between fork and exec. See the module comment for why
/// this order. Every call but two (said where) is nix's thin wrapper over the system
/// call, with paths given as the `CStr`s built before the fork (so nothing is allocated
/// here; an error becomes an `io::Error` from its errno, without allocating either).
fn sandbox_child(
    fd: RawFd,
    parent: Pid,
    netns: bool,
    ids: Option<SlotIds>,
    mounts: Option<&PrivateMounts>,
) -> std::io::Result<()> {
    if fd == 3 {
        // SAFETY: fd 3 is open (it is the socket's own number) for the rest of this call.
        let three = unsafe { BorrowedFd::borrow_raw(3) };
        fcntl(three, FcntlArg::F_SETFD(FdFlag::empty()))?;
    } else {
        // libc: nix's dup2 wants the target as an OwnedFd, and fd 3 need not be open.
        // SAFETY: dup2 only manipulates the fd table; `fd` is the socket we own.
        if unsafe { libc::dup2(fd, 3) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    unistd::setsid()?;
    if netns {
        unshare(CloneFlags::CLONE_NEWNET)?;
    }
    if let Some(m) = mounts {
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Nothing mounted here propagates back to the host.
        mount(
            None::<&CStr>,
            c"/",
            None::<&CStr>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&CStr>,
        )?;
        for target in &m.targets {
            mount(
                Some(m.tmpfs.as_c_str()),
                target.as_c_str(),
                Some(m.tmpfs.as_c_str()),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(m.options.as_c_str()),
            )?;
        }
        unistd::mkdir(m.scratch.as_c_str(), Mode::S_IRWXU)?;
        unistd::mkdir(m.home.as_c_str(), Mode::S_IRWXU)?;
        let (child, template) = (m.ids.child, m.ids.template);
        unistd::chown(
            m.scratch.as_c_str(),
            Some(Uid::from_raw(child)),
            Some(Gid::from_raw(child)),
        )?;
        unistd::chown(
            m.home.as_c_str(),
            Some(Uid::from_raw(template)),
            Some(Gid::from_raw(template)),
        )?;
        unistd::chdir(m.home.as_c_str())?;
    }
    if let Some(id) = ids {
        unistd::setgroups(&[])?;
        // Real = the children's, effective = the template's: exec copies the
        // effective id into the saved one, so after exec the template is
        // (child, template, template), and a child may take its real id for good.
        let (child, template) = (Gid::from_raw(id.child), Gid::from_raw(id.template));
        unistd::setresgid(child, template, template)?;
        let (child, template) = (Uid::from_raw(id.child), Uid::from_raw(id.template));
        unistd::setresuid(child, template, template)?;
    }
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if unistd::getppid() != parent {
        // libc: nix has no `_exit` (leaving without running exit handlers).
        // SAFETY: ends this forked child at once; nothing of the parent's runs.
        unsafe { libc::_exit(1) };
    }
    prctl::set_no_new_privs()?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    Ok(())
}
