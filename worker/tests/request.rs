//! `_warden.request(op, args_json)`: a running execution asks the supervisor and blocks
//! until the Reply. In fork mode the child's Request goes through its template (which
//! checks it and forwards it) and the Reply comes back the same way; in reuse mode the
//! template itself writes and reads fd 3.

mod common;

use common::*;
use serde_json::json;
use warden_protocol::{ExitKind, FromWorker, Reply, ReplyOutcome, ToWorker};

const ASK: &str = r#"
import _warden, json

def run(op="echo", n=1):
    return [json.loads(_warden.request(op, json.dumps({"i": i}))) for i in range(n)]
"#;

type Start = fn() -> Worker;

fn modes() -> [(&'static str, Start); 2] {
    [("fork", Worker::start), ("reuse", Worker::start_reuse)]
}

#[test]
fn requests_are_answered_in_order_with_increasing_ids() {
    for (mode, start) in modes() {
        let mut w = start();
        let run = w.execute_answering(with_params(exec("q", ASK), r#"{"n": 3}"#), |req| {
            assert_eq!(req.op, "echo");
            let args: serde_json::Value = serde_json::from_str(&req.args_json).unwrap();
            ok_reply(&json!({"got": args["i"], "id": req.request_id}).to_string())
        });
        assert_eq!(
            run.value(),
            json!([{"got": 0, "id": 1}, {"got": 1, "id": 2}, {"got": 2, "id": 3}]),
            "{mode}"
        );
        assert_eq!(
            run.kinds,
            ["Started", "Request", "Request", "Request", "Result", "Ended"],
            "{mode}"
        );
        // The template is still fine for the next execution.
        let run = w.execute_answering(exec("q2", ASK), |_| ok_reply("7"));
        assert_eq!(run.value(), json!([7]), "{mode}");
    }
}

#[test]
fn an_error_reply_raises_runtime_error_with_the_message() {
    let src = r#"
import _warden

def run():
    try:
        _warden.request("nope", "{}")
    except RuntimeError as e:
        return str(e)
"#;
    for (mode, start) in modes() {
        let mut w = start();
        let run = w.execute_answering(exec("err", src), |req| ReplyOutcome::Err {
            message: format!("`{}` is not available", req.op),
        });
        assert_eq!(run.value(), json!("`nope` is not available"), "{mode}");
    }
}

#[test]
fn replies_for_other_executions_or_requests_are_ignored() {
    for (mode, start) in modes() {
        let mut w = start();
        w.send(&ToWorker::Execute(exec("mine", ASK)));
        let req = loop {
            match w.recv() {
                FromWorker::Request(r) => break r,
                FromWorker::Started(_) => {}
                other => panic!("{mode}: expected a Request, got {other:?}"),
            }
        };
        for (exec_id, request_id, value) in [("other", req.request_id, "1"), ("mine", 99, "2")] {
            w.send(&ToWorker::Reply(Reply {
                execution_id: exec_id.into(),
                request_id,
                outcome: ok_reply(value),
            }));
        }
        w.send(&ToWorker::Reply(Reply {
            execution_id: "mine".into(),
            request_id: req.request_id,
            outcome: ok_reply("3"),
        }));
        let run = w.collect("mine");
        assert_eq!(run.value(), json!([3]), "{mode}");
    }
}

#[test]
fn requests_from_other_threads_are_served_one_at_a_time() {
    let src = r#"
import _warden, threading

def run():
    out = {}
    def ask(i):
        out[i] = _warden.request("echo", str(i))
    ts = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    return sorted(out.items())
"#;
    for (mode, start) in modes() {
        let mut w = start();
        let run = w.execute_answering(exec("threads", src), |req| ok_reply(&req.args_json));
        assert_eq!(
            run.value(),
            json!([[0, "0"], [1, "1"], [2, "2"], [3, "3"]]),
            "{mode}"
        );
    }
}

#[test]
fn fork_kill_while_a_request_waits_kills_the_child_and_the_template_serves_on() {
    let mut w = Worker::start();
    w.send(&ToWorker::Execute(exec("k", ASK)));
    let mut started = None;
    loop {
        match w.recv() {
            FromWorker::Started(s) => started = Some(s),
            FromWorker::Request(_) => break,
            other => panic!("expected a Request, got {other:?}"),
        }
    }
    w.send(&ToWorker::Kill {
        execution_id: "k".into(),
    });
    let run = w.collect("k");
    assert_eq!(run.exit(), &ExitKind::Signaled(libc::SIGKILL));
    assert!(!is_alive(started.unwrap().pid as i32));
    assert_trivial_succeeds(&mut w, "after-kill");
}

#[test]
fn reuse_kill_while_a_request_waits_ends_the_template() {
    let mut w = Worker::start_reuse();
    w.send(&ToWorker::Execute(exec("k", ASK)));
    loop {
        match w.recv() {
            FromWorker::Started(_) => {}
            FromWorker::Request(_) => break,
            other => panic!("expected a Request, got {other:?}"),
        }
    }
    w.send(&ToWorker::Kill {
        execution_id: "k".into(),
    });
    let status = w.wait_exit(RECV_TIMEOUT);
    assert_eq!(status.code(), Some(113), "{status:?}");
}

#[test]
fn reuse_shutdown_while_a_request_waits_fails_it_then_ends_and_exits() {
    let src = r#"
import _warden

def run():
    try:
        _warden.request("slow", "{}")
    except RuntimeError as e:
        return str(e)
"#;
    let mut w = Worker::start_reuse();
    w.send(&ToWorker::Execute(exec("s", src)));
    loop {
        match w.recv() {
            FromWorker::Started(_) => {}
            FromWorker::Request(_) => break,
            other => panic!("expected a Request, got {other:?}"),
        }
    }
    w.send(&ToWorker::Shutdown);
    let run = w.collect("s");
    assert!(
        run.value().as_str().unwrap().contains("shutting down"),
        "{run:?}"
    );
    assert!(w.wait_exit(RECV_TIMEOUT).success());
}
