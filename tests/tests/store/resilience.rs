//! The writer under failure: connections killed mid-run, a transaction the database
//! refuses, the database refusing connections altogether. Nothing is lost, nothing is
//! recorded twice, nothing is half-written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use warden::Status;
use warden::{Committed, Disposition, ExecutionStatus, NewExecution, Store, Writer, WriterConfig};
use warden_tests::db::fixtures::{completed, new_execution, STATUSES};
use warden_tests::db::{collect_committed, scalar, server_url, TestDb};

async fn begin(db: &TestDb, ids: &[String]) {
    let rows: Vec<NewExecution> = ids.iter().map(|id| new_execution(id, None)).collect();
    for chunk in rows.chunks(250) {
        db.store.begin_batch(chunk).await.unwrap();
    }
}

/// Rows, logs and metrics all agree with `n` executions recorded once, `logs` lines each.
async fn assert_recorded_once(db: &TestDb, n: i64, logs: i64) {
    assert_eq!(
        scalar(
            db,
            "SELECT count(*) FROM executions WHERE status <> 'running'"
        )
        .await,
        n
    );
    assert_eq!(
        scalar(db, "SELECT count(*) FROM execution_logs").await,
        n * logs
    );
    let counted = scalar(
        db,
        "SELECT COALESCE(sum(success + failed + timeout + cancelled + crashed), 0)::bigint
         FROM daily_metrics WHERE workflow_id = 0",
    )
    .await;
    assert_eq!(counted, n, "metrics count each execution once");
}

fn fast_retries() -> WriterConfig {
    WriterConfig {
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        park_retry_max: Duration::from_millis(200),
        ..WriterConfig::default()
    }
}

#[tokio::test]
async fn connections_killed_mid_run_lose_nothing_and_record_nothing_twice() {
    const N: usize = 1000;
    const LOGS: u32 = 3;
    let db = TestDb::new().await;
    let ids: Vec<String> = (0..N).map(|i| format!("k{i:04}")).collect();
    begin(&db, &ids).await;

    let store = Store::connect(&db.url, 2).await.unwrap();
    // Small batches: more transactions for the kills to land in.
    let config = WriterConfig {
        max_batch: 20,
        ..WriterConfig::default()
    };
    let (writer, mut committed) = Writer::spawn(store.clone(), config);

    // Kill every backend of the database (the writer's included) every 10 ms until the
    // last outcome is submitted.
    let done = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicI64::new(0));
    let killer = {
        let (done, killed) = (Arc::clone(&done), Arc::clone(&killed));
        let name = db.name.clone();
        tokio::spawn(async move {
            let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
                .await
                .unwrap();
            while !done.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                     FROM pg_stat_activity
                     WHERE datname = $1 AND backend_type = 'client backend'",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                killed.fetch_add(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        writer
            .submit(completed(id, STATUSES[i % 5], LOGS, None, None))
            .await
            .unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    let reported = collect_committed(&mut committed, N).await;
    killer.await.unwrap();
    let stats = writer.stats();
    println!(
        "kill test: {N} outcomes in {:.0} ms, {} backends killed, {} failed attempts, {} \
         batches, {} recorded, {} found already terminal (COMMIT done, answer lost)",
        started.elapsed().as_secs_f64() * 1000.0,
        killed.load(Ordering::Relaxed),
        stats.failed_attempts,
        stats.batches,
        stats.recorded,
        stats.already_terminal,
    );
    assert!(killed.load(Ordering::Relaxed) > 0);
    assert!(
        stats.failed_attempts > 0,
        "the kills should have hit the writer"
    );

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in &reported {
        *seen.entry(c.execution_id.as_str()).or_default() += 1;
        assert_ne!(c.disposition, Disposition::Isolated, "{c:?}");
    }
    assert_eq!(seen.len(), N);
    assert!(
        seen.values().all(|&n| n == 1),
        "each outcome reported exactly once"
    );
    assert_eq!(stats.recorded + stats.already_terminal, N as u64);
    assert_recorded_once(&db, N as i64, LOGS as i64).await;
}

const REFUSE_EXECUTION: &str = "
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id = 'f-bad' AND NEW.status <> 'running' THEN
            RAISE EXCEPTION 'refused by test trigger';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON executions
        FOR EACH ROW EXECUTE FUNCTION refuse();";

const REFUSE_LOGS: &str = "
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.execution_id = 'f-bad' THEN
            RAISE EXCEPTION 'refused by test trigger';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER refuse BEFORE INSERT ON execution_logs
        FOR EACH ROW EXECUTE FUNCTION refuse();";

fn ids_with_bad(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == n / 2 {
                "f-bad".to_string()
            } else {
                format!("f{i:03}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_refused_item_is_parked_without_half_writes_then_committed() {
    const N: usize = 100;
    let db = TestDb::new().await;
    let ids = ids_with_bad(N);
    begin(&db, &ids).await;
    sqlx::raw_sql(REFUSE_EXECUTION)
        .execute(db.store.pool())
        .await
        .unwrap();

    let (writer, mut committed) = Writer::spawn(db.store.clone(), fast_retries());
    for (i, id) in ids.iter().enumerate() {
        writer
            .submit(completed(id, STATUSES[i % 5], 2, None, None))
            .await
            .unwrap();
    }
    // Everything but the bad item commits, through the splits.
    let first = collect_committed(&mut committed, N - 1).await;
    assert!(first.iter().all(|c| c.execution_id != "f-bad"));
    assert!(first.iter().all(|c| c.disposition == Disposition::Recorded));
    // Even its StoreError record is refused, so it is parked: held, not written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writer.stats().parked, 1);
    assert_eq!(writer.pending(), 1);
    let bad = db.store.show_execution("f-bad").await.unwrap().unwrap();
    assert_eq!(bad.execution.status, ExecutionStatus::Running);
    assert!(
        bad.logs.is_empty(),
        "nothing of the refused item is written"
    );
    assert_recorded_once(&db, N as i64 - 1, 2).await;

    // The database accepts it again: the parked item commits as itself.
    sqlx::raw_sql("DROP TRIGGER refuse ON executions")
        .execute(db.store.pool())
        .await
        .unwrap();
    let last = collect_committed(&mut committed, 1).await;
    assert_eq!(last[0].execution_id, "f-bad");
    assert_eq!(last[0].disposition, Disposition::Recorded);
    assert_eq!(last[0].status, STATUSES[(N / 2) % 5]);
    assert_eq!(writer.stats().parked, 0);
    assert_recorded_once(&db, N as i64, 2).await;
}

#[tokio::test]
async fn a_refused_log_insert_rolls_back_its_batch_and_isolates_the_item() {
    const N: usize = 100;
    let db = TestDb::new().await;
    let ids = ids_with_bad(N);
    begin(&db, &ids).await;
    sqlx::raw_sql(REFUSE_LOGS)
        .execute(db.store.pool())
        .await
        .unwrap();

    let (writer, mut committed) = Writer::spawn(db.store.clone(), fast_retries());
    writer
        .submit_all(
            ids.iter()
                .map(|id| completed(id, Status::Success, 2, None, None))
                .collect(),
        )
        .await
        .unwrap();
    let reported = collect_committed(&mut committed, N).await;
    let bad: Vec<&Committed> = reported
        .iter()
        .filter(|c| c.execution_id == "f-bad")
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].disposition, bad[0].status),
        (Disposition::Isolated, Status::Failed)
    );
    assert_eq!(writer.stats().isolated, 1);

    // The failed attempts rolled back whole: the bad item's row was not left `success`
    // by the batch whose log insert failed; it is `failed` / StoreError, without logs.
    let shown = db.store.show_execution("f-bad").await.unwrap().unwrap();
    assert_eq!(shown.execution.status, ExecutionStatus::Failed);
    assert_eq!(shown.execution.error_type.as_deref(), Some("StoreError"));
    let message = shown.execution.error_message.unwrap_or_default();
    assert!(message.contains("refused by test trigger"), "{message}");
    assert!(message.contains("success"), "{message}");
    assert!(shown.logs.is_empty());
    assert_eq!(shown.execution.logs_dropped, 2);

    // Everyone else: recorded once, with logs; metrics count the bad one as failed.
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM execution_logs").await,
        2 * (N as i64 - 1)
    );
    let (success, failed): (i64, i64) = sqlx::query_as(
        "SELECT sum(success)::bigint, sum(failed)::bigint FROM daily_metrics WHERE workflow_id = 0",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!((success, failed), (N as i64 - 1, 1));
}

#[tokio::test]
async fn while_the_database_refuses_connections_results_wait_in_memory_bounded() {
    let db = TestDb::new().await;
    let ids: Vec<String> = (0..21).map(|i| format!("w{i:02}")).collect();
    begin(&db, &ids).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    let config = WriterConfig {
        max_pending: 20,
        ..fast_retries()
    };
    let (writer, mut committed) = Writer::spawn(store.clone(), config);

    db.admin_execute("ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        .await;
    db.terminate_backends().await;
    db.wait_for_backends_at_most(0).await;

    for id in &ids[..20] {
        writer
            .submit(completed(id, Status::Success, 1, None, None))
            .await
            .unwrap();
    }
    // The 21st waits: the writer holds its bound.
    let blocked = {
        let writer = writer.clone();
        let item = completed(&ids[20], Status::Success, 1, None, None);
        tokio::spawn(async move { writer.submit(item).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !blocked.is_finished(),
        "submit waits while max_pending items are held"
    );
    assert_eq!(writer.pending(), 20);
    assert!(writer.stats().failed_attempts > 0);
    assert!(
        committed.try_recv().is_err(),
        "nothing reported while nothing is committed"
    );

    db.admin_execute("ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        .await;
    blocked.await.unwrap().unwrap();
    let reported = collect_committed(&mut committed, 21).await;
    assert!(reported
        .iter()
        .all(|c| c.disposition == Disposition::Recorded));
    assert_eq!(writer.stats().isolated, 0);
    assert_recorded_once(&db, 21, 1).await;
}
