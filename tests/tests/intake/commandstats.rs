//! The server's own count of the commands one steady-state batch costs, from
//! `INFO commandstats` deltas: it checks that [`Intake::calls`] (which the other tests
//! rely on) tells the truth about what reaches Redis.
//!
//! Other processes may use the same Redis meanwhile, which can only *add* calls. So
//! the batch is measured up to [`ROUNDS`] times and the smallest delta per command is compared:
//! interference makes a delta larger, never smaller.
//!
//! [`Intake::calls`]: warden::Intake::calls

use std::collections::HashMap;
use std::time::Duration;

use warden::Status;
use warden::{Completion, Done, ExecutionRequest, WorkflowRef};
use warden_tests::redis::TestRedis;

/// Rounds to try before concluding the extra calls are ours, not someone else's.
const ROUNDS: usize = 20;
const MEASURED: [&str; 17] = [
    "evalsha",
    "xinfo|groups",
    "eval",
    "hlen",
    "xreadgroup",
    "zrange",
    "incr",
    "xrange",
    "xadd",
    "zrem",
    "mget",
    "xack",
    "xdel",
    "xtrim",
    "set",
    "publish",
    "pexpire",
];

async fn command_calls(t: &TestRedis) -> HashMap<String, u64> {
    t.command_calls().await
}

#[tokio::test]
async fn one_batch_of_100_costs_what_the_counters_say() {
    const N: usize = 100;
    let t = TestRedis::new();
    let intake = t.intake("sup-a").await;
    let client = t.client().await;
    // The take is one script (crate::intake::lanes) and, in the same pipeline, the read
    // that delivers what it moved. The script: the group's count of undelivered entries
    // (`XINFO GROUPS`; none), the default queue's organizations and its turn, one XRANGE
    // of the lane, the batch copied to the stream (an XADD each), the lane's head trimmed
    // (one XTRIM and one XDEL, whatever the batch's size). The lane still holds its
    // organization (it gave exactly what was asked): the next take finds it empty.
    // Concurrency limits (none here) cost the take one `HLEN`, and the acknowledgement
    // the release script (`EVAL`), which stops at its own `HLEN`.
    let expected: HashMap<&str, u64> = [
        ("evalsha", 1),
        ("xinfo|groups", 1),
        ("eval", 1),
        ("hlen", 2),
        ("xreadgroup", 1),
        ("zrange", 1),
        ("incr", 1),
        ("xrange", 1),
        ("xadd", N as u64),
        ("zrem", 0),
        ("mget", 1),
        ("xack", 1),
        ("xdel", 2),
        ("xtrim", 1),
        ("set", N as u64),
        ("publish", N as u64),
        ("pexpire", N as u64),
    ]
    .into_iter()
    .collect();
    let mut smallest: HashMap<&str, u64> = HashMap::new();

    for round in 0..ROUNDS {
        let requests: Vec<ExecutionRequest> = (0..N)
            .map(|i| ExecutionRequest::new(format!("r{round}-{i}"), WorkflowRef::Id(1)))
            .collect();
        client.submit_many(&requests).await.expect("submit");

        let before = command_calls(&t).await;
        let ours_before = intake.calls();
        let batch = intake.read(N, Duration::ZERO).await.expect("read");
        assert_eq!(batch.len(), N);
        let ids: Vec<String> = batch
            .iter()
            .map(|e| e.parse().expect("valid").execution_id.into_string())
            .collect();
        intake.is_cancelled(&ids).await.expect("cancel check");
        let done: Vec<Done> = batch
            .iter()
            .zip(&ids)
            .map(|(e, id)| Done::new(&e.stream_id, Completion::new(id, Status::Success)))
            .collect();
        intake.ack_and_publish(&done).await.expect("ack");
        let ours = intake.calls() - ours_before;
        let after = command_calls(&t).await;

        assert_eq!(ours.round_trips, 3);
        assert_eq!(ours.commands, 6 + 3 * N as u64);
        for cmd in MEASURED {
            let delta = after
                .get(cmd)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(cmd).copied().unwrap_or(0));
            let entry = smallest.entry(cmd).or_insert(u64::MAX);
            *entry = (*entry).min(delta);
        }
        if smallest == expected {
            break;
        }
    }

    assert_eq!(
        smallest, expected,
        "server-side command counts for one batch of {N}"
    );
}
