//! A real `serve` running in-process, with its own database, its own Redis key prefix,
//! its own worker uids and run directory, and a shutdown trigger the test holds.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden::WorkflowSpec;
use warden::{serve, ServeConfig, ServeError, ServeReport, Shutdown};
use warden::{Completion, ExecutionRequest, IntakeClient, WorkflowRef};

use crate::db::TestDb;
use crate::pool::{unique_uid_base, worker_bin};
use crate::redis::TestRedis;

pub struct TestServe {
    pub db: TestDb,
    pub redis: TestRedis,
    pub client: IntakeClient,
    pub cfg: ServeConfig,
    signals: watch::Sender<Option<Shutdown>>,
    handle: Option<JoinHandle<Result<ServeReport, ServeError>>>,
    _dir: tempfile::TempDir,
}

/// A service config for `db` and `redis`, with `workers` workers.
pub fn config(
    db: &TestDb,
    redis: &TestRedis,
    dir: &tempfile::TempDir,
    consumer: &str,
) -> ServeConfig {
    let mut pool = warden::PoolConfig::new(worker_bin(), dir.path().join(consumer));
    pool.workers = 2;
    pool.worker_uid_base = unique_uid_base();
    if pool.worker_uid_base.is_none() {
        pool.limits.processes = 0;
    }
    let mut cfg = ServeConfig::new(pool, db.url.clone(), redis.url.clone());
    cfg.key_prefix = redis.prefix.clone();
    cfg.consumer = consumer.to_string();
    cfg.read_block = Duration::from_millis(50);
    cfg.drain_timeout = Duration::from_secs(5);
    cfg
}

impl TestServe {
    pub async fn start(configure: impl FnOnce(&mut ServeConfig)) -> TestServe {
        let db = TestDb::new().await;
        let redis = TestRedis::new();
        let dir = tempfile::Builder::new()
            .prefix("warden-serve-")
            .tempdir()
            .unwrap();
        let mut cfg = config(&db, &redis, &dir, "s1");
        configure(&mut cfg);
        let client = redis.client().await;
        let (signals, handle) = spawn(cfg.clone());
        TestServe {
            db,
            redis,
            client,
            cfg,
            signals,
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// Stores a global workflow `name` whose function is `run`.
    pub async fn push(&self, name: &str, source: &str, timeout: Option<Duration>) -> i64 {
        self.db
            .store
            .push_workflow(&WorkflowSpec {
                org: None,
                name: name.into(),
                path: format!("workflows/{name}.py"),
                function_name: "run".into(),
                source: source.into(),
                default_timeout_ms: timeout.map(|t| t.as_millis() as i32),
                time_saved_seconds: Some(60.0),
                value: Some(2.5),
                retry_policy: None,
            })
            .await
            .expect("push workflow")
            .id
    }

    pub fn request(id: &str, workflow: &str, params: &str) -> ExecutionRequest {
        let mut r = ExecutionRequest::new(id, WorkflowRef::Name(workflow.into()));
        r.params_json = params.into();
        r
    }

    /// Submits and waits for the completion (subscribing first).
    pub async fn run(&self, id: &str, workflow: &str, params: &str) -> Completion {
        let waiter = self
            .client
            .wait_for_completion(id, Duration::from_secs(60))
            .await
            .expect("subscribe");
        self.client
            .submit(&Self::request(id, workflow, params))
            .await
            .expect("submit");
        waiter.completion().await.expect("completion within 60 s")
    }

    /// Waits until the execution's row is terminal and returns its status.
    pub async fn wait_terminal(&self, id: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(d) = self.db.store.show_execution(id).await.expect("show") {
                let s = d.execution.status.to_string();
                if !matches!(s.as_str(), "pending" | "running") {
                    return s;
                }
            }
            assert!(std::time::Instant::now() < deadline, "{id} never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM-equivalent without waiting: the drain begins.
    pub fn drain(&self) {
        let _ = self.signals.send(Some(Shutdown::Drain));
    }

    /// SIGTERM-equivalent: drain and stop; returns the report.
    pub async fn stop(&mut self) -> ServeReport {
        self.stop_result().await.expect("serve ran")
    }

    /// Like [`TestServe::stop`], for a service that may have failed to start: its
    /// result.
    pub async fn stop_result(&mut self) -> Result<ServeReport, ServeError> {
        let _ = self.signals.send(Some(Shutdown::Drain));
        let handle = self.handle.take().expect("still running");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("serve stops within 30 s")
            .expect("serve task")
    }
}

impl Drop for TestServe {
    fn drop(&mut self) {
        let _ = self.signals.send(Some(Shutdown::Now));
    }
}

/// Starts `serve(cfg)` on the current runtime; returns its trigger and task.
pub fn spawn(
    cfg: ServeConfig,
) -> (
    watch::Sender<Option<Shutdown>>,
    JoinHandle<Result<ServeReport, ServeError>>,
) {
    let (tx, rx) = watch::channel(None);
    (tx, tokio::spawn(serve(cfg, rx)))
}

/// A completion's result as JSON, failing the test (with the completion) when it has none.
/// `warden serve` as a real process, so a test can SIGKILL it: two workers, consumer
/// `consumer`, then `extra` flags, on the test's database and key prefix, worker uids
/// from `uid_base` (`None`: `--worker-uid-base 0`, no uid switching). Its output is
/// dropped; set WARDEN_TEST_SERVE_STDERR to see its log.
pub fn serve_process(
    db: &TestDb,
    redis: &TestRedis,
    consumer: &str,
    extra: &[&str],
    uid_base: Option<u32>,
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(crate::pool::warden_bin());
    cmd.args(["serve", "--workers", "2", "--consumer", consumer])
        .args(extra)
        .arg("--worker-bin")
        .arg(worker_bin())
        .arg("--worker-uid-base")
        .arg(uid_base.unwrap_or(0).to_string())
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("WARDEN_KEY_PREFIX", &redis.prefix)
        .stdout(Stdio::null());
    if std::env::var_os("WARDEN_TEST_SERVE_STDERR").is_none() {
        cmd.stderr(Stdio::null());
    }
    cmd.spawn().expect("start warden serve")
}

/// Sends SIGTERM to a `warden serve` process a test started.
pub fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
}

pub fn value(c: &Completion) -> serde_json::Value {
    let raw = c
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result: {c:?}"));
    serde_json::from_str(raw.get()).unwrap()
}
