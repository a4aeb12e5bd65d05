//! The supervisor connection during a fork-mode execution: Shutdown and a closed
//! connection stop the child, and an Execute while busy is ignored.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use warden_protocol::{ExitKind, ToWorker};

const SLEEPER: &str = "import time\n\ndef run():\n    time.sleep(30)\n";

#[test]
fn shutdown_during_an_execution_kills_it_reports_ended_and_exits_0() {
    let mut w = Worker::start();
    let started = w.start_execution(exec("long", SLEEPER));
    w.send(&ToWorker::Shutdown);
    let run = w.collect("long");
    assert_eq!(run.exit(), &ExitKind::Signaled(9));
    assert_eq!(w.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!exists(started.pid as i32));
}

#[test]
fn closing_the_connection_during_an_execution_kills_the_child_and_exits() {
    let mut w = Worker::start();
    let started = w.start_execution(exec("orphan", SLEEPER));
    w.conn.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(w.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(started.pid as i32)),
        "child outlived its template"
    );
}

#[test]
fn an_execute_sent_ahead_runs_after_the_current_one_and_a_second_is_dropped() {
    let mut w = Worker::start();
    let first = w.start_execution(exec(
        "first",
        "import time\n\ndef run():\n    time.sleep(0.2)\n    return 1\n",
    ));
    // The supervisor sends a fork-mode template its next job ahead (one at most).
    w.send(&ToWorker::Execute(trivial("second")));
    w.send(&ToWorker::Execute(trivial("third")));
    let run = w.collect("first");
    assert_eq!(run.value(), json!(1));
    // "second" was kept and runs next without being sent again, in a child of its own.
    let second = w.collect("second");
    assert_eq!(second.value(), json!("ok"), "{second:#?}");
    assert_ne!(second.started.as_ref().unwrap().pid, first.pid);
    // "third" was dropped, not queued: the next message is for the next execution.
    assert_trivial_succeeds(&mut w, "fourth");
}

#[test]
fn killing_the_template_takes_the_child_with_it() {
    let mut w = Worker::start();
    let started = w.start_execution(exec("pdeath", SLEEPER));
    let child = w.child.as_mut().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(started.pid as i32)),
        "child survived its template (PR_SET_PDEATHSIG)"
    );
}

#[test]
fn the_child_sees_only_its_own_socket_on_fd_3_and_the_standard_fds() {
    let mut w = Worker::start();
    let src =
        "import os\n\ndef run():\n    return sorted(int(f) for f in os.listdir('/proc/self/fd'))\n";
    // listdir itself opens one fd for the directory.
    let fds = w.execute(exec("fds", src)).value();
    let fds: Vec<i64> = serde_json::from_value(fds).unwrap();
    assert_eq!(&fds[..4], &[0, 1, 2, 3]);
    assert!(fds.len() <= 5, "{fds:?}");
}

#[test]
fn the_child_runs_in_its_own_process_group_with_the_limits_applied() {
    let mut w = Worker::start();
    let src = "import os, resource\n\ndef run():\n    return [os.getpgid(0) == os.getpid(), resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[0], resource.getrlimit(resource.RLIMIT_CORE)[1]]\n";
    let e = with_limits(exec("sandbox", src), |l| {
        l.memory_bytes = 300 << 20;
        l.open_files = 64;
    });
    assert_eq!(w.execute(e).value(), json!([true, 300u64 << 20, 64, 0]));
}
