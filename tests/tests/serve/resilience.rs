//! The service's promises under load and failure: a fixed connection budget, nothing
//! lost or recorded twice when PostgreSQL drops its connections or the supervisor is
//! SIGKILLed, and several supervisors sharing one stream.

use std::time::{Duration, Instant};

use warden::{ExecutionRequest, IntakeClient};
use warden_tests::db::{scalar, sessions, TestDb};
use warden_tests::pool::unique_uid_base;
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, serve_process, spawn, TestServe};

const QUICK: &str = "def run(i):\n    return {'i': i}\n";

fn requests(prefix: &str, n: usize, workflow: &str) -> Vec<ExecutionRequest> {
    (0..n)
        .map(|i| {
            TestServe::request(
                &format!("{prefix}{i}"),
                workflow,
                &format!("{{\"i\": {i}}}"),
            )
        })
        .collect()
}

/// Terminal rows in the database, through the store the test already holds, so that
/// polling opens no sessions of its own.
async fn terminal(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT count(*) FROM executions WHERE status NOT IN ('pending', 'running')",
    )
    .await
}

async fn wait_terminal(db: &TestDb, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let t = terminal(db).await;
        if t >= n {
            assert_eq!(t, n, "more terminal rows than executions");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {t} of {n} executions finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Executions counted in the daily metrics (per-workflow rows).
async fn metric_count(db: &TestDb) -> i64 {
    let mut conn = db.connection().await;
    sqlx::query_scalar(
        "SELECT COALESCE(sum(success + failed + timeout + cancelled + crashed), 0)::bigint
         FROM daily_metrics WHERE workflow_id <> 0",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

async fn push(db: &TestDb, name: &str, source: &str) {
    db.push_workflow(name, source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_executions_open_no_sessions_beyond_the_budget() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "quick", QUICK).await;
    let mut side = db.connection().await;
    let before = sessions(&mut side).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &redis, &dir, "budget");
    cfg.db_connections = 2;
    let (signals, handle) = spawn(cfg);
    let client = redis.client().await;
    client
        .submit_many(&requests("b", 1000, "quick"))
        .await
        .unwrap();
    wait_terminal(&db, 1000, Duration::from_secs(120)).await;
    signals.send(Some(warden::Shutdown::Drain)).unwrap();
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.executions, 1000);

    let after = sessions(&mut side).await;
    // The test's own polling reuses `db.store`'s connections, opened before `before`.
    // The budget is the pool's 2 plus the module cache's one LISTEN connection (the
    // design allows exactly that one more).
    assert!(
        after - before <= 3,
        "sessions grew by {} over 1000 executions (budget 2 + 1 LISTEN)",
        after - before
    );
    assert_eq!(metric_count(&db).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_lose_nothing_and_record_nothing_twice() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "quick", QUICK).await;
    let dir = tempfile::tempdir().unwrap();
    let (signals, handle) = spawn(config(&db, &redis, &dir, "resilient"));
    let client = redis.client().await;
    client
        .submit_many(&requests("k", 1000, "quick"))
        .await
        .unwrap();

    let mut killed = 0;
    for _ in 0..3 {
        // Kill mid-run, a few times, whatever state the connections are in.
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = terminal(&db).await + 150;
        while terminal(&db).await < target.min(1000) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed += db.terminate_backends().await;
    }
    assert!(killed >= 2, "backends were killed ({killed})");
    wait_terminal(&db, 1000, Duration::from_secs(120)).await;
    signals.send(Some(warden::Shutdown::Drain)).unwrap();
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.executions, 1000, "each execution ran once");
    assert_eq!(metric_count(&db).await, 1000, "each execution counted once");
    let mut conn = db.connection().await;
    let success: i64 =
        sqlx::query_scalar("SELECT count(*) FROM executions WHERE status = 'success'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(success, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_share_one_stream() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(
        &db,
        "sleepy",
        "import time\ndef run(i):\n    time.sleep(0.005)\n    return i\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (sig1, h1) = spawn(config(&db, &redis, &dir, "one"));
    let (sig2, h2) = spawn(config(&db, &redis, &dir, "two"));
    let client = redis.client().await;
    client
        .submit_many(&requests("t", 400, "sleepy"))
        .await
        .unwrap();
    wait_terminal(&db, 400, Duration::from_secs(120)).await;
    sig1.send(Some(warden::Shutdown::Drain)).unwrap();
    sig2.send(Some(warden::Shutdown::Drain)).unwrap();
    let (r1, r2) = (h1.await.unwrap().unwrap(), h2.await.unwrap().unwrap());
    assert_eq!(r1.executions + r2.executions, 400, "{r1:?} {r2:?}");
    assert!(
        r1.executions > 20 && r2.executions > 20,
        "both took work: {r1:?} {r2:?}"
    );
    let mut conn = db.connection().await;
    let by: Vec<(String, i64)> =
        sqlx::query_as("SELECT supervisor, count(*) FROM executions GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        by,
        vec![
            ("one".to_string(), r1.executions as i64),
            ("two".to_string(), r2.executions as i64)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_supervisor_restarts_and_every_execution_commits_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(
        &db,
        "sleepy",
        "import time\ndef run(i):\n    time.sleep(0.01)\n    return i\n",
    )
    .await;
    let client: IntakeClient = redis.client().await;
    client
        .submit_many(&requests("x", 300, "sleepy"))
        .await
        .unwrap();
    let uids = unique_uid_base();

    let mut first = serve_process(&db, &redis, "crashy", &["--heartbeat-ttl", "1s"], uids);
    let deadline = Instant::now() + Duration::from_secs(60);
    while terminal(&db).await < 80 {
        assert!(
            Instant::now() < deadline,
            "the first supervisor made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL: no drain, no flush, nothing.
    first.wait().unwrap();
    let done_at_kill = terminal(&db).await;
    assert!(done_at_kill < 300, "killed mid-run ({done_at_kill} done)");

    let mut second = serve_process(&db, &redis, "crashy", &["--heartbeat-ttl", "1s"], uids);
    wait_terminal(&db, 300, Duration::from_secs(120)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(second.wait().unwrap().success());
    assert_eq!(
        metric_count(&db).await,
        300,
        "each execution counted exactly once"
    );
    let mut conn = db.connection().await;
    let success: i64 =
        sqlx::query_scalar("SELECT count(*) FROM executions WHERE status = 'success'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(success, 300);
}
