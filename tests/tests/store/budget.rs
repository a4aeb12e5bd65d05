//! The connection budget: `Store::connect(url, 2)` opens its two connections at start
//! and no more, however much it writes.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use warden::Status;
use warden::{NewExecution, Store, Writer, WriterConfig};
use warden_tests::db::fixtures::{completed, new_execution, STATUSES};
use warden_tests::db::{server_url, sessions, TestDb};

#[tokio::test]
async fn the_pool_opens_its_budget_at_start_and_never_more() {
    const N: usize = 500;
    let db = TestDb::new().await;
    // The set-up's own sessions are counted once its backends exit and flush.
    db.terminate_backends().await;
    db.wait_for_backends_at_most(0).await;
    let mut side = db.connection().await;
    sessions(&mut side).await;
    let sessions_before = sessions(&mut side).await;

    let store = Store::connect(&db.url, 2).await.unwrap();
    assert_eq!(
        db.backends().await,
        2,
        "both connections are open once connect returns"
    );

    // Watch the number of connected backends while the store works.
    let peak = Arc::new(AtomicI64::new(0));
    let watcher = {
        let peak = Arc::clone(&peak);
        let db_name = db.name.clone();
        tokio::spawn(async move {
            let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
                .await
                .unwrap();
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND backend_type = 'client backend'
                       AND application_name = 'warden'",
                )
                .bind(&db_name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 500 executions: begun in batches of 50, then written by the writer, with reads
    // in between.
    let (writer, mut committed) = Writer::spawn(store.clone(), WriterConfig::default());
    for chunk in 0..N / 50 {
        let rows: Vec<NewExecution> = (chunk * 50..(chunk + 1) * 50)
            .map(|i| new_execution(&format!("e{i}"), None))
            .collect();
        store.begin_batch(&rows).await.unwrap();
        for row in &rows {
            let status: Status = STATUSES[row.id.as_str().len() % 5];
            writer
                .submit(completed(row.id.as_str(), status, 2, None, None))
                .await
                .unwrap();
        }
        store.list_workflows().await.unwrap();
    }
    let mut n = 0;
    while n < N {
        n += committed.recv().await.unwrap().len();
    }
    drop(writer);
    watcher.abort();

    let terminal: i64 =
        sqlx::query_scalar("SELECT count(*) FROM executions WHERE status <> 'running'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(terminal, N as i64);

    // Let the store's backends exit (flushing their statistics), then count sessions.
    store.close().await;
    drop(store);
    db.terminate_backends().await;
    db.wait_for_backends_at_most(0).await;
    let sessions_after = sessions(&mut side).await;
    let opened = sessions_after - sessions_before;
    let peak = peak.load(Ordering::Relaxed);
    println!("budget 2: {N} executions, {opened} sessions opened, at most {peak} connected");
    assert_eq!(opened, 2, "sessions opened by the store");
    assert!(peak <= 2, "{peak} connections at once");
}
