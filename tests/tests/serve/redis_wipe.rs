//! Redis wiped under a running service (FLUSHALL, or a Redis restart without
//! persistence), simulated by deleting every key under the test's prefix: executions
//! already taken still end committed, the stream and its consumer group are recreated,
//! and new requests run.

use std::time::Duration;

use warden::Status;
use warden_tests::serve::TestServe;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_keeps_working_after_its_redis_keys_are_wiped() {
    let mut s = TestServe::start(|_| {}).await;
    s.push(
        "sleepy",
        "import time\ndef run(i):\n    time.sleep(0.02)\n    return i\n",
        None,
    )
    .await;
    let reqs: Vec<_> = (0..200)
        .map(|i| TestServe::request(&format!("a{i}"), "sleepy", &format!("{{\"i\": {i}}}")))
        .collect();
    s.client.submit_many(&reqs).await.unwrap();
    // Let some run, then wipe everything under the prefix.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = s.redis.scan_keys();
    assert!(!keys.is_empty());
    let mut conn = s.redis.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    // New work after the wipe runs.
    for i in 0..20 {
        let c = s
            .run(&format!("b{i}"), "sleepy", &format!("{{\"i\": {i}}}"))
            .await;
        assert_eq!(c.status, Status::Success, "b{i}");
    }
    s.stop().await;

    // Whatever was taken before the wipe ended in a terminal state; entries the wipe
    // destroyed before any supervisor read them never existed for the database.
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE status IN ('pending', 'running')",
    )
    .fetch_one(s.db.store.pool())
    .await
    .unwrap();
    assert_eq!(stuck, 0, "no execution left running");
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE id LIKE 'a%'")
        .fetch_one(s.db.store.pool())
        .await
        .unwrap();
    assert!(
        done > 0 && done <= 200,
        "{done} of the first batch were taken and finished"
    );
}
