//! A queued execution shows `pending` with no start time until a worker starts it
//! (issue 13): with one worker busy, a second execution waits in the supervisor's
//! local queue; `warden executions show|list` (text and `--json`) and `warden status`
//! must say so, then `running` with its real start time once the worker takes it, then
//! its end, with the start time the result statement wrote.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use warden::Status;
use warden_tests::cli::{ok, warden};
use warden_tests::serve::TestServe;

const SLEEP: &str = "import time\ndef run(s):\n    time.sleep(s)\n    return s\n";

fn show(s: &TestServe, id: &str) -> Value {
    let out = ok(warden(
        &s.db,
        &s.redis,
        std::path::Path::new("/tmp"),
        &["executions", "show", id, "--json"],
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn show_text(s: &TestServe, id: &str) -> String {
    ok(warden(
        &s.db,
        &s.redis,
        std::path::Path::new("/tmp"),
        &["executions", "show", id],
    ))
}

fn list_row(s: &TestServe, id: &str, status: Option<&str>) -> Option<Value> {
    let mut args = vec!["executions", "list", "--json"];
    if let Some(st) = status {
        args.extend(["--status", st]);
    }
    let out = ok(warden(&s.db, &s.redis, std::path::Path::new("/tmp"), &args));
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

fn time_of(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time, not {v}"))
        .parse()
        .unwrap()
}

/// Polls `show --json` until `pred` holds (or panics after `within`).
async fn until(s: &TestServe, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = show(s, id);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached the state: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_is_pending_without_a_start_time_until_a_worker_starts_it() {
    let mut s = TestServe::start(|c| c.pool.workers = 1).await;
    s.push("sleep", SLEEP, None).await;
    let wb = s
        .client
        .wait_for_completion("q-second", Duration::from_secs(60))
        .await
        .unwrap();
    s.client
        .submit(&TestServe::request("q-first", "sleep", r#"{"s": 2.5}"#))
        .await
        .unwrap();
    let first = until(&s, "q-first", Duration::from_secs(30), |v| {
        v["status"] == "running" && !v["started_at"].is_null()
    })
    .await;
    let first_started = time_of(&first["started_at"]);

    s.client
        .submit(&TestServe::request("q-second", "sleep", r#"{"s": 3.0}"#))
        .await
        .unwrap();
    // Taken by the supervisor (its row exists), waiting for the one worker.
    let queued = until(&s, "q-second", Duration::from_secs(10), |v| {
        !v["taken_at"].is_null()
    })
    .await;
    let first_now = show(&s, "q-first");
    assert_eq!(
        first_now["status"], "running",
        "the first must still run while the second is looked at: {first_now}"
    );
    assert_eq!(queued["status"], "pending", "{queued}");
    assert!(queued["started_at"].is_null(), "{queued}");
    assert_eq!(queued["queued_on"], "s1", "{queued}");
    let text = show_text(&s, "q-second");
    assert!(
        text.contains("status:    pending (queued on s1)") && !text.contains("started:"),
        "{text}"
    );
    let row = list_row(&s, "q-second", None).expect("listed");
    assert_eq!(row["status"], "pending", "{row}");
    assert!(row["started_at"].is_null(), "{row}");
    assert!(
        list_row(&s, "q-second", Some("pending")).is_some(),
        "--status pending lists it"
    );
    assert!(
        list_row(&s, "q-second", Some("running")).is_none(),
        "--status running does not"
    );
    // `warden status` counts it as queued (published once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ok(warden(
            &s.db,
            &s.redis,
            std::path::Path::new("/tmp"),
            &["status", "--json"],
        ));
        let st: Value = serde_json::from_str(&out).unwrap();
        let sup = &st["supervisors"][0];
        if sup["queued"] == 1 && sup["busy"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never counted it queued: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The worker takes it once the first ends: running, since then.
    let running = until(&s, "q-second", Duration::from_secs(30), |v| {
        v["status"] == "running"
    })
    .await;
    let second_started = time_of(&running["started_at"]);
    assert!(running["queued_on"].is_null(), "{running}");
    let first_end = show(&s, "q-first");
    assert_eq!(first_end["status"], "success", "{first_end}");
    let first_completed = time_of(&first_end["completed_at"]);
    // The same instant (PostgreSQL keeps microseconds, the mark nanoseconds).
    let committed = time_of(&first_end["started_at"]);
    assert!(
        (committed - first_started).num_milliseconds().abs() <= 1,
        "the committed start ({committed}) is the one shown while it ran ({first_started})"
    );
    assert!(
        second_started >= first_completed - chrono::Duration::milliseconds(50),
        "the second started at {second_started}, before the first ended ({first_completed})"
    );
    assert!(show_text(&s, "q-second").contains("status:    running"));
    let row = list_row(&s, "q-second", Some("running")).expect("listed as running");
    assert_eq!(time_of(&row["started_at"]), second_started);

    assert_eq!(wb.completion().await.unwrap().status, Status::Success);
    let done = until(&s, "q-second", Duration::from_secs(10), |v| {
        v["status"] == "success"
    })
    .await;
    let committed_start = time_of(&done["started_at"]);
    assert!(
        (committed_start - second_started).num_milliseconds().abs() <= 1,
        "the committed start ({committed_start}) is the start shown while it ran ({second_started})"
    );
    assert!(committed_start >= first_completed - chrono::Duration::milliseconds(50));
    s.stop().await;
}
