//! Retention: only ended executions older than the age are deleted (with their log
//! lines), oldest first, never more than a batch per statement; pending and running
//! rows stay whatever their age. Through the store, `warden executions prune` and
//! `serve --retention`.

use std::time::Duration;

use warden::{prune, Retention, Store};
use warden_tests::cli::{ok, refused, warden};
use warden_tests::db::{scalar, TestDb};
use warden_tests::http::{free_addr, get, sample, wait_for_status};
use warden_tests::redis::TestRedis;
use warden_tests::serve::TestServe;

const OLD: i64 = 25;
const LOGS_EACH: i64 = 2;

/// `OLD` ended executions completed 40 days ago (one second apart, `old-01` oldest),
/// each with `LOGS_EACH` log lines; old rows that are not ended (one `running` even
/// with a `completed_at`); and recent ended ones with logs.
async fn seed(db: &TestDb) {
    let statements = [
        "INSERT INTO executions (id, status, queued_at, started_at, completed_at)
         SELECT 'old-' || lpad(g::text, 2, '0'),
                (ARRAY['success','failed','timeout','cancelled','crashed'])[1 + g % 5]::execution_status,
                now() - interval '41 days', now() - interval '41 days',
                now() - interval '40 days' + g * interval '1 second'
         FROM generate_series(1, 25) g",
        "INSERT INTO execution_logs (execution_id, seq, level, message, logged_at)
         SELECT e.id, s, 'info', 'line', now() FROM executions e, generate_series(0, 1) s",
        "INSERT INTO executions (id, status, queued_at, started_at, completed_at) VALUES
           ('old-pending', 'pending', now() - interval '50 days', NULL, NULL),
           ('old-running', 'running', now() - interval '50 days', now() - interval '50 days', NULL),
           ('old-running-odd', 'running', now() - interval '50 days', now() - interval '50 days',
            now() - interval '45 days')",
        "INSERT INTO executions (id, status, queued_at, started_at, completed_at)
         SELECT 'new-' || g, 'success', now() - interval '1 day', now() - interval '1 day',
                now() - interval '1 day'
         FROM generate_series(1, 5) g",
        "INSERT INTO execution_logs (execution_id, seq, level, message, logged_at)
         SELECT e.id, 0, 'info', 'line', now() FROM executions e WHERE e.id LIKE 'new-%'",
    ];
    for sql in statements {
        sqlx::query(sql).execute(db.store.pool()).await.unwrap();
    }
}

/// What is left: (old ended rows, their log lines, rows not ended, recent rows, their
/// log lines).
async fn left(db: &TestDb) -> (i64, i64, i64, i64, i64) {
    (
        scalar(db, "SELECT count(*) FROM executions WHERE id LIKE 'old-__'").await,
        scalar(
            db,
            "SELECT count(*) FROM execution_logs WHERE execution_id LIKE 'old-__'",
        )
        .await,
        scalar(
            db,
            "SELECT count(*) FROM executions WHERE status IN ('pending', 'running')",
        )
        .await,
        scalar(db, "SELECT count(*) FROM executions WHERE id LIKE 'new-%'").await,
        scalar(
            db,
            "SELECT count(*) FROM execution_logs WHERE execution_id LIKE 'new-%'",
        )
        .await,
    )
}

fn thirty_days_ago() -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    use sqlx::types::chrono;
    chrono::Utc::now() - Duration::from_secs(30 * 86_400)
}

#[tokio::test]
async fn a_batch_deletes_at_most_its_size_oldest_first_and_only_ended_rows() {
    let db = TestDb::new().await;
    seed(&db).await;
    let store: &Store = &db.store;

    let n = store.prune_batch(thirty_days_ago(), 10).await.unwrap();
    assert_eq!((n.executions, n.logs), (10, 10 * LOGS_EACH as u64));
    let oldest_left: String =
        sqlx::query_scalar("SELECT min(id) FROM executions WHERE id LIKE 'old-__'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(oldest_left, "old-11", "the oldest ten went first");

    // A whole pass in batches of 10: 10, 5 (short: the pass ends).
    let (_keep, mut stop) = tokio::sync::watch::channel(false);
    let mut sizes = Vec::new();
    let r = prune(
        store,
        thirty_days_ago(),
        10,
        Duration::from_millis(1),
        &mut stop,
        |p| sizes.push(p.executions),
    )
    .await
    .unwrap();
    assert_eq!(sizes, vec![10, 5]);
    assert_eq!((r.executions, r.logs, r.batches), (15, 30, 2));
    assert_eq!(left(&db).await, (0, 0, 3, 5, 5));

    // Nothing more to do: one empty statement.
    let r = prune(
        store,
        thirty_days_ago(),
        10,
        Duration::ZERO,
        &mut stop,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((r.executions, r.batches), (0, 1));
    assert_eq!(left(&db).await, (0, 0, 3, 5, 5));
}

#[tokio::test]
async fn executions_prune_dry_run_counts_and_the_real_run_deletes() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();

    // An age without a unit, or zero, is refused before anything is touched.
    let err = refused(warden(
        &db,
        &redis,
        dir.path(),
        &["executions", "prune", "--older-than", "30"],
    ));
    assert!(err.contains("`30` is not an age"), "{err}");
    let err = refused(warden(
        &db,
        &redis,
        dir.path(),
        &["executions", "prune", "--older-than", "0d"],
    ));
    assert!(err.contains("the age must be more than zero"), "{err}");
    assert_eq!(left(&db).await, (OLD, OLD * LOGS_EACH, 3, 5, 5));

    let out = ok(warden(
        &db,
        &redis,
        dir.path(),
        &["executions", "prune", "--older-than", "30d", "--dry-run"],
    ));
    assert!(
        out.starts_with(&format!(
            "would delete {OLD} ended executions and {} log lines",
            OLD * LOGS_EACH
        )),
        "{out}"
    );
    assert_eq!(left(&db).await, (OLD, OLD * LOGS_EACH, 3, 5, 5), "dry run");

    let out = ok(warden(
        &db,
        &redis,
        dir.path(),
        &["executions", "prune", "--older-than", "30d", "--batch", "7"],
    ));
    assert!(
        out.starts_with(&format!(
            "deleted {OLD} ended executions and {} log lines",
            OLD * LOGS_EACH
        )),
        "{out}"
    );
    // 25 rows at 7 per statement: 7, 7, 7, 4.
    assert!(out.contains("in 4 statements of at most 7 rows"), "{out}");
    assert_eq!(left(&db).await, (0, 0, 3, 5, 5));

    // A younger age takes the recent ones too, still not the unfinished ones.
    ok(warden(
        &db,
        &redis,
        dir.path(),
        &["executions", "prune", "--older-than", "1h"],
    ));
    assert_eq!(left(&db).await, (0, 0, 3, 0, 0));
}

#[tokio::test]
async fn serve_with_retention_deletes_in_the_background_and_counts_it() {
    let addr = free_addr();
    let s = TestServe::start(|cfg| {
        cfg.http = Some(addr);
        let mut r = Retention::new(Duration::from_secs(30 * 86_400));
        r.batch = 10;
        r.pause = Duration::from_millis(10);
        r.every = Duration::from_millis(200);
        cfg.retention = Some(r);
    })
    .await;
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    seed(&s.db).await;

    let t = std::time::Instant::now();
    while left(&s.db).await.0 > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{:?}",
            left(&s.db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left(&s.db).await, (0, 0, 3, 5, 5));
    let text = get(addr, "/metrics").await.1;
    assert_eq!(
        sample(&text, "warden_retention_deleted_executions_total"),
        Some(OLD as f64),
        "{text}"
    );
    // Retention used the supervisor's connections: none more were opened.
    assert_eq!(
        sample(&text, "warden_postgres_reconnects_total"),
        Some(0.0),
        "{text}"
    );
}
