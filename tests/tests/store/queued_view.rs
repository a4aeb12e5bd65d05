//! How `warden executions show|list` read a row that is `running` with no start time
//! (taken by a supervisor, issue 13): `pending`, queued on that supervisor, until the
//! supervisor's start mark for the row's attempt is in Redis; then `running` since the
//! mark's time; `running` with `start_unknown` when Redis cannot be reached. The serve
//! side (the marks published, the start committed) is `serve::queued`.

use serde_json::{json, Value};
use warden_tests::cli::{ok, warden, warden_env};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

async fn taken_row(db: &TestDb, id: &str, attempt: i32) {
    sqlx::query(
        "INSERT INTO executions (id, workflow_name, status, queued_at, taken_at, supervisor,
                                 stream_id, attempt)
         VALUES ($1, 'report', 'running', now(), now(), 'sup-9', '1-0', $2)",
    )
    .bind(id)
    .bind(attempt)
    .execute(db.store.pool())
    .await
    .unwrap();
}

fn show(db: &TestDb, redis: &TestRedis, id: &str) -> Value {
    let out = ok(warden(
        db,
        redis,
        std::path::Path::new("/tmp"),
        &["executions", "show", id, "--json"],
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn mark(redis: &TestRedis, id: &str, attempt: i32, at: &str) {
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(redis.keys().start_mark(id))
        .arg(json!({"attempt": attempt, "started_at": at, "supervisor": "sup-9"}).to_string())
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_taken_row_is_pending_until_its_attempt_has_a_start_mark() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    taken_row(&db, "e-q", 2).await;

    let v = show(&db, &redis, "e-q");
    assert_eq!(
        (
            &v["status"],
            &v["started_at"],
            &v["queued_on"],
            &v["start_unknown"]
        ),
        (
            &json!("pending"),
            &Value::Null,
            &json!("sup-9"),
            &json!(false)
        ),
        "{v}"
    );
    let text = ok(warden(
        &db,
        &redis,
        std::path::Path::new("/tmp"),
        &["executions", "show", "e-q"],
    ));
    assert!(
        text.contains("status:    pending (queued on sup-9) (attempt 2)"),
        "{text}"
    );
    assert!(
        text.contains("taken:") && !text.contains("started:"),
        "{text}"
    );

    // A mark of an earlier attempt says nothing of this one.
    mark(&redis, "e-q", 1, "2026-12-06T01:00:00Z").await;
    assert_eq!(show(&db, &redis, "e-q")["status"], "pending");

    mark(&redis, "e-q", 2, "2026-12-06T01:00:05Z").await;
    let v = show(&db, &redis, "e-q");
    assert_eq!(
        (&v["status"], &v["started_at"], &v["queued_on"]),
        (
            &json!("running"),
            &json!("2026-12-06T01:00:05.000Z"),
            &Value::Null
        ),
        "{v}"
    );
    let list = ok(warden(
        &db,
        &redis,
        std::path::Path::new("/tmp"),
        &["executions", "list", "--status", "running", "--json"],
    ));
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["id"], "e-q", "{list}");
    assert_eq!(list[0]["started_at"], "2026-12-06T01:00:05.000Z", "{list}");
}

#[tokio::test]
async fn without_redis_a_taken_row_reads_running_with_its_start_unknown() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    taken_row(&db, "e-u", 1).await;
    let out = ok(warden_env(
        &db,
        &redis,
        std::path::Path::new("/tmp"),
        &[("REDIS_URL", "redis://127.0.0.1:1")],
        &["executions", "show", "e-u", "--json"],
    ));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (&v["status"], &v["started_at"], &v["start_unknown"]),
        (&json!("running"), &Value::Null, &json!(true)),
        "{v}"
    );
}
