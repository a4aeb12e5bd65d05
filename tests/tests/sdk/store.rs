//! The SDK's side of the result transaction, against a real PostgreSQL: buffered writes
//! applied only for `success`, delivery statuses and ROI with them, replays applying
//! nothing twice, and the one-transaction property proven by forcing that transaction
//! to fail (permanently: nothing of the execution lands and it is recorded `StoreError`;
//! transiently: it is retried and everything lands exactly once).

use std::time::Duration;

use serde_json::json;
use warden::Status;
use warden::{Completed, Disposition, Store, WorkflowSpec, Writer, WriterConfig};
use warden_tests::db::fixtures::{completed, new_execution};
use warden_tests::db::{collect_committed, TestDb};

async fn push(store: &Store, org: &str) -> (i64, i64) {
    let r = store
        .push_workflow(&WorkflowSpec {
            org: Some(org.into()),
            name: "sync".into(),
            path: "sync.py".into(),
            function_name: "run".into(),
            source: "def run(): pass".into(),
            default_timeout_ms: None,
            time_saved_seconds: Some(30.0),
            value: Some(1.5),
            retry_policy: None,
        })
        .await
        .unwrap();
    (r.id, r.org_id.expect("an org workflow"))
}

/// An item that wrote `kv:<id>`, `config:<id>` and set its ROI, with 3 log lines.
fn item(id: &str, status: Status, wf: i64, org: i64, time_saved: f64) -> Completed {
    let mut c = completed(id, status, 3, Some(wf), Some(org));
    c.outcome.sdk_writes_json = json!([
        {"op": "kv.set", "key": format!("kv:{id}"), "value": {"by": id}},
        {"op": "kv.set", "key": "shared", "value": id},
        {"op": "config.set", "key": format!("config:{id}"), "value": 7},
        {"op": "roi", "time_saved": time_saved, "value": 2.0},
    ])
    .to_string();
    c
}

async fn begin(store: &Store, ids: &[&str], wf: i64, org: i64) {
    let rows: Vec<_> = ids
        .iter()
        .map(|id| warden::NewExecution {
            org_id: Some(org),
            delivery_id: Some(format!("d-{id}")),
            timeout_ms: None,
            retries: None,
            carrier_attempt: None,
            not_before: None,
            ..new_execution(id, Some(wf))
        })
        .collect();
    store.begin_batch(&rows).await.unwrap();
}

async fn kv_keys(store: &Store, org: i64) -> Vec<String> {
    store.kv_keys(Some(org), "", 100).await.unwrap()
}

async fn config_keys(db: &TestDb) -> Vec<String> {
    let mut conn = db.connection().await;
    sqlx::query_scalar("SELECT key FROM configs ORDER BY key")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// (success, failed, time_saved, value) of the workflow's metrics row.
async fn metrics(db: &TestDb, wf: i64) -> (i64, i64, f64, f64) {
    let mut conn = db.connection().await;
    sqlx::query_as(
        "SELECT success, failed, time_saved_seconds, value FROM daily_metrics WHERE workflow_id = $1",
    )
    .bind(wf)
    .fetch_optional(&mut conn)
    .await
    .unwrap()
    .unwrap_or((0, 0, 0.0, 0.0))
}

#[tokio::test]
async fn writes_apply_only_for_success_with_roi_and_delivery_status() {
    let db = TestDb::new().await;
    let (wf, org) = push(&db.store, "acme").await;
    let ids = ["ok", "failed", "timeout", "crashed"];
    begin(&db.store, &ids, wf, org).await;
    let items = vec![
        item("ok", Status::Success, wf, org, 100.0),
        item("failed", Status::Failed, wf, org, 100.0),
        item("timeout", Status::Timeout, wf, org, 100.0),
        item("crashed", Status::Crashed, wf, org, 100.0),
    ];
    db.store.commit_batch(&items).await.unwrap();

    assert_eq!(kv_keys(&db.store, org).await, vec!["kv:ok", "shared"]);
    assert_eq!(
        db.store.kv_get(Some(org), "shared").await.unwrap(),
        Some(json!("ok"))
    );
    assert_eq!(config_keys(&db).await, vec!["config:ok"]);
    assert_eq!(
        metrics(&db, wf).await,
        (1, 1, 100.0, 2.0),
        "the execution's ROI replaces the workflow's, on success only"
    );
    for (id, status) in [
        ("ok", "success"),
        ("failed", "failed"),
        ("timeout", "timeout"),
        ("crashed", "crashed"),
    ] {
        let d = db
            .store
            .delivery(&format!("d-{id}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.status.as_str(), d.attempts), (status, 1), "{id}");
        assert!(d.completed_at.is_some());
    }

    // A replay (a COMMIT whose answer was lost, a reclaimed message) applies nothing.
    db.store
        .set_config(
            Some("acme"),
            "config:ok",
            &json!("changed since"),
            warden::ConfigKind::String,
        )
        .await
        .unwrap();
    let again = db.store.commit_batch(&items).await.unwrap();
    assert!(again
        .iter()
        .all(|o| matches!(o, warden::CommitOutcome::AlreadyTerminal { .. })));
    assert_eq!(metrics(&db, wf).await, (1, 1, 100.0, 2.0));
    let mut conn = db.connection().await;
    let value: serde_json::Value =
        sqlx::query_scalar("SELECT value FROM configs WHERE key = 'config:ok'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        value,
        json!("changed since"),
        "the replay did not write it again"
    );
}

#[tokio::test]
async fn the_last_execution_to_finish_wins_a_key_within_one_batch() {
    let db = TestDb::new().await;
    let (wf, org) = push(&db.store, "acme").await;
    begin(&db.store, &["first", "second"], wf, org).await;
    let items = vec![
        item("first", Status::Success, wf, org, 1.0),
        item("second", Status::Success, wf, org, 1.0),
    ];
    db.store.commit_batch(&items).await.unwrap();
    assert_eq!(
        db.store.kv_get(Some(org), "shared").await.unwrap(),
        Some(json!("second"))
    );
}

async fn forced_failures(db: &TestDb) -> i64 {
    let mut conn = db.connection().await;
    sqlx::query_scalar("SELECT last_value FROM forced_failures")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn writer_config() -> WriterConfig {
    WriterConfig {
        max_delay: Duration::from_millis(50),
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        ..WriterConfig::default()
    }
}

#[tokio::test]
async fn a_result_transaction_that_fails_leaves_nothing_and_the_execution_is_recorded() {
    let db = TestDb::new().await;
    // Two organizations, so the bad item's metrics rows are its own.
    let (wf_good, org_good) = push(&db.store, "good-org").await;
    let (wf_bad, org_bad) = push(&db.store, "bad-org").await;
    begin(&db.store, &["good"], wf_good, org_good).await;
    begin(&db.store, &["bad"], wf_bad, org_bad).await;
    db.fail_result_transactions("P0001", false).await;

    let (writer, mut committed) = Writer::spawn(db.store.clone(), writer_config());
    writer
        .submit_all(vec![
            item("good", Status::Success, wf_good, org_good, 10.0),
            item("bad", Status::Success, wf_bad, org_bad, 4242.0),
        ])
        .await
        .unwrap();
    let done = collect_committed(&mut committed, 2).await;
    let disposition = |id: &str| {
        done.iter()
            .find(|c| c.execution_id == id)
            .unwrap()
            .disposition
    };
    assert_eq!(disposition("good"), Disposition::Recorded);
    assert_eq!(
        disposition("bad"),
        Disposition::Isolated,
        "recorded, not lost"
    );
    assert!(
        forced_failures(&db).await >= 1,
        "the transaction really failed"
    );

    // The good execution: everything.
    assert_eq!(
        kv_keys(&db.store, org_good).await,
        vec!["kv:good", "shared"]
    );
    let good = db.store.show_execution("good").await.unwrap().unwrap();
    assert_eq!(good.execution.status.to_string(), "success");
    assert_eq!(good.logs.len(), 3);
    assert_eq!(metrics(&db, wf_good).await, (1, 0, 10.0, 2.0));
    assert_eq!(
        db.store.delivery("d-good").await.unwrap().unwrap().status,
        "success"
    );

    // The bad one: none of its result, logs, SDK writes, ROI or success metrics...
    assert!(kv_keys(&db.store, org_bad).await.is_empty(), "no kv write");
    assert_eq!(
        config_keys(&db).await,
        vec!["config:good"],
        "no config write"
    );
    let bad = db.store.show_execution("bad").await.unwrap().unwrap();
    assert_eq!(bad.execution.status.to_string(), "failed");
    assert_eq!(bad.execution.result, None, "no result");
    assert!(bad.logs.is_empty(), "no logs");
    assert_eq!(bad.execution.error_type.as_deref(), Some("StoreError"));
    assert!(bad
        .execution
        .error_message
        .unwrap()
        .contains("forced failure of the result transaction"));
    assert_eq!(
        metrics(&db, wf_bad).await,
        (0, 1, 0.0, 0.0),
        "counted as the failure it was recorded as: no success, no ROI"
    );
    // ...and its delivery says what the database says: failed.
    assert_eq!(
        db.store.delivery("d-bad").await.unwrap().unwrap().status,
        "failed"
    );
}

#[tokio::test]
async fn a_result_transaction_that_fails_transiently_is_retried_and_lands_exactly_once() {
    let db = TestDb::new().await;
    let (wf, org) = push(&db.store, "acme").await;
    begin(&db.store, &["flaky"], wf, org).await;
    // 40001 (serialization failure): retryable, so the writer keeps the batch and retries.
    db.fail_result_transactions("40001", true).await;

    let (writer, mut committed) = Writer::spawn(db.store.clone(), writer_config());
    writer
        .submit(item("flaky", Status::Success, wf, org, 5000.0))
        .await
        .unwrap();
    let done = collect_committed(&mut committed, 1).await;
    assert_eq!(done[0].disposition, Disposition::Recorded);
    assert_eq!(
        writer.stats().failed_attempts,
        1,
        "one attempt failed and was rolled back"
    );
    assert!(
        forced_failures(&db).await >= 2,
        "the trigger ran again on the retry"
    );

    let d = db.store.show_execution("flaky").await.unwrap().unwrap();
    assert_eq!(d.execution.status.to_string(), "success");
    assert_eq!(d.logs.len(), 3, "logs once");
    assert_eq!(kv_keys(&db.store, org).await, vec!["kv:flaky", "shared"]);
    assert_eq!(metrics(&db, wf).await, (1, 0, 5000.0, 2.0), "counted once");
    let delivery = db.store.delivery("d-flaky").await.unwrap().unwrap();
    assert_eq!(
        (delivery.status.as_str(), delivery.attempts),
        ("success", 1)
    );
}

#[tokio::test]
async fn malformed_writes_are_isolated_not_applied() {
    let db = TestDb::new().await;
    let (wf, org) = push(&db.store, "acme").await;
    begin(&db.store, &["odd", "fine"], wf, org).await;
    let mut odd = item("odd", Status::Success, wf, org, 1.0);
    odd.outcome.sdk_writes_json = r#"[{"op":"kv.explode","key":"k"}]"#.into();
    let (writer, mut committed) = Writer::spawn(db.store.clone(), writer_config());
    writer
        .submit_all(vec![odd, item("fine", Status::Success, wf, org, 1.0)])
        .await
        .unwrap();
    let done = collect_committed(&mut committed, 2).await;
    let odd = done.iter().find(|c| c.execution_id == "odd").unwrap();
    assert_eq!(odd.disposition, Disposition::Isolated);
    let row = db.store.show_execution("odd").await.unwrap().unwrap();
    assert!(row
        .execution
        .error_message
        .unwrap()
        .contains("unknown operation `kv.explode`"));
    assert_eq!(kv_keys(&db.store, org).await, vec!["kv:fine", "shared"]);
}

#[tokio::test]
async fn deliveries_count_attempts_and_a_replay_leaves_a_finished_one_alone() {
    let db = TestDb::new().await;
    let begin = |exec: &str, sup: &str| warden::NewExecution {
        delivery_id: Some("evt-1".into()),
        timeout_ms: None,
        retries: None,
        carrier_attempt: None,
        not_before: None,
        supervisor: sup.into(),
        ..new_execution(exec, None)
    };
    db.store.begin_batch(&[begin("e1", "s1")]).await.unwrap();
    let row = db.store.delivery("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (row.execution_id.as_str(), row.status.as_str(), row.attempts),
        ("e1", "running", 1),
        "recorded by the statement that begins the execution"
    );
    // Reclaimed after its supervisor died: the same execution, taken up again.
    db.store.begin_batch(&[begin("e1", "s2")]).await.unwrap();
    let row = db.store.delivery("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (row.execution_id.as_str(), row.status.as_str(), row.attempts),
        ("e1", "running", 2)
    );
    // Handed back before it started (its supervisor shut down): taken up again, it is
    // still the same start.
    let back = warden::HandBack {
        id: "e1".into(),
        stream_id: "1-e1".into(),
        started: false,
        started_at: None,
    };
    assert_eq!(db.store.hand_back("s2", &[back]).await.unwrap(), 1);
    db.store.begin_batch(&[begin("e1", "s3")]).await.unwrap();
    let row = db.store.delivery("evt-1").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("running", 2));

    db.store
        .commit_batch(&[completed("e1", Status::Failed, 0, None, None)])
        .await
        .unwrap();
    db.store.begin_batch(&[begin("e1", "s4")]).await.unwrap();
    let row = db.store.delivery("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("failed", 2),
        "a replay changes nothing"
    );

    // The event system redelivers it as a new execution.
    db.store.begin_batch(&[begin("e2", "s4")]).await.unwrap();
    let row = db.store.delivery("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (row.execution_id.as_str(), row.status.as_str(), row.attempts),
        ("e2", "running", 3)
    );
    assert!(row.completed_at.is_none());
}
