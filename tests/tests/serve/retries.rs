//! Retries (supervisor/src/retry_policy.rs, supervisor/src/serve/due.rs): an attempt
//! that ends in a way its workflow's policy retries leaves the execution `retrying`,
//! in the same transaction that records the attempt; the due-work poller puts the next
//! attempt back on the stream when it is due; every attempt is recorded; callers hear
//! of the last one only; each attempt runs once, also when a supervisor is SIGKILLed
//! between the failed attempt's commit and the next attempt, and when a due attempt is
//! enqueued twice.
//!
//! "Ran once" is measured by the supervisors' reports (every end of a dispatch is
//! counted) and by the recorded attempts, not by the workflows' side effects.

use std::time::{Duration, Instant};

use warden::{Completion, ExecutionRequest, RetryOn, RetryPolicy, Status, WorkflowSpec};
use warden_tests::cli::{ok, warden};
use warden_tests::db::{scalar, TestDb};
use warden_tests::pool::unique_uid_base;
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, serve_process, spawn, value, TestServe};

/// Raises on attempts 1 and 2, returns its attempt on the third.
const FAILS_TWICE: &str = "from warden import context\n\ndef run():\n    \
                           print(f'try {context.attempt}')\n    \
                           if context.attempt < 3:\n        \
                           raise ValueError(f'boom {context.attempt}')\n    \
                           return context.attempt\n";
/// Raises on attempt 1 only.
const FAILS_ONCE: &str = "from warden import context\n\ndef run():\n    \
                          if context.attempt == 1:\n        raise ValueError('once')\n    \
                          return context.attempt\n";
const SLOW_ONCE: &str = "import time\nfrom warden import context\n\ndef run():\n    \
                         if context.attempt == 1:\n        time.sleep(30)\n    \
                         return context.attempt\n";
const DIES_ONCE: &str = "import os\nfrom warden import context\n\ndef run():\n    \
                         if context.attempt == 1:\n        os._exit(3)\n    \
                         return context.attempt\n";
const DENIED: &str = "def run():\n    raise PermissionError('no')\n";
const ALWAYS_FAILS: &str = "def run():\n    raise ValueError('always')\n";

fn policy(retries: u32, base_ms: u64, cap_ms: u64) -> RetryPolicy {
    RetryPolicy {
        retries,
        backoff_base_ms: base_ms,
        backoff_cap_ms: cap_ms,
        ..RetryPolicy::default()
    }
}

async fn push(
    db: &TestDb,
    name: &str,
    source: &str,
    timeout: Option<Duration>,
    p: Option<RetryPolicy>,
) {
    db.store
        .push_workflow(&WorkflowSpec {
            org: None,
            name: name.into(),
            path: format!("workflows/{name}.py"),
            function_name: "run".into(),
            source: source.into(),
            default_timeout_ms: timeout.map(|t| t.as_millis() as i32),
            time_saved_seconds: None,
            value: None,
            retry_policy: p,
        })
        .await
        .expect("push workflow");
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    scalar(db, sql).await
}

async fn execute(db: &TestDb, sql: &str) {
    let mut conn = db.connection().await;
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

/// The recorded attempts of `id`: (attempt, status), in order.
async fn attempts(db: &TestDb, id: &str) -> Vec<(i32, String)> {
    let d = db.store.show_execution(id).await.unwrap().expect("row");
    d.attempts
        .iter()
        .map(|a| (a.attempt, a.status.clone()))
        .collect()
}

/// Submits `req` and waits for its one completion.
async fn run(s: &TestServe, req: &ExecutionRequest) -> Completion {
    let waiter = s
        .client
        .wait_for_completion(req.execution_id.as_str(), Duration::from_secs(90))
        .await
        .unwrap();
    s.client.submit(req).await.unwrap();
    waiter.completion().await.expect("a completion")
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn status_of(db: &TestDb, id: &str) -> String {
    db.store
        .execution_status(id)
        .await
        .unwrap()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The acceptance case: fails twice, then succeeds. Callers hear one completion (the
/// last attempt's); three attempts are recorded with their own status and logs; the
/// back-off waits stay within the policy's ceilings; the metrics count the execution
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_with_three_recorded_attempts() {
    let mut s = TestServe::start(|_| {}).await;
    push(&s.db, "flaky", FAILS_TWICE, None, Some(policy(3, 200, 400))).await;
    let c = run(&s, &TestServe::request("f1", "flaky", "{}")).await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(value(&c), serde_json::json!(3));

    let d = s.db.store.show_execution("f1").await.unwrap().unwrap();
    assert_eq!(d.execution.status.to_string(), "success");
    assert_eq!(d.execution.attempt, 3);
    assert_eq!(d.execution.next_attempt_at, None);
    let got: Vec<(i32, &str, Option<&str>)> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status.as_str(), a.error_type.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "failed", Some("ValueError")),
            (2, "failed", Some("ValueError")),
            (3, "success", None)
        ]
    );
    assert!(d.attempts[0]
        .traceback
        .as_deref()
        .is_some_and(|t| t.contains("boom 1")));
    // Each failed attempt said when the next was due, within its ceiling (200 ms, then
    // 400 ms), and the next began no earlier.
    for (a, ceiling_ms) in d.attempts.iter().zip([200, 400]) {
        let due = a.next_attempt_at.expect("a next attempt was due");
        let wait = (due - a.completed_at).num_milliseconds();
        assert!((0..=ceiling_ms + 50).contains(&wait), "waited {wait} ms");
    }
    for w in d.attempts.windows(2) {
        let started = w[1].started_at.expect("started");
        let early = (w[0].next_attempt_at.unwrap() - started).num_milliseconds();
        assert!(
            early <= 5,
            "attempt {} began {early} ms before it was due",
            w[1].attempt
        );
    }
    assert_eq!(d.attempts[2].next_attempt_at, None);
    // Each attempt's own log line, under its attempt.
    let logs: Vec<(i32, &str)> = d
        .logs
        .iter()
        .map(|l| (l.attempt, l.message.as_str()))
        .collect();
    assert_eq!(logs, [(1, "try 1"), (2, "try 2"), (3, "try 3")]);
    // `executions show --json` carries the same attempts and each line's attempt.
    let dir = tempfile::tempdir().unwrap();
    let out = warden_tests::cli::ok(warden_tests::cli::warden(
        &s.db,
        &s.redis,
        dir.path(),
        &["executions", "show", "f1", "--json"],
    ));
    let shown: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    let attempts: Vec<(i64, &str)> = shown["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, "failed"), (2, "failed"), (3, "success")]);
    assert!(
        shown["attempts"][0]["next_attempt_at"].is_string(),
        "{shown}"
    );
    assert!(shown["next_attempt_at"].is_null(), "{shown}");
    let line_attempts: Vec<i64> = shown["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(line_attempts, [1, 2, 3]);
    assert_eq!(
        count(
            &s.db,
            "SELECT (sum(success) * 10 + sum(failed))::bigint FROM daily_metrics WHERE workflow_id <> 0"
        )
        .await,
        10,
        "counted once, as a success"
    );
    let report = s.stop().await;
    assert_eq!(report.executions, 3, "three runs: {report:?}");
    assert!(report.due_enqueued >= 2, "{report:?}");
}

/// A timeout and a crash are retried when the policy lists them, and not otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_crashes_are_retried_per_policy() {
    let s = TestServe::start(|_| {}).await;
    let only = |on: RetryOn| RetryPolicy {
        retry_on: vec![on],
        ..policy(2, 50, 100)
    };
    push(
        &s.db,
        "slow_once",
        SLOW_ONCE,
        Some(Duration::from_secs(1)),
        Some(only(RetryOn::Timeout)),
    )
    .await;
    push(
        &s.db,
        "dies_once",
        DIES_ONCE,
        None,
        Some(only(RetryOn::Crashed)),
    )
    .await;
    push(
        &s.db,
        "dies_unretried",
        DIES_ONCE,
        None,
        Some(only(RetryOn::Timeout)),
    )
    .await;

    let c = run(&s, &TestServe::request("t1", "slow_once", "{}")).await;
    assert_eq!(
        (c.status, value(&c)),
        (Status::Success, serde_json::json!(2))
    );
    assert_eq!(
        attempts(&s.db, "t1").await,
        [(1, "timeout".into()), (2, "success".into())]
    );

    let c = run(&s, &TestServe::request("c1", "dies_once", "{}")).await;
    assert_eq!(
        (c.status, value(&c)),
        (Status::Success, serde_json::json!(2))
    );
    assert_eq!(
        attempts(&s.db, "c1").await,
        [(1, "crashed".into()), (2, "success".into())]
    );

    let c = run(&s, &TestServe::request("c2", "dies_unretried", "{}")).await;
    assert_eq!(c.status, Status::Crashed);
    assert_eq!(attempts(&s.db, "c2").await, [(1, "crashed".into())]);
}

/// An exception the policy never retries is not retried; a submission's `retries`
/// replaces the workflow's (0: none; more: some, even without a stored policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_exceptions_and_per_submission_retries() {
    let s = TestServe::start(|_| {}).await;
    let never = RetryPolicy {
        never_retry_exceptions: vec!["PermissionError".into()],
        ..policy(3, 50, 100)
    };
    push(&s.db, "denied", DENIED, None, Some(never)).await;
    push(
        &s.db,
        "once_with",
        FAILS_ONCE,
        None,
        Some(policy(3, 50, 100)),
    )
    .await;
    push(&s.db, "once_without", FAILS_ONCE, None, None).await;

    let c = run(&s, &TestServe::request("n1", "denied", "{}")).await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(c.error_type.as_deref(), Some("PermissionError"));
    assert_eq!(attempts(&s.db, "n1").await, [(1, "failed".into())]);

    let mut none = TestServe::request("n2", "once_with", "{}");
    none.retries = Some(0);
    let c = run(&s, &none).await;
    assert_eq!(c.status, Status::Failed, "--retries 0 turns the policy off");
    assert_eq!(attempts(&s.db, "n2").await, [(1, "failed".into())]);

    let c = run(&s, &TestServe::request("n3", "once_without", "{}")).await;
    assert_eq!(c.status, Status::Failed, "no policy: no retries");

    let mut some = TestServe::request("n4", "once_without", "{}");
    some.retries = Some(1);
    let c = run(&s, &some).await;
    assert_eq!(
        (c.status, value(&c)),
        (Status::Success, serde_json::json!(2))
    );
    assert_eq!(
        attempts(&s.db, "n4").await,
        [(1, "failed".into()), (2, "success".into())]
    );
}

/// `submit --wait` and any waiter hear, on the live logs, that an attempt failed and
/// when the next is due; the completion is the last attempt's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_logs_say_when_an_attempt_failed_and_when_the_next_is_due() {
    let s = TestServe::start(|_| {}).await;
    push(
        &s.db,
        "flaky_once",
        FAILS_ONCE,
        None,
        Some(policy(2, 100, 100)),
    )
    .await;
    let mut waiter = s
        .client
        .wait_for_completion("l1", Duration::from_secs(30))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("l1", "flaky_once", "{}"))
        .await
        .unwrap();
    let mut lines = Vec::new();
    let completion = loop {
        match waiter.next().await.unwrap() {
            Some(warden::WaitEvent::Log(l)) => lines.push(l.message),
            Some(warden::WaitEvent::Completed(c)) => break c,
            None => panic!("no completion"),
        }
    };
    assert_eq!(completion.status, Status::Success);
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("attempt 1 ended failed (ValueError: once); attempt 2 is due at ")),
        "{lines:?}"
    );
}

/// Cancelled while `retrying`: by `warden cancel` at once, or by a cancel marker alone
/// (what any client can write) when its next attempt comes due. Either way it ends
/// `cancelled`, the completion says so, and nothing runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_retrying_ends_it_cancelled() {
    let mut s = TestServe::start(|_| {}).await;
    // A back-off of up to an hour: the next attempt will not come due by itself.
    push(
        &s.db,
        "hopeless",
        ALWAYS_FAILS,
        None,
        Some(policy(5, 3_600_000, 3_600_000)),
    )
    .await;
    for id in ["x1", "x2"] {
        s.client
            .submit(&TestServe::request(id, "hopeless", "{}"))
            .await
            .unwrap();
    }
    for id in ["x1", "x2"] {
        wait_for("retrying", Duration::from_secs(30), async || {
            status_of(&s.db, id).await == "retrying"
        })
        .await;
    }
    let show = ok(warden(
        &s.db,
        &s.redis,
        std::path::Path::new("."),
        &["executions", "show", "x1"],
    ));
    assert!(show.contains("status:    retrying (attempt 2)"), "{show}");
    assert!(show.contains("next try:"), "{show}");
    assert!(show.contains("  1 failed"), "{show}");

    // `warden cancel`: at once, with its completion.
    let waiter = s
        .client
        .wait_for_completion("x1", Duration::from_secs(30))
        .await
        .unwrap();
    let out = ok(warden(
        &s.db,
        &s.redis,
        std::path::Path::new("."),
        &["cancel", "x1"],
    ));
    assert!(out.contains("cancelled x1"), "{out}");
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Cancelled);
    assert_eq!(status_of(&s.db, "x1").await, "cancelled");

    // A marker alone: found when the next attempt's entry is read.
    s.client.cancel("x2").await.unwrap();
    let waiter = s
        .client
        .wait_for_completion("x2", Duration::from_secs(30))
        .await
        .unwrap();
    execute(
        &s.db,
        "UPDATE executions SET next_attempt_at = now() WHERE id = 'x2'",
    )
    .await;
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Cancelled);
    assert_eq!(status_of(&s.db, "x2").await, "cancelled");
    for id in ["x1", "x2"] {
        assert_eq!(
            attempts(&s.db, id).await,
            [(1, "failed".into())],
            "{id}: nothing ran again"
        );
    }
    let report = s.stop().await;
    assert_eq!(report.executions, 2, "one run each: {report:?}");
}

/// `warden workflow push` stores the policy its flags describe, and refuses one that
/// cannot be (a cancel is never retried; a cap below the base).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_flags_store_the_retry_policy() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flaky.py"), FAILS_ONCE).unwrap();
    ok(warden(
        &db,
        &redis,
        dir.path(),
        &[
            "workflow",
            "push",
            "flaky.py",
            "--retries",
            "4",
            "--retry-backoff",
            "250ms,2s",
            "--retry-on",
            "failed,timeout",
            "--no-retry-exception",
            "PermissionError",
        ],
    ));
    let stored: String =
        sqlx::query_scalar("SELECT retry_policy::text FROM workflows WHERE name = 'flaky'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({
            "retries": 4, "backoff_base_ms": 250, "backoff_cap_ms": 2000,
            "retry_on": ["failed", "timeout"], "retry_exceptions": [],
            "never_retry_exceptions": ["PermissionError"]
        })
    );
    for bad in [
        &["--retries", "2", "--retry-on", "cancelled"][..],
        &["--retry-backoff", "5s,1s"][..],
    ] {
        let mut args = vec!["workflow", "push", "flaky.py"];
        args.extend_from_slice(bad);
        let err = warden_tests::cli::refused(warden(&db, &redis, dir.path(), &args));
        assert!(
            err.contains("never retried") || err.contains("below"),
            "{err}"
        );
    }
}

/// A workflow deactivated while one of its executions waits for its next attempt: the
/// due attempt cannot run, and the execution ends `failed` / `UnknownWorkflow` (rather
/// than waiting, and being enqueued again, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_workflow_gone_meanwhile_ends_the_execution() {
    let s = TestServe::start(|_| {}).await;
    push(
        &s.db,
        "retired",
        FAILS_ONCE,
        None,
        Some(policy(3, 3_600_000, 3_600_000)),
    )
    .await;
    s.client
        .submit(&TestServe::request("g1", "retired", "{}"))
        .await
        .unwrap();
    wait_for("retrying", Duration::from_secs(30), async || {
        status_of(&s.db, "g1").await == "retrying"
    })
    .await;
    execute(
        &s.db,
        "UPDATE workflows SET active = false WHERE name = 'retired'",
    )
    .await;
    let waiter = s
        .client
        .wait_for_completion("g1", Duration::from_secs(30))
        .await
        .unwrap();
    execute(
        &s.db,
        "UPDATE executions SET next_attempt_at = now() WHERE id = 'g1'",
    )
    .await;
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Failed);
    assert_eq!(c.error_type.as_deref(), Some("UnknownWorkflow"));
    assert_eq!(status_of(&s.db, "g1").await, "failed");
    assert_eq!(attempts(&s.db, "g1").await, [(1, "failed".into())]);
}

/// A due attempt enqueued twice (as when a poller's lease runs out while its entry
/// still waits in the stream), and a stale entry of an earlier attempt: the attempt
/// runs once, and the stale entry runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_attempt_enqueued_twice_runs_once() {
    let mut s = TestServe::start(|_| {}).await;
    push(
        &s.db,
        "flaky_once",
        FAILS_ONCE,
        None,
        Some(policy(3, 3_600_000, 3_600_000)),
    )
    .await;
    s.client
        .submit(&TestServe::request("d1", "flaky_once", "{}"))
        .await
        .unwrap();
    wait_for("retrying", Duration::from_secs(30), async || {
        status_of(&s.db, "d1").await == "retrying"
    })
    .await;
    let wf: i64 = count(&s.db, "SELECT id FROM workflows WHERE name = 'flaky_once'").await;
    let due = |attempt: i32| {
        let mut r = ExecutionRequest::new("d1", warden::WorkflowRef::Id(wf));
        r.attempt = Some(attempt);
        r
    };
    let waiter = s
        .client
        .wait_for_completion("d1", Duration::from_secs(30))
        .await
        .unwrap();
    s.client
        .submit_many(&[due(2), due(1), due(2)])
        .await
        .unwrap();
    let c = waiter.completion().await.unwrap();
    assert_eq!(
        (c.status, value(&c)),
        (Status::Success, serde_json::json!(2))
    );
    // Let the other entries be read and answered.
    wait_for(
        "every entry acknowledged",
        Duration::from_secs(10),
        async || {
            let n: u64 = redis::cmd("XLEN")
                .arg(s.redis.keys().stream())
                .query_async(&mut s.redis.conn().await)
                .await
                .unwrap();
            n == 0
        },
    )
    .await;
    assert_eq!(
        attempts(&s.db, "d1").await,
        [(1, "failed".into()), (2, "success".into())]
    );
    let report = s.stop().await;
    assert_eq!(
        report.executions, 2,
        "attempt 1 and attempt 2, once each: {report:?}"
    );
}

/// A supervisor SIGKILLed right after committing failed attempts (their executions
/// `retrying`): a peer started afterwards runs each next attempt exactly once, both
/// when the attempt is simply due and when the dead supervisor's poller had claimed and
/// enqueued it and the lease ran out before the entry was read (so it may be enqueued
/// twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_after_the_failed_attempt_loses_nothing() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(
        &db,
        "flaky_once",
        FAILS_ONCE,
        None,
        Some(policy(3, 3_600_000, 3_600_000)),
    )
    .await;
    let client = redis.client().await;
    let mut doomed = serve_process(
        &db,
        &redis,
        "doomed",
        &["--heartbeat-ttl", "1s"],
        unique_uid_base(),
    );
    for id in ["k1", "k2"] {
        client
            .submit(&TestServe::request(id, "flaky_once", "{}"))
            .await
            .unwrap();
    }
    for id in ["k1", "k2"] {
        wait_for("retrying", Duration::from_secs(60), async || {
            status_of(&db, id).await == "retrying"
        })
        .await;
    }
    doomed.kill().unwrap(); // SIGKILL: right after the commit, before any next attempt.
    doomed.wait().unwrap();
    // k1 is simply due. k2 was claimed by the dead supervisor's poller, which enqueued
    // it, and its lease ran out before anyone read that entry: the peer finds both the
    // entry and a due row, which its own poller enqueues again.
    let wf: i64 = count(&db, "SELECT id FROM workflows WHERE name = 'flaky_once'").await;
    execute(
        &db,
        "UPDATE executions SET next_attempt_at = now() - interval '1 second'",
    )
    .await;
    let mut claimed = ExecutionRequest::new("k2", warden::WorkflowRef::Id(wf));
    claimed.attempt = Some(2);
    client.submit(&claimed).await.unwrap();

    let dir = tempfile::Builder::new()
        .prefix("warden-retries-")
        .tempdir()
        .unwrap();
    let mut cfg = config(&db, &redis, &dir, "peer");
    cfg.heartbeat_ttl = Duration::from_secs(1);
    let (sig, handle) = spawn(cfg);
    for id in ["k1", "k2"] {
        wait_for("success", Duration::from_secs(60), async || {
            status_of(&db, id).await == "success"
        })
        .await;
    }
    // Every entry read and answered (k2's second one, if the poller enqueued it before
    // the first began the row).
    wait_for(
        "every entry acknowledged",
        Duration::from_secs(10),
        async || {
            let n: u64 = redis::cmd("XLEN")
                .arg(redis.keys().stream())
                .query_async(&mut redis.conn().await)
                .await
                .unwrap();
            n == 0
        },
    )
    .await;
    let _ = sig.send(Some(warden::Shutdown::Drain));
    let report = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for id in ["k1", "k2"] {
        assert_eq!(
            attempts(&db, id).await,
            [(1, "failed".into()), (2, "success".into())],
            "{id}"
        );
    }
    assert_eq!(
        report.executions, 2,
        "each next attempt ran once: {report:?}"
    );
    assert!(report.due_enqueued >= 1, "{report:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM executions WHERE attempt <> 2").await,
        0
    );
}
