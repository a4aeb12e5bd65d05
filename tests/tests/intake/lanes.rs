//! Fair intake against a real Redis (warden::intake::lanes): requests wait in a lane
//! per queue and organization, and one script call hands a consumer the next entries,
//! organizations in turn, queues in priority order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use warden::{Entry, ExecutionRequest, Lane, WorkflowRef};
use warden_tests::redis::TestRedis;

fn request(id: &str, org: Option<&str>, queue: Option<&str>) -> ExecutionRequest {
    let mut r = ExecutionRequest::new(id, WorkflowRef::Id(1));
    r.org = org.map(str::to_owned);
    r.queue = queue.map(str::to_owned);
    r
}

fn many(prefix: &str, n: usize, org: Option<&str>, queue: Option<&str>) -> Vec<ExecutionRequest> {
    (0..n)
        .map(|i| request(&format!("{prefix}{i}"), org, queue))
        .collect()
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.parse().expect("valid").execution_id.into_string())
        .collect()
}

fn per_org(entries: &[Entry]) -> HashMap<Option<String>, usize> {
    let mut out = HashMap::new();
    for e in entries {
        *out.entry(e.parse().expect("valid").org).or_default() += 1;
    }
    out
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|q| q.to_string()).collect()
}

/// A backlog of one organization does not hold up another's: a take shares its places
/// among the organizations with work, and what one cannot use goes to the others.
#[tokio::test]
async fn a_take_shares_its_places_among_organizations() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    client
        .submit_many(&many("a", 1000, Some("big"), None))
        .await
        .expect("submit");
    client
        .submit_many(&many("b", 3, Some("small"), None))
        .await
        .expect("submit");
    let got = intake.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(got.len(), 10);
    let orgs = per_org(&got);
    assert_eq!(orgs[&Some("small".to_owned())], 3, "{orgs:?}");
    assert_eq!(orgs[&Some("big".to_owned())], 7, "{orgs:?}");
    // Each organization's requests keep their order.
    let big: Vec<String> = ids(&got)
        .into_iter()
        .filter(|i| i.starts_with('a'))
        .collect();
    assert_eq!(big, (0..7).map(|i| format!("a{i}")).collect::<Vec<_>>());
    // The taken entries are pending on this consumer, like any read's.
    let backlog = intake.stream_backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 10);
    // The small organization has nothing left: only the big one waits.
    let lanes = client.status().await.expect("status").lanes;
    assert_eq!(lanes.len(), 1, "{lanes:?}");
    assert_eq!(lanes[0].waiting, 993);
}

/// A lane gives its entries in order, each once, however the takes cut it: what a take
/// moves is trimmed off the lane's head (one XTRIM, not one XDEL per entry), and what
/// it leaves stays, down to the last entry, after which the lane is gone.
#[tokio::test]
async fn takes_cut_a_lane_without_losing_or_repeating_an_entry() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    client
        .submit_many(&many("a", 10, Some("o"), None))
        .await
        .expect("submit");
    let mut got = Vec::new();
    for (want, left) in [(3, 7), (1, 6), (4, 2), (3, 0)] {
        let batch = intake.read(want, Duration::ZERO).await.expect("take");
        assert_eq!(batch.len(), want.min(got.len().abs_diff(10)));
        got.extend(ids(&batch));
        let lanes = client.status().await.expect("status").lanes;
        let waiting: u64 = lanes.iter().map(|l| l.waiting).sum();
        assert_eq!(waiting, left, "after taking {}: {lanes:?}", got.len());
    }
    assert_eq!(got, (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert!(intake
        .read(5, Duration::ZERO)
        .await
        .expect("take")
        .is_empty());
    assert_eq!(intake.stream_backlog().await.expect("backlog").pending, 10);
}

/// Adds entries to the execution stream directly (as clients that predate queues do);
/// returns their stream ids.
async fn add_direct(t: &TestRedis, ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(t.add_to_stream(&[("id", *id), ("workflow", "1")]).await);
    }
    out
}

/// The take script moves only what the caller's read (the next command of its pipeline)
/// will deliver within the places: entries already in the stream and not yet delivered
/// count against them, whether Redis knows how many there are (the group's `lag`) or
/// not (a deleted entry among them makes it unknown, and the script counts them).
#[tokio::test]
async fn undelivered_entries_of_the_stream_count_against_the_places() {
    for with_deleted in [false, true] {
        let t = TestRedis::new();
        let client = t.client().await;
        let intake = t.intake("sup-a").await;
        client
            .submit_many(&many("a", 10, Some("o"), None))
            .await
            .expect("submit");
        if with_deleted {
            let sids = add_direct(&t, &["d0", "gone", "d1", "d2"]).await;
            t.delete_from_stream(&sids[1]).await;
        } else {
            add_direct(&t, &["d0", "d1", "d2"]).await;
        }
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(t.keys().stream())
            .query_async(&mut t.conn().await)
            .await
            .expect("xinfo");
        let lag_known = matches!(groups[0].get("lag"), Some(redis::Value::Int(3)));
        assert_eq!(lag_known, !with_deleted, "this round's case: {groups:?}");
        let got = intake.read(5, Duration::ZERO).await.expect("take");
        let direct = ["d0", "d1", "d2"];
        let lane: Vec<String> = (0..5 - direct.len()).map(|i| format!("a{i}")).collect();
        let want: Vec<String> = direct.iter().map(|s| s.to_string()).chain(lane).collect();
        assert_eq!(ids(&got), want, "with a deleted entry: {with_deleted}");
        let waiting: u64 = client
            .status()
            .await
            .expect("status")
            .lanes
            .iter()
            .map(|l| l.waiting)
            .sum();
        assert_eq!(waiting, 10 - (5 - direct.len()) as u64);
        // Nothing was moved beyond the places: the stream holds no undelivered entry.
        let rest = intake.read(100, Duration::ZERO).await.expect("take");
        assert_eq!(rest.len() as u64, waiting);
    }
}

/// Redis restarted, or its scripts were flushed: the take's `EVALSHA` fails with
/// NOSCRIPT while the read after it still runs. What that read delivered is returned,
/// the script is loaded again, and the next take moves the lanes' entries: each entry
/// is taken once, none is left behind.
#[tokio::test]
async fn a_take_after_redis_lost_its_scripts_loads_the_script_again() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    client
        .submit_many(&many("a", 4, Some("o"), None))
        .await
        .expect("submit");
    add_direct(&t, &["d0"]).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut t.conn().await)
        .await
        .expect("script flush");
    let mut got = Vec::new();
    for _ in 0..2 {
        let batch = intake
            .read(10, Duration::from_millis(50))
            .await
            .expect("a take after SCRIPT FLUSH is not an error");
        got.extend(ids(&batch));
    }
    assert_eq!(got, ["d0", "a0", "a1", "a2", "a3"]);
    assert_eq!(intake.stream_backlog().await.expect("backlog").pending, 5);
}

/// Organizations take turns across takes and across consumers: the turn is kept in
/// Redis, so two supervisors taking one place at a time alternate between two
/// organizations instead of both serving the first.
#[tokio::test]
async fn consumers_share_one_turn() {
    let t = TestRedis::new();
    let client = t.client().await;
    let (a, b) = (t.intake("sup-a").await, t.intake("sup-b").await);
    client
        .submit_many(&many("x", 20, Some("x"), None))
        .await
        .expect("submit");
    client
        .submit_many(&many("y", 20, Some("y"), None))
        .await
        .expect("submit");
    let mut order = Vec::new();
    for round in 0..10 {
        let who = if round % 2 == 0 { &a } else { &b };
        let got = who.read(1, Duration::ZERO).await.expect("take");
        assert_eq!(got.len(), 1);
        order.push(got[0].parse().expect("valid").org.expect("org"));
    }
    let xs = order.iter().filter(|o| *o == "x").count();
    assert_eq!(xs, 5, "alternating: {order:?}");
    for pair in order.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "the same organization twice in a row: {order:?}"
        );
    }
}

/// Queues are served in the order given: the first while it has work, and work of a
/// queue not served is left alone. Entries added to the stream directly (clients that
/// predate queues) come before any lane's.
#[tokio::test]
async fn queues_are_served_in_priority_order_and_only_those_served() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    client
        .submit_many(&many("d", 5, Some("o"), None))
        .await
        .expect("submit");
    client
        .submit_many(&many("c", 2, Some("o"), Some("critical")))
        .await
        .expect("submit");
    client
        .submit_many(&many("h", 4, None, Some("heavy")))
        .await
        .expect("submit");
    add_direct(&t, &["direct-1"]).await;

    let served = queues(&["critical", "default"]);
    let got = intake
        .take(4, &served, &[], Duration::ZERO)
        .await
        .expect("take");
    assert_eq!(ids(&got), ["direct-1", "c0", "c1", "d0"]);
    let got = intake
        .take(100, &served, &[], Duration::ZERO)
        .await
        .expect("take");
    assert_eq!(ids(&got), ["d1", "d2", "d3", "d4"]);
    // `heavy` is nobody's here: it still waits, whole.
    let lanes = client.status().await.expect("status").lanes;
    assert_eq!(lanes.len(), 1, "{lanes:?}");
    assert_eq!(lanes[0].lane.queue, "heavy");
    assert_eq!(lanes[0].waiting, 4);
    let got = intake
        .take(100, &queues(&["heavy"]), &[], Duration::ZERO)
        .await
        .expect("take");
    assert_eq!(ids(&got), ["h0", "h1", "h2", "h3"]);
}

/// A probe skips the lanes that already have enough work here.
#[tokio::test]
async fn skipped_lanes_are_not_taken_from() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    client
        .submit_many(&many("a", 50, Some("big"), None))
        .await
        .expect("submit");
    let skip = [Lane {
        queue: "default".into(),
        org: Some("big".into()),
    }];
    let served = queues(&["default"]);
    let got = intake
        .take(10, &served, &skip, Duration::ZERO)
        .await
        .expect("take");
    assert!(got.is_empty(), "{:?}", ids(&got));
    client
        .submit(&request("b0", Some("small"), None))
        .await
        .expect("submit");
    let got = intake
        .take(10, &served, &skip, Duration::ZERO)
        .await
        .expect("take");
    assert_eq!(ids(&got), ["b0"]);
}

/// An idle take blocks until a request arrives in a queue it serves (the queue's bell,
/// or the stream itself), then takes it: a lone request is not left to a poll.
#[tokio::test]
async fn an_idle_take_wakes_when_work_arrives() {
    let t = TestRedis::new();
    let client = t.client().await;
    let intake = t.intake("sup-a").await;
    // Nothing yet: it waits the whole block.
    let t0 = Instant::now();
    let got = intake
        .read(10, Duration::from_millis(300))
        .await
        .expect("take");
    assert!(got.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    let waiting = tokio::spawn({
        let intake = intake.clone();
        async move {
            let t0 = Instant::now();
            let got = intake
                .read(10, Duration::from_secs(20))
                .await
                .expect("take");
            (got, t0.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .submit(&request("late", Some("o"), None))
        .await
        .expect("submit");
    let (got, waited) = waiting.await.expect("join");
    assert_eq!(ids(&got), ["late"]);
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");

    // A request of a queue this take does not serve does not end its wait early with
    // work it may not take.
    let waiting = tokio::spawn({
        let intake = intake.clone();
        async move { intake.read(10, Duration::from_millis(500)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .submit(&request("other", Some("o"), Some("bulk")))
        .await
        .expect("submit");
    assert!(waiting.await.expect("join").expect("take").is_empty());
}

/// Cancel and the CLI's "is it queued?" look into the lanes too.
#[tokio::test]
async fn a_request_waiting_in_a_lane_counts_as_queued() {
    let t = TestRedis::new();
    let client = t.client().await;
    client
        .submit(&request("q-1", Some("o"), Some("bulk")))
        .await
        .expect("submit");
    assert!(client.is_queued("q-1").await.expect("is_queued"));
    assert!(!client.is_queued("q-2").await.expect("is_queued"));
}
