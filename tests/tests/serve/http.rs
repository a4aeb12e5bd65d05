//! `serve --http`: `/metrics` scraped around real executions agrees with what the
//! database recorded; `/readyz` turns not-ready while PostgreSQL or Redis is cut off
//! (through a proxy) and ready again when it returns; `/healthz` answers throughout.

use std::time::Duration;

use warden::{Status, WorkflowSpec};
use warden_tests::db::scalar;
use warden_tests::http::{free_addr, get, sample, wait_for_status};
use warden_tests::proxy::{target_of, Proxy};
use warden_tests::serve::TestServe;

const OK: &str = "def run(x):\n    return {'y': x * 2}\n";
const BAD: &str = "def run():\n    raise ValueError('no')\n";

fn metric(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_move_by_what_ran_and_match_the_database() {
    let addr = free_addr();
    let mut s = TestServe::start(|cfg| cfg.http = Some(addr)).await;
    s.push("ok", OK, None).await;
    s.push("bad", BAD, None).await;
    s.db.store
        .push_workflow(&WorkflowSpec {
            org: Some("acme".into()),
            name: "ok".into(),
            path: "workflows/ok.py".into(),
            function_name: "run".into(),
            source: OK.into(),
            default_timeout_ms: None,
            time_saved_seconds: None,
            value: None,
            retry_policy: None,
        })
        .await
        .unwrap();

    // Once start-up is done, before anything ran: the state metrics are there, no
    // execution is counted.
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    let before = get(addr, "/metrics").await.1;
    assert_eq!(metric(&before, "warden_queue_depth"), 0.0);
    assert_eq!(metric(&before, r#"warden_workers{state="busy"}"#), 0.0);
    assert_eq!(
        metric(&before, "warden_execution_duration_seconds_count"),
        0.0
    );
    assert_eq!(
        sample(
            &before,
            "warden_executions_started_total{workflow=\"ok\",organization=\"none\"}"
        ),
        None
    );

    for i in 0..5 {
        let c = s.run(&format!("ok-{i}"), "ok", r#"{"x": 1}"#).await;
        assert_eq!(c.status, Status::Success);
    }
    for i in 0..3 {
        let c = s.run(&format!("bad-{i}"), "bad", "{}").await;
        assert_eq!(c.status, Status::Failed);
    }
    for i in 0..2 {
        let mut req = TestServe::request(&format!("acme-{i}"), "ok", r#"{"x": 2}"#);
        req.org = Some("acme".into());
        let waiter = s
            .client
            .wait_for_completion(req.execution_id.as_str(), Duration::from_secs(60))
            .await
            .unwrap();
        s.client.submit(&req).await.unwrap();
        assert_eq!(waiter.completion().await.unwrap().status, Status::Success);
    }

    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let db = |sql: &'static str| scalar(&s.db, sql);
    let success_none =
        db("SELECT count(*) FROM executions WHERE status = 'success' AND org_id IS NULL").await;
    let failed = db("SELECT count(*) FROM executions WHERE status = 'failed'").await;
    let success_acme =
        db("SELECT count(*) FROM executions WHERE status = 'success' AND org_id IS NOT NULL").await;
    let all = db("SELECT count(*) FROM executions").await;
    assert_eq!((success_none, failed, success_acme, all), (5, 3, 2, 10));

    assert_eq!(
        metric(
            &text,
            r#"warden_executions_started_total{workflow="ok",organization="none"}"#
        ),
        success_none as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"warden_executions_started_total{workflow="bad",organization="none"}"#
        ),
        failed as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"warden_executions_started_total{workflow="ok",organization="acme"}"#
        ),
        success_acme as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"warden_executions_ended_total{status="success",workflow="ok",organization="none"}"#
        ),
        success_none as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"warden_executions_ended_total{status="failed",workflow="bad",organization="none"}"#
        ),
        failed as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"warden_executions_ended_total{status="success",workflow="ok",organization="acme"}"#
        ),
        success_acme as f64
    );
    assert_eq!(
        sample(
            &text,
            r#"warden_executions_ended_total{status="failed",workflow="ok",organization="none"}"#
        ),
        None,
        "no series for what did not happen"
    );
    assert_eq!(
        metric(&text, "warden_execution_duration_seconds_count"),
        all as f64
    );
    // Every execution was committed (its completion is published only after that), and
    // each went through exactly one committed transaction.
    assert_eq!(metric(&text, "warden_commit_batch_size_sum"), all as f64);
    let commits = metric(&text, "warden_commit_duration_seconds_count");
    assert!(commits >= 1.0 && commits <= all as f64, "{commits}");
    assert_eq!(metric(&text, "warden_commit_batch_size_count"), commits);
    // Idle again: nothing queued or busy; both templates up, none restarted.
    assert_eq!(metric(&text, "warden_queue_depth"), 0.0);
    assert_eq!(metric(&text, r#"warden_workers{state="busy"}"#), 0.0);
    assert_eq!(metric(&text, r#"warden_workers{state="idle"}"#), 2.0);
    assert_eq!(metric(&text, "warden_template_restarts_total"), 0.0);
    assert_eq!(metric(&text, "warden_postgres_reconnects_total"), 0.0);
    assert_eq!(metric(&text, "warden_postgres_errors_total"), 0.0);
    assert_eq!(
        metric(&text, r#"warden_module_cache_repairs_total{kind="wipe"}"#),
        0.0
    );
    assert!(
        metric(&text, "warden_module_cache_generation") >= 1.0,
        "{text}"
    );

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(get(addr, "/nothing").await.0, 404);

    // docs/operations.md lists every metric the endpoint exposes.
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        assert!(
            doc.contains(&format!("`{name}")),
            "{name} is not in docs/operations.md"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn recycled_templates_count_as_restarts() {
    let addr = free_addr();
    let mut s = TestServe::start(|cfg| {
        cfg.http = Some(addr);
        cfg.pool.workers = 1;
        cfg.pool.isolation = warden_protocol::Isolation::Reuse;
        // A reuse-mode template is replaced after this many executions.
        cfg.pool.max_executions_per_worker = 2;
    })
    .await;
    s.push("ok", OK, None).await;
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    let text = get(addr, "/metrics").await.1;
    assert_eq!(metric(&text, "warden_template_restarts_total"), 0.0);
    for i in 0..5 {
        let c = s.run(&format!("r{i}"), "ok", r#"{"x": 1}"#).await;
        assert_eq!(c.status, Status::Success);
    }
    // Recycled after the 2nd and the 4th execution.
    let t = std::time::Instant::now();
    loop {
        let text = get(addr, "/metrics").await.1;
        let restarts = metric(&text, "warden_template_restarts_total");
        if restarts == 2.0 {
            break;
        }
        assert!(restarts < 2.0, "{text}");
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn readyz_follows_postgres_and_redis_and_healthz_stays_up() {
    let pg = Proxy::start(&target_of(&warden_tests::db::server_url(), 5432)).await;
    let redis = Proxy::start(&target_of(&warden_tests::redis::redis_url(), 6379)).await;
    let addr = free_addr();
    let mut s = TestServe::start(|cfg| {
        cfg.http = Some(addr);
        cfg.database_url = pg.url_for(&cfg.database_url);
        cfg.redis_url = redis.url_for(&cfg.redis_url);
    })
    .await;
    s.push("ok", OK, None).await;
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;

    pg.cut();
    let why = wait_for_status(addr, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(why.contains("PostgreSQL unavailable"), "{why}");
    assert!(!why.contains("Redis"), "{why}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    pg.restore();
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(15)).await;
    let text = get(addr, "/metrics").await.1;
    assert!(
        metric(&text, "warden_postgres_reconnects_total") >= 1.0,
        "{text}"
    );

    redis.cut();
    let why = wait_for_status(addr, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(why.contains("Redis unavailable"), "{why}");
    assert!(!why.contains("PostgreSQL"), "{why}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    // Long enough for the status publisher (every second) to meet the outage.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.restore();
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(15)).await;
    let t = std::time::Instant::now();
    let text = loop {
        let text = get(addr, "/metrics").await.1;
        if metric(&text, "warden_redis_reconnects_total") >= 1.0 {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metric(&text, "warden_redis_errors_total") >= 1.0, "{text}");

    // And it works again.
    let c = s.run("after", "ok", r#"{"x": 3}"#).await;
    assert_eq!(c.status, Status::Success);
    s.stop().await;
}

#[tokio::test]
async fn readyz_is_not_ready_while_draining_and_healthz_still_answers() {
    let addr = free_addr();
    let mut s = TestServe::start(|cfg| {
        cfg.http = Some(addr);
        cfg.drain_timeout = Duration::from_secs(10);
    })
    .await;
    s.push(
        "sleepy",
        "import time\ndef run():\n    time.sleep(2)\n    return 1\n",
        None,
    )
    .await;
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    s.client
        .submit(&TestServe::request("sleepy-1", "sleepy", "{}"))
        .await
        .unwrap();
    // Wait until it runs, then start the drain: it finishes, meanwhile not ready.
    let t = std::time::Instant::now();
    while sample(
        &get(addr, "/metrics").await.1,
        r#"warden_workers{state="busy"}"#,
    ) != Some(1.0)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.drain();
    let why = wait_for_status(addr, "/readyz", 503, Duration::from_secs(1)).await;
    assert_eq!(why, "not ready: shutting down (draining)\n");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let report = s.stop().await;
    assert_eq!(
        report.executions, 1,
        "the running execution finished in the drain"
    );
}

#[tokio::test]
async fn an_address_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut s = TestServe::start(|cfg| cfg.http = Some(addr)).await;
    let err = s.stop_result().await.expect_err("the port is taken");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot listen on {addr} for --http")),
        "{msg}"
    );
}
