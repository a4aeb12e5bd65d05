//! Fair intake end to end (warden::intake::lanes, the pool's fair queue): one
//! organization's backlog does not hold up another's execution, an urgent queue's
//! execution starts within one execution's time however full the default queue is, and
//! a supervisor takes only the queues it serves.
//!
//! Each execution returns the time it started (`time.time()` in the workflow), so the
//! assertions count which executions started between a submit and the start it waited
//! for: an order, not a timing.

use std::time::{Duration, SystemTime};

use warden::{ExecutionRequest, WorkflowRef, WorkflowSpec};
use warden_tests::serve::{value, TestServe};

/// Sleeps `ms` and returns when it started.
const SLEEPY: &str = "import time\n\ndef run(ms=50):\n    started = time.time()\n    time.sleep(ms / 1000)\n    return {\"started\": started}\n";

async fn push_for(s: &TestServe, org: Option<&str>) {
    s.db.push_workflow_for(org, "sleepy", SLEEPY).await
}

fn sleepy(id: &str, org: Option<&str>, queue: Option<&str>, ms: u32) -> ExecutionRequest {
    let mut r = ExecutionRequest::new(id, WorkflowRef::Name("sleepy".into()));
    r.params_json = format!("{{\"ms\": {ms}}}");
    r.org = org.map(str::to_owned);
    r.queue = queue.map(str::to_owned);
    r
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Submits `req`, waits for its completion; returns (submitted, started) in Unix seconds.
async fn run_one(s: &TestServe, req: &ExecutionRequest) -> (f64, f64) {
    let waiter = s
        .client
        .wait_for_completion(req.execution_id.as_str(), Duration::from_secs(60))
        .await
        .expect("subscribe");
    let submitted = now_secs();
    s.client.submit(req).await.expect("submit");
    let c = waiter.completion().await.expect("completion within 60 s");
    assert_eq!(c.status.as_str(), "success", "{c:?}");
    let started = value(&c)["started"].as_f64().expect("started");
    (submitted, started)
}

/// Of the executions whose id starts with `prefix` that succeeded, how many started
/// between `from` and `to` (Unix seconds).
async fn started_between(s: &TestServe, prefix: &str, from: f64, to: f64) -> i64 {
    // Those that started before `to` have ended by now (they sleep a fraction of it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = s.db.connection().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE id LIKE $1 AND status = 'success'
           AND (result->>'started')::float8 > $2 AND (result->>'started')::float8 < $3",
    )
    .bind(format!("{prefix}%"))
    .bind(from)
    .bind(to)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Organization `big` submits 400 executions at once (40 ms each: 8 s of work for two
/// workers); once they run, organization `small` submits one. It starts after at most a
/// few of `big`'s, not after the hundreds ahead of it (the stream and the supervisor's
/// prefetch both held `big`'s first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_organizations_execution_does_not_wait_for_a_big_ones_backlog() {
    let mut s = TestServe::start(|_| {}).await;
    push_for(&s, Some("big")).await;
    push_for(&s, Some("small")).await;
    let big: Vec<ExecutionRequest> = (0..400)
        .map(|i| sleepy(&format!("big-{i}"), Some("big"), None, 40))
        .collect();
    s.client.submit_many(&big).await.expect("submit");
    s.wait_terminal("big-10").await;

    let (submitted, started) = run_one(&s, &sleepy("small-1", Some("small"), None, 1)).await;
    let overtaken = started_between(&s, "big-", submitted, started).await;
    assert!(
        overtaken <= 6,
        "{overtaken} of big's executions started while small's waited {:.0} ms",
        (started - submitted) * 1000.0
    );
    // The backlog was really there: big is far from done.
    let mut conn = s.db.connection().await;
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE id LIKE 'big-%' AND status = 'success'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        done < 300,
        "{done} of big's 400 already done: no backlog left"
    );
    s.stop().await;
}

/// With `--queues critical,default` and the default queue full of 100 ms executions, a
/// `critical` execution starts within about one execution's time: at most one default
/// execution per worker starts after it was submitted and before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_execution_starts_within_one_executions_time() {
    let mut s = TestServe::start(|cfg| {
        cfg.queues = vec!["critical".into(), "default".into()];
    })
    .await;
    push_for(&s, None).await;
    let filler: Vec<ExecutionRequest> = (0..200)
        .map(|i| sleepy(&format!("fill-{i}"), None, None, 100))
        .collect();
    s.client.submit_many(&filler).await.expect("submit");
    s.wait_terminal("fill-4").await;

    let (submitted, started) = run_one(&s, &sleepy("urgent-1", None, Some("critical"), 1)).await;
    let overtaken = started_between(&s, "fill-", submitted, started).await;
    // Every place is held by the default queue's backlog: the reader's probe overdraws
    // (warden::serve::places) and takes the critical one at once; each worker may end
    // its current execution and start one more before the critical one is in its queue.
    assert!(
        overtaken <= s.cfg.pool.workers as i64,
        "{overtaken} default executions started while the critical one waited {:.0} ms",
        (started - submitted) * 1000.0
    );
    s.stop().await;
}

/// A supervisor serving only `fast` leaves default-queue work where it is (visible in
/// the status), and runs its own queue's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_takes_only_the_queues_it_serves() {
    let mut s = TestServe::start(|cfg| {
        cfg.queues = vec!["fast".into()];
    })
    .await;
    push_for(&s, None).await;
    s.client
        .submit(&sleepy("slow-1", None, None, 1))
        .await
        .expect("submit");
    let (_, _) = run_one(&s, &sleepy("fast-1", None, Some("fast"), 1)).await;
    let overview = s.client.status().await.expect("status");
    assert_eq!(overview.lanes.len(), 1, "{:?}", overview.lanes);
    assert_eq!(overview.lanes[0].lane.queue, "default");
    assert_eq!(overview.lanes[0].waiting, 1);
    assert!(s.db.store.show_execution("slow-1").await.unwrap().is_none());

    // The CLI says so: `status` names the queue nobody serves, `submit` warns.
    let status = cli(&s, &["status"]).await;
    assert!(
        status.0.contains(
            "queue default: 1 waiting in 1 organization(s) (no live supervisor serves it"
        ),
        "{status:?}"
    );
    let submit = cli(&s, &["submit", "sleepy", "--queue", "nightly"]).await;
    assert!(
        submit
            .1
            .contains("warning: no live supervisor serves queue `nightly`"),
        "{submit:?}"
    );
    let submit = cli(&s, &["submit", "sleepy", "--queue", "fast"]).await;
    assert!(!submit.1.contains("warning"), "{submit:?}");
    let bad = cli(&s, &["submit", "sleepy", "--queue", "a:b"]).await;
    assert!(bad.1.contains("contains `:`"), "{bad:?}");
    s.stop().await;
}

/// Runs the CLI against the service's database and key prefix: (stdout, stderr).
async fn cli(s: &TestServe, args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new(warden_tests::pool::warden_bin())
        .args(args)
        .env("DATABASE_URL", &s.db.url)
        .env("REDIS_URL", &s.redis.url)
        .env("WARDEN_KEY_PREFIX", &s.redis.prefix)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run warden");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A later attempt, and a delayed start, wait in the queue the execution was submitted
/// to: a supervisor serving only `critical` runs both (the default queue is nobody's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_delayed_starts_stay_in_their_queue() {
    let mut s = TestServe::start(|cfg| {
        cfg.queues = vec!["critical".into()];
    })
    .await;
    s.db.store
        .push_workflow(&WorkflowSpec {
            org: None,
            name: "flaky".into(),
            path: "workflows/flaky.py".into(),
            function_name: "run".into(),
            source: "from warden import context\n\ndef run():\n    if context.attempt == 1:\n        raise ValueError('first')\n    return {'attempt': context.attempt}\n".into(),
            default_timeout_ms: None,
            time_saved_seconds: None,
            value: None,
            retry_policy: Some(warden::RetryPolicy {
                retries: 1,
                backoff_base_ms: 50,
                backoff_cap_ms: 50,
                ..Default::default()
            }),
        })
        .await
        .expect("push workflow");
    let mut retried = ExecutionRequest::new("flaky-1", WorkflowRef::Name("flaky".into()));
    retried.queue = Some("critical".into());
    let mut delayed = ExecutionRequest::new("flaky-2", WorkflowRef::Name("flaky".into()));
    delayed.queue = Some("critical".into());
    delayed.retries = Some(0);
    delayed.not_before = Some(chrono::Utc::now() + chrono::Duration::milliseconds(500));
    let mut waiters = Vec::new();
    for req in [&retried, &delayed] {
        waiters.push(
            s.client
                .wait_for_completion(req.execution_id.as_str(), Duration::from_secs(30))
                .await
                .expect("subscribe"),
        );
        s.client.submit(req).await.expect("submit");
    }
    let mut statuses = Vec::new();
    for w in waiters {
        statuses.push(
            w.completion()
                .await
                .expect("completion")
                .status
                .as_str()
                .to_owned(),
        );
    }
    // The delayed one's first attempt fails (attempt 1 raises), and nothing retries it.
    assert_eq!(statuses, ["success", "failed"]);
    let mut conn = s.db.connection().await;
    let queues: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT id, attempt, queue FROM executions WHERE id LIKE 'flaky-%' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        queues,
        [
            ("flaky-1".to_string(), 2, Some("critical".to_string())),
            ("flaky-2".to_string(), 1, Some("critical".to_string()))
        ]
    );
    s.stop().await;
}
