//! The client side: connection errors that say what to do, waiting for a completion
//! with no lost wake-up (before or after the publish), live logs before the
//! completion, and supervisor status with expiry.

use std::time::{Duration, Instant, SystemTime};

use warden::Status;
use warden::{
    Completion, Done, ExecutionRequest, Intake, IntakeClient, IntakeError, Keys, SupervisorStatus,
    WaitEvent, WorkflowRef,
};
use warden_protocol::{Log, LogLevel};
use warden_tests::redis::TestRedis;

fn log(execution_id: &str, seq: u32, message: &str) -> Log {
    Log {
        execution_id: execution_id.to_owned(),
        seq,
        timestamp_us: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
        level: LogLevel::Info,
        message: message.to_owned(),
    }
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    let started = Instant::now();
    let err = Intake::connect("redis://127.0.0.1:1", Keys::new("t:x:"), "sup")
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.contains("redis://127.0.0.1:1"), "{text}");
    assert!(text.contains("Is Redis running"), "{text}");
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let err = IntakeClient::connect("redis://:secret@127.0.0.1:1", Keys::new("t:x:"))
        .await
        .expect_err("unreachable");
    assert!(
        !err.to_string().contains("secret"),
        "password leaked: {err}"
    );

    match Intake::connect("not a url", Keys::new("t:x:"), "sup").await {
        Err(IntakeError::InvalidUrl { .. }) => {}
        other => panic!("{other:?}"),
    }
    let t = TestRedis::new();
    match Intake::connect(&t.url, t.keys(), "has space").await {
        Err(IntakeError::InvalidConsumer { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn waiting_after_the_completion_was_published_still_gets_it() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    client
        .submit(&ExecutionRequest::new("e-fast", WorkflowRef::Id(1)))
        .await
        .expect("submit");
    let entries = intake.read(1, Duration::ZERO).await.expect("read");
    intake
        .ack_and_publish(&[Done::new(
            &entries[0].stream_id,
            Completion::new("e-fast", Status::Cancelled),
        )])
        .await
        .expect("ack");

    // The client only starts waiting now.
    let started = Instant::now();
    let mut waiter = client
        .wait_for_completion("e-fast", Duration::from_secs(5))
        .await
        .expect("wait");
    match waiter.next().await.expect("next") {
        Some(WaitEvent::Completed(c)) => assert_eq!(c.status, Status::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(waiter.next().await.expect("after").is_none());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn logs_arrive_in_order_then_the_completion() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    client
        .submit(&ExecutionRequest::new("e-logs", WorkflowRef::Id(1)))
        .await
        .expect("submit");
    let mut waiter = client
        .wait_for_completion("e-logs", Duration::from_secs(5))
        .await
        .expect("wait");

    let entries = intake.read(1, Duration::ZERO).await.expect("read");
    intake
        .publish_logs(
            &[
                log("e-logs", 0, "one"),
                log("e-other", 0, "not mine"),
                log("e-logs", 1, "two"),
            ],
            &[],
        )
        .await
        .expect("logs");
    intake
        .publish_logs(&[log("e-logs", 2, "three")], &[])
        .await
        .expect("logs");
    intake
        .ack_and_publish(&[Done::new(
            &entries[0].stream_id,
            Completion::new("e-logs", Status::Success),
        )])
        .await
        .expect("ack");

    let mut lines = Vec::new();
    loop {
        match waiter.next().await.expect("next") {
            Some(WaitEvent::Log(line)) => {
                assert_eq!(line.level, "info");
                assert!(line.ts > 0);
                lines.push((line.seq, line.message));
            }
            Some(WaitEvent::Completed(c)) => {
                assert_eq!(c.status, Status::Success);
                break;
            }
            None => panic!("ended without a completion"),
        }
    }
    assert_eq!(
        lines,
        vec![
            (0, "one".to_owned()),
            (1, "two".to_owned()),
            (2, "three".to_owned())
        ]
    );
}

#[tokio::test]
async fn waiting_gives_up_at_the_deadline() {
    let t = TestRedis::new();
    let client = t.client().await;
    let started = Instant::now();
    let mut waiter = client
        .wait_for_completion("e-never", Duration::from_millis(150))
        .await
        .expect("wait");
    match waiter.next().await {
        Err(IntakeError::WaitTimedOut { execution_id, .. }) => assert_eq!(execution_id, "e-never"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(140));
}

#[tokio::test]
async fn supervisor_status_is_listed_while_fresh() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    assert!(client.list_supervisors().await.expect("list").is_empty());

    let mut status = SupervisorStatus::for_this_process("sup-a", 4);
    status.workers_busy = 3;
    status.executions_completed = 1234;
    status.executions_per_sec = 56.5;
    intake.publish_status(&status).await.expect("publish");

    let listed = client.list_supervisors().await.expect("list");
    assert_eq!(listed, vec![status.clone()]);
    let mut conn = t.conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(t.keys().supervisor_status("sup-a"))
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!((1..=5).contains(&ttl), "ttl {ttl}");

    // A member whose status expired (a dead supervisor) is not listed, and is pruned.
    let _: i64 = redis::cmd("SADD")
        .arg(t.keys().supervisors())
        .arg("ghost")
        .query_async(&mut conn)
        .await
        .expect("SADD");
    let overview = client.status().await.expect("status");
    assert_eq!(overview.supervisors.len(), 1);
    assert!(overview.backlog.group_exists);
    let ghost: bool = redis::cmd("SISMEMBER")
        .arg(t.keys().supervisors())
        .arg("ghost")
        .query_async(&mut conn)
        .await
        .expect("SISMEMBER");
    assert!(!ghost);

    intake.retire_status().await.expect("retire");
    assert!(client.list_supervisors().await.expect("list").is_empty());
}
