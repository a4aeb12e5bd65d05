//! Concurrency limits end to end (warden::limits, the take script, the acker's release,
//! the claim script): set with the CLI (`workflow push --max-concurrency`, `org set`),
//! never exceeded by two supervisors sharing the stream, and a SIGKILLed supervisor's
//! permit goes on with its execution to the peer that takes it over.
//!
//! Each execution returns when it started and ended (`time.time()` in the workflow);
//! the assertions compute the most executions that ran at once from those intervals.

use std::path::Path;
use std::time::{Duration, Instant};

use warden::ExecutionRequest;
use warden_tests::cli::{ok, refused, warden};
use warden_tests::db::{scalar, TestDb};
use warden_tests::pool::unique_uid_base;
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, serve_process, spawn, TestServe};

/// Workers per supervisor: more than the limits, so that each supervisor alone could
/// exceed them.
const WORKERS: usize = 3;

/// Sleeps `ms` and returns when it started and ended.
const TIMED: &str = "import time\n\ndef run(ms=200):\n    start = time.time()\n    time.sleep(ms / 1000)\n    return {\"start\": start, \"end\": time.time()}\n";

fn write_workflow(dir: &Path, name: &str) -> String {
    let file = dir.join(format!("{name}.py"));
    std::fs::write(&file, TIMED).unwrap();
    file.to_string_lossy().into_owned()
}

fn timed(id: &str, workflow: &str, org: Option<&str>, ms: u32) -> ExecutionRequest {
    let mut r = TestServe::request(id, workflow, &format!("{{\"ms\": {ms}}}"));
    r.org = org.map(str::to_owned);
    r
}

/// Waits until `n` executions are terminal (at most `within`); returns how long it took.
async fn wait_terminal(db: &TestDb, n: i64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let t = scalar(
            db,
            "SELECT count(*) FROM executions WHERE status NOT IN ('pending', 'running')",
        )
        .await;
        if t >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{t} of {n} executions ended within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most intervals `[start, end)` of the successful executions that overlap.
async fn max_overlap(db: &TestDb) -> usize {
    let mut conn = db.connection().await;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT (result->>'start')::float8, (result->>'end')::float8 FROM executions
         WHERE status = 'success'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut events: Vec<(f64, i32)> = rows.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    // An end before a start at the same instant: [start, end) intervals.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn successes(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT count(*) FROM executions WHERE status = 'success'",
    )
    .await
}

/// Two supervisors (three workers each) on one stream, a workflow limited to 2, 30
/// executions of 200 ms: all succeed, and never more than 2 ran at once (but 2 did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_never_run_more_of_a_workflow_than_its_limit() {
    let mut s = TestServe::start(|cfg| cfg.pool.workers = WORKERS).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(dir.path(), "capped");
    ok(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["workflow", "push", &file, "--max-concurrency", "2"],
    ));
    let listed = ok(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["workflow", "list", "--json"],
    ));
    assert!(listed.contains("\"max_concurrency\":2"), "{listed}");
    let mut cfg = config(&s.db, &s.redis, &dir, "s2");
    cfg.pool.workers = WORKERS;
    let (sig2, handle2) = spawn(cfg);

    let requests: Vec<ExecutionRequest> = (0..30)
        .map(|i| timed(&format!("c{i}"), "capped", None, 200))
        .collect();
    s.client.submit_many(&requests).await.expect("submit");
    // Running counts against the limit, while they run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = ok(warden(&s.db, &s.redis, dir.path(), &["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let limit = &status["limits"][0];
    assert_eq!(limit["name"], "workflow capped", "{status}");
    assert_eq!(limit["max"], 2, "{status}");
    assert!(limit["running"].as_u64().unwrap() <= 2, "{status}");

    wait_terminal(&s.db, 30, Duration::from_secs(60)).await;
    assert_eq!(successes(&s.db).await, 30);
    let most = max_overlap(&s.db).await;
    assert_eq!(most, 2, "at most 2 at once, and 2 did run at once");
    let _ = sig2.send(Some(warden::Shutdown::Drain));
    handle2.await.unwrap().expect("s2 ran");
    s.stop().await;
}

/// The same for an organization's limit, over two of its workflows (named by name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_never_run_more_of_an_organization_than_its_limit() {
    let mut s = TestServe::start(|cfg| cfg.pool.workers = WORKERS).await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["left", "right"] {
        let file = write_workflow(dir.path(), name);
        ok(warden(
            &s.db,
            &s.redis,
            dir.path(),
            &["workflow", "push", &file, "--org", "acme"],
        ));
    }
    let out = ok(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["org", "set", "acme", "--max-concurrency", "2"],
    ));
    assert!(out.contains("max concurrency 2"), "{out}");
    let shown = ok(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["org", "list", "--json"],
    ));
    assert!(shown.contains("\"max_concurrency\":2"), "{shown}");
    let shown = ok(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["org", "show", "acme"],
    ));
    assert!(shown.contains("max concurrency: 2"), "{shown}");
    assert!(shown.contains("workflows: 2"), "{shown}");
    let no = refused(warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["org", "show", "nope"],
    ));
    assert!(no.contains("no organization nope"), "{no}");
    let mut cfg = config(&s.db, &s.redis, &dir, "s2");
    cfg.pool.workers = WORKERS;
    let (sig2, handle2) = spawn(cfg);

    let requests: Vec<ExecutionRequest> = (0..30)
        .map(|i| {
            let wf = if i % 2 == 0 { "left" } else { "right" };
            timed(&format!("o{i}"), wf, Some("acme"), 200)
        })
        .collect();
    s.client.submit_many(&requests).await.expect("submit");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = ok(warden(&s.db, &s.redis, dir.path(), &["status"]));
    assert!(status.contains("organization acme"), "{status}");
    wait_terminal(&s.db, 30, Duration::from_secs(60)).await;
    assert_eq!(successes(&s.db).await, 30);
    assert_eq!(max_overlap(&s.db).await, 2);
    let _ = sig2.send(Some(warden::Shutdown::Drain));
    handle2.await.unwrap().expect("s2 ran");
    s.stop().await;
}

/// A supervisor SIGKILLed while it holds the one permit of a workflow limited to 1,
/// with 3 executions queued: a peer finishes all 3 within the heartbeat TTL plus a few
/// seconds, and the attempts that completed never overlapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_supervisors_permit_goes_on_with_its_execution() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(dir.path(), "single");
    ok(warden(
        &db,
        &redis,
        dir.path(),
        &["workflow", "push", &file, "--max-concurrency", "1"],
    ));
    let mut doomed = serve_process(
        &db,
        &redis,
        "doomed",
        &["--heartbeat-ttl", "1s"],
        unique_uid_base(),
    );
    let client = redis.client().await;
    let requests: Vec<ExecutionRequest> = (0..3)
        .map(|i| timed(&format!("k{i}"), "single", None, 1500))
        .collect();
    client.submit_many(&requests).await.expect("submit");
    let start = Instant::now();
    while scalar(
        &db,
        "SELECT count(*) FROM executions WHERE status = 'running'",
    )
    .await
        < 1
    {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A peer that finds the limit taken: it runs nothing while the doomed one lives.
    let mut cfg = config(&db, &redis, &dir, "peer");
    cfg.heartbeat_ttl = Duration::from_secs(1);
    cfg.sweep_every = Duration::from_millis(300);
    let (sig, handle) = spawn(cfg);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM executions WHERE status = 'running'"
        )
        .await,
        1,
        "the limit holds across supervisors"
    );

    doomed.kill().unwrap(); // SIGKILL: the permit is never released by its holder.
    doomed.wait().unwrap();
    // TTL (1 s) + a takeover pass (1 s) + three runs of 1.5 s, one at a time, + slack.
    let took = wait_terminal(&db, 3, Duration::from_secs(12)).await;
    assert_eq!(successes(&db).await, 3);
    assert_eq!(
        max_overlap(&db).await,
        1,
        "completed attempts never overlapped"
    );
    eprintln!("all 3 ended {took:?} after the SIGKILL");
    let _ = sig.send(Some(warden::Shutdown::Drain));
    handle.await.unwrap().expect("peer ran");
}
