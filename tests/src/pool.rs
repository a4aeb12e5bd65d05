//! Pool test fixtures: a real pool of real `warden-worker` processes, in its own
//! temporary run directory and with its own worker uid range, so tests run in parallel
//! (RLIMIT_NPROC counts per uid: two pools sharing uids would see each other's
//! processes). The uid base and the "not available" answer come from `warden::testing`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use warden::{ExecutionOutcome, Job, PoolEvent};
use warden::{Pool, PoolConfig};
use warden_protocol::{Log, Reply, Request};

/// `target/<profile>/`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`). `scripts/test` builds the binaries first.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

pub fn worker_bin() -> PathBuf {
    let p = target_dir().join("warden-worker");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

pub fn warden_bin() -> PathBuf {
    let p = target_dir().join("warden");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// The uid range test pools lease from: the default one, as production pools do. The
/// pool's lock-file lease (`pool::uids`) keeps every pool's uids apart, across test
/// binaries running in parallel too, and the host's firewall rule covers its children.
pub fn unique_uid_base() -> Option<u32> {
    warden::testing::default_uid_base()
}

pub struct TestPool {
    pub pool: Pool,
    pub events: mpsc::UnboundedReceiver<PoolEvent>,
    /// Executions the pool handed back unstarted (at shutdown), as they were seen.
    pub returned: Vec<String>,
    pub cfg: PoolConfig,
    _dir: tempfile::TempDir,
}

/// One finished execution with the logs it produced, in arrival order.
#[derive(Debug)]
pub struct Finished {
    pub outcome: ExecutionOutcome,
    /// Reported `Interrupted`: killed because the pool's drain ended.
    pub interrupted: bool,
    pub logs: Vec<Log>,
    pub pid: Option<u32>,
}

impl TestPool {
    pub async fn start(configure: impl FnOnce(&mut PoolConfig)) -> TestPool {
        let dir = tempfile::Builder::new()
            .prefix("warden-test-")
            .tempdir()
            .expect("tempdir");
        let mut cfg = PoolConfig::new(worker_bin(), dir.path().join("run"));
        cfg.workers = 1;
        cfg.worker_uid_base = unique_uid_base();
        if cfg.worker_uid_base.is_none() {
            cfg.limits.processes = 0;
        }
        configure(&mut cfg);
        let (tx, events) = mpsc::unbounded_channel();
        let pool = Pool::start(cfg.clone(), tx).await.expect("pool starts");
        TestPool {
            pool,
            events,
            returned: Vec::new(),
            cfg,
            _dir: dir,
        }
    }

    /// Submits `source`'s `run(**params)` with id `id`.
    pub fn submit(&self, id: &str, source: &str, params: &str, timeout: Option<Duration>) {
        let timeout = Some(timeout.unwrap_or(self.cfg.timeout));
        if self.pool.submit(job(id, source, params, timeout)).is_err() {
            panic!("pool refused {id}: it is shut down");
        }
    }

    /// Runs one execution to its end.
    pub async fn run(&mut self, id: &str, source: &str, params: &str) -> Finished {
        self.submit(id, source, params, None);
        self.finished().await
    }

    /// The next finished execution (with its logs), failing the test after 60 s. Every
    /// request an execution makes is answered `unavailable`.
    pub async fn finished(&mut self) -> Finished {
        self.finished_answering(|req| warden::testing::unavailable(req, "test pool"))
            .await
    }

    /// [`TestPool::finished`], answering the executions' requests with `answer`.
    pub async fn finished_answering(
        &mut self,
        mut answer: impl FnMut(&Request) -> Reply,
    ) -> Finished {
        let mut logs = Vec::new();
        let mut pid = None;
        let wait = async {
            loop {
                match self.events.recv().await.expect("pool event channel open") {
                    PoolEvent::Started { pid: p, .. } => pid = Some(p),
                    PoolEvent::Log(l) => logs.push(l),
                    PoolEvent::Request(req) => self.pool.reply(answer(&req)),
                    PoolEvent::Returned { execution_id } => self.returned.push(execution_id.into()),
                    PoolEvent::Finished(outcome) => {
                        return Finished {
                            outcome,
                            interrupted: false,
                            logs: std::mem::take(&mut logs),
                            pid,
                        }
                    }
                    PoolEvent::Interrupted(outcome) => {
                        return Finished {
                            outcome,
                            interrupted: true,
                            logs: std::mem::take(&mut logs),
                            pid,
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("execution finished within 60 s")
    }
}

/// A job for `source`'s `run(**params)`; `timeout` `None`: [`PoolConfig::new`]'s
/// default (60 s), which every test pool keeps.
pub fn job(id: &str, source: &str, params: &str, timeout: Option<Duration>) -> Job {
    Job {
        execution_id: id.into(),
        path: format!("flows/{id}.py"),
        source: source.to_string(),
        function: "run".to_string(),
        params_json: params.to_string(),
        context_json: "{}".to_string(),
        timeout: timeout.unwrap_or(Duration::from_secs(60)),
        limits: None,
        modules_generation: 0,
        org: None,
        modules_manifest: None,
        priority: 0,
    }
}

/// Pids of live processes owned by `uid` (zombies included).
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if owner == Some(uid) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Direct children of `pid` with their states.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("").to_string();
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((child, state));
        }
    }
    out
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it returns `Ok`; after 5 s fails the test with the
/// last `Err`, which describes what was seen instead.
pub async fn eventually<T>(mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() >= deadline => panic!("after 5 s: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
