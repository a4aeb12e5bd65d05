//! Workflow versions: a push that changes the source makes a new version (and one that
//! does not, none), `warden workflow history` lists them with their SHA-256, and each
//! execution records the version it ran, which `executions show` names.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use warden_tests::cli::{ok, refused, warden, write};
use warden_tests::serve::TestServe;

const V1: &str = "def run():\n    return {\"v\": 1}\n";
const V2: &str = "def run():\n    return {\"v\": 2}\n";

/// SHA-256 of `text`, hex, by `sha256sum` (not by the code under test).
fn sha256(text: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[tokio::test]
async fn a_changed_source_is_a_new_version_and_executions_name_theirs() {
    let s = TestServe::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let cli = |args: &[&str]| warden(&s.db, &s.redis, cwd, args);

    write(cwd, "flow.py", V1);
    assert_eq!(
        ok(cli(&["workflow", "push", "flow.py"])),
        "workflow flow created (id 1, version 1)\n"
    );
    assert_eq!(
        ok(cli(&["workflow", "push", "flow.py"])),
        "workflow flow unchanged (id 1, version 1)\n"
    );
    let first = s.run("x-1", "flow", "{}").await;
    assert_eq!(first.result.unwrap().get(), r#"{"v": 1}"#);

    write(cwd, "flow.py", V2);
    assert_eq!(
        ok(cli(&["workflow", "push", "flow.py"])),
        "workflow flow updated (id 1, version 2)\n"
    );
    // A change that is not the source (the timeout) is no new version.
    assert_eq!(
        ok(cli(&["workflow", "push", "flow.py", "--timeout", "30s"])),
        "workflow flow updated (id 1, version 2)\n"
    );
    let second = s.run("x-2", "flow", "{}").await;
    assert_eq!(second.result.unwrap().get(), r#"{"v": 2}"#);

    let history: Value =
        serde_json::from_str(&ok(cli(&["workflow", "history", "flow", "--json"]))).unwrap();
    let versions: Vec<(i64, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert!(v["pushed_at"].is_string());
            (
                v["version"].as_i64().unwrap(),
                v["source_hash"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(versions, vec![(1, sha256(V1)), (2, sha256(V2))]);
    let table = ok(cli(&["workflow", "history", "flow"]));
    assert!(table.starts_with("version  pushed (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    for (id, version, source) in [("x-1", 1, V1), ("x-2", 2, V2)] {
        let shown: Value =
            serde_json::from_str(&ok(cli(&["executions", "show", id, "--json"]))).unwrap();
        assert_eq!(shown["workflow_version"], version, "{id}");
        assert_eq!(shown["workflow_hash"], sha256(source), "{id}");
        let text = ok(cli(&["executions", "show", id]));
        let expected = format!(
            "workflow:  flow (version {version}, source {})",
            &sha256(source)[..12]
        );
        assert!(text.contains(&expected), "{text}");
    }

    // Unknown names are refused, naming what to do.
    let err = refused(cli(&["workflow", "history", "nope"]));
    assert!(err.contains("there is no global workflow nope"), "{err}");
    let err = refused(cli(&["workflow", "history", "flow", "--org", "acme"]));
    assert!(
        err.contains("there is no workflow flow in organization acme"),
        "{err}"
    );
}
