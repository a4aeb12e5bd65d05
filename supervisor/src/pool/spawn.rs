//! Starting one template process inside its sandbox.
//!
//! Applied between fork and exec (so before any worker code runs), in this order:
//! 1. its end of the socketpair becomes fd 3 (the only inherited descriptor besides
//!    stdin=/dev/null, stdout/stderr);
//! 2. `setsid`: its own session and process group, so one `killpg` reaches it and
//!    anything it left in its group;
//! 3. optionally a new network namespace (needs root; do it before dropping root);
//! 4. when the supervisor is root, drop to the slot's own uid/gid (no supplementary
//!    groups): RLIMIT_NPROC is only enforced for non-root users;
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

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};
use warden_protocol::Isolation;

use super::config::{PoolConfig, PoolError};

/// The variables a worker may see, besides the ones we set. Values come from the
/// supervisor's environment when present.
const ENV_ALLOW_LIST: &[&str] = &["LANG", "LC_ALL", "TZ"];

/// A freshly started template: not yet said hello.
pub struct Spawned {
    pub child: Child,
    pub socket: tokio::net::UnixStream,
    pub pid: u32,
    pub workdir: PathBuf,
}

/// Starts the template for `slot` (its `worker_id` on the command line is `worker_id`).
pub fn spawn_template(cfg: &PoolConfig, slot: usize, worker_id: u64) -> Result<Spawned, PoolError> {
    let workdir = cfg.run_dir.join(format!("w{slot}"));
    let ids = cfg.worker_uid_base.map(|base| base + slot as u32);
    prepare_workdir(&workdir, ids)?;

    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| PoolError::WorkerStart(format!("socketpair: {e}")))?;
    ours.set_nonblocking(true)
        .map_err(|e| PoolError::WorkerStart(format!("socketpair: {e}")))?;
    let theirs: OwnedFd = theirs.into();

    let mut cmd = Command::new(&cfg.worker_bin);
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
        .current_dir(&workdir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in worker_env(cfg, &workdir) {
        cmd.env(k, v);
    }

    let fd = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let netns = cfg.network_isolation;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, setsid, unshare, setgroups, setgid,
    // setuid, prctl, getppid, setrlimit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || sandbox_child(fd, parent, netns, ids));
    }
    let child = cmd.spawn().map_err(|source| PoolError::WorkerBinary {
        path: cfg.worker_bin.clone(),
        source,
    })?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    let socket = tokio::net::UnixStream::from_std(ours)
        .map_err(|e| PoolError::WorkerStart(format!("socket: {e}")))?;
    Ok(Spawned {
        child,
        socket,
        pid,
        workdir,
    })
}

/// `--redis-url URL --key-prefix P` when the pool has a module cache. Redis is the only
/// store a worker reads; the database URL never leaves the supervisor.
fn module_cache_args(cfg: &PoolConfig) -> Vec<String> {
    match &cfg.redis_url {
        Some(url) => vec![
            "--redis-url".into(),
            url.clone(),
            "--key-prefix".into(),
            cfg.key_prefix.clone(),
        ],
        None => Vec::new(),
    }
}

fn worker_env(cfg: &PoolConfig, workdir: &Path) -> Vec<(String, String)> {
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
/// this order.
fn sandbox_child(
    fd: libc::c_int,
    parent: libc::pid_t,
    netns: bool,
    ids: Option<u32>,
) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on values we own; see spawn_template.
    unsafe {
        if fd == 3 {
            check(libc::fcntl(3, libc::F_SETFD, 0))?;
        } else {
            check(libc::dup2(fd, 3))?;
        }
        check(libc::setsid())?;
        if netns {
            check(libc::unshare(libc::CLONE_NEWNET))?;
        }
        if let Some(id) = ids {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(id))?;
            check(libc::setuid(id))?;
        }
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &zero))?;
    }
    Ok(())
}
