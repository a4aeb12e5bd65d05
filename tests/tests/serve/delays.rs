//! Delayed executions: a request with `not_before` in the future (`warden submit --in`,
//! `--at`, or the stream field) is recorded `scheduled` and its entry acknowledged; the
//! due-work poller (supervisor/src/serve/due.rs) starts it when it is due, once; it can
//! be cancelled before it starts.

use std::path::Path;
use std::time::{Duration, Instant};

use warden::Status;
use warden_tests::cli::{ok, warden};
use warden_tests::db::TestDb;
use warden_tests::serve::TestServe;

const QUICK: &str = "def run():\n    return 1\n";

async fn status_of(db: &TestDb, id: &str) -> String {
    db.store
        .execution_status(id)
        .await
        .unwrap()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn stream_len(s: &TestServe) -> u64 {
    redis::cmd("XLEN")
        .arg(s.redis.keys().stream())
        .query_async(&mut s.redis.conn().await)
        .await
        .unwrap()
}

/// `warden submit --in 2s`: `scheduled` (its entry acknowledged) until due, then run
/// once, not before its time; a `not_before` in the past runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_execution_waits_scheduled_then_runs_once() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("quick", QUICK, None).await;
    let submitted = chrono::Utc::now();
    let waiter = s
        .client
        .wait_for_completion("later", Duration::from_secs(30))
        .await
        .unwrap();
    ok(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &["submit", "quick", "--in", "2s", "--id", "later"],
    ));
    wait_for("scheduled", Duration::from_secs(10), async || {
        status_of(&s.db, "later").await == "scheduled"
    })
    .await;
    wait_for(
        "its entry acknowledged",
        Duration::from_secs(10),
        async || stream_len(&s).await == 0,
    )
    .await;
    let show = ok(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &["executions", "show", "later"],
    ));
    assert!(show.contains("status:    scheduled"), "{show}");
    assert!(show.contains("starts at"), "{show}");
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Success);
    let d = s.db.store.show_execution("later").await.unwrap().unwrap();
    let started = d.execution.started_at.expect("started");
    assert!(
        (started - submitted).num_milliseconds() >= 1_900,
        "started {} ms after submission",
        (started - submitted).num_milliseconds()
    );
    assert_eq!(d.execution.attempt, 1);
    assert_eq!(d.attempts.len(), 1);

    let mut past = TestServe::request("past", "quick", "{}");
    past.not_before = Some(chrono::Utc::now() - chrono::Duration::seconds(60));
    let waiter = s
        .client
        .wait_for_completion("past", Duration::from_secs(30))
        .await
        .unwrap();
    s.client.submit(&past).await.unwrap();
    assert_eq!(waiter.completion().await.unwrap().status, Status::Success);
    let report = s.stop().await;
    assert_eq!(report.executions, 2, "{report:?}");
}

/// A scheduled execution cancelled before it starts ends `cancelled` at once and never
/// runs; `--at` takes an RFC 3339 time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_execution_can_be_cancelled_before_it_starts() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("quick", QUICK, None).await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    ok(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &["submit", "quick", "--at", &at, "--id", "tomorrow"],
    ));
    wait_for("scheduled", Duration::from_secs(10), async || {
        status_of(&s.db, "tomorrow").await == "scheduled"
    })
    .await;
    let waiter = s
        .client
        .wait_for_completion("tomorrow", Duration::from_secs(30))
        .await
        .unwrap();
    ok(warden(
        &s.db,
        &s.redis,
        Path::new("."),
        &["cancel", "tomorrow"],
    ));
    assert_eq!(waiter.completion().await.unwrap().status, Status::Cancelled);
    assert_eq!(status_of(&s.db, "tomorrow").await, "cancelled");
    let report = s.stop().await;
    assert_eq!(report.executions, 0, "never ran: {report:?}");
}
