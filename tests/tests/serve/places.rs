//! Intake places: the supervisor holds one place (a permit) per execution it took from
//! the stream, and every way an execution ends gives it back exactly once. With two
//! workers and no prefetch, a lost place shows at once: two executions no longer run
//! side by side. The report at stop counts the places still free.

use std::time::Duration;

use warden::Status;
use warden_tests::serve::TestServe;

const SLEEP: &str = "import time\ndef run(s):\n    time.sleep(s)\n    return s\n";

fn two_places(c: &mut warden::ServeConfig) {
    c.pool.workers = 2;
    c.prefetch = 0;
}

/// Both places are free: two requests submitted together run side by side (with one
/// place lost, the second is read only after the first ended).
async fn assert_both_places_free(s: &TestServe, tag: &str) {
    let slug: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (a, b) = (format!("{slug}-pa"), format!("{slug}-pb"));
    let wa = s
        .client
        .wait_for_completion(&a, Duration::from_secs(60))
        .await
        .unwrap();
    let wb = s
        .client
        .wait_for_completion(&b, Duration::from_secs(60))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request(&a, "sleep", r#"{"s": 0.6}"#))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request(&b, "sleep", r#"{"s": 0.6}"#))
        .await
        .unwrap();
    assert_eq!(wa.completion().await.unwrap().status, Status::Success);
    assert_eq!(wb.completion().await.unwrap().status, Status::Success);
    let ra =
        s.db.store
            .show_execution(&a)
            .await
            .unwrap()
            .unwrap()
            .execution;
    let rb =
        s.db.store
            .show_execution(&b)
            .await
            .unwrap()
            .unwrap()
            .execution;
    let (sa, ea) = (ra.started_at.unwrap(), ra.completed_at.unwrap());
    let (sb, eb) = (rb.started_at.unwrap(), rb.completed_at.unwrap());
    assert!(
        sa < eb && sb < ea,
        "after {tag}: the two executions did not run side by side \
         ({a}: {sa}..{ea}, {b}: {sb}..{eb}): an intake place was not given back"
    );
}

async fn wait_running(s: &TestServe, id: &str) {
    for _ in 0..500 {
        if let Some(d) = s.db.store.show_execution(id).await.unwrap() {
            if d.execution.status.to_string() == "running" {
                // Dispatched by now (the row is marked before dispatch).
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} never started");
}

#[tokio::test]
async fn every_kind_of_end_gives_its_place_back() {
    let mut s = TestServe::start(two_places).await;
    s.push("sleep", SLEEP, None).await;
    s.push("fails", "def run():\n    raise ValueError('no')\n", None)
        .await;
    s.push(
        "spin",
        "def run():\n    while True: pass\n",
        Some(Duration::from_millis(500)),
    )
    .await;
    assert_both_places_free(&s, "start").await;

    let c = s.run("ok-1", "sleep", r#"{"s": 0}"#).await;
    assert_eq!(c.status, Status::Success);
    assert_both_places_free(&s, "success").await;

    let c = s.run("fail-1", "fails", "{}").await;
    assert_eq!(c.status, Status::Failed);
    assert_both_places_free(&s, "failure").await;

    let c = s.run("slow-1", "spin", "{}").await;
    assert_eq!(c.status, Status::Timeout);
    assert_both_places_free(&s, "timeout").await;

    // Cancelled while running.
    let running = s
        .client
        .wait_for_completion("run-1", Duration::from_secs(60))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("run-1", "sleep", r#"{"s": 30}"#))
        .await
        .unwrap();
    wait_running(&s, "run-1").await;
    s.client.cancel("run-1").await.unwrap();
    assert_eq!(
        running.completion().await.unwrap().status,
        Status::Cancelled
    );
    assert_both_places_free(&s, "cancel of a running execution").await;

    // Cancelled before it was read: never runs.
    s.client.cancel("queued-1").await.unwrap();
    let c = s.run("queued-1", "sleep", r#"{"s": 30}"#).await;
    assert_eq!(c.status, Status::Cancelled);
    assert_both_places_free(&s, "cancel of a queued execution").await;

    // Malformed entries, with an id and without; an unknown workflow.
    s.redis
        .add_to_stream(&[("id", "bad-1"), ("workflow", "sleep"), ("params", "[1, 2]")])
        .await;
    assert_eq!(s.wait_terminal("bad-1").await, "failed");
    s.redis.add_to_stream(&[("garbage", "\u{1}")]).await;
    let c = s.run("nope-1", "no-such-flow", "{}").await;
    assert_eq!(c.status, Status::Failed);
    assert_both_places_free(&s, "malformed entries and an unknown workflow").await;

    // A duplicate id: twice together, once more while it runs, once after it ended.
    let req = TestServe::request("dup-1", "sleep", r#"{"s": 0.5}"#);
    s.client.submit(&req).await.unwrap();
    s.client.submit(&req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.client.submit(&req).await.unwrap();
    assert_eq!(s.wait_terminal("dup-1").await, "success");
    assert_eq!(
        s.run("dup-1", "sleep", r#"{"s": 0.5}"#).await.status,
        Status::Success
    );
    assert_both_places_free(&s, "duplicates").await;

    // Still running at shutdown: drained, then the places are counted.
    s.client
        .submit(&TestServe::request("last-1", "sleep", r#"{"s": 0.3}"#))
        .await
        .unwrap();
    let report = s.stop().await;
    assert_eq!(report.places, 2);
    assert_eq!(
        report.places_free_at_stop, report.places,
        "every place is free after stop: {report:?}"
    );
}

/// An entry read again while its execution runs (here: the consumer group vanished,
/// was re-created from the start of the stream, and the entry was delivered again) is
/// dispatched again; the second run's end finds its id no longer in flight and must
/// still give its place back.
#[tokio::test]
async fn an_end_of_an_id_no_longer_in_flight_gives_its_place_back() {
    let mut s = TestServe::start(two_places).await;
    s.push("sleep", SLEEP, None).await;
    let waiter = s
        .client
        .wait_for_completion("long-1", Duration::from_secs(60))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("long-1", "sleep", r#"{"s": 2}"#))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.db.store.show_execution("long-1").await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "long-1 never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The group vanishes while long-1 runs: the reader re-creates it from id 0 and
    // reads long-1's entry again.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(s.redis.keys().stream())
        .arg(s.redis.keys().group())
        .query_async(&mut s.redis.conn().await)
        .await
        .unwrap();
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Success);
    let d = s.db.store.show_execution("long-1").await.unwrap().unwrap();
    assert!(
        d.execution.attempt >= 2,
        "the entry was taken up again while it ran (attempt {})",
        d.execution.attempt
    );
    // Let the second run end.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_both_places_free(&s, "an end of an id no longer in flight").await;
    let report = s.stop().await;
    assert_eq!(
        report.places_free_at_stop, report.places,
        "every place is free after stop: {report:?}"
    );
}
