//! `serve` end to end through the stream, one behaviour per test: each terminal state,
//! bad input, duplicates, cancellation, stored logs and daily metrics.

use std::time::Duration;

use warden::Status;
use warden_tests::serve::TestServe;

const DOUBLE: &str = "def run(x):\n    print('doubling', x)\n    return {'y': x * 2}\n";

#[tokio::test]
async fn each_terminal_state_is_recorded_and_published() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("double", DOUBLE, None).await;
    s.push(
        "fails",
        "def run():\n    raise ValueError('no line items')\n",
        None,
    )
    .await;
    s.push(
        "slow",
        "def run():\n    while True: pass\n",
        Some(Duration::from_millis(700)),
    )
    .await;
    s.push("crash", "import os\ndef run():\n    os._exit(9)\n", None)
        .await;

    let c = s.run("ok-1", "double", r#"{"x": 21}"#).await;
    assert_eq!(c.status, Status::Success);
    assert_eq!(c.result.as_ref().map(|r| r.get()), Some(r#"{"y": 42}"#));
    let c = s.run("fail-1", "fails", "{}").await;
    assert_eq!(
        (c.status, c.error_type.as_deref()),
        (Status::Failed, Some("ValueError"))
    );
    let c = s.run("slow-1", "slow", "{}").await;
    assert_eq!(
        (c.status, c.error_type.as_deref()),
        (Status::Timeout, Some("Timeout"))
    );
    let c = s.run("crash-1", "crash", "{}").await;
    assert_eq!(c.status, Status::Crashed);

    for (id, status) in [
        ("ok-1", "success"),
        ("fail-1", "failed"),
        ("slow-1", "timeout"),
        ("crash-1", "crashed"),
    ] {
        let d =
            s.db.store
                .show_execution(id)
                .await
                .unwrap()
                .expect("row exists");
        assert_eq!(d.execution.status.to_string(), status, "{id}");
        assert!(d.execution.completed_at.is_some());
        assert_eq!(d.execution.supervisor.as_deref(), Some("s1"));
    }
    let d = s.db.store.show_execution("crash-1").await.unwrap().unwrap();
    assert_eq!(d.execution.exit_code, Some(9));
    let d = s.db.store.show_execution("ok-1").await.unwrap().unwrap();
    assert_eq!(d.execution.result, Some(serde_json::json!({"y": 42})));
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].message, "doubling 21");
    let report = s.stop().await;
    assert_eq!(report.executions, 4);
}

#[tokio::test]
async fn logs_are_stored_in_order_and_metrics_add_up() {
    let mut s = TestServe::start(|_| {}).await;
    let wf = s
        .push("chatty", "import logging\ndef run(n):\n    for i in range(n):\n        print('line', i)\n    logging.warning('done')\n    return n\n", None)
        .await;
    s.push("fails", "def run():\n    raise KeyError('k')\n", None)
        .await;
    for i in 0..5 {
        assert_eq!(
            s.run(&format!("c{i}"), "chatty", r#"{"n": 30}"#)
                .await
                .status,
            Status::Success
        );
    }
    for i in 0..3 {
        assert_eq!(
            s.run(&format!("f{i}"), "fails", "{}").await.status,
            Status::Failed
        );
    }
    let d = s.db.store.show_execution("c3").await.unwrap().unwrap();
    let seqs: Vec<i32> = d.logs.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (0..31).collect::<Vec<_>>());
    assert_eq!(d.logs[29].message, "line 29");
    assert_eq!(
        (d.logs[30].level.as_str(), d.logs[30].message.as_str()),
        ("warning", "done")
    );
    s.stop().await;

    let mut conn = s.db.connection().await;
    let (success, failed, time_saved, value): (i64, i64, f64, f64) = sqlx::query_as(
        "SELECT success, failed, time_saved_seconds, value FROM daily_metrics
         WHERE workflow_id = $1",
    )
    .bind(wf)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((success, failed), (5, 0));
    assert_eq!(
        (time_saved, value),
        (300.0, 12.5),
        "ROI counted per success"
    );
    let (total_success, total_failed): (i64, i64) = sqlx::query_as(
        "SELECT sum(success)::bigint, sum(failed)::bigint FROM daily_metrics WHERE workflow_id <> 0",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((total_success, total_failed), (5, 3));
}

#[tokio::test]
async fn unknown_workflow_and_malformed_messages_are_recorded_and_dead_lettered() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("double", DOUBLE, None).await;
    let c = s.run("nope-1", "no-such-flow", "{}").await;
    assert_eq!(
        (c.status, c.error_type.as_deref()),
        (Status::Failed, Some("UnknownWorkflow"))
    );

    // Raw entries no client library would produce.
    let mut conn = s.redis.conn().await;
    let stream = s.redis.keys().stream();
    s.redis
        .add_to_stream(&[
            ("id", "bad-params"),
            ("workflow", "double"),
            ("params", "[1, 2]"),
        ])
        .await;
    s.redis.add_to_stream(&[("garbage", "\u{1}\u{2}")]).await;
    assert_eq!(s.wait_terminal("bad-params").await, "failed");
    // The loop goes on: a good request after the garbage still runs.
    assert_eq!(
        s.run("ok-after", "double", r#"{"x": 1}"#).await.status,
        Status::Success
    );

    let d =
        s.db.store
            .show_execution("bad-params")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(d.execution.error_type.as_deref(), Some("InvalidRequest"));
    assert!(d.execution.error_message.unwrap().contains("JSON object"));
    let dead: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(s.redis.keys().dead_letters())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.len(), 3, "unknown workflow, bad params, garbage");
    s.stop().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "every entry was acknowledged and removed");
}

#[tokio::test]
async fn a_duplicate_id_is_not_executed_twice() {
    let mut s = TestServe::start(|_| {}).await;
    s.push(
        "sleepy",
        "import time\ndef run():\n    print('ran')\n    time.sleep(0.3)\n    return 1\n",
        None,
    )
    .await;
    let req = TestServe::request("dup-1", "sleepy", "{}");
    // Twice in one batch, once more while it runs, and once after it finished.
    s.client.submit(&req).await.unwrap();
    s.client.submit(&req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.client.submit(&req).await.unwrap();
    assert_eq!(s.wait_terminal("dup-1").await, "success");
    let c = s.run("dup-1", "sleepy", "{}").await;
    assert_eq!(
        c.status,
        Status::Success,
        "the stored outcome is published again"
    );
    let report = s.stop().await;
    assert_eq!(report.executions, 1, "ran once: {report:?}");
    let d = s.db.store.show_execution("dup-1").await.unwrap().unwrap();
    assert_eq!(d.execution.attempt, 1);
    assert_eq!(d.logs.len(), 1);
}

#[tokio::test]
async fn cancel_ends_queued_and_running_executions_cancelled() {
    let mut s = TestServe::start(|c| c.pool.workers = 1).await;
    s.push(
        "sleepy",
        "import time\ndef run(s):\n    time.sleep(s)\n    return s\n",
        None,
    )
    .await;
    let running = s
        .client
        .wait_for_completion("run-1", Duration::from_secs(30))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("run-1", "sleepy", r#"{"s": 30}"#))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One worker, busy: this one waits in the stream.
    s.client.cancel("queued-1").await.unwrap();
    let queued = s
        .client
        .wait_for_completion("queued-1", Duration::from_secs(30))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("queued-1", "sleepy", r#"{"s": 30}"#))
        .await
        .unwrap();
    s.client.cancel("run-1").await.unwrap();
    let c = running.completion().await.unwrap();
    assert_eq!(c.status, Status::Cancelled);
    let c = queued.completion().await.unwrap();
    assert_eq!(c.status, Status::Cancelled);
    let report = s.stop().await;
    assert_eq!(report.executions, 1, "only run-1 ever reached a worker");
    let d =
        s.db.store
            .show_execution("queued-1")
            .await
            .unwrap()
            .unwrap();
    assert!(d.execution.started_at.is_none(), "never started");
}
