//! Execution ids as idempotency keys: the same id with the same params is a duplicate
//! that the first copy answers; the same id with other params is an error that says
//! so (an `IdempotencyConflict` completion for stream clients, a refusal in the CLI),
//! and never overwrites the first execution's stored completion.

use std::path::Path;
use std::time::Duration;

use warden::{Completion, Status};
use warden_tests::cli::{ok, refused, warden};
use warden_tests::serve::{value, TestServe};

/// Submits `req` and returns the next message published on its completion channel.
async fn published_answer(s: &TestServe, req: warden::ExecutionRequest) -> Completion {
    let url = s.redis.url.clone();
    let channel = s.redis.keys().completion_channel(req.execution_id.as_str());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection().unwrap();
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(&channel).unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let msg = pubsub.get_message().expect("a completion within 30 s");
        msg.get_payload::<String>().unwrap()
    });
    ready_rx.recv().unwrap();
    s.client.submit(&req).await.unwrap();
    let json = tokio::task::spawn_blocking(move || listener.join().unwrap())
        .await
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

const DOUBLE: &str = "def run(x):\n    return x * 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_with_other_params_is_refused_and_the_same_params_are_a_duplicate() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("double", DOUBLE, None).await;
    let first = s.run("i1", "double", r#"{"x": 21}"#).await;
    assert_eq!(value(&first), serde_json::json!(42));

    // The same request again (even spelled differently): answered by the first.
    let again = s.run("i1", "double", r#"{ "x":21 }"#).await;
    // (The stored completion, or the stored status published again.)
    assert_eq!((again.status, again.error_type), (Status::Success, None));

    // The duplicate's answer (the stored status, published again) is out before the
    // next step listens on the channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: u64 = redis::cmd("XLEN")
            .arg(s.redis.keys().stream())
            .query_async(&mut s.redis.conn().await)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the duplicate was answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Other params under the same id: refused, said so, not run. (Listening on the
    // channel itself: a waiter first reads the stored completion, which is still the
    // first execution's.)
    let conflict = published_answer(&s, TestServe::request("i1", "double", r#"{"x": 1}"#)).await;
    assert_eq!(conflict.status, Status::Failed);
    assert_eq!(conflict.error_type.as_deref(), Some("IdempotencyConflict"));
    assert!(
        conflict
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("already used with different params")),
        "{conflict:?}"
    );
    // The first execution's stored completion is still its own.
    let stored = s.client.completion("i1").await.unwrap().expect("stored");
    assert_eq!((stored.status, stored.error_type), (Status::Success, None));
    let d = s.db.store.show_execution("i1").await.unwrap().unwrap();
    assert_eq!(d.execution.result, Some(serde_json::json!(42)));

    // The CLI refuses before submitting, with a non-zero exit.
    let err = refused(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &["submit", "double", "--id", "i1", "--params", r#"{"x": 5}"#],
    ));
    assert!(err.contains("already used with different params"), "{err}");
    let out = ok(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &[
            "submit",
            "double",
            "--id",
            "i1",
            "--params",
            r#"{"x": 21}"#,
            "--wait",
            "--wait-timeout",
            "30s",
        ],
    ));
    assert!(out.contains("\"status\":\"success\""), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = s.stop().await;
    assert_eq!(report.executions, 1, "run once: {report:?}");
}
