//! `--json` on the list, show and status commands, through the real `warden` binary:
//! each prints one JSON document that `serde_json` parses, with the documented field
//! names and the values the database holds.

use std::path::Path;

use serde_json::{json, Value};
use warden_tests::cli::{ok, stderr, warden, write};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

/// `warden ARGS` in `cwd`; its stdout parsed as ONE JSON document.
fn json_of(db: &TestDb, redis: &TestRedis, cwd: &Path, args: &[&str]) -> Value {
    let out = ok(warden(db, redis, cwd, args));
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

#[tokio::test]
async fn every_list_show_and_status_command_prints_one_json_document() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    sqlx::raw_sql(
        "INSERT INTO organizations (name) VALUES ('acme');
         INSERT INTO kv (org_id, key, value, updated_by)
             SELECT id, 'count', '{\"n\": 1}', 'exec-1' FROM organizations;
         INSERT INTO executions (id, workflow_name, org_id, status, queued_at, started_at,
                                 completed_at, duration_ms, result, params)
             SELECT 'e-1', 'report', id, 'success', '2026-12-01 10:00:00+00',
                    '2026-12-01 10:00:01+00', '2026-12-01 10:00:02.5+00', 1500.0,
                    '{\"ok\": true}', '{\"x\": 1}'
             FROM organizations;
         INSERT INTO execution_logs (execution_id, seq, level, message, logged_at)
             VALUES ('e-1', 0, 'info', 'hello', now()), ('e-1', 1, 'warning', 'careful', now());
         INSERT INTO executions (id, workflow_name, status, queued_at)
             VALUES ('e-2', 'other', 'pending', '2026-12-01 11:00:00+00');",
    )
    .execute(db.store.pool())
    .await
    .unwrap();

    let list = json_of(&db, &redis, cwd, &["executions", "list", "--json"]);
    assert_eq!(
        list,
        json!([
            {"id": "e-2", "org": null, "workflow": "other", "status": "pending", "attempt": 1,
             "queued_on": null, "start_unknown": false, "queued_at": "2026-12-01T11:00:00.000Z", "started_at": null, "completed_at": null,
             "duration_ms": null, "error_type": null},
            {"id": "e-1", "org": "acme", "workflow": "report", "status": "success", "attempt": 1,
             "queued_on": null, "start_unknown": false, "queued_at": "2026-12-01T10:00:00.000Z", "started_at": "2026-12-01T10:00:01.000Z",
             "completed_at": "2026-12-01T10:00:02.500Z", "duration_ms": 1500.0,
             "error_type": null},
        ])
    );
    let filtered = json_of(
        &db,
        &redis,
        cwd,
        &["executions", "list", "--status", "pending", "--json"],
    );
    assert_eq!(filtered.as_array().unwrap().len(), 1);

    let show = json_of(&db, &redis, cwd, &["executions", "show", "e-1", "--json"]);
    assert_eq!(show["id"], "e-1");
    assert_eq!(show["status"], "success");
    assert_eq!(show["result"], json!({"ok": true}));
    assert_eq!(show["params"], json!({"x": 1}));
    assert_eq!(show["error_type"], Value::Null);
    let logs: Vec<(i64, &str, &str)> = show["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["seq"].as_i64().unwrap(),
                l["level"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(logs, vec![(0, "info", "hello"), (1, "warning", "careful")]);
    // An unknown id is still an error, not an empty document.
    let missing = warden(&db, &redis, cwd, &["executions", "show", "nope", "--json"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no execution with id `nope`"));

    let kv = json_of(&db, &redis, cwd, &["kv", "list", "--json"]);
    assert_eq!(kv[0]["org"], "acme");
    assert_eq!(kv[0]["key"], "count");
    assert_eq!(kv[0]["value"], json!({"n": 1}));
    assert_eq!(kv[0]["updated_by"], "exec-1");
    assert!(kv[0]["updated_at"].is_string());

    ok(warden(
        &db,
        &redis,
        cwd,
        &["config", "set", "region", "eu-west"],
    ));
    ok(warden(
        &db,
        &redis,
        cwd,
        &["config", "set", "limit", "10", "--org", "acme"],
    ));
    let configs = json_of(&db, &redis, cwd, &["config", "list", "--json"]);
    let mut pairs: Vec<(Value, Value, Value)> = configs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["org"].clone(), c["key"].clone(), c["value"].clone()))
        .collect();
    pairs.sort_by_key(|p| p.1.to_string());
    assert_eq!(
        pairs,
        vec![
            (json!("acme"), json!("limit"), json!(10)),
            (Value::Null, json!("region"), json!("eu-west")),
        ]
    );
    assert!(configs[0]["kind"].is_string());

    write(cwd, "double.py", "def run(x):\n    return {\"y\": x * 2}\n");
    ok(warden(
        &db,
        &redis,
        cwd,
        &["workflow", "push", "double.py", "--timeout", "30s"],
    ));
    let workflows = json_of(&db, &redis, cwd, &["workflow", "list", "--json"]);
    assert_eq!(workflows[0]["name"], "double");
    assert_eq!(workflows[0]["org"], Value::Null);
    assert_eq!(workflows[0]["function"], "run");
    assert_eq!(workflows[0]["timeout_ms"], 30000);
    assert_eq!(workflows[0]["active"], true);
    assert!(workflows[0]["id"].is_i64());

    write(cwd, "shared/tickets.py", "X = 1\n");
    ok(warden(&db, &redis, cwd, &["module", "push", "shared"]));
    let modules = json_of(&db, &redis, cwd, &["module", "list", "--json"]);
    assert_eq!(modules[0]["path"], "shared/tickets.py");
    assert_eq!(modules[0]["module"], "shared.tickets");
    assert_eq!(modules[0]["size_bytes"], 6);
    assert_eq!(modules[0]["content_hash"].as_str().unwrap().len(), 64);

    // No supervisor on this prefix: empty lists and zero counts, still one document.
    let status = json_of(&db, &redis, cwd, &["status", "--json"]);
    assert_eq!(status["supervisors"], json!([]));
    assert_eq!(status["stream"]["waiting"], 0);
    assert_eq!(status["stream"]["in_progress"], 0);
    assert_eq!(status["consumers"], json!([]));
}
