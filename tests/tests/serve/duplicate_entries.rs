//! Two stream entries with one execution id, one valid and one malformed: the valid
//! one runs and only it writes the execution's result; the malformed one is
//! dead-lettered and acknowledged without touching the row or the completion.

use std::time::Duration;

use warden::Status;
use warden_tests::serve::TestServe;

const DOUBLE: &str = "import time\ndef run(x):\n    time.sleep(0.5)\n    return {'y': x * 2}\n";

/// Adds `entries` to the stream in one MULTI (so they are read in one batch); returns
/// their stream ids.
async fn xadd_together(s: &TestServe, entries: &[&[(&str, &str)]]) -> Vec<String> {
    let mut conn = s.redis.conn().await;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for fields in entries {
        let cmd = pipe.cmd("XADD").arg(s.redis.keys().stream()).arg("*");
        for (k, v) in *fields {
            cmd.arg(*k).arg(*v);
        }
    }
    pipe.query_async(&mut conn).await.unwrap()
}

async fn dead_letters(s: &TestServe) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = s.redis.conn().await;
    let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(s.redis.keys().dead_letters())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    dead.into_iter()
        .map(|(_, kv)| {
            kv.chunks(2)
                .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_malformed_entry_with_a_valid_executions_id_touches_nothing() {
    let mut s = TestServe::start(|_| {}).await;
    s.push("double", DOUBLE, None).await;
    let cases: [(&str, &str, bool); 4] = [
        // (id, what is wrong, malformed first)
        ("pair-1", "params", true),
        ("pair-2", "params", false),
        ("pair-3", "workflow", true),
        ("pair-4", "workflow", false),
    ];
    for (id, wrong, malformed_first) in cases {
        let valid: Vec<(&str, &str)> = vec![
            ("id", id),
            ("workflow", "double"),
            ("params", r#"{"x": 21}"#),
        ];
        let malformed: Vec<(&str, &str)> = match wrong {
            "params" => vec![("id", id), ("workflow", "double"), ("params", "{\"x\":")],
            _ => vec![("id", id), ("params", r#"{"x": 1}"#)],
        };
        let waiter = s
            .client
            .wait_for_completion(id, Duration::from_secs(60))
            .await
            .unwrap();
        let (valid_sid, bad_sid) = if malformed_first {
            let sids = xadd_together(&s, &[&malformed, &valid]).await;
            (sids[1].clone(), sids[0].clone())
        } else {
            let sids = xadd_together(&s, &[&valid, &malformed]).await;
            (sids[0].clone(), sids[1].clone())
        };
        let c = waiter.completion().await.unwrap();
        assert_eq!(
            (c.status, c.error_type.as_deref()),
            (Status::Success, None),
            "{id} ({wrong} missing/bad, malformed first: {malformed_first}): the completion"
        );
        assert_eq!(c.result.as_ref().map(|r| r.get()), Some(r#"{"y": 42}"#));
        assert_eq!(s.wait_terminal(id).await, "success", "{id}");
        let e =
            s.db.store
                .show_execution(id)
                .await
                .unwrap()
                .unwrap()
                .execution;
        assert_eq!(e.result, Some(serde_json::json!({"y": 42})), "{id}");
        assert_eq!(e.error_type, None, "{id}");
        assert_eq!(e.stream_id.as_deref(), Some(valid_sid.as_str()), "{id}");
        assert_eq!(e.attempt, 1, "{id}");
        let (started, completed) = (e.started_at.unwrap(), e.completed_at.unwrap());
        assert!(
            started <= completed,
            "{id}: started {started} > completed {completed}"
        );

        // The malformed entry is in the dead letters, once, under its own stream id.
        let dead = dead_letters(&s).await;
        let mine: Vec<_> = dead
            .iter()
            .filter(|d| d.get("execution_id").map(String::as_str) == Some(id))
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {dead:?}");
        assert_eq!(mine[0].get("stream_id"), Some(&bad_sid), "{id}");
    }

    let report = s.stop().await;
    assert_eq!(report.executions, 4, "each valid copy ran once: {report:?}");
    assert_eq!(report.by_status.get("success"), Some(&4), "{report:?}");
    // The completions still say success after every entry was acknowledged.
    let mut conn = s.redis.conn().await;
    for (id, _, _) in cases {
        let json: String = redis::cmd("GET")
            .arg(s.redis.keys().completion_key(id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(json.contains("\"success\""), "{id}: {json}");
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(s.redis.keys().stream())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "both entries of each pair were acknowledged");
}
