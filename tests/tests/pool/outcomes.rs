//! Every way an execution can end, through a real pool of real worker processes: the
//! status, the details recorded with it, and that the pool keeps serving afterwards.

use std::time::Duration;

use warden::Status;
use warden_tests::pool::TestPool;

const DOUBLE: &str = "def run(x):\n    return {\"y\": x * 2}\n";

async fn assert_still_serves(p: &mut TestPool, id: &str) {
    let f = p.run(id, DOUBLE, r#"{"x": 4}"#).await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome);
    assert_eq!(f.outcome.result_json.as_deref(), Some(r#"{"y": 8}"#));
}

#[tokio::test]
async fn sync_function_succeeds_with_json_result() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p.run("ok", DOUBLE, r#"{"x": 21}"#).await;
    assert_eq!(f.outcome.status, Status::Success);
    assert_eq!(f.outcome.result_json.as_deref(), Some(r#"{"y": 42}"#));
    assert!(f.outcome.error.is_none());
    assert!(
        f.outcome.peak_memory_bytes > 1024 * 1024,
        "peak memory is measured"
    );
    assert!(f.outcome.started_at.is_some());
}

#[tokio::test]
async fn async_function_succeeds() {
    let mut p = TestPool::start(|_| {}).await;
    let src =
        "import asyncio\nasync def run(n):\n    await asyncio.sleep(0.01)\n    return [n, n + 1]\n";
    let f = p.run("async", src, r#"{"n": 1}"#).await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    assert_eq!(f.outcome.result_json.as_deref(), Some("[1, 2]"));
}

#[tokio::test]
async fn exception_gives_type_message_and_traceback_naming_file_and_line() {
    let mut p = TestPool::start(|_| {}).await;
    let src = "def helper():\n    raise ValueError('bad input 7')\n\ndef run():\n    helper()\n";
    let f = p.run("boom", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Failed);
    let e = f.outcome.error.expect("error recorded");
    assert_eq!(e.error_type, "ValueError");
    assert_eq!(e.message, "bad input 7");
    assert!(
        e.traceback.contains("flows/boom.py\", line 2"),
        "{}",
        e.traceback
    );
    assert!(
        e.traceback.contains("flows/boom.py\", line 5"),
        "{}",
        e.traceback
    );
    assert!(
        e.traceback.contains("raise ValueError('bad input 7')"),
        "source lines shown: {}",
        e.traceback
    );
}

#[tokio::test]
async fn os_exit_is_a_crash_with_its_exit_code() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p
        .run("exit3", "import os\ndef run():\n    os._exit(3)\n", "{}")
        .await;
    assert_eq!(f.outcome.status, Status::Crashed);
    assert_eq!(f.outcome.exit_code, Some(3));
    assert_eq!(f.outcome.exit_signal, None);
    assert!(f.outcome.error.unwrap().message.contains("code 3"));
    assert_still_serves(&mut p, "after-exit").await;
}

#[tokio::test]
async fn sigkill_is_a_crash_with_signal_9() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p
        .run(
            "kill9",
            "import os\ndef run():\n    os.kill(os.getpid(), 9)\n",
            "{}",
        )
        .await;
    assert_eq!(f.outcome.status, Status::Crashed);
    assert_eq!(f.outcome.exit_signal, Some(9));
    assert!(f.outcome.error.unwrap().message.contains("SIGKILL"));
    assert_still_serves(&mut p, "after-kill").await;
}

#[tokio::test]
async fn segfault_is_a_crash_with_signal_11() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p
        .run(
            "segv",
            "import ctypes\ndef run():\n    ctypes.string_at(0)\n",
            "{}",
        )
        .await;
    assert_eq!(f.outcome.status, Status::Crashed);
    assert_eq!(f.outcome.exit_signal, Some(11));
    assert_still_serves(&mut p, "after-segv").await;
}

#[tokio::test]
async fn busy_loop_times_out_within_300ms_of_its_deadline() {
    let mut p = TestPool::start(|_| {}).await;
    p.submit(
        "spin",
        "def run():\n    while True:\n        pass\n",
        "{}",
        Some(Duration::from_secs(1)),
    );
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Timeout);
    let d = f.outcome.duration;
    assert!(
        d >= Duration::from_secs(1),
        "not before the deadline: {d:?}"
    );
    assert!(
        d <= Duration::from_millis(1300),
        "within 300 ms of the deadline: {d:?}"
    );
    assert_eq!(f.outcome.exit_signal, Some(9));
    assert_eq!(f.outcome.error.unwrap().error_type, "Timeout");
    assert_still_serves(&mut p, "after-timeout").await;
}

#[tokio::test]
async fn reuse_mode_timeout_kills_the_worker_and_a_new_one_serves() {
    let mut p = TestPool::start(|c| c.isolation = warden_protocol::Isolation::Reuse).await;
    p.submit(
        "spin",
        "def run():\n    while True:\n        pass\n",
        "{}",
        Some(Duration::from_millis(500)),
    );
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Timeout);
    assert!(
        f.outcome.duration <= Duration::from_millis(800),
        "{:?}",
        f.outcome.duration
    );
    assert_still_serves(&mut p, "after-timeout").await;
    assert_eq!(p.pool.stats().templates_started, 2);
}

#[tokio::test]
async fn memory_bomb_fails_with_memory_error_and_next_execution_is_fine() {
    let mut p = TestPool::start(|c| c.limits.memory_bytes = 512 << 20).await;
    let f = p
        .run(
            "bomb",
            "def run():\n    b = bytearray(1024 ** 3)\n    return len(b)\n",
            "{}",
        )
        .await;
    match f.outcome.status {
        Status::Failed => assert_eq!(f.outcome.error.unwrap().error_type, "MemoryError"),
        Status::Crashed => {}
        other => panic!("memory bomb ended {other}"),
    }
    assert_still_serves(&mut p, "after-bomb").await;
}

#[tokio::test]
async fn non_json_result_is_a_clear_failure() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p.run("set", "def run():\n    return {1, 2}\n", "{}").await;
    assert_eq!(f.outcome.status, Status::Failed);
    let e = f.outcome.error.unwrap();
    assert_eq!(e.error_type, "ResultNotSerializable");
    assert!(e.message.contains("set"), "{}", e.message);
}

#[tokio::test]
async fn oversized_result_is_a_clear_failure() {
    let mut p = TestPool::start(|c| c.limits.max_result_bytes = 1000).await;
    let f = p
        .run("big", "def run():\n    return 'x' * 5000\n", "{}")
        .await;
    assert_eq!(f.outcome.status, Status::Failed);
    let e = f.outcome.error.unwrap();
    assert_eq!(e.error_type, "ResultTooLarge");
    assert!(e.message.contains("1000"), "{}", e.message);
}

#[tokio::test]
async fn print_stderr_and_logging_are_captured_in_order() {
    let mut p = TestPool::start(|_| {}).await;
    let src = r#"import logging, sys
def run():
    print('one')
    logging.getLogger('x').warning('two %s', 2)
    sys.stderr.write('three\n')
    print('four', 'five')
    logging.info('six')
    return 1
"#;
    let f = p.run("logs", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let got: Vec<(u32, &str, &str)> = f
        .logs
        .iter()
        .map(|l| (l.seq, l.level.as_str(), l.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "info", "one"),
            (1, "warning", "two 2"),
            (2, "error", "three"),
            (3, "info", "four five"),
            (4, "info", "six"),
        ]
    );
}

#[tokio::test]
async fn asyncio_is_imported_once_by_the_template_for_later_children() {
    let mut p = TestPool::start(|_| {}).await;
    let probe = "import sys\ndef run():\n    return 'asyncio' in sys.modules\n";
    let f = p.run("before", probe, "{}").await;
    assert_eq!(
        f.outcome.result_json.as_deref(),
        Some("false"),
        "not at start-up"
    );
    let src = "async def run():\n    return 1\n";
    assert_eq!(
        p.run("async", src, "{}").await.outcome.status,
        Status::Success
    );
    // A later child starts with it already loaded (inherited, not imported again).
    let f = p.run("after", probe, "{}").await;
    assert_eq!(f.outcome.result_json.as_deref(), Some("true"));
}
