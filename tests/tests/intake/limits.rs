//! Concurrency limits at the intake (warden::limits, the take script): an entry over
//! its workflow's or organization's limit stays in its lane, in order, while later
//! entries go; acknowledging an entry gives its permit back; a dead supervisor's
//! permits go with its entries to whoever takes them over, and are given back when
//! their entries are pending nowhere.

use std::collections::HashMap;
use std::time::Duration;

use warden::limits::{Limits, WorkflowLimit};
use warden::{Completion, Done, Entry, ExecutionRequest, Intake, Status, WorkflowRef};
use warden_tests::redis::TestRedis;

fn request(id: &str, workflow: WorkflowRef, org: Option<&str>) -> ExecutionRequest {
    let mut r = ExecutionRequest::new(id, workflow);
    r.org = org.map(str::to_owned);
    r
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.parse().expect("valid").execution_id.into_string())
        .collect()
}

async fn set_heartbeat(t: &TestRedis, consumer: &str) {
    let _: () = redis::cmd("SET")
        .arg(t.keys().heartbeat(consumer))
        .arg("x")
        .query_async(&mut t.conn().await)
        .await
        .expect("SET heartbeat");
}

async fn del(t: &TestRedis, key: String) {
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut t.conn().await)
        .await
        .expect("DEL");
}

async fn publish(t: &TestRedis, limits: &Limits) {
    warden::limits::publish(&mut t.conn().await, &t.keys(), limits)
        .await
        .expect("publish limits");
}

async fn ack(intake: &Intake, entries: &[&Entry]) {
    let done: Vec<Done> = entries
        .iter()
        .map(|e| {
            let id = e.parse().expect("valid").execution_id.into_string();
            Done::new(&e.stream_id, Completion::new(id, Status::Success))
        })
        .collect();
    intake.ack_and_publish(&done).await.expect("ack");
}

/// Entries holding a permit of `limit` (their stream ids) and their owners.
async fn holders(t: &TestRedis, limit: &str) -> HashMap<String, String> {
    let mut conn = t.conn().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(t.keys().running(limit))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    let mut out = HashMap::new();
    for id in members {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(t.keys().permits())
            .arg(&id)
            .query_async(&mut conn)
            .await
            .expect("HGET");
        let permit: Vec<String> =
            serde_json::from_str(&raw.expect("a permit per member")).expect("JSON");
        out.insert(id, permit[0].clone());
    }
    out
}

fn limited_workflow(max: u32) -> Limits {
    Limits {
        orgs: Vec::new(),
        workflows: vec![WorkflowLimit {
            id: 1,
            org: None,
            name: "limited".into(),
            max,
            org_max: 0,
        }],
    }
}

/// A workflow limited to 2: a take of 10 gets two of its entries (named by id or by
/// name: one limit) and the other workflow's, in order; the rest wait in the lane until
/// an acknowledgement gives a permit back, and that rings the bell idle takes wait on.
#[tokio::test]
async fn a_take_stays_within_a_workflows_limit_and_an_ack_gives_a_permit_back() {
    let t = TestRedis::new();
    let client = t.client().await;
    let a = t.intake("sup-a").await;
    set_heartbeat(&t, "sup-a").await;
    publish(&t, &limited_workflow(2)).await;
    let mut requests = Vec::new();
    for i in 0..5 {
        let wf = if i % 2 == 0 {
            WorkflowRef::Id(1)
        } else {
            WorkflowRef::Name("limited".into())
        };
        requests.push(request(&format!("l{i}"), wf, None));
    }
    for i in 0..10 {
        requests.push(request(&format!("f{i}"), WorkflowRef::Id(2), None));
    }
    client.submit_many(&requests).await.expect("submit");

    let got = a.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(
        ids(&got),
        ["l0", "l1", "f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]
    );
    let held = holders(&t, "wf:#1").await;
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.values().all(|owner| owner == "sup-a"));

    // The limited entries still wait, in order; the others go.
    let got2 = a.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(ids(&got2), ["f8", "f9"]);
    assert!(a.read(10, Duration::ZERO).await.expect("take").is_empty());
    assert_eq!(client.status().await.expect("status").lanes[0].waiting, 3);

    // An idle take waits for a permit and wakes when one is given back.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.read(10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    ack(&a, &[&got[0]]).await;
    let woke = waiting.await.expect("task").expect("take");
    assert_eq!(ids(&woke), ["l2"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the take woke on the bell, not its timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(holders(&t, "wf:#1").await.len(), 2);
}

/// An organization's limit counts requests naming the organization, and requests
/// naming one of its workflows by id (whatever their `org` field says).
#[tokio::test]
async fn an_organizations_limit_counts_its_workflows_by_name_and_by_id() {
    let t = TestRedis::new();
    let client = t.client().await;
    let a = t.intake("sup-a").await;
    set_heartbeat(&t, "sup-a").await;
    publish(
        &t,
        &Limits {
            orgs: vec![("acme".into(), 3)],
            workflows: vec![WorkflowLimit {
                id: 7,
                org: Some("acme".into()),
                name: "report".into(),
                max: 0,
                org_max: 3,
            }],
        },
    )
    .await;
    let mut requests = Vec::new();
    for i in 0..3 {
        requests.push(request(
            &format!("n{i}"),
            WorkflowRef::Name("report".into()),
            Some("acme"),
        ));
        requests.push(request(&format!("i{i}"), WorkflowRef::Id(7), None));
        requests.push(request(&format!("o{i}"), WorkflowRef::Id(8), Some("other")));
    }
    client.submit_many(&requests).await.expect("submit");
    let got = ids(&a.read(100, Duration::ZERO).await.expect("take"));
    let acme: Vec<&String> = got.iter().filter(|i| !i.starts_with('o')).collect();
    assert_eq!(acme.len(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|i| i.starts_with('o')).count(), 3);
    assert_eq!(holders(&t, "org:acme").await.len(), 3);
}

/// A dead owner's permits: while its entries are pending they still count (they will
/// run again wherever they are taken over), the takeover hands them to the claimer, and
/// entries pending nowhere any more give theirs back at the next take.
#[tokio::test]
async fn a_dead_owners_permits_go_with_its_entries_or_are_given_back() {
    let t = TestRedis::new();
    let client = t.client().await;
    let (a, b, c) = (
        t.intake("sup-a").await,
        t.intake("sup-b").await,
        t.intake("sup-c").await,
    );
    for s in ["sup-a", "sup-b", "sup-c"] {
        set_heartbeat(&t, s).await;
    }
    publish(&t, &limited_workflow(2)).await;
    let requests: Vec<ExecutionRequest> = (0..6)
        .map(|i| request(&format!("l{i}"), WorkflowRef::Id(1), None))
        .collect();
    client.submit_many(&requests).await.expect("submit");
    assert_eq!(
        ids(&a.read(10, Duration::ZERO).await.expect("take")),
        ["l0", "l1"]
    );

    // sup-a dies: its two entries are pending, to be run again: nothing more starts.
    del(&t, t.keys().heartbeat("sup-a")).await;
    assert!(b.read(10, Duration::ZERO).await.expect("take").is_empty());
    // sup-b takes them over, and their permits with them.
    let taken = b.take_over(10).await.expect("take over");
    assert_eq!(ids(&taken.entries), ["l0", "l1"]);
    let held = holders(&t, "wf:#1").await;
    assert_eq!(held.len(), 2);
    assert!(held.values().all(|o| o == "sup-b"), "{held:?}");
    // sup-b finishes one: one more starts.
    ack(&b, &[&taken.entries[0]]).await;
    let got = b.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(ids(&got), ["l2"]);

    // sup-b dies, and its entries end up pending nowhere (acknowledged without their
    // permits, as by a supervisor killed between the two): given back at the next take.
    del(&t, t.keys().heartbeat("sup-b")).await;
    let mut conn = t.conn().await;
    for sid in [&taken.entries[1].stream_id, &got[0].stream_id] {
        let _: i64 = redis::cmd("XACK")
            .arg(t.keys().stream())
            .arg(t.keys().group())
            .arg(sid)
            .query_async(&mut conn)
            .await
            .expect("XACK");
    }
    let got = c.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(ids(&got), ["l3", "l4"]);
    let held = holders(&t, "wf:#1").await;
    assert_eq!(
        held.len(),
        2,
        "the dead ones' permits were given back: {held:?}"
    );
    assert!(held.values().all(|o| o == "sup-c"), "{held:?}");
}

/// A limit removed (the mirror rebuilt without it) lets the waiting entries go.
#[tokio::test]
async fn removing_a_limit_lets_waiting_entries_go() {
    let t = TestRedis::new();
    let client = t.client().await;
    let a = t.intake("sup-a").await;
    set_heartbeat(&t, "sup-a").await;
    publish(&t, &limited_workflow(1)).await;
    let requests: Vec<ExecutionRequest> = (0..4)
        .map(|i| request(&format!("l{i}"), WorkflowRef::Id(1), None))
        .collect();
    client.submit_many(&requests).await.expect("submit");
    assert_eq!(a.read(10, Duration::ZERO).await.expect("take").len(), 1);
    publish(&t, &Limits::default()).await;
    assert_eq!(
        ids(&a.read(10, Duration::ZERO).await.expect("take")),
        ["l1", "l2", "l3"]
    );
}

async fn total_calls(t: &TestRedis) -> u64 {
    t.command_calls().await.values().sum()
}

/// What a take of 10 costs the server (commands, counting those the script runs), with
/// no limit and with one limit that holds entries back: the smallest of a few rounds
/// (other tests' commands only add). Printed for the record; without limits the script
/// adds one `HLEN`.
#[tokio::test]
async fn the_cost_of_a_take_with_and_without_limits() {
    async fn measure(limits: Option<Limits>) -> u64 {
        let mut best = u64::MAX;
        for round in 0..10 {
            let t = TestRedis::new();
            let client = t.client().await;
            let a = t.intake("sup-a").await;
            set_heartbeat(&t, "sup-a").await;
            if let Some(l) = &limits {
                publish(&t, l).await;
            }
            let mut requests = Vec::new();
            for i in 0..20 {
                let wf = if i % 2 == 0 { 1 } else { 2 };
                requests.push(request(&format!("r{round}-{i}"), WorkflowRef::Id(wf), None));
            }
            client.submit_many(&requests).await.expect("submit");
            // The first take fills the limit; the second is the one measured.
            a.read(4, Duration::ZERO).await.expect("take");
            let before = total_calls(&t).await;
            let got = a.read(10, Duration::ZERO).await.expect("take");
            let after = total_calls(&t).await;
            assert!(!got.is_empty());
            // One INFO of ours is counted between the two readings.
            best = best.min(after - before - 1);
        }
        best
    }
    let plain = measure(None).await;
    let limited = measure(Some(limited_workflow(2))).await;
    eprintln!("commands per take of 10: {plain} without limits, {limited} with one limit holding entries back");
    assert!(limited > plain);
}

/// A dead owner's entry deleted from the stream (`XCLAIM` drops it from the pending
/// list) gives its permit back in the claim itself; the claimed one keeps its own.
#[tokio::test]
async fn a_takeover_gives_back_the_permits_of_entries_that_are_gone() {
    let t = TestRedis::new();
    let client = t.client().await;
    let (a, b) = (t.intake("sup-a").await, t.intake("sup-b").await);
    set_heartbeat(&t, "sup-a").await;
    set_heartbeat(&t, "sup-b").await;
    publish(&t, &limited_workflow(2)).await;
    let requests: Vec<ExecutionRequest> = (0..4)
        .map(|i| request(&format!("l{i}"), WorkflowRef::Id(1), None))
        .collect();
    client.submit_many(&requests).await.expect("submit");
    let got = a.read(10, Duration::ZERO).await.expect("take");
    assert_eq!(ids(&got), ["l0", "l1"]);
    t.delete_from_stream(&got[0].stream_id).await;
    del(&t, t.keys().heartbeat("sup-a")).await;
    let taken = b.take_over(10).await.expect("take over");
    assert_eq!(ids(&taken.entries), ["l1"]);
    let held = holders(&t, "wf:#1").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        held.get(&got[1].stream_id).map(String::as_str),
        Some("sup-b")
    );
    assert_eq!(
        ids(&b.read(10, Duration::ZERO).await.expect("take")),
        ["l2"]
    );
}
