//! The group-commit writer: many outcomes in few transactions, logs in order, metrics
//! equal to the rows, replays and duplicates never counted twice, odd values stored.

use std::collections::HashMap;
use std::time::Instant;

use warden::Status;
use warden::{
    Completed, Disposition, ExecutionStatus, NewExecution, Store, WorkflowSpec, Writer,
    WriterConfig,
};
use warden_protocol::{Log, LogLevel};
use warden_tests::db::fixtures::{completed, new_execution, outcome, STATUSES};
use warden_tests::db::{collect_committed, retry, xact_commit, TestDb};

async fn push(store: &Store, org: Option<&str>, name: &str) -> (i64, Option<i64>) {
    let r = store
        .push_workflow(&WorkflowSpec {
            org: org.map(str::to_string),
            name: name.to_string(),
            path: format!("{name}.py"),
            function_name: "run".to_string(),
            source: "def run(): pass".to_string(),
            default_timeout_ms: None,
            time_saved_seconds: Some(30.0),
            value: Some(1.5),
            retry_policy: None,
        })
        .await
        .unwrap();
    (r.id, r.org_id)
}

#[tokio::test]
async fn a_thousand_outcomes_commit_in_a_few_transactions_with_exact_metrics() {
    const N: usize = 1000;
    const LOGS: u32 = 5;
    let db = TestDb::new().await;
    let (wf_global, _) = push(&db.store, None, "global").await;
    let (wf_acme, acme) = push(&db.store, Some("acme"), "report").await;

    // Item i: status STATUSES[i % 5]; attribution: global workflow, acme workflow, or
    // none (a request that named no workflow), in turn.
    let attribution = |i: usize| match i % 3 {
        0 => (Some(wf_global), None),
        1 => (Some(wf_acme), acme),
        _ => (None, acme),
    };
    let ids: Vec<String> = (0..N).map(|i| format!("exec-{i:04}")).collect();
    let rows: Vec<NewExecution> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewExecution {
            org_id: attribution(i).1,
            ..new_execution(id, attribution(i).0)
        })
        .collect();
    for chunk in rows.chunks(250) {
        db.store.begin_batch(chunk).await.unwrap();
    }

    // Autovacuum's analyze runs commit transactions in this database too; keep them out
    // of the count.
    for table in ["executions", "execution_logs", "daily_metrics"] {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .execute(db.store.pool())
        .await
        .unwrap();
    }

    // The set-up's statistics are still pending in its backends: make them exit (and
    // flush) now, so they are not counted below.
    db.terminate_backends().await;
    db.wait_for_backends_at_most(0).await;

    let writer_store = Store::connect(&db.url, 2).await.unwrap();
    let mut side = db.connection().await;
    xact_commit(&mut side).await; // prepares the measuring statements
    let before = xact_commit(&mut side).await;

    let started = Instant::now();
    let (writer, mut committed) = Writer::spawn(writer_store.clone(), WriterConfig::default());
    for (i, id) in ids.iter().enumerate() {
        let (wf, org) = attribution(i);
        writer
            .submit(completed(id, STATUSES[i % 5], LOGS, wf, org))
            .await
            .unwrap();
    }
    let reported = collect_committed(&mut committed, N).await;
    let elapsed = started.elapsed();
    let stats = writer.stats();
    drop(writer);
    assert!(committed.recv().await.is_none());

    // Make every other backend exit (which flushes its statistics), then measure.
    writer_store.close().await;
    drop(writer_store);
    db.terminate_backends().await;
    db.wait_for_backends_at_most(0).await;
    let after = xact_commit(&mut side).await;
    // Less the measurement's own two (the read after `before`, the flush before `after`).
    let transactions = after - before - 2;
    let per_execution = transactions as f64 / N as f64;
    println!(
        "writer: {N} outcomes + {} logs in {:.1} ms ({:.0} outcomes/s), {} batches, \
         {transactions} transactions ({per_execution:.4} per execution)",
        N * LOGS as usize,
        elapsed.as_secs_f64() * 1000.0,
        N as f64 / elapsed.as_secs_f64(),
        stats.batches,
    );
    assert!(
        per_execution <= 0.1,
        "{per_execution} transactions per execution"
    );
    assert_eq!(stats.recorded, N as u64);

    // Every outcome reported once, recorded.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in &reported {
        *seen.entry(c.execution_id.as_str()).or_default() += 1;
        assert_eq!(c.disposition, Disposition::Recorded);
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1));

    // Rows: all terminal, per-status counts as submitted. (The first read meets the
    // store connections killed above, so it may need a second try.)
    let counts: Vec<(String, i64)> = retry("count rows by status", || {
        sqlx::query_as("SELECT status::text, count(*) FROM executions GROUP BY 1 ORDER BY 1")
            .fetch_all(db.store.pool())
    })
    .await;
    let counts: HashMap<String, i64> = counts.into_iter().collect();
    for s in STATUSES {
        assert_eq!(counts[s.as_str()], (N / 5) as i64, "{s}");
    }
    assert_eq!(counts.values().sum::<i64>(), N as i64);

    // Logs: all there, in seq order.
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM execution_logs")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(logs, (N as i64) * LOGS as i64);
    let shown = db.store.show_execution("exec-0006").await.unwrap().unwrap();
    assert_eq!(
        shown.logs.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(shown.logs[3].message, "exec-0006 line 3");
    assert_eq!(shown.logs[3].level, "warning");
    assert_eq!(shown.execution.status, ExecutionStatus::Failed);
    assert_eq!(shown.execution.error_type.as_deref(), Some("ValueError"));
    assert_eq!(shown.execution.stream_id.as_deref(), Some("1-exec-0006"));
    assert!((shown.execution.duration_ms.unwrap() - 12.0).abs() < 1e-9);
    let success = db
        .store
        .show_execution("exec-0000")
        .await
        .unwrap()
        .unwrap()
        .execution;
    assert_eq!(
        success.result,
        Some(serde_json::json!({"id": "exec-0000", "ok": true}))
    );

    // Metrics: the totals (workflow_id 0) equal the per-status counts; the workflow rows
    // equal the counts of attributed executions; ROI only for successes.
    let totals: (i64, i64, i64, i64, i64, f64, f64) = sqlx::query_as(
        "SELECT sum(success)::bigint, sum(failed)::bigint, sum(timeout)::bigint,
                sum(cancelled)::bigint, sum(crashed)::bigint, sum(time_saved_seconds),
                sum(value)
         FROM daily_metrics WHERE workflow_id = 0",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    let per_status = (N / 5) as i64;
    assert_eq!(
        (totals.0, totals.1, totals.2, totals.3, totals.4),
        (per_status, per_status, per_status, per_status, per_status)
    );
    let successes_with_roi = (0..N).filter(|i| i % 5 == 0).count() as f64;
    assert_eq!(totals.5, successes_with_roi * 30.0);
    assert_eq!(totals.6, successes_with_roi * 1.5);
    let attributed: i64 = sqlx::query_scalar(
        "SELECT sum(success + failed + timeout + cancelled + crashed)::bigint
         FROM daily_metrics WHERE workflow_id <> 0",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(attributed, (0..N).filter(|i| i % 3 != 2).count() as i64);
    let acme_total: i64 = sqlx::query_scalar(
        "SELECT sum(success + failed + timeout + cancelled + crashed)::bigint
         FROM daily_metrics WHERE workflow_id = 0 AND org_id = $1",
    )
    .bind(acme)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(acme_total, (0..N).filter(|i| i % 3 != 0).count() as i64);
}

#[tokio::test]
async fn duplicate_submissions_do_not_double_count() {
    let db = TestDb::new().await;
    db.store
        .begin_batch(&[new_execution("dup", None)])
        .await
        .unwrap();
    let (writer, mut committed) = Writer::spawn(db.store.clone(), WriterConfig::default());

    // Twice in the same batch, then again later, then a different outcome for the id.
    let item = completed("dup", Status::Success, 3, None, None);
    writer
        .submit_all(vec![item.clone(), item.clone()])
        .await
        .unwrap();
    let first = collect_committed(&mut committed, 2).await;
    writer.submit(item).await.unwrap();
    let later = collect_committed(&mut committed, 1).await;
    writer
        .submit(completed("dup", Status::Crashed, 1, None, None))
        .await
        .unwrap();
    let different = collect_committed(&mut committed, 1).await;

    let dispositions: Vec<_> = first
        .iter()
        .chain(&later)
        .chain(&different)
        .map(|c| (c.disposition, c.status))
        .collect();
    assert_eq!(
        dispositions,
        vec![
            (Disposition::Recorded, Status::Success),
            (Disposition::AlreadyTerminal, Status::Success),
            (Disposition::AlreadyTerminal, Status::Success),
            (Disposition::AlreadyTerminal, Status::Success),
        ]
    );
    let (success, crashed): (i64, i64) = sqlx::query_as(
        "SELECT sum(success)::bigint, sum(crashed)::bigint FROM daily_metrics WHERE workflow_id = 0",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!((success, crashed), (1, 0));
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM execution_logs")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(logs, 3);
}

#[tokio::test]
async fn values_postgres_would_refuse_are_made_storable() {
    let db = TestDb::new().await;
    let (writer, mut committed) = Writer::spawn(db.store.clone(), WriterConfig::default());

    let mut nul = Completed::new(outcome("nul\0id", Status::Success));
    nul.outcome.result_json = Some(r#"{"k\u0000": "v\u0000"}"#.to_string());
    nul.logs = vec![Log {
        execution_id: "someone-else".to_string(),
        seq: 0,
        timestamp_us: i64::MIN,
        level: LogLevel::Error,
        message: "a\0b".to_string(),
    }];
    let mut not_json = Completed::new(outcome("not-json", Status::Success));
    not_json.outcome.result_json = Some("{oops".to_string());
    let mut huge = Completed::new(outcome("huge", Status::Crashed));
    huge.outcome.peak_memory_bytes = u64::MAX;
    huge.outcome.cpu_seconds = f64::NAN;
    huge.logs = vec![Log {
        execution_id: "huge".to_string(),
        seq: u32::MAX,
        timestamp_us: 0,
        level: LogLevel::Info,
        message: "past i32".to_string(),
    }];
    writer.submit_all(vec![nul, not_json, huge]).await.unwrap();
    let reported = collect_committed(&mut committed, 3).await;
    assert!(
        reported
            .iter()
            .all(|c| c.disposition == Disposition::Recorded),
        "{reported:?}"
    );
    assert_eq!(writer.stats().batches, 1, "one transaction, nothing split");

    let nul = db
        .store
        .show_execution("nul\u{FFFD}id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        nul.execution.result,
        Some(serde_json::json!({"k\u{FFFD}": "v\u{FFFD}"}))
    );
    assert_eq!(nul.logs[0].message, "a\u{FFFD}b");
    let not_json = db
        .store
        .show_execution("not-json")
        .await
        .unwrap()
        .unwrap()
        .execution;
    assert_eq!(not_json.result, Some(serde_json::json!("{oops")));
    let huge = db.store.show_execution("huge").await.unwrap().unwrap();
    assert_eq!(huge.execution.peak_memory_bytes, Some(i64::MAX));
    assert_eq!(huge.execution.logs_dropped, 1);
    assert!(huge.logs.is_empty());
}

#[tokio::test]
async fn throughput() {
    const N: usize = 20_000;
    let db = TestDb::new().await;
    let (writer, mut committed) = Writer::spawn(db.store.clone(), WriterConfig::default());
    let started = Instant::now();
    let submitter = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let id = format!("t{i}");
                writer
                    .submit(completed(&id, STATUSES[i % 5], 2, None, None))
                    .await
                    .unwrap();
            }
        })
    };
    let reported = collect_committed(&mut committed, N).await;
    let elapsed = started.elapsed();
    submitter.await.unwrap();
    let stats = writer.stats();
    println!(
        "writer throughput: {N} outcomes (+{} logs) in {:.2} s: {:.0} outcomes/s, {} batches \
         (mean {:.0} per transaction)",
        2 * N,
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64(),
        stats.batches,
        N as f64 / stats.batches as f64
    );
    assert_eq!(reported.len(), N);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE status <> 'running'")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(rows, N as i64);
}
