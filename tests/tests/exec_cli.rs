//! `warden exec` as a user runs it: the real binary, its output, its exit codes, and
//! one clear message for each mistake a user can make.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use warden_tests::pool::warden_bin;

fn workflow(src: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".py").tempfile().unwrap();
    f.write_all(src.as_bytes()).unwrap();
    f
}

fn exec(args: &[&str]) -> Output {
    Command::new(warden_bin())
        .arg("exec")
        .args(args)
        .env("DATABASE_URL", "postgres://secret@db/prod")
        .env("WARDEN_TEST_SECRET", "hunter2")
        .output()
        .expect("warden runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn success_prints_every_field_and_exits_zero() {
    let f = workflow("def run(x):\n    print('hi', x)\n    return {'y': x * 2}\n");
    let out = exec(&[
        f.path().to_str().unwrap(),
        "--params",
        r#"{"x": 21}"#,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert_eq!(v["status"], "success");
    assert_eq!(v["result"], serde_json::json!({"y": 42}));
    assert_eq!(
        v["logs"],
        serde_json::json!([{"level": "info", "message": "hi 21"}])
    );
    for key in [
        "error_type",
        "error_message",
        "traceback",
        "duration_ms",
        "peak_memory_bytes",
        "cpu_seconds",
        "exit_signal",
        "exit_code",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn exit_codes_follow_the_status() {
    let failed = workflow("def run():\n    raise KeyError('k')\n");
    let crashed = workflow("import os\ndef run():\n    os.kill(os.getpid(), 9)\n");
    let slow = workflow("def run():\n    while True: pass\n");
    let out = exec(&[failed.path().to_str().unwrap(), "--json"]);
    assert_eq!(
        (out.status.code(), json_of(&out)["status"].clone()),
        (Some(1), "failed".into())
    );
    let out = exec(&[crashed.path().to_str().unwrap(), "--json"]);
    let v = json_of(&out);
    assert_eq!(
        (out.status.code(), v["status"].clone()),
        (Some(4), "crashed".into())
    );
    assert_eq!(v["exit_signal"], 9);
    let out = exec(&[slow.path().to_str().unwrap(), "--timeout", "1", "--json"]);
    assert_eq!(
        (out.status.code(), json_of(&out)["status"].clone()),
        (Some(3), "timeout".into())
    );
}

#[test]
fn workflow_never_sees_the_supervisors_environment() {
    let f = workflow("import os\ndef run():\n    return dict(os.environ)\n");
    let out = exec(&[f.path().to_str().unwrap(), "--json"]);
    let v = json_of(&out);
    let env = v["result"].as_object().expect("environment returned");
    assert!(!env.contains_key("DATABASE_URL"), "{env:?}");
    assert!(!env.contains_key("WARDEN_TEST_SECRET"), "{env:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn missing_file_is_one_clear_message() {
    let out = exec(&["/nonexistent/flow.py"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read workflow file /nonexistent/flow.py"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_params_are_one_clear_message() {
    let f = workflow("def run():\n    return 1\n");
    for (params, expect) in [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ] {
        let out = exec(&[f.path().to_str().unwrap(), "--params", params]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{params}: {err}");
    }
}

#[test]
fn syntax_error_names_the_file_and_line() {
    let f = workflow("def run():\n    return 1\n\ndef broken(:\n    pass\n");
    let out = exec(&[f.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["error_type"], "SyntaxError");
    let msg = v["error_message"].as_str().unwrap();
    assert!(
        msg.contains(f.path().to_str().unwrap()) && msg.contains("line 4"),
        "{msg}"
    );
}

#[test]
fn missing_function_says_which_functions_exist() {
    let f = workflow("def main():\n    return 1\n");
    let out = exec(&[f.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["error_type"], "FunctionNotFound");
    let msg = v["error_message"].as_str().unwrap();
    assert!(msg.contains("'run'") && msg.contains("main"), "{msg}");
}

#[test]
fn sigterm_during_work_drains_and_records_cancelled() {
    let f =
        workflow("import time\ndef run():\n    print('started', flush=True)\n    time.sleep(60)\n");
    let child = Command::new(warden_bin())
        .args(["exec", f.path().to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v = json_of(&out);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["logs"][0]["message"], "started");
}

/// A reuse-mode workflow runs in the template, whose fds 1 and 2 are pipes into the
/// supervisor's log: what it writes there raw becomes an event attributed to the
/// worker's slot, never a line of the supervisor's own output it could forge.
#[test]
fn raw_output_of_a_reuse_workflow_cannot_forge_supervisor_lines() {
    let f = workflow(
        "import os\ndef run():\n    os.write(2, b'2026-12-01T00:00:00Z  INFO warden: FORGED\\n')\n    os.write(1, b'FORGED-STDOUT\\n')\n    return 1\n",
    );
    let out = exec(&[f.path().to_str().unwrap(), "--isolation", "reuse", "--json"]);
    assert_eq!(json_of(&out)["status"], "success");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FORGED"), "stdout: {stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(lines.len(), 2, "stderr: {stderr}");
    for l in lines {
        assert!(!l.starts_with("2026-12-01T00:00:00Z"), "a raw line: {l}");
        assert!(l.contains("slot=0"), "not attributed to its slot: {l}");
    }
}
