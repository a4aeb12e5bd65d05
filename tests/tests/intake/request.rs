//! The stream entry format end to end: what clients write with `XADD` is what the
//! supervisor parses, and every malformed entry (written raw, the way a buggy client
//! in another language would) becomes an `InvalidEntry` with a clear reason, lands in the
//! dead-letter stream with its raw fields, and is then acknowledged and deleted.

use std::time::Duration;

use redis::{streams::StreamRangeReply, Value};
use warden::Status;
use warden::{Done, ExecutionRequest, WorkflowRef};
use warden_tests::redis::TestRedis;

/// Adds one entry with arbitrary (possibly non-UTF-8) fields, bypassing validation.
async fn xadd_raw(t: &TestRedis, fields: &[(&[u8], &[u8])]) -> String {
    t.add_to_stream(fields).await
}

#[tokio::test]
async fn a_valid_request_round_trips_through_the_stream() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    let mut req = ExecutionRequest::new("exec-1", WorkflowRef::Name("reports/daily".into()));
    req.params_json = r#"{"day": "2024-01-02", "ids": [1, 2, 3], "nested": {"ok": true}}"#.into();
    req.org = Some("acme".into());
    req.caller = Some("user:7".into());
    req.timeout = Some(Duration::from_millis(1500));
    req.delivery_id = Some("dlv-1".into());
    let lane_id = client.submit(&req).await.expect("submit");

    let entries = intake.read(10, Duration::ZERO).await.expect("read");
    assert_eq!(entries.len(), 1);
    // Taken from its lane into the stream (a new id there); the entry says when it was
    // submitted: its lane id.
    let mut parsed = entries[0].parse().expect("valid");
    assert_eq!(
        parsed.enqueued_at,
        lane_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        "lane id {lane_id}"
    );
    assert!(parsed.enqueued_at.is_some());
    parsed.enqueued_at = None;
    assert_eq!(parsed, req);

    // A numeric workflow comes back as an id.
    let req2 = ExecutionRequest::new("exec-2", WorkflowRef::Id(42));
    client.submit(&req2).await.expect("submit");
    let entries = intake.read(10, Duration::ZERO).await.expect("read");
    assert_eq!(
        entries[0].parse().expect("valid").workflow,
        WorkflowRef::Id(42)
    );
}

/// Raw fields, the execution id the rejection should still carry, part of the reason.
type Case<'a> = (Vec<(&'a [u8], &'a [u8])>, Option<&'a str>, &'a str);

#[tokio::test]
async fn malformed_entries_are_rejected_with_a_reason() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let long_id = "x".repeat(129);
    let cases: Vec<Case> = vec![
        (
            vec![(b"garbage", b"\x00\x01\x02")],
            None,
            "missing field `id`",
        ),
        (vec![(b"workflow", b"1")], None, "missing field `id`"),
        (
            vec![(b"id", b"e-nowf")],
            Some("e-nowf"),
            "missing field `workflow`",
        ),
        (
            vec![
                (b"id", b"e-arr"),
                (b"workflow", b"1"),
                (b"params", b"[1,2]"),
            ],
            Some("e-arr"),
            "params is not a JSON object: expected `{...}`, got `[1,2]`",
        ),
        (
            vec![
                (b"id", b"e-json"),
                (b"workflow", b"1"),
                (b"params", b"{\"a\": tru"),
            ],
            Some("e-json"),
            "params is not valid JSON",
        ),
        (
            vec![(b"id", long_id.as_bytes()), (b"workflow", b"1")],
            None,
            "the maximum is 128",
        ),
        (
            vec![(b"id", b"bad id"), (b"workflow", b"1")],
            None,
            "has the character ' '",
        ),
        (
            vec![(b"id", b"e-utf"), (b"workflow", b"\xff\xfe")],
            Some("e-utf"),
            "field `workflow` is not valid UTF-8",
        ),
        (
            vec![(b"id", b"e-to"), (b"workflow", b"1"), (b"timeout", b"-3")],
            Some("e-to"),
            "field `timeout` must be a number of seconds",
        ),
        (
            vec![(b"\xff\xff", b"\xff"), (b"\x00", b"")],
            None,
            "missing field `id`",
        ),
    ];
    let mut expected = Vec::new();
    for (fields, id, reason) in &cases {
        let sid = xadd_raw(&t, fields).await;
        expected.push((sid, *id, *reason));
    }

    let entries = intake
        .read(100, Duration::ZERO)
        .await
        .expect("read garbage");
    assert_eq!(
        entries.len(),
        cases.len(),
        "every entry is read, none poisons the batch"
    );
    for (entry, (sid, id, reason)) in entries.iter().zip(&expected) {
        assert_eq!(&entry.stream_id, sid);
        let rejected = entry.parse().expect_err("should be rejected");
        assert_eq!(&rejected.stream_id, sid);
        assert_eq!(
            rejected.execution_id.as_ref().map(|i| i.as_str()),
            *id,
            "{}",
            rejected.reason
        );
        assert!(
            rejected.reason.contains(reason),
            "reason {:?} should contain {:?}",
            rejected.reason,
            reason
        );
    }
}

#[tokio::test]
async fn dead_letters_keep_the_reason_and_raw_fields_then_the_entry_is_acked() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    let sid = xadd_raw(
        &t,
        &[
            (b"id", b"e-dead"),
            (b"workflow", b"1"),
            (b"params", b"[1]"),
            (b"bin", b"\xff"),
        ],
    )
    .await;

    // The client is waiting for e-dead: it must learn it failed, and why.
    let waiter = client
        .wait_for_completion("e-dead", Duration::from_secs(5))
        .await
        .expect("wait");

    let entries = intake.read(10, Duration::ZERO).await.expect("read");
    let rejected = entries[0].parse().expect_err("rejected");
    intake
        .dead_letter(&rejected, &entries[0].fields)
        .await
        .expect("dead letter");

    let mut conn = t.conn().await;
    let dead: StreamRangeReply = redis::cmd("XRANGE")
        .arg(t.keys().dead_letters())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE dead");
    assert_eq!(dead.ids.len(), 1);
    let letter = &dead.ids[0];
    assert_eq!(
        letter.get::<String>("stream_id").as_deref(),
        Some(sid.as_str())
    );
    assert_eq!(
        letter.get::<String>("execution_id").as_deref(),
        Some("e-dead")
    );
    assert_eq!(letter.get::<String>("consumer").as_deref(), Some("sup-a"));
    let reason: String = letter.get("reason").expect("reason");
    assert!(reason.contains("not a JSON object"), "{reason}");
    assert_eq!(letter.get::<String>("raw.params").as_deref(), Some("[1]"));
    assert_eq!(
        letter.map.get("raw.bin"),
        Some(&Value::BulkString(vec![0xff]))
    );

    // Still pending until its failed row is committed; then acked with the batch.
    let backlog = intake.stream_backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 1);
    intake
        .ack_and_publish(&[Done::rejected(&rejected)])
        .await
        .expect("ack");
    let backlog = intake.stream_backlog().await.expect("backlog");
    assert_eq!((backlog.length, backlog.pending), (0, 0));

    let completion = waiter.completion().await.expect("completion");
    assert_eq!(completion.status, Status::Failed);
    assert_eq!(completion.error_type.as_deref(), Some("InvalidRequest"));
    assert!(completion
        .error_message
        .unwrap_or_default()
        .contains("not a JSON object"));
}

#[tokio::test]
async fn submit_refuses_an_invalid_request_without_writing_it() {
    let t = TestRedis::new();
    let client = t.client().await;
    let mut req = ExecutionRequest::new("e1", WorkflowRef::Id(1));
    req.params_json = "[1,2]".into();
    let err = client.submit(&req).await.expect_err("invalid");
    assert!(err.to_string().contains("not a JSON object"), "{err}");
    let bad_id = ExecutionRequest::new("has space", WorkflowRef::Id(1));
    assert!(client.submit(&bad_id).await.is_err());
    let mut conn = t.conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(t.keys().stream())
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, 0);
}
