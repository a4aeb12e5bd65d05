//! Reuse mode: the template runs executions itself (trusted code), with the same
//! frames as fork mode, and puts back what an execution changed in the interpreter.

mod common;

use std::time::Instant;

use common::*;
use serde_json::json;
use warden_protocol::ExitKind;

#[test]
fn reuse_runs_in_the_template_and_reports_in_process() {
    let mut w = Worker::start_reuse();
    let e = with_params(
        exec(
            "r1",
            "def run(x):\n    print('hi')\n    return {\"y\": x * 2}\n",
        ),
        r#"{"x": 21}"#,
    );
    let run = w.execute(e);
    assert_eq!(run.value(), json!({"y": 42}));
    assert_eq!(run.kinds, ["Started", "Log", "Result", "Ended"]);
    assert_eq!(run.started.as_ref().unwrap().pid as i32, w.pid());
    assert_eq!(run.exit(), &ExitKind::InProcess);
    let ended = run.ended();
    assert!(ended.peak_memory_bytes > 0);
    assert!(ended.worker_rss_bytes > 0);
}

#[test]
fn reuse_reports_failures_like_fork_mode() {
    let mut w = Worker::start_reuse();
    let mut e = exec("r-err", "def run():\n    raise RuntimeError('nope')\n");
    e.path = "flows/r.py".into();
    let run = w.execute(e);
    let err = run.failure();
    assert_eq!(err.error_type, "RuntimeError");
    assert!(err
        .traceback
        .contains("File \"flows/r.py\", line 2, in run"));
    let run = w.execute(exec(
        "r-exit",
        "import sys\n\ndef run():\n    sys.exit(1)\n",
    ));
    assert_eq!(run.failure().error_type, "SystemExit");
    assert_trivial_succeeds_in_process(&mut w, "r-after");
}

fn assert_trivial_succeeds_in_process(w: &mut Worker, id: &str) {
    let run = w.execute(trivial(id));
    assert_eq!(run.value(), json!("ok"));
    assert_eq!(run.exit(), &ExitKind::InProcess);
}

#[test]
fn modules_an_execution_imported_are_removed_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helper_mod.py"), "CALLS = []\n").unwrap();
    let dir = dir.path().to_str().unwrap().to_string();
    let params = serde_json::to_string(&json!({ "d": dir })).unwrap();
    let mut w = Worker::start_reuse();

    let importer = "import sys\n\ndef run(d):\n    sys.path.insert(0, d)\n    import helper_mod\n    helper_mod.CALLS.append(1)\n    return len(helper_mod.CALLS)\n";
    let checker = "import sys\n\ndef run(d):\n    return {'loaded': 'helper_mod' in sys.modules, 'on_path': d in sys.path}\n";

    assert_eq!(
        w.execute(with_params(exec("m1", importer), &params))
            .value(),
        json!(1)
    );
    assert_eq!(
        w.execute(with_params(exec("m2", checker), &params)).value(),
        json!({"loaded": false, "on_path": false})
    );
    // Imported afresh: its module-level state starts over.
    assert_eq!(
        w.execute(with_params(exec("m3", importer), &params))
            .value(),
        json!(1)
    );
}

#[test]
fn the_workflow_namespace_is_fresh_each_time() {
    let mut w = Worker::start_reuse();
    let src = "COUNT = 0\n\ndef run():\n    global COUNT\n    COUNT += 1\n    return COUNT\n";
    assert_eq!(w.execute(exec("n1", src)).value(), json!(1));
    assert_eq!(w.execute(exec("n2", src)).value(), json!(1));
    let leak = "def run():\n    return 'COUNT' in globals()\n";
    assert_eq!(w.execute(exec("n3", leak)).value(), json!(false));
}

#[test]
fn capture_is_restored_after_code_replaces_stdout() {
    let mut w = Worker::start_reuse();
    let hijack =
        "import io, sys\n\ndef run():\n    sys.stdout = io.StringIO()\n    print('swallowed')\n";
    let run = w.execute(exec("h1", hijack));
    assert!(run.logs.is_empty());
    let run = w.execute(exec("h2", "def run():\n    print('seen')\n"));
    assert_eq!(run.logs.len(), 1);
    assert_eq!(run.logs[0].message, "seen");
    assert_eq!(run.logs[0].seq, 0, "seq restarts per execution");
}

#[test]
fn processes_a_reuse_execution_leaves_behind_are_killed() {
    let mut w = Worker::start_reuse();
    let src = "import subprocess\n\ndef run():\n    return subprocess.Popen(['sleep', '300'], start_new_session=True).pid\n";
    let pid = w.execute(exec("bg", src)).value().as_i64().unwrap() as i32;
    assert!(!exists(pid), "sleep {pid} survived");
    assert!(children_of(w.pid()).is_empty());
}

#[test]
fn reuse_round_trip_is_fast() {
    let mut w = Worker::start_reuse();
    assert_trivial_succeeds_in_process(&mut w, "warm");
    let began = Instant::now();
    for i in 0..200 {
        assert_eq!(
            w.execute(trivial(&format!("fast-{i}"))).value(),
            json!("ok")
        );
    }
    let each = began.elapsed() / 200;
    eprintln!("reuse-mode round trip (Execute to Ended, trivial function): {each:?}");
}
