//! Children that die, misbehave or are killed: each is reported in Ended (with no
//! Result when there was none) and the same template runs the next execution.

mod common;

use std::time::{Duration, Instant};

use common::*;
use warden_protocol::{ExitKind, ToWorker};

#[test]
fn os_exit_reports_the_exit_code_and_no_result() {
    let mut w = Worker::start();
    let run = w.execute(exec("exit3", "import os\n\ndef run():\n    os._exit(3)\n"));
    assert!(run.result.is_none(), "{run:#?}");
    assert_eq!(run.exit(), &ExitKind::Exited(3));
    assert_trivial_succeeds(&mut w, "after-exit3");
}

#[test]
fn sigkill_from_the_code_itself_reports_signal_9() {
    let mut w = Worker::start();
    let src = "import os\n\ndef run():\n    os.kill(os.getpid(), 9)\n";
    let run = w.execute(exec("kill9", src));
    assert!(run.result.is_none());
    assert_eq!(run.exit(), &ExitKind::Signaled(9));
    assert_trivial_succeeds(&mut w, "after-kill9");
}

#[test]
fn a_segfault_reports_signal_11() {
    let mut w = Worker::start();
    let src = "import ctypes\n\ndef run():\n    ctypes.string_at(0)\n";
    let run = w.execute(exec("segv", src));
    assert!(run.result.is_none());
    assert_eq!(run.exit(), &ExitKind::Signaled(11));
    assert_trivial_succeeds(&mut w, "after-segv");
}

#[test]
fn lines_printed_before_a_crash_are_delivered() {
    let mut w = Worker::start();
    let src = "import os\n\ndef run():\n    print('before')\n    os._exit(1)\n";
    let run = w.execute(exec("crash-logs", src));
    assert_eq!(run.kinds, ["Started", "Log", "Ended"]);
    assert_eq!(run.logs[0].message, "before");
}

#[test]
fn a_memory_bomb_under_the_memory_limit_is_a_memory_error() {
    let mut w = Worker::start();
    let e = with_limits(
        exec(
            "membomb",
            "def run():\n    return len(bytearray(2 * 1024**3))\n",
        ),
        |l| l.memory_bytes = 512 * 1024 * 1024,
    );
    let run = w.execute(e);
    assert_eq!(run.failure().error_type, "MemoryError");
    assert_eq!(run.exit(), &ExitKind::Exited(0));
    assert_trivial_succeeds(&mut w, "after-membomb");
}

#[test]
fn kill_stops_a_busy_loop_quickly() {
    let mut w = Worker::start();
    w.start_execution(exec("spin", "def run():\n    while True:\n        pass\n"));
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    w.send(&ToWorker::Kill {
        execution_id: "spin".into(),
    });
    let run = w.collect("spin");
    let took = sent.elapsed();
    assert_eq!(run.exit(), &ExitKind::Signaled(9));
    assert!(run.result.is_none());
    assert!(took < Duration::from_secs(1), "Kill took {took:?}");
    eprintln!("Kill to Ended: {took:?}");
    assert_trivial_succeeds(&mut w, "after-spin");
}

#[test]
fn kill_for_another_execution_is_ignored() {
    let mut w = Worker::start();
    w.start_execution(exec(
        "wait",
        "import time\n\ndef run():\n    time.sleep(0.3)\n    return 1\n",
    ));
    w.send(&ToWorker::Kill {
        execution_id: "someone-else".into(),
    });
    let run = w.collect("wait");
    assert_eq!(run.value(), serde_json::json!(1));
}

#[test]
fn garbage_on_the_child_socket_is_a_protocol_error_and_the_template_survives() {
    let mut w = Worker::start();
    // fd 3 in the child is its output socket; "garb" as a length prefix is ~1.7 GB.
    let src = "import os, time\n\ndef run():\n    os.write(3, b'garbage!')\n    time.sleep(30)\n";
    let began = Instant::now();
    let run = w.execute(exec("garbage", src));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "child was not killed"
    );
    assert!(run.result.is_none());
    match run.exit() {
        ExitKind::ProtocolError(reason) => {
            assert!(reason.contains("larger than the maximum"), "{reason}")
        }
        other => panic!("expected ProtocolError, got {other:?}"),
    }
    assert_trivial_succeeds(&mut w, "after-garbage");
}

#[test]
fn an_undecodable_frame_body_is_a_protocol_error_and_nothing_after_it_is_relayed() {
    let mut w = Worker::start();
    let src = "import os\n\ndef run():\n    os.write(3, b'\\x00\\x00\\x00\\x04abcd')\n    print('after')\n    return 1\n";
    let run = w.execute(exec("badbody", src));
    assert!(run.result.is_none(), "{run:#?}");
    assert!(run.logs.is_empty(), "{run:#?}");
    match run.exit() {
        ExitKind::ProtocolError(reason) => assert!(reason.contains("undecodable"), "{reason}"),
        other => panic!("expected ProtocolError, got {other:?}"),
    }
    assert_trivial_succeeds(&mut w, "after-badbody");
}

#[test]
fn half_a_frame_then_exit_is_a_protocol_error() {
    let mut w = Worker::start();
    let src =
        "import os\n\ndef run():\n    os.write(3, b'\\x00\\x00\\x00\\x10ab')\n    os._exit(0)\n";
    let run = w.execute(exec("half", src));
    match run.exit() {
        ExitKind::ProtocolError(reason) => {
            assert!(reason.contains("middle of a frame"), "{reason}")
        }
        other => panic!("expected ProtocolError, got {other:?}"),
    }
    assert_trivial_succeeds(&mut w, "after-half");
}

#[test]
fn a_half_written_frame_does_not_stop_the_template_hearing_kill() {
    let mut w = Worker::start();
    let src = "import os, time\n\ndef run():\n    os.write(3, b'\\x00\\x00\\x00\\x10ab')\n    time.sleep(30)\n";
    w.start_execution(exec("stall", src));
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    w.send(&ToWorker::Kill {
        execution_id: "stall".into(),
    });
    let run = w.collect("stall");
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(run.exit(), &ExitKind::Signaled(9));
}

#[test]
fn a_cpu_limit_stops_a_busy_loop() {
    let mut w = Worker::start();
    let e = with_limits(
        exec("cpu", "def run():\n    while True:\n        pass\n"),
        |l| l.cpu_seconds = 1,
    );
    let run = w.execute(e);
    assert_eq!(run.exit(), &ExitKind::Signaled(libc::SIGXCPU));
    let ended = run.ended();
    assert!(
        ended.user_cpu_us + ended.system_cpu_us >= 900_000,
        "{ended:?}"
    );
}
