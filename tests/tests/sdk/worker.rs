//! The `warden` SDK module inside real workers (no services): what a workflow sees of
//! its context and config, read-your-writes, the `sdk_writes_json` it sends on every
//! outcome, its reads over the execution's socket, its log lines sharing the cap and
//! order of `print`/`logging`, and a clean state per execution in reuse mode.

use std::time::Duration;

use serde_json::{json, Value};
use warden::{ExecutionOutcome, PoolEvent, Status};
use warden_protocol::{Isolation, Log, LogLevel, Reply, ReplyOutcome, Request};
use warden_tests::pool::{job, TestPool};

/// A context as `serve` builds it: org 7 over global config, one secret name per layer.
fn context(id: &str) -> String {
    json!({
        "execution_id": id,
        "workflow": "report",
        "workflow_id": 42,
        "org": {"id": 7, "name": "acme"},
        "caller": "tests",
        "attempt": 2,
        "timeout_seconds": 30.0,
        "delivery_id": "d-1",
        "config": {
            "org": {"values": {"region": "us", "limit": 5}, "secrets": ["api_token"]},
            "global": {"values": {"region": "eu", "retries": 3, "nested": {"a": [1]}},
                        "secrets": ["global_token"]},
        },
        "roi": {"time_saved": 30.0, "value": 1.5},
    })
    .to_string()
}

struct Run {
    outcome: ExecutionOutcome,
    logs: Vec<Log>,
    requests: Vec<Request>,
}

/// Runs `source` with `context_json`, answering its requests with `answer`.
async fn run(
    pool: &mut TestPool,
    id: &str,
    source: &str,
    context_json: &str,
    answer: impl Fn(&Request) -> ReplyOutcome,
) -> Run {
    let mut j = job(id, source, "{\"n\": 2}", None);
    j.context_json = context_json.to_string();
    assert!(pool.pool.submit(j).is_ok());
    let mut logs = Vec::new();
    let mut requests = Vec::new();
    let wait = async {
        loop {
            match pool.events.recv().await.expect("pool running") {
                PoolEvent::Log(l) => logs.push(l),
                PoolEvent::Request(req) => {
                    pool.pool.reply(Reply {
                        execution_id: req.execution_id.clone(),
                        request_id: req.request_id,
                        outcome: answer(&req),
                    });
                    requests.push(req);
                }
                PoolEvent::Finished(outcome) | PoolEvent::Interrupted(outcome) => return outcome,
                PoolEvent::Started { .. } | PoolEvent::Returned { .. } => {}
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("finished within 60 s");
    Run {
        outcome,
        logs,
        requests,
    }
}

fn no_requests(req: &Request) -> ReplyOutcome {
    panic!("unexpected request {req:?}")
}

fn result(r: &Run) -> Value {
    assert_eq!(
        r.outcome.status,
        Status::Success,
        "{:?}",
        r.outcome.error.as_ref()
    );
    serde_json::from_str(r.outcome.result_json.as_deref().expect("a result")).unwrap()
}

#[tokio::test]
async fn the_context_and_config_precedence_reach_the_workflow() {
    let mut pool = TestPool::start(|_| {}).await;
    let source = r#"
from warden import context, config
import warden

def run(n):
    return {
        "id": context.execution_id, "workflow": context.workflow,
        "workflow_id": context.workflow_id, "org": [context.org.id, context.org.name],
        "caller": context.caller, "params": context.params, "attempt": context.attempt,
        "deadline_ok": 0 < context.deadline <= 30, "delivery": context.delivery_id,
        "region": config.get("region"), "retries": config.get("retries"),
        "limit": config.get("limit"), "missing": config.get("missing", "dflt"),
        "nested": config.get("nested"), "same_module": warden.context is context,
        "roi": [context.roi.time_saved, context.roi.value],
    }
"#;
    let r = run(&mut pool, "ctx-1", source, &context("ctx-1"), no_requests).await;
    assert_eq!(
        result(&r),
        json!({
            "id": "ctx-1", "workflow": "report", "workflow_id": 42, "org": [7, "acme"],
            "caller": "tests", "params": {"n": 2}, "attempt": 2, "deadline_ok": true,
            "delivery": "d-1", "region": "us", "retries": 3, "limit": 5,
            "missing": "dflt", "nested": {"a": [1]}, "same_module": true,
            "roi": [30.0, 1.5],
        })
    );
    assert_eq!(
        r.outcome.sdk_writes_json, "",
        "nothing written, nothing sent"
    );
    assert!(
        r.requests.is_empty(),
        "non-secret config needs no round trip"
    );
}

#[tokio::test]
async fn writes_are_read_back_and_sent_collapsed_with_the_result() {
    let mut pool = TestPool::start(|_| {}).await;
    let source = r#"
from warden import context, config, kv

def run(n):
    seen = {}
    config.set("region", "ap")
    seen["region"] = config.get("region")
    config.delete("limit")
    seen["limit_after_delete"] = config.get("limit", "gone")
    config.set("retries", 9)
    config.delete("region")
    seen["region_after_delete"] = config.get("region")   # the global value shows through
    kv.set("cursor", {"page": 1})
    kv.set("cursor", {"page": n})
    kv.set("tmp", 1)
    kv.delete("tmp")
    got = kv.get("cursor")
    got["page"] = 99                      # a copy: later reads are unaffected
    seen["cursor"] = kv.get("cursor")
    seen["tmp"] = kv.get("tmp", "deleted")
    context.roi.time_saved = 120
    context.roi.value = 4.5
    seen["roi"] = [context.roi.time_saved, context.roi.value]
    return seen
"#;
    let r = run(&mut pool, "w-1", source, &context("w-1"), no_requests).await;
    assert_eq!(
        result(&r),
        json!({
            "region": "ap", "limit_after_delete": "gone", "region_after_delete": "eu",
            "cursor": {"page": 2}, "tmp": "deleted", "roi": [120.0, 4.5],
        })
    );
    assert!(
        r.requests.is_empty(),
        "reads of own writes need no round trip"
    );
    let writes: Value = serde_json::from_str(&r.outcome.sdk_writes_json).unwrap();
    assert_eq!(
        writes,
        json!([
            {"op": "config.delete", "key": "region"},
            {"op": "config.delete", "key": "limit"},
            {"op": "config.set", "key": "retries", "value": 9},
            {"op": "kv.set", "key": "cursor", "value": {"page": 2}},
            {"op": "kv.delete", "key": "tmp"},
            {"op": "roi", "time_saved": 120.0, "value": 4.5},
        ])
    );
    let parsed = warden::SdkWrites::parse(&r.outcome.sdk_writes_json).unwrap();
    assert_eq!(parsed.kv.len(), 2);
}

#[tokio::test]
async fn writes_are_sent_even_when_the_workflow_raises() {
    let mut pool = TestPool::start(|_| {}).await;
    let source =
        "from warden import kv\ndef run(n):\n    kv.set('k', 1)\n    raise ValueError('boom')\n";
    let r = run(&mut pool, "w-2", source, &context("w-2"), no_requests).await;
    assert_eq!(r.outcome.status, Status::Failed);
    assert_eq!(
        r.outcome.sdk_writes_json, r#"[{"op":"kv.set","key":"k","value":1}]"#,
        "the supervisor, not the worker, decides to drop them"
    );
}

#[tokio::test]
async fn reads_it_did_not_write_go_to_the_supervisor_once() {
    let mut pool = TestPool::start(|_| {}).await;
    let source = r#"
from warden import config, kv

def run(n):
    a = config.get("api_token")
    b = config.get("api_token")
    g = config.get("global_token")
    v1 = kv.get("counter", 0)
    v2 = kv.get("counter", 0)
    absent = kv.get("absent", "none")
    kv.set("new", 1)
    kv.delete("old")
    keys = kv.list("")
    try:
        config.get("broken")
    except RuntimeError as e:
        err = str(e)
    return [a == b, len(a), g, v1, v2, absent, keys]
"#;
    let mut ctx: Value = serde_json::from_str(&context("r-1")).unwrap();
    ctx["config"]["org"]["secrets"] = json!(["api_token", "broken"]);
    let answer = |req: &Request| {
        let args: Value = serde_json::from_str(&req.args_json).unwrap();
        let value = match (req.op.as_str(), args["key"].as_str()) {
            ("config_secret", Some("broken")) => {
                return ReplyOutcome::Err {
                    message: "the secret `broken` cannot be decrypted".into(),
                }
            }
            ("config_secret", Some(k)) => {
                json!({"value": format!("{k}-plain-{}", args["scope"].as_str().unwrap())})
            }
            ("kv_get", Some("counter")) => json!({"found": true, "value": 41}),
            ("kv_get", _) => json!({"found": false}),
            ("kv_list", _) => json!({"keys": ["a", "old"]}),
            other => panic!("unexpected {other:?}"),
        };
        ReplyOutcome::Ok {
            value_json: value.to_string(),
        }
    };
    let r = run(&mut pool, "r-1", source, &ctx.to_string(), answer).await;
    assert_eq!(
        result(&r),
        json!([
            true,
            19,
            "global_token-plain-global",
            41,
            41,
            "none",
            ["a", "new"]
        ])
    );
    let asked: Vec<(String, Value)> = r
        .requests
        .iter()
        .map(|q| (q.op.clone(), serde_json::from_str(&q.args_json).unwrap()))
        .collect();
    assert_eq!(
        asked,
        vec![
            (
                "config_secret".into(),
                json!({"key": "api_token", "scope": "org"})
            ),
            (
                "config_secret".into(),
                json!({"key": "global_token", "scope": "global"})
            ),
            ("kv_get".into(), json!({"key": "counter"})),
            ("kv_get".into(), json!({"key": "absent"})),
            ("kv_list".into(), json!({"prefix": ""})),
            (
                "config_secret".into(),
                json!({"key": "broken", "scope": "org"})
            ),
        ],
        "each key asked once; own writes never asked"
    );
}

#[tokio::test]
async fn sdk_mistakes_raise_clear_errors_in_the_workflow() {
    let mut pool = TestPool::start(|_| {}).await;
    let source = r#"
from warden import config, kv, context

def attempt(f):
    try:
        f()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"

def run(n):
    return [
        attempt(lambda: kv.set("k", object())),
        attempt(lambda: kv.set("", 1)),
        attempt(lambda: kv.set("k" * 300, 1)),
        attempt(lambda: kv.set("k", float("nan"))),
        attempt(lambda: config.set("api_token", "x")),
        attempt(lambda: config.get(3)),
        attempt(lambda: setattr(context.roi, "time_saved", -1)),
        attempt(lambda: setattr(context.roi, "value", "lots")),
    ]
"#;
    let r = run(&mut pool, "e-1", source, &context("e-1"), no_requests).await;
    let errors: Vec<String> = serde_json::from_value(result(&r)).unwrap();
    let expect = [
        "TypeError: the value of kv key 'k' must be JSON-serializable",
        "ValueError: kv keys may not be empty",
        "more than the limit of 256",
        "TypeError: the value of kv key 'k' must be JSON-serializable",
        "ValueError: config key 'api_token' is a secret",
        "TypeError: config keys must be str",
        "ValueError: context.roi.time_saved must be at least 0",
        "TypeError: context.roi.value must be a number",
    ];
    for (got, want) in errors.iter().zip(expect) {
        assert!(got.contains(want), "{got:?} should contain {want:?}");
    }
    assert_eq!(
        r.outcome.sdk_writes_json, "",
        "refused writes are not buffered"
    );
}

#[tokio::test]
async fn sdk_log_lines_share_order_level_and_cap_with_print_and_logging() {
    let mut pool = TestPool::start(|c| c.limits.max_log_lines = 6).await;
    let source = r#"
import logging
from warden import log

def run(n):
    print("one")
    log.info("two", user="alice", n=3, note="has space")
    logging.warning("three")
    log.warning("four")
    log.debug("hidden, like logging.debug")
    log.error("five", data={"k": [1]})
    print("six")
    log.info("seven: over the cap")
    log.info("eight: over the cap")
    return 1
"#;
    let r = run(&mut pool, "l-1", source, &context("l-1"), no_requests).await;
    assert_eq!(r.outcome.status, Status::Success);
    let lines: Vec<(u32, LogLevel, &str)> = r
        .logs
        .iter()
        .map(|l| (l.seq, l.level, l.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (0, LogLevel::Info, "one"),
            (1, LogLevel::Info, "two user=alice n=3 note=\"has space\""),
            (2, LogLevel::Warning, "three"),
            (3, LogLevel::Warning, "four"),
            (4, LogLevel::Error, "five data={\"k\": [1]}"),
            (5, LogLevel::Info, "six"),
            (
                6,
                LogLevel::Warning,
                "log limit reached (6 lines / 4194304 bytes): further output dropped"
            ),
        ]
    );
    assert_eq!(r.outcome.logs_dropped, 2);
}

#[tokio::test]
async fn reuse_mode_starts_every_execution_with_a_clean_sdk_state() {
    let mut pool = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let source = r#"
from warden import context, kv

def run(n):
    before = kv.get("mine", "unset")
    kv.set("mine", context.execution_id)
    return [context.execution_id, before]
"#;
    let answer = |_: &Request| ReplyOutcome::Ok {
        value_json: json!({"found": false}).to_string(),
    };
    let a = run(&mut pool, "reuse-a", source, &context("reuse-a"), answer).await;
    let b = run(&mut pool, "reuse-b", source, &context("reuse-b"), answer).await;
    assert_eq!(result(&a), json!(["reuse-a", "unset"]));
    assert_eq!(
        result(&b),
        json!(["reuse-b", "unset"]),
        "a's buffered write is gone"
    );
    assert_eq!(b.requests.len(), 1, "b asked the supervisor itself");
    assert_eq!(
        b.outcome.sdk_writes_json,
        r#"[{"op":"kv.set","key":"mine","value":"reuse-b"}]"#
    );
}

#[tokio::test]
async fn sdk_debug_lines_follow_the_logging_level_like_logging_debug() {
    let mut pool = TestPool::start(|_| {}).await;
    let source = r#"
import logging
from warden import log

def run(n):
    log.debug("hidden at the default level")
    logging.getLogger().setLevel(logging.DEBUG)
    log.debug("shown", k=1)
    logging.debug("shown too")
    return 1
"#;
    let r = run(&mut pool, "lvl-1", source, &context("lvl-1"), no_requests).await;
    let lines: Vec<(LogLevel, &str)> = r
        .logs
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (LogLevel::Debug, "shown k=1"),
            (LogLevel::Debug, "shown too")
        ]
    );
}
