//! `begin_batch`: new executions run with attempt 1, a non-terminal one taken up again
//! runs with the next attempt, a committed one is reported done (acknowledge, don't
//! run). Rows a supervisor hands back at shutdown are begun again at the right attempt.
//! Rejected requests become `failed` rows; `list` and `show` read them back. A row
//! waiting for its next attempt is begun only by the entry carrying that attempt.

use std::time::Duration;

use warden::Status;
use warden::{
    Begin, Disposition, ExecutionFilter, ExecutionStatus, NewExecution, Rejected, Writer,
    WriterConfig,
};
use warden_tests::db::fixtures::{completed, new_execution};
use warden_tests::db::TestDb;

#[tokio::test]
async fn begin_batch_runs_new_retries_non_terminal_and_skips_committed() {
    let db = TestDb::new().await;
    let s = &db.store;

    let batch: Vec<NewExecution> = ["a", "b", "c"]
        .iter()
        .map(|id| new_execution(id, None))
        .collect();
    let first = s.begin_batch(&batch).await.unwrap();
    assert_eq!(first, vec![Begin::Run { attempt: 1 }; 3]);

    // "c" finishes and is committed by the writer.
    let (writer, mut committed) = Writer::spawn(s.clone(), WriterConfig::default());
    writer
        .submit(completed("c", Status::Timeout, 2, None, None))
        .await
        .unwrap();
    let c = committed.recv().await.unwrap();
    assert_eq!(c[0].disposition, Disposition::Recorded);

    // The supervisor died; the messages are reclaimed (with a new one, "d", and "a"
    // twice in the same batch).
    let mut again: Vec<NewExecution> = ["a", "b", "c", "d", "a"]
        .iter()
        .map(|id| NewExecution {
            supervisor: "sup-2".to_string(),
            ..new_execution(id, None)
        })
        .collect();
    again[3].params_json = "not json".to_string();
    let second = s.begin_batch(&again).await.unwrap();
    assert_eq!(
        second,
        vec![
            Begin::Run { attempt: 2 },
            Begin::Run { attempt: 2 },
            Begin::AlreadyDone {
                status: Status::Timeout
            },
            Begin::Run { attempt: 1 },
            Begin::Duplicate,
        ]
    );
    let third = s.begin_batch(&again[..1]).await.unwrap();
    assert_eq!(third, vec![Begin::Run { attempt: 3 }]);

    let a = s.show_execution("a").await.unwrap().unwrap().execution;
    assert_eq!(a.status, ExecutionStatus::Running);
    assert_eq!(a.supervisor.as_deref(), Some("sup-2"));
    assert_eq!(a.params, Some(serde_json::json!({"n": 1})));
    // Taken, not started: the result statement writes the real start (issue 13).
    assert!(a.started_at.is_none() && a.taken_at.is_some());
    // Params that are not JSON are kept, as a JSON string, rather than failing the batch.
    let d = s.show_execution("d").await.unwrap().unwrap().execution;
    assert_eq!(d.params, Some(serde_json::json!("not json")));
    // The committed row was not touched.
    let c = s.show_execution("c").await.unwrap().unwrap();
    assert_eq!(c.execution.status, ExecutionStatus::Timeout);
    assert_eq!(c.execution.attempt, 1);
    assert_eq!(c.logs.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![0, 1]);

    drop(writer);
    assert!(
        committed.recv().await.is_none(),
        "writer finishes when its handles are gone"
    );
}

#[tokio::test]
async fn begin_batch_takes_odd_input_without_failing_the_batch() {
    let db = TestDb::new().await;
    let s = &db.store;
    // A NUL in an id (stored with U+FFFD, as the writer does), and a workflow id that
    // does not exist (deleted since the batch was loaded): recorded, not an error.
    let rows = vec![
        new_execution("x\0y", None),
        new_execution("gone", Some(987_654)),
        new_execution("ok", None),
    ];
    let begun = s.begin_batch(&rows).await.unwrap();
    assert_eq!(begun, vec![Begin::Run { attempt: 1 }; 3]);
    let gone = s.show_execution("gone").await.unwrap().unwrap().execution;
    assert_eq!(gone.workflow_id, None);

    let (writer, mut committed) = Writer::spawn(s.clone(), WriterConfig::default());
    writer
        .submit(completed("x\0y", Status::Success, 1, None, None))
        .await
        .unwrap();
    let c = committed.recv().await.unwrap();
    assert_eq!(c[0].disposition, Disposition::Recorded);
    let again = s.begin_batch(&rows[..1]).await.unwrap();
    assert_eq!(
        again,
        vec![Begin::AlreadyDone {
            status: Status::Success
        }]
    );
}

#[tokio::test]
async fn rejected_requests_are_recorded_failed_and_listed() {
    let db = TestDb::new().await;
    let s = &db.store;

    let direct = Rejected {
        id: "r1".into(),
        workflow_name: Some("nope".to_string()),
        org_id: None,
        caller: Some("client".to_string()),
        error_type: "UnknownWorkflow".to_string(),
        message: "no workflow named `nope`".to_string(),
        stream_id: Some("5-0".to_string()),
    };
    assert!(s.record_rejected(&direct).await.unwrap());
    assert!(
        !s.record_rejected(&direct).await.unwrap(),
        "terminal rows are not rewritten"
    );

    // Through the writer, so it is acknowledged after COMMIT like any outcome.
    let (writer, mut committed) = Writer::spawn(s.clone(), WriterConfig::default());
    let via_writer = Rejected {
        id: "r2".into(),
        error_type: "InvalidParams".to_string(),
        message: "params must be a JSON object".to_string(),
        stream_id: Some("6-0".to_string()),
        ..direct.clone()
    };
    writer.submit(via_writer.into_completed()).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), committed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c[0].stream_id.as_deref(), Some("6-0"));
    assert_eq!(
        (c[0].status, c[0].disposition),
        (Status::Failed, Disposition::Recorded)
    );

    let r2 = s.show_execution("r2").await.unwrap().unwrap().execution;
    assert_eq!(r2.status, ExecutionStatus::Failed);
    assert_eq!(r2.error_type.as_deref(), Some("InvalidParams"));
    assert_eq!(r2.workflow_name.as_deref(), Some("nope"));

    // Rejections count as failures in the day's total.
    let failed: i64 =
        sqlx::query_scalar("SELECT failed FROM daily_metrics WHERE org_id = 0 AND workflow_id = 0")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(failed, 2);

    let all = s
        .list_executions(&ExecutionFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let filtered = s
        .list_executions(&ExecutionFilter {
            status: Some(ExecutionStatus::Running),
            ..ExecutionFilter::default()
        })
        .await
        .unwrap();
    assert!(filtered.is_empty());
    let by_name = s
        .list_executions(&ExecutionFilter {
            workflow: Some("nope".to_string()),
            limit: 1,
            ..ExecutionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.len(), 1);
    assert!(s.show_execution("missing").await.unwrap().is_none());
}

/// A result is fenced by attempt: once the same stream entry was begun again (a peer
/// took it over), the earlier run's outcome is refused as superseded and the acker
/// leaves the entry alone; the later attempt's outcome is recorded.
#[tokio::test]
async fn an_outcome_of_a_superseded_attempt_is_not_written() {
    let db = TestDb::new().await;
    let s = &db.store;
    let first = s.begin_batch(&[new_execution("x", None)]).await.unwrap();
    assert_eq!(first, vec![Begin::Run { attempt: 1 }]);
    let mut taken = new_execution("x", None);
    taken.supervisor = "peer".into();
    let second = s.begin_batch(&[taken]).await.unwrap();
    assert_eq!(second, vec![Begin::Run { attempt: 2 }]);

    let (writer, mut committed) = Writer::spawn(s.clone(), WriterConfig::default());
    let mut stale = completed("x", Status::Failed, 3, None, None);
    stale.attempt = Some(1);
    writer.submit(stale).await.unwrap();
    let c = committed.recv().await.unwrap();
    assert_eq!(c[0].disposition, Disposition::Superseded);
    let row = s.show_execution("x").await.unwrap().unwrap();
    assert_eq!(
        (row.execution.status, row.execution.attempt, row.logs.len()),
        (ExecutionStatus::Running, 2, 0),
        "nothing of the superseded run was written"
    );

    let mut current = completed("x", Status::Success, 1, None, None);
    current.attempt = Some(2);
    writer.submit(current).await.unwrap();
    let c = committed.recv().await.unwrap();
    assert_eq!(c[0].disposition, Disposition::Recorded);
    let row = s.show_execution("x").await.unwrap().unwrap();
    assert_eq!(
        (row.execution.status, row.execution.supervisor.as_deref()),
        (ExecutionStatus::Success, Some("peer"))
    );
}

/// A supervisor that shuts down gives its `running` rows back: one that never started
/// keeps its attempt when begun again, an interrupted one counts it; rows another
/// supervisor holds, or begun from another entry, are not touched.
#[tokio::test]
async fn rows_handed_back_are_begun_again_at_the_right_attempt() {
    use warden::HandBack;
    let db = TestDb::new().await;
    let s = &db.store;
    let rows: Vec<NewExecution> = ["queued", "cut", "other"]
        .iter()
        .map(|id| NewExecution {
            supervisor: "sup-1".to_string(),
            ..new_execution(id, None)
        })
        .collect();
    s.begin_batch(&rows).await.unwrap();
    let back = |id: &str, started: bool| HandBack {
        id: id.into(),
        stream_id: format!("1-{id}"),
        started,
        started_at: None,
    };
    // Wrong supervisor, wrong entry: nothing.
    assert_eq!(
        s.hand_back("sup-2", &[back("queued", false)])
            .await
            .unwrap(),
        0
    );
    let mut wrong = back("other", false);
    wrong.stream_id = "2-other".into();
    assert_eq!(s.hand_back("sup-1", &[wrong]).await.unwrap(), 0);
    // The row holds no start time while it runs: the hand-back carries the worker's.
    let worker_start = chrono::DateTime::parse_from_rfc3339("2026-12-06T01:02:03.456789Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let cut_back = HandBack {
        started_at: Some(worker_start),
        ..back("cut", true)
    };
    assert_eq!(
        s.hand_back("sup-1", &[back("queued", false), cut_back])
            .await
            .unwrap(),
        2
    );
    let row =
        |id: &'static str| async move { s.show_execution(id).await.unwrap().unwrap().execution };
    let queued = row("queued").await;
    assert_eq!(queued.status.to_string(), "pending");
    assert!(queued.started_at.is_none() && queued.supervisor.is_none());
    assert!(queued.error_type.is_none());
    let cut = row("cut").await;
    assert_eq!(cut.status.to_string(), "pending");
    assert_eq!(cut.started_at, Some(worker_start));
    assert!(cut.supervisor.is_none());
    assert_eq!(cut.error_type.as_deref(), Some("Interrupted"));
    assert!(
        cut.error_message.as_deref().unwrap().contains("attempt 1")
            && cut.error_message.as_deref().unwrap().contains("sup-1"),
        "{:?}",
        cut.error_message
    );
    assert_eq!(row("other").await.status.to_string(), "running");

    let again: Vec<NewExecution> = ["queued", "cut", "other"]
        .iter()
        .map(|id| NewExecution {
            supervisor: "sup-2".to_string(),
            ..new_execution(id, None)
        })
        .collect();
    assert_eq!(
        s.begin_batch(&again).await.unwrap(),
        vec![
            Begin::Run { attempt: 1 },
            Begin::Run { attempt: 2 },
            Begin::Run { attempt: 2 },
        ]
    );
    let cut = row("cut").await;
    assert_eq!(cut.status.to_string(), "running");
    assert!(cut.error_type.is_none(), "the note was the last attempt's");
}

/// The attempt fence covers hand-back: an interrupted row begun again elsewhere is a
/// later attempt, so the cut-off run's outcome (had it reached a writer) is refused;
/// a never-started row keeps its attempt, and the run that takes it up records at it.
#[tokio::test]
async fn handed_back_rows_are_fenced_by_the_attempt_they_are_begun_at() {
    use warden::HandBack;
    let db = TestDb::new().await;
    let s = &db.store;
    let rows: Vec<NewExecution> = ["queued", "cut"]
        .iter()
        .map(|id| NewExecution {
            supervisor: "sup-1".to_string(),
            ..new_execution(id, None)
        })
        .collect();
    s.begin_batch(&rows).await.unwrap();
    let back = |id: &str, started: bool| HandBack {
        id: id.into(),
        stream_id: format!("1-{id}"),
        started,
        started_at: None,
    };
    assert_eq!(
        s.hand_back("sup-1", &[back("queued", false), back("cut", true)])
            .await
            .unwrap(),
        2
    );
    let again: Vec<NewExecution> = ["queued", "cut"]
        .iter()
        .map(|id| NewExecution {
            supervisor: "sup-2".to_string(),
            ..new_execution(id, None)
        })
        .collect();
    assert_eq!(
        s.begin_batch(&again).await.unwrap(),
        vec![Begin::Run { attempt: 1 }, Begin::Run { attempt: 2 }]
    );

    let (writer, mut committed) = Writer::spawn(s.clone(), WriterConfig::default());
    let mut stale = completed("cut", Status::Success, 1, None, None);
    stale.attempt = Some(1);
    writer.submit(stale).await.unwrap();
    let c = committed.recv().await.unwrap();
    assert_eq!(c[0].disposition, Disposition::Superseded);
    let cut = s.show_execution("cut").await.unwrap().unwrap().execution;
    assert_eq!(
        (cut.status, cut.attempt, cut.supervisor.as_deref()),
        (ExecutionStatus::Running, 2, Some("sup-2"))
    );

    for (id, attempt) in [("queued", 1), ("cut", 2)] {
        let mut current = completed(id, Status::Success, 1, None, None);
        current.attempt = Some(attempt);
        writer.submit(current).await.unwrap();
        let c = committed.recv().await.unwrap();
        assert_eq!(c[0].disposition, Disposition::Recorded, "{id}");
        let row = s.show_execution(id).await.unwrap().unwrap().execution;
        assert_eq!(
            (row.status, row.attempt, row.supervisor.as_deref()),
            (ExecutionStatus::Success, attempt, Some("sup-2")),
            "{id}"
        );
    }
}

/// A failed attempt committed with a next attempt leaves the row `retrying`, waiting for
/// attempt 2; only an entry carrying attempt 2 begins it, once: (id, attempt) is the
/// key. A replay of that commit is answered `Retrying` again and writes nothing twice.
#[tokio::test]
async fn a_retrying_row_is_begun_only_by_the_attempt_it_waits_for_once() {
    let db = TestDb::new().await;
    let s = &db.store;
    assert_eq!(
        s.begin_batch(&[new_execution("r", None)]).await.unwrap(),
        [Begin::Run { attempt: 1 }]
    );
    let mut failed = completed("r", Status::Failed, 2, None, None);
    failed.attempt = Some(1);
    failed.retry_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    assert_eq!(
        s.commit_batch([&failed]).await.unwrap(),
        [warden::CommitOutcome::Retrying]
    );
    assert_eq!(
        s.commit_batch([&failed]).await.unwrap(),
        [warden::CommitOutcome::Retrying],
        "a replay is answered the same"
    );
    let d = s.show_execution("r").await.unwrap().unwrap();
    assert_eq!(d.execution.status, ExecutionStatus::Retrying);
    assert_eq!(d.execution.attempt, 2, "it waits for attempt 2");
    assert!(d.execution.next_attempt_at.is_some());
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.logs.len(), 2, "the attempt's logs, once");

    let carrier = |sid: &str, attempt: i32| NewExecution {
        stream_id: Some(sid.to_string()),
        carrier_attempt: Some(attempt),
        ..new_execution("r", None)
    };
    // The original entry again (its acknowledgement was lost), a stale and a future
    // attempt: none runs.
    let again = s
        .begin_batch(&[
            new_execution("r", None),
            carrier("2-0", 1),
            carrier("3-0", 3),
        ])
        .await
        .unwrap();
    assert!(again.iter().all(|b| *b == Begin::Duplicate), "{again:?}");
    // The due attempt, enqueued twice: the first copy runs it, the second does not.
    let due = s
        .begin_batch(&[carrier("4-0", 2), carrier("5-0", 2)])
        .await
        .unwrap();
    assert_eq!(due, [Begin::Run { attempt: 2 }, Begin::Duplicate]);
    let later = s.begin_batch(&[carrier("6-0", 2)]).await.unwrap();
    assert_eq!(
        later,
        [Begin::Duplicate],
        "enqueued again later: runs nothing"
    );
    let d = s.show_execution("r").await.unwrap().unwrap();
    assert_eq!(d.execution.status, ExecutionStatus::Running);
    assert_eq!(
        (d.execution.attempt, d.execution.next_attempt_at),
        (2, None)
    );
    assert_eq!(d.execution.stream_id.as_deref(), Some("4-0"));
}
