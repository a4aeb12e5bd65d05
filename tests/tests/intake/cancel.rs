//! Cancel requests: a cancel made before the supervisor reads the entry (or before it
//! subscribes) is found by the marker check; one made after the listener subscribed
//! arrives on the listener; garbage on the channel is ignored; a lost subscription
//! comes back and says so.

use std::collections::HashSet;
use std::time::Duration;

use warden::{
    request_cancel, CancelListener, CancelSignal, ExecutionRequest, IntakeError, WorkflowRef,
};
use warden_tests::redis::TestRedis;

async fn next_signal(listener: &mut CancelListener) -> CancelSignal {
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a cancel signal within 5 s")
        .expect("listener alive")
}

#[tokio::test]
async fn a_cancel_before_the_entry_is_read_is_found_by_the_marker_check() {
    let t = TestRedis::new();
    let client = t.client().await;
    client
        .submit(&ExecutionRequest::new("e-queued", WorkflowRef::Id(1)))
        .await
        .expect("submit");
    client.cancel("e-queued").await.expect("cancel");

    // The supervisor starts only now, reads the entry, and checks before dispatch.
    let intake = t.intake("sup-a").await;
    let entries = intake.read(10, Duration::ZERO).await.expect("read");
    let ids: Vec<String> = entries
        .iter()
        .map(|e| e.parse().expect("valid").execution_id.into_string())
        .collect();
    assert_eq!(ids, vec!["e-queued"]);
    let flags = intake
        .is_cancelled(&["e-queued", "e-other", "e-queued"])
        .await
        .expect("check");
    assert_eq!(flags, vec![true, false, true]);
    assert!(intake
        .is_cancelled(&[] as &[&str])
        .await
        .expect("empty")
        .is_empty());

    // The marker expires on its own, a day later.
    let ttl: i64 = redis::cmd("TTL")
        .arg(t.keys().cancelled("e-queued"))
        .query_async(&mut t.conn().await)
        .await
        .expect("TTL");
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn a_cancel_after_subscribing_reaches_the_listener() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let mut listener = intake.cancel_listener().await.expect("listen");
    // `request_cancel` works on any connection, not just the client's.
    let mut conn = t.conn().await;
    request_cancel(&mut conn, &t.keys(), "e-running")
        .await
        .expect("cancel");
    assert_eq!(
        next_signal(&mut listener).await,
        CancelSignal::Cancel("e-running".into())
    );
    // ... and the marker is there too.
    assert_eq!(
        intake.is_cancelled(&["e-running"]).await.expect("check"),
        vec![true]
    );
}

#[tokio::test]
async fn a_cancel_before_subscribing_is_still_seen() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    client.cancel("e-early").await.expect("cancel");
    let mut listener = intake.cancel_listener().await.expect("listen");
    client.cancel("e-late").await.expect("cancel");
    // The listener only hears the late one (pub/sub has no memory) ...
    assert_eq!(
        next_signal(&mut listener).await,
        CancelSignal::Cancel("e-late".into())
    );
    assert!(listener.try_recv().is_none());
    // ... but the marker check sees both.
    let flags = intake
        .is_cancelled(&["e-early", "e-late"])
        .await
        .expect("check");
    assert_eq!(flags, vec![true, true]);
}

#[tokio::test]
async fn garbage_on_the_cancel_channel_is_ignored() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let mut listener = intake.cancel_listener().await.expect("listen");
    let mut conn = t.conn().await;
    for payload in [&b"has space"[..], b"", b"\xff\xfe", &[b'x'; 500]] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(t.keys().cancel_channel())
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
    }
    request_cancel(&mut conn, &t.keys(), "e-ok")
        .await
        .expect("cancel");
    assert_eq!(
        next_signal(&mut listener).await,
        CancelSignal::Cancel("e-ok".into())
    );
}

#[tokio::test]
async fn cancelling_an_invalid_id_is_refused() {
    let t = TestRedis::new();
    let client = t.client().await;
    for bad in ["", "has space", "a/b"] {
        match client.cancel(bad).await {
            Err(IntakeError::InvalidExecutionId { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn two_supervisors_both_hear_a_cancel() {
    // Whoever runs the execution must hear it; the others ignore an id they don't run.
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    let mut la = a.cancel_listener().await.expect("listen a");
    let mut lb = b.cancel_listener().await.expect("listen b");
    t.client().await.cancel("e-x").await.expect("cancel");
    assert_eq!(
        next_signal(&mut la).await,
        CancelSignal::Cancel("e-x".into())
    );
    assert_eq!(
        next_signal(&mut lb).await,
        CancelSignal::Cancel("e-x".into())
    );
}

/// Ids of the pub/sub connections currently open on the server.
async fn pubsub_client_ids(t: &TestRedis) -> HashSet<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut t.conn().await)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| line.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_listener_resubscribes_after_its_connection_is_killed() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let before = pubsub_client_ids(&t).await;
    let mut listener = intake.cancel_listener().await.expect("listen");
    let after = pubsub_client_ids(&t).await;
    let new: Vec<_> = after.difference(&before).cloned().collect();
    if new.len() != 1 {
        // Another test opened a pub/sub connection at the same moment: we cannot tell
        // which one is ours, and must not kill someone else's.
        eprintln!(
            "skipping: {} new pub/sub connections, cannot identify ours",
            new.len()
        );
        return;
    }
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&new[0])
        .query_async(&mut t.conn().await)
        .await
        .map(|_: i64| ())
        .expect("CLIENT KILL");
    assert_eq!(next_signal(&mut listener).await, CancelSignal::Resubscribed);
    t.client().await.cancel("e-after").await.expect("cancel");
    assert_eq!(
        next_signal(&mut listener).await,
        CancelSignal::Cancel("e-after".into())
    );
}
