//! Nothing an execution starts outlives it: its process group is killed, escapees are
//! reaped by the template (a child subreaper), and the template itself accumulates
//! neither zombies nor file descriptors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use warden_protocol::{ExitKind, ToWorker};

/// The uid the fork-bomb test runs the worker as: RLIMIT_NPROC is not enforced for root.
const NOBODY: u32 = 65534;

#[test]
fn a_fork_bomb_is_contained_by_the_process_limit_and_killed_with_its_group() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let opts = Options {
        uid: root.then_some(NOBODY),
        ..Options::default()
    };
    let mut w = Worker::start_with(&opts);
    let src = "import os, time\n\ndef run():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            time.sleep(0.001)\n";
    let e = with_limits(exec("forkbomb", src), |l| l.processes = 32);
    let started = w.start_execution(e);
    let pgid = started.pid as i32;
    std::thread::sleep(Duration::from_secs(1));
    let members = members_of_group(pgid).len();
    assert!(members > 1, "the bomb did fork ({members} processes)");
    assert!(members <= 32, "RLIMIT_NPROC held: {members} processes");
    w.send(&ToWorker::Kill {
        execution_id: "forkbomb".into(),
    });
    let run = w.collect("forkbomb");
    assert_eq!(run.exit(), &ExitKind::Signaled(9));
    assert!(members_of_group(pgid).is_empty(), "group {pgid} survived");
    assert_ne!(spare_of(w.pid()), pgid);
    assert_trivial_succeeds(&mut w, "after-forkbomb");
}

#[test]
fn a_grandchild_in_its_own_session_is_killed_after_the_execution() {
    let mut w = Worker::start();
    let src = "import subprocess\n\ndef run():\n    p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n    return p.pid\n";
    let run = w.execute(exec("escape", src));
    let pid = run.value().as_i64().unwrap() as i32;
    assert_eq!(run.exit(), &ExitKind::Exited(0));
    // Killed and reaped before Ended was sent: not even a zombie is left.
    assert!(!exists(pid), "sleep {pid} survived the execution");
    spare_of(w.pid());
}

#[test]
fn a_double_forked_daemon_is_killed_after_the_execution() {
    let mut w = Worker::start();
    // Classic daemonisation without exec: fork, setsid, fork again, parent exits.
    let src = r#"
import os, time

def run():
    r, wr = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        os.write(wr, str(pid).encode())
        os._exit(0)
    return int(os.read(r, 32))
"#;
    let run = w.execute(exec("daemon", src));
    let pid = run.value().as_i64().unwrap() as i32;
    assert!(!exists(pid), "daemon {pid} survived the execution");
    spare_of(w.pid());
}

#[test]
fn two_hundred_executions_leave_no_zombies_and_no_extra_fds() {
    let mut w = Worker::start();
    // Measured idle, before any execution: Ended must mean the template holds nothing
    // of the execution any more (the supervisor checks right after it).
    let fds_before = idle_fd_count(w.pid());
    assert_trivial_succeeds(&mut w, "warm-up");
    assert_eq!(idle_fd_count(w.pid()), fds_before);
    let began = Instant::now();
    for i in 0..200 {
        let run = w.execute(trivial(&format!("loop-{i}")));
        assert_eq!(run.value(), json!("ok"));
    }
    let per_execution = began.elapsed() / 200;
    eprintln!("fork-mode round trip (Execute to Ended, trivial function): {per_execution:?}");
    spare_of(w.pid());
    assert!(zombie_children_of(w.pid()).is_empty());
    assert_eq!(idle_fd_count(w.pid()), fds_before);
}

#[test]
fn executions_that_spawn_processes_leave_no_zombies_either() {
    let mut w = Worker::start();
    let src = "import subprocess, os\n\ndef run():\n    subprocess.run(['true'])\n    subprocess.Popen(['sleep', '5'])\n    if os.fork() == 0:\n        os._exit(0)\n    return 1\n";
    let fds_before = idle_fd_count(w.pid());
    for i in 0..20 {
        assert_eq!(
            w.execute(exec(&format!("spawny-{i}"), src)).value(),
            json!(1)
        );
    }
    spare_of(w.pid());
    assert!(zombie_children_of(w.pid()).is_empty());
    assert_eq!(idle_fd_count(w.pid()), fds_before);
}
