//! The workflow SDK end to end through `serve` (real stream, workers, PostgreSQL and
//! Redis): config precedence, buffered writes applied after success and discarded after
//! failure, timeout and crash, a secret never stored or published in clear (nor its
//! base64 and URL-encoded forms), event deliveries, and one forced failure of the result
//! transaction leaving nothing behind.

use std::time::Duration;

use serde_json::{json, Value};
use warden::testing::sdk_admin as admin;
use warden::SecretKey;
use warden::Status;
use warden::WorkflowSpec;
use warden::{Completion, WaitEvent};
use warden_tests::serve::TestServe;

const SECRET: &str = "tok-Sup3r-s3cret-9f2c";

async fn push_org(
    s: &TestServe,
    org: &str,
    name: &str,
    source: &str,
    timeout_ms: Option<i32>,
) -> i64 {
    s.db.store
        .push_workflow(&WorkflowSpec {
            org: Some(org.into()),
            name: name.into(),
            path: format!("workflows/{name}.py"),
            function_name: "run".into(),
            source: source.into(),
            default_timeout_ms: timeout_ms,
            time_saved_seconds: Some(60.0),
            value: Some(2.5),
            retry_policy: None,
        })
        .await
        .expect("push workflow")
        .id
}

/// Submits `workflow` of `org` and waits for its completion, collecting its live logs.
async fn run_org(
    s: &TestServe,
    id: &str,
    org: &str,
    workflow: &str,
    delivery: Option<&str>,
) -> (Completion, Vec<String>) {
    let mut waiter = s
        .client
        .wait_for_completion(id, Duration::from_secs(60))
        .await
        .expect("subscribe");
    let mut req = TestServe::request(id, workflow, "{}");
    req.org = Some(org.into());
    req.delivery_id = delivery.map(str::to_string);
    s.client.submit(&req).await.expect("submit");
    let mut live = Vec::new();
    loop {
        match waiter.next().await.expect("wait") {
            Some(WaitEvent::Log(l)) => live.push(l.message),
            Some(WaitEvent::Completed(c)) => return (c, live),
            None => panic!("{id}: no completion"),
        }
    }
}

fn result(c: &Completion) -> Value {
    assert_eq!(
        c.status,
        Status::Success,
        "{:?} {:?}",
        c.error_type,
        c.error_message
    );
    serde_json::from_str(c.result.as_ref().expect("a result").get()).unwrap()
}

#[tokio::test]
async fn config_precedence_and_buffered_writes_reach_the_next_execution() {
    let s = TestServe::start(|_| {}).await;
    admin::set(&s.db.store, None, "region", "eu", false, None)
        .await
        .unwrap();
    admin::set(&s.db.store, None, "retries", "3", false, None)
        .await
        .unwrap();
    admin::set(&s.db.store, Some("acme"), "region", "us", false, None)
        .await
        .unwrap();
    let source = r#"
from warden import config, kv, context

def run():
    before = {"region": config.get("region"), "retries": config.get("retries"),
              "counter": kv.get("counter", 0), "greeting": config.get("greeting")}
    kv.set("counter", before["counter"] + 1)
    config.set("greeting", f"hello from {context.execution_id}")
    after = {"counter": kv.get("counter"), "greeting": config.get("greeting")}
    return {"before": before, "after": after}
"#;
    push_org(&s, "acme", "counter", source, None).await;

    let (c, _) = run_org(&s, "first", "acme", "counter", None).await;
    assert_eq!(
        result(&c),
        json!({"before": {"region": "us", "retries": 3, "counter": 0, "greeting": null},
               "after": {"counter": 1, "greeting": "hello from first"}})
    );
    // The next execution sees the committed writes: kv through the supervisor, config
    // through the cache (invalidated after the commit, before the completion).
    let (c, _) = run_org(&s, "second", "acme", "counter", None).await;
    assert_eq!(
        result(&c)["before"],
        json!({"region": "us", "retries": 3, "counter": 1, "greeting": "hello from first"})
    );
    let org = s.db.store.org_id("acme").await.unwrap();
    assert_eq!(
        s.db.store.kv_get(org, "counter").await.unwrap(),
        Some(json!(2))
    );
    let entries = s.db.store.kv_list(Some("acme"), "").await.unwrap();
    assert_eq!(entries[0].updated_by.as_deref(), Some("second"));
}

#[tokio::test]
async fn writes_are_discarded_after_failure_timeout_and_crash() {
    let s = TestServe::start(|_| {}).await;
    let write = "from warden import kv, config, context\n\
                 def prepare():\n    kv.set('k-' + context.execution_id, 1)\n    \
                 config.set('c-' + context.execution_id, 1)\n    context.roi.time_saved = 999\n";
    let fail = format!("{write}def run():\n    prepare()\n    raise RuntimeError('no')\n");
    let slow = format!("{write}import time\ndef run():\n    prepare()\n    time.sleep(30)\n");
    let crash = format!("{write}import os\ndef run():\n    prepare()\n    os._exit(3)\n");
    let ok = format!("{write}def run():\n    prepare()\n    return 1\n");
    let wf_fail = push_org(&s, "acme", "fail", &fail, None).await;
    push_org(&s, "acme", "slow", &slow, Some(700)).await;
    push_org(&s, "acme", "crash", &crash, None).await;
    let wf_ok = push_org(&s, "acme", "ok", &ok, None).await;

    let statuses = [
        ("f1", "fail", Status::Failed),
        ("t1", "slow", Status::Timeout),
        ("c1", "crash", Status::Crashed),
        ("o1", "ok", Status::Success),
    ];
    for (id, wf, status) in statuses {
        let (c, _) = run_org(&s, id, "acme", wf, None).await;
        assert_eq!(c.status, status, "{id}");
    }
    let org = s.db.store.org_id("acme").await.unwrap();
    let keys = s.db.store.kv_keys(org, "", 100).await.unwrap();
    assert_eq!(keys, vec!["k-o1"], "only the success's write landed");
    let configs: Vec<String> =
        s.db.store
            .list_configs()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.key)
            .collect();
    assert_eq!(configs, vec!["c-o1"]);
    let mut conn = s.db.connection().await;
    let roi = |wf: i64| {
        sqlx::query_scalar::<_, f64>(
            "SELECT time_saved_seconds FROM daily_metrics WHERE workflow_id = $1",
        )
        .bind(wf)
    };
    assert_eq!(
        roi(wf_ok).fetch_one(&mut conn).await.unwrap(),
        999.0,
        "ROI set by the execution"
    );
    assert_eq!(
        roi(wf_fail).fetch_one(&mut conn).await.unwrap(),
        0.0,
        "no ROI for a failure"
    );
}

#[tokio::test]
async fn a_secret_is_never_stored_or_published_in_clear() {
    let key_hex = SecretKey::generate_hex().unwrap();
    let key = SecretKey::parse(&key_hex, "test").unwrap();
    let configured = key.clone();
    let s = TestServe::start(move |c| c.secret_key = Some(configured)).await;
    admin::set(
        &s.db.store,
        Some("acme"),
        "api_token",
        SECRET,
        true,
        Some(&key),
    )
    .await
    .unwrap();
    let leak = r#"
import json, logging, sys
from warden import config, log

def run(mode="return"):
    token = config.get("api_token")
    print("token is", token)
    print(json.dumps({"token": token}))
    sys.stderr.write(f"stderr {token}\n")
    logging.warning("logging %s", token)
    log.info("sdk log", token=token)
    if len(token) != 21:
        return "wrong length"
    if mode == "raise":
        def inner(t):
            raise ValueError(f"bad token {t!r}")
        inner(token)
    return {"token": token, "nested": [token, {"again": token}]}
"#;
    push_org(&s, "acme", "leaky", leak, None).await;
    push_org(
        &s,
        "acme",
        "raises",
        &leak.replace("mode=\"return\"", "mode=\"raise\""),
        None,
    )
    .await;

    let (returned, live_a) = run_org(&s, "leak-return", "acme", "leaky", None).await;
    let (raised, live_b) = run_org(&s, "leak-raise", "acme", "raises", None).await;
    assert_eq!(
        result(&returned),
        json!({"token": "***", "nested": ["***", {"again": "***"}]})
    );
    assert_eq!(raised.status, Status::Failed);
    assert_eq!(raised.error_message.as_deref(), Some("bad token '***'"));

    // Published: completions and live logs.
    for text in [format!("{returned:?}"), format!("{raised:?}")]
        .iter()
        .chain(live_a.iter())
        .chain(live_b.iter())
    {
        assert!(!text.contains(SECRET), "published in clear: {text}");
    }
    assert!(live_a.iter().any(|l| l == "token is ***"), "{live_a:?}");

    // Stored: every column of every row the executions produced.
    let mut conn = s.db.connection().await;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(e)::text FROM executions e
         UNION ALL SELECT row_to_json(l)::text FROM execution_logs l",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        rows.len() >= 2 + 10,
        "both executions and their logs: {}",
        rows.len()
    );
    for row in &rows {
        assert!(!row.contains(SECRET), "stored in clear: {row}");
    }
    let d =
        s.db.store
            .show_execution("leak-raise")
            .await
            .unwrap()
            .unwrap();
    let tb = d.execution.traceback.unwrap();
    assert!(
        tb.contains("inner(token)") && tb.contains("bad token '***'"),
        "{tb}"
    );
    let messages: Vec<&str> = d.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "token is ***",
            "{\"token\": \"***\"}",
            "stderr ***",
            "logging ***",
            "sdk log token=***",
        ]
    );
}

#[tokio::test]
async fn a_secret_printed_base64_or_url_encoded_is_masked_too() {
    // Characters that percent-encoding changes (`@`, space, `/`, `+`, non-ASCII), so
    // every encoded form differs from the secret as written.
    const ENCODABLE: &str = "p@ss w/rd+\u{e9}-9f2c";
    // Python: base64.b64encode(s.encode()), urllib.parse.quote(s), quote_plus(s).
    const ENCODED: [&str; 3] = [
        "cEBzcyB3L3JkK8OpLTlmMmM=",
        "p%40ss%20w/rd%2B%C3%A9-9f2c",
        "p%40ss+w%2Frd%2B%C3%A9-9f2c",
    ];
    let key = SecretKey::parse(&SecretKey::generate_hex().unwrap(), "test").unwrap();
    let configured = key.clone();
    let s = TestServe::start(move |c| c.secret_key = Some(configured)).await;
    admin::set(
        &s.db.store,
        Some("acme"),
        "password",
        ENCODABLE,
        true,
        Some(&key),
    )
    .await
    .unwrap();
    let source = r#"
import base64, urllib.parse
from warden import config

def run():
    secret = config.get("password")
    print("b64", base64.b64encode(secret.encode()).decode())
    print("url", urllib.parse.quote(secret))
    print("plus", urllib.parse.quote_plus(secret))
    return len(secret)
"#;
    push_org(&s, "acme", "encodes", source, None).await;
    let (c, live) = run_org(&s, "encoded", "acme", "encodes", None).await;
    assert_eq!(result(&c), json!(16), "the workflow received the secret");
    // Live lines are published on a timer and the completion right after the commit,
    // so the last ones may come after it: those that came are masked, in order.
    let expected = ["b64 ***", "url ***", "plus ***"];
    assert!(
        !live.is_empty()
            && expected.starts_with(&live.iter().map(String::as_str).collect::<Vec<_>>()),
        "{live:?}"
    );

    let d = s.db.store.show_execution("encoded").await.unwrap().unwrap();
    let messages: Vec<&str> = d.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, vec!["b64 ***", "url ***", "plus ***"]);
    let mut conn = s.db.connection().await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(l)::text FROM execution_logs l")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        for encoded in ENCODED {
            assert!(!row.contains(encoded), "stored {encoded}: {row}");
        }
    }
}

#[tokio::test]
async fn an_execution_without_a_key_gets_a_clear_error_for_a_secret() {
    let s = TestServe::start(|_| {}).await;
    let key = SecretKey::parse(&SecretKey::generate_hex().unwrap(), "t").unwrap();
    admin::set(&s.db.store, None, "api_token", SECRET, true, Some(&key))
        .await
        .unwrap();
    push_org(
        &s,
        "acme",
        "needs-secret",
        "from warden import config\ndef run():\n    return config.get('api_token')\n",
        None,
    )
    .await;
    let (c, _) = run_org(&s, "nokey", "acme", "needs-secret", None).await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(c.error_type.as_deref(), Some("RuntimeError"));
    assert!(
        c.error_message
            .as_deref()
            .unwrap()
            .contains("this supervisor has no secret key"),
        "{c:?}"
    );
}

#[tokio::test]
async fn deliveries_are_created_on_intake_and_finished_with_the_result() {
    let s = TestServe::start(|_| {}).await;
    push_org(&s, "acme", "ok", "def run():\n    return 1\n", None).await;
    push_org(
        &s,
        "acme",
        "bad",
        "def run():\n    raise KeyError('x')\n",
        None,
    )
    .await;
    let (c, _) = run_org(&s, "evt-ok", "acme", "ok", Some("delivery-1")).await;
    assert_eq!(c.status, Status::Success);
    let (c, _) = run_org(&s, "evt-bad", "acme", "bad", Some("delivery-2")).await;
    assert_eq!(c.status, Status::Failed);
    // The event system retries delivery-2 as a new execution.
    let (c, _) = run_org(&s, "evt-bad-2", "acme", "ok", Some("delivery-2")).await;
    assert_eq!(c.status, Status::Success);

    let d1 = s.db.store.delivery("delivery-1").await.unwrap().unwrap();
    assert_eq!(
        (d1.execution_id.as_str(), d1.status.as_str(), d1.attempts),
        ("evt-ok", "success", 1)
    );
    let d2 = s.db.store.delivery("delivery-2").await.unwrap().unwrap();
    assert_eq!(
        (d2.execution_id.as_str(), d2.status.as_str(), d2.attempts),
        ("evt-bad-2", "success", 2)
    );
    assert!(d2.completed_at.is_some());
}

#[tokio::test]
async fn a_forced_failure_of_the_result_transaction_leaves_nothing_and_is_recorded() {
    let mut s = TestServe::start(|_| {}).await;
    let source = r#"
from warden import kv, context
def run():
    print("this line must not be stored")
    kv.set("must-not-exist", 1)
    context.roi.time_saved = 4242
    return {"must": "not be stored"}
"#;
    let wf = push_org(&s, "acme", "doomed", source, None).await;
    s.db.fail_result_transactions("P0001", false).await;
    let mut conn = s.db.connection().await;

    let (c, _) = run_org(&s, "doomed-1", "acme", "doomed", Some("evt-doomed")).await;
    assert_eq!(c.status, Status::Failed, "recorded, not lost");
    assert_eq!(c.error_type.as_deref(), Some("StoreError"));
    s.stop().await;

    let d =
        s.db.store
            .show_execution("doomed-1")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(d.execution.status.to_string(), "failed");
    assert_eq!(d.execution.result, None);
    assert!(d.logs.is_empty());
    let org = s.db.store.org_id("acme").await.unwrap();
    assert!(s.db.store.kv_keys(org, "", 10).await.unwrap().is_empty());
    let (success, time_saved): (i64, f64) = sqlx::query_as(
        "SELECT success, time_saved_seconds FROM daily_metrics WHERE workflow_id = $1",
    )
    .bind(wf)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((success, time_saved), (0, 0.0));
    let delivery = s.db.store.delivery("evt-doomed").await.unwrap().unwrap();
    assert_eq!(delivery.status, "failed");
}
