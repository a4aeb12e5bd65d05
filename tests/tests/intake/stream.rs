//! The execution stream and its consumer group against a real Redis: read limits,
//! at-least-once delivery (pending entries of a dead consumer are taken over, those of a
//! live one and acknowledged ones are not),
//! self-healing after the stream vanishes, work sharing between consumers, publishing
//! after acknowledgement, and the number of Redis round trips per batch.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use warden::{Completion, Done, Entry, ExecutionRequest, Heartbeat, Intake, WorkflowRef};
use warden::{ExecutionOutcome, Status};
use warden_tests::redis::TestRedis;

fn requests(n: usize, tag: &str) -> Vec<ExecutionRequest> {
    (0..n)
        .map(|i| {
            let mut r = ExecutionRequest::new(format!("{tag}-{i}"), WorkflowRef::Id(1));
            r.params_json = format!(r#"{{"i": {i}}}"#);
            r
        })
        .collect()
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.stream_id.clone()).collect()
}

fn ack_only(entries: &[Entry]) -> Vec<Done> {
    entries
        .iter()
        .map(|e| Done {
            stream_id: e.stream_id.clone(),
            completion: None,
        })
        .collect()
}

fn success(execution_id: &str, result: &str) -> ExecutionOutcome {
    ExecutionOutcome {
        execution_id: execution_id.into(),
        status: Status::Success,
        result_json: Some(result.to_owned()),
        error: None,
        started_at: Some(SystemTime::now()),
        finished_at: SystemTime::now(),
        duration: Duration::from_millis(3),
        peak_memory_bytes: 0,
        cpu_seconds: 0.0,
        exit_code: None,
        exit_signal: None,
        logs_dropped: 0,
        sdk_writes_json: String::new(),
    }
}

async fn xlen(t: &TestRedis) -> u64 {
    redis::cmd("XLEN")
        .arg(t.keys().stream())
        .query_async(&mut t.conn().await)
        .await
        .expect("XLEN")
}

#[tokio::test]
async fn reads_never_return_more_than_asked() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    t.client()
        .await
        .submit_many(&requests(100, "e"))
        .await
        .expect("submit");

    assert!(intake
        .read(0, Duration::ZERO)
        .await
        .expect("read 0")
        .is_empty());
    let mut seen = HashSet::new();
    for max in [1, 7, 13, 50, 1000] {
        let got = intake.read(max, Duration::ZERO).await.expect("read");
        assert!(got.len() <= max, "asked {max}, got {}", got.len());
        for e in &got {
            assert!(
                seen.insert(e.stream_id.clone()),
                "{} read twice",
                e.stream_id
            );
        }
    }
    assert_eq!(seen.len(), 100);
    // Drained: a non-blocking read is empty, a blocking one waits about its block.
    assert!(intake
        .read(10, Duration::ZERO)
        .await
        .expect("read")
        .is_empty());
    let started = Instant::now();
    assert!(intake
        .read(10, Duration::from_millis(100))
        .await
        .expect("read")
        .is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_blocking_read_wakes_up_for_a_new_entry() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    let reader = tokio::spawn({
        let intake = intake.clone();
        async move { intake.read(10, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    client
        .submit_many(&requests(1, "late"))
        .await
        .expect("submit");
    // A blocking read on its own connection must not delay the writer connection.
    intake.publish_logs(&[], &[]).await.expect("no-op");
    intake
        .ack_and_publish(&[Done {
            stream_id: "0-1".into(),
            completion: None,
        }])
        .await
        .expect("ack while blocked");
    let got = reader.await.expect("join").expect("read");
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

const TTL: Duration = Duration::from_millis(900);

/// XINFO CONSUMERS names of the group.
async fn consumer_names(t: &TestRedis) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(t.keys().stream())
        .arg(t.keys().group())
        .query_async(&mut t.conn().await)
        .await
        .expect("XINFO CONSUMERS");
    let mut names: Vec<String> = reply.consumers.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn unacked_entries_of_a_dead_consumer_are_taken_over_acked_ones_are_not() {
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    let a_beat = Heartbeat::start(&a, TTL).await.expect("a's heartbeat");
    let _b_beat = Heartbeat::start(&b, TTL).await.expect("b's heartbeat");
    t.client()
        .await
        .submit_many(&requests(10, "e"))
        .await
        .expect("submit");

    let read = a.read(10, Duration::ZERO).await.expect("read");
    assert_eq!(read.len(), 10);
    let (acked, unacked) = read.split_at(4);
    a.ack_and_publish(&ack_only(acked)).await.expect("ack");

    // a lives (well past the TTL: its heartbeat task refreshes it): nothing to take,
    // however long its entries have been idle.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t = b.take_over(100).await.expect("take over");
        assert!(t.entries.is_empty() && t.from.is_empty(), "{t:?}");
    }

    // a stops cleanly: its heartbeat is deleted, its entries are taken at once.
    a_beat.stop().await;
    let taken = b.take_over(100).await.expect("take over");
    assert!(!taken.more);
    assert_eq!(taken.from, vec![("sup-a".to_owned(), 6)]);
    let mut got = ids(&taken.entries);
    got.sort();
    let mut want = ids(unacked);
    want.sort();
    assert_eq!(
        got, want,
        "exactly the unacknowledged entries move to sup-b"
    );
    // They carry their fields.
    assert_eq!(
        taken.entries[0].parse().expect("valid").workflow,
        WorkflowRef::Id(1)
    );
    let backlog = b.stream_backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 6);
    let b_pending = backlog
        .consumers
        .iter()
        .find(|c| c.name == "sup-b")
        .map(|c| c.pending);
    assert_eq!(b_pending, Some(6));

    // A dead consumer never takes from a live one, nor from itself.
    let back = a.take_over(100).await.expect("take over");
    assert!(back.entries.is_empty(), "{back:?}");

    // The dead consumer, now with nothing pending, is removed from the group.
    let again = b.take_over(100).await.expect("take over");
    assert!(again.entries.is_empty());
    assert_eq!(again.forgotten, 1);
    assert_eq!(consumer_names(&t).await, vec!["sup-b"]);

    b.ack_and_publish(&ack_only(&taken.entries))
        .await
        .expect("ack");
    let backlog = b.stream_backlog().await.expect("backlog");
    assert_eq!(
        (backlog.length, backlog.pending),
        (0, 0),
        "acked entries are deleted"
    );
}

#[tokio::test]
async fn an_expired_heartbeat_counts_as_dead_and_take_over_respects_max() {
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    let a_beat = Heartbeat::start(&a, TTL).await.expect("a's heartbeat");
    let _b_beat = Heartbeat::start(&b, TTL).await.expect("b's heartbeat");
    t.client()
        .await
        .submit_many(&requests(30, "e"))
        .await
        .expect("submit");
    assert_eq!(a.read(30, Duration::ZERO).await.expect("read").len(), 30);
    // a dies without a word (its refreshes stop, the key expires).
    drop(a_beat);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let t = b.take_over(12).await.expect("take over");
        if !t.entries.is_empty() {
            break t;
        }
        assert!(Instant::now() < deadline, "a's heartbeat never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.entries.len(), 12);
    assert!(first.more, "18 are left for the next pass");
    let rest = b.take_over(100).await.expect("take over");
    assert_eq!(rest.entries.len(), 18);
    assert!(!rest.more);
}

#[tokio::test]
async fn a_consumer_without_a_heartbeat_of_its_own_takes_nothing() {
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    t.client()
        .await
        .submit_many(&requests(5, "e"))
        .await
        .expect("submit");
    assert_eq!(a.read(5, Duration::ZERO).await.expect("read").len(), 5);
    // Neither has a heartbeat: b must not claim (it may be lapsing itself).
    let t1 = b.take_over(100).await.expect("take over");
    assert!(t1.entries.is_empty(), "{t1:?}");
    let _b_beat = Heartbeat::start(&b, TTL).await.expect("b's heartbeat");
    assert_eq!(b.take_over(100).await.expect("take over").entries.len(), 5);
}

#[tokio::test]
async fn taken_over_names_the_entries_now_pending_elsewhere() {
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    let _b_beat = Heartbeat::start(&b, TTL).await.expect("b's heartbeat");
    t.client()
        .await
        .submit_many(&requests(6, "e"))
        .await
        .expect("submit");
    let mine = ids(&a.read(3, Duration::ZERO).await.expect("read"));
    // a has no heartbeat: b takes its 3; then a reads 3 more, which stay a's.
    assert_eq!(b.take_over(100).await.expect("take over").entries.len(), 3);
    let still = ids(&a.read(3, Duration::ZERO).await.expect("read"));
    let mut all = mine.clone();
    all.extend(still.clone());
    all.push("1-1".to_owned()); // never existed: pending nowhere, not reported
    let mut taken = a.taken_over(&all).await.expect("check");
    taken.sort();
    let mut want = mine.clone();
    want.sort();
    assert_eq!(taken, want);

    // Gone for good: not pending and deleted. The others are still pending.
    let mut check = still.clone();
    check.push("1-1".to_owned());
    assert_eq!(
        a.entries_gone(&check).await.expect("gone?"),
        vec![false, false, false, true]
    );
    a.ack_and_publish(&ack_only_ids(&still)).await.expect("ack");
    assert_eq!(
        a.entries_gone(&still).await.expect("gone?"),
        vec![true, true, true]
    );
}

fn ack_only_ids(ids: &[String]) -> Vec<Done> {
    ids.iter()
        .map(|id| Done {
            stream_id: id.clone(),
            completion: None,
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_supervisor_recovers_what_it_left_pending() {
    let t = TestRedis::new();
    t.client()
        .await
        .submit_many(&requests(8, "e"))
        .await
        .expect("submit");
    let before = {
        let a = t.intake("sup-a").await;
        let got = a.read(5, Duration::ZERO).await.expect("read");
        ids(&got)
        // `a` dies here without acknowledging.
    };
    // Meanwhile someone deletes one of its entries from the stream.
    t.delete_from_stream(&before[0]).await;

    let a2 = t.intake("sup-a").await;
    let recovered = a2.recover_own(100).await.expect("recover");
    assert_eq!(
        ids(&recovered),
        before[1..],
        "same entries, in order, without waiting for idle; the deleted one is skipped"
    );
    let backlog = a2.stream_backlog().await.expect("backlog");
    assert_eq!(
        backlog.pending, 4,
        "the deleted entry's pending id was acknowledged"
    );
    // A small max returns a prefix.
    assert_eq!(a2.recover_own(2).await.expect("recover").len(), 2);
    // New entries are still there for `read`.
    assert_eq!(a2.read(100, Duration::ZERO).await.expect("read").len(), 3);
}

#[tokio::test]
async fn read_heals_after_the_stream_is_deleted() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    client
        .submit_many(&requests(2, "old"))
        .await
        .expect("submit");
    let old = intake.read(10, Duration::ZERO).await.expect("read");
    assert_eq!(old.len(), 2);

    // What FLUSHALL does to us, confined to our prefix.
    let mut conn = t.conn().await;
    let _: () = redis::cmd("DEL")
        .arg(t.keys().stream())
        .query_async(&mut conn)
        .await
        .expect("DEL");

    // A client adds work: XADD re-creates the stream, without the group.
    client
        .submit_many(&requests(3, "new"))
        .await
        .expect("submit");
    let got = intake
        .read(10, Duration::ZERO)
        .await
        .expect("read heals NOGROUP");
    let parsed: Vec<String> = got
        .iter()
        .map(|e| e.parse().expect("valid").execution_id.into_string())
        .collect();
    assert_eq!(parsed, vec!["new-0", "new-1", "new-2"]);
    // Acks of entries from before the wipe are harmless.
    intake
        .ack_and_publish(&ack_only(&old))
        .await
        .expect("stale ack");
    intake.ack_and_publish(&ack_only(&got)).await.expect("ack");

    // Wiped with nothing new: reads and takeover passes keep working (and stay empty).
    let _: () = redis::cmd("DEL")
        .arg(t.keys().stream())
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert!(intake
        .take_over(10)
        .await
        .expect("take over heals")
        .entries
        .is_empty());
    let _: () = redis::cmd("DEL")
        .arg(t.keys().stream())
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert!(intake
        .read(10, Duration::from_millis(20))
        .await
        .expect("read heals")
        .is_empty());
    client
        .submit_many(&requests(1, "after"))
        .await
        .expect("submit");
    assert_eq!(
        intake.read(10, Duration::ZERO).await.expect("read").len(),
        1
    );
}

#[tokio::test]
async fn read_heals_after_the_group_is_destroyed() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    t.client()
        .await
        .submit_many(&requests(4, "e"))
        .await
        .expect("submit");
    let mut conn = t.conn().await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(t.keys().stream())
        .arg(t.keys().group())
        .query_async(&mut conn)
        .await
        .expect("XGROUP DESTROY");
    // The group is re-created from id 0: nothing submitted is lost.
    assert_eq!(
        intake.read(10, Duration::ZERO).await.expect("read").len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_200_entries_without_overlap() {
    let t = TestRedis::new();
    let a = t.intake("sup-a").await;
    let b = t.intake("sup-b").await;
    t.client()
        .await
        .submit_many(&requests(200, "e"))
        .await
        .expect("submit");

    async fn drain(intake: Intake) -> Vec<String> {
        let mut mine = Vec::new();
        loop {
            let got = intake
                .read(9, Duration::from_millis(50))
                .await
                .expect("read");
            if got.is_empty() {
                return mine;
            }
            // Work a little so the other consumer gets a turn.
            tokio::time::sleep(Duration::from_millis(1)).await;
            intake.ack_and_publish(&ack_only(&got)).await.expect("ack");
            mine.extend(
                got.iter()
                    .map(|e| e.parse().expect("valid").execution_id.into_string()),
            );
        }
    }
    let (got_a, got_b) = tokio::join!(tokio::spawn(drain(a)), tokio::spawn(drain(b)));
    let (got_a, got_b) = (got_a.expect("join a"), got_b.expect("join b"));
    let set_a: HashSet<_> = got_a.iter().cloned().collect();
    let set_b: HashSet<_> = got_b.iter().cloned().collect();
    assert_eq!(set_a.len(), got_a.len(), "a saw an entry twice");
    assert_eq!(set_b.len(), got_b.len(), "b saw an entry twice");
    assert!(set_a.is_disjoint(&set_b), "an entry went to both consumers");
    assert_eq!(set_a.len() + set_b.len(), 200);
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both took part: a {} b {}",
        got_a.len(),
        got_b.len()
    );
    assert_eq!(xlen(&t).await, 0);
}

#[tokio::test]
async fn ack_and_publish_reaches_a_subscriber_that_subscribed_first() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    client
        .submit(&ExecutionRequest::new("e-pub", WorkflowRef::Id(1)))
        .await
        .expect("submit");
    let waiter = client
        .wait_for_completion("e-pub", Duration::from_secs(5))
        .await
        .expect("subscribe");

    let entries = intake.read(1, Duration::ZERO).await.expect("read");
    // Not published before the ack: nothing stored yet.
    assert!(client.completion("e-pub").await.expect("get").is_none());
    intake
        .ack_and_publish(&[Done::from_outcome(
            &entries[0].stream_id,
            &success("e-pub", r#"{"total": 3}"#),
        )])
        .await
        .expect("ack and publish");

    let completion = waiter.completion().await.expect("completion");
    assert_eq!(completion.id, "e-pub");
    assert_eq!(completion.status, Status::Success);
    assert_eq!(
        completion.result.map(|r| r.get().to_owned()).as_deref(),
        Some(r#"{"total": 3}"#)
    );
    // Acknowledged and deleted in the same step.
    let backlog = intake.stream_backlog().await.expect("backlog");
    assert_eq!((backlog.length, backlog.pending), (0, 0));
    // And kept for late subscribers.
    let stored = client
        .completion("e-pub")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.status, Status::Success);
}

/// The steady-state path (read a batch, check cancels, ack + publish after commit) costs
/// a fixed number of round trips whatever the batch size; its only per-execution
/// commands are the completion's SET, PUBLISH and PEXPIRE inside the one ack pipeline.
#[tokio::test]
async fn steady_state_round_trips_per_batch_are_constant() {
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    for n in [1usize, 10, 100] {
        client
            .submit_many(&requests(n, &format!("b{n}")))
            .await
            .expect("submit");
        let before = intake.calls();

        let batch = intake
            .read(n, Duration::from_millis(100))
            .await
            .expect("read");
        assert_eq!(batch.len(), n);
        let exec_ids: Vec<String> = batch
            .iter()
            .map(|e| e.parse().expect("valid").execution_id.into_string())
            .collect();
        let cancelled = intake.is_cancelled(&exec_ids).await.expect("cancel check");
        assert!(cancelled.iter().all(|c| !c));
        let done: Vec<Done> = batch
            .iter()
            .zip(&exec_ids)
            .map(|(e, id)| Done::new(&e.stream_id, Completion::new(id, Status::Success)))
            .collect();
        intake.ack_and_publish(&done).await.expect("ack");

        let cost = intake.calls() - before;
        assert_eq!(cost.round_trips, 3, "batch of {n}: {cost:?}");
        // The take script and its XREADGROUP + MGET + XACK + XDEL + the permits' release
        // script, plus SET, PUBLISH and PEXPIRE (its live-log stream) per completion.
        assert_eq!(cost.commands, 6 + 3 * n as u64, "batch of {n}: {cost:?}");
    }
    assert_eq!(xlen(&t).await, 0);
}

#[tokio::test]
async fn backlog_reports_waiting_and_pending() {
    let t = TestRedis::new();
    let before_group = t.client().await.status().await.expect("status");
    assert_eq!(before_group.backlog.length, 0);
    assert!(!before_group.backlog.group_exists);

    let intake = t.intake("sup-a").await;
    t.client()
        .await
        .submit_many(&requests(5, "e"))
        .await
        .expect("submit");
    intake.read(2, Duration::ZERO).await.expect("read");
    let backlog = intake.stream_backlog().await.expect("backlog");
    assert!(backlog.group_exists);
    // The stream holds what was taken; the rest waits in its lane.
    assert_eq!(backlog.length, 2);
    assert_eq!(backlog.pending, 2);
    assert_eq!(backlog.waiting(), 0);
    let lanes = t.client().await.status().await.expect("status").lanes;
    assert_eq!(lanes.len(), 1, "{lanes:?}");
    assert_eq!(lanes[0].lane.queue, "default");
    assert_eq!(lanes[0].lane.org, None);
    assert_eq!(lanes[0].waiting, 3);
    assert_eq!(backlog.consumers.len(), 1);
    assert_eq!(backlog.consumers[0].name, "sup-a");
    assert_eq!(backlog.consumers[0].pending, 2);
}
