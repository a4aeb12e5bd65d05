//! The pool's own life: cancellation (queued and running), dead templates replaced,
//! garbage on a socket, reuse-mode recycling, the drain on shutdown, and start-up
//! errors a user can cause.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use warden::Status;
use warden::{Pool, PoolConfig, PoolError};
use warden_protocol::Isolation;
use warden_tests::pool::{alive, children_of, eventually, job, TestPool};

const SLEEPY: &str = "import time\ndef run(s):\n    time.sleep(s)\n    return s\n";
const DOUBLE: &str = "def run(x):\n    return {\"y\": x * 2}\n";

#[tokio::test]
async fn cancel_kills_a_running_execution_and_ends_it_cancelled() {
    let mut p = TestPool::start(|_| {}).await;
    p.submit("long", SLEEPY, r#"{"s": 30}"#, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    p.pool.cancel(&"long".into());
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Cancelled);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(f.outcome.error.unwrap().error_type, "Cancelled");
    let f = p.run("next", DOUBLE, r#"{"x": 1}"#).await;
    assert_eq!(f.outcome.status, Status::Success);
}

#[tokio::test]
async fn cancel_of_a_queued_execution_ends_it_without_running() {
    let mut p = TestPool::start(|_| {}).await;
    p.submit("first", SLEEPY, r#"{"s": 0.5}"#, None);
    p.submit("queued", "def run():\n    print('ran')\n", "{}", None);
    p.pool.cancel(&"queued".into());
    let f = p.finished().await;
    assert_eq!(f.outcome.execution_id, "queued");
    assert_eq!(f.outcome.status, Status::Cancelled);
    assert!(f.outcome.started_at.is_none(), "never started");
    assert!(f.logs.is_empty());
    let f = p.finished().await;
    assert_eq!(
        (f.outcome.execution_id.as_str(), f.outcome.status),
        ("first", Status::Success)
    );
}

#[tokio::test]
async fn reuse_mode_crash_kills_the_template_which_is_replaced() {
    let mut p = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let f = p
        .run("die", "import os\ndef run():\n    os._exit(7)\n", "{}")
        .await;
    assert_eq!(f.outcome.status, Status::Crashed);
    assert_eq!(f.outcome.exit_code, Some(7));
    let f = p.run("next", DOUBLE, r#"{"x": 2}"#).await;
    assert_eq!(f.outcome.status, Status::Success);
    assert_eq!(p.pool.stats().templates_started, 2);
}

#[tokio::test]
async fn garbage_on_a_worker_socket_fails_only_that_execution() {
    // In reuse mode the code runs in the template, whose fd 3 is its supervisor socket.
    let mut p = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let src = "import os\ndef run():\n    os.write(3, b'\\x00\\x00\\x00\\x05garbage and more garbage')\n    import time; time.sleep(5)\n";
    let f = p.run("garbage", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Crashed);
    let e = f.outcome.error.unwrap();
    assert!(e.message.contains("protocol error"), "{}", e.message);
    let f = p.run("next", DOUBLE, r#"{"x": 3}"#).await;
    assert_eq!(f.outcome.status, Status::Success);
}

#[tokio::test]
async fn oversized_frame_announcement_fails_only_that_execution() {
    let mut p = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let src = "import os\ndef run():\n    os.write(3, b'\\xff\\xff\\xff\\xff')\n    import time; time.sleep(5)\n";
    let f = p.run("huge", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Crashed);
    assert!(f
        .outcome
        .error
        .unwrap()
        .message
        .contains("larger than the maximum"));
    let f = p.run("next", DOUBLE, r#"{"x": 3}"#).await;
    assert_eq!(f.outcome.status, Status::Success);
}

#[tokio::test]
async fn reuse_mode_recycles_a_template_after_max_executions() {
    let mut p = TestPool::start(|c| {
        c.isolation = Isolation::Reuse;
        c.max_executions_per_worker = 3;
    })
    .await;
    let mut pids = Vec::new();
    for i in 0..7 {
        let f = p.run(&format!("r{i}"), DOUBLE, r#"{"x": 1}"#).await;
        assert_eq!(f.outcome.status, Status::Success);
        pids.push(f.pid.unwrap());
    }
    // Executions 0-2 on the first template, 3-5 on the second, 6 on a third.
    assert_eq!(pids[0], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6]);
}

#[tokio::test]
async fn reuse_mode_removes_modules_an_execution_imported() {
    // Standard-library modules stay loaded (they hold no execution's state and some
    // C extensions cannot be imported twice); the workflow's own imports go.
    let mut p = TestPool::start(|c| c.isolation = Isolation::Reuse).await;
    let first = r#"import os, sys
def run():
    with open('mine_helper.py', 'w') as f:
        f.write('STATE = []\n')
    sys.path.insert(0, os.getcwd())
    import mine_helper
    mine_helper.STATE.append(1)
    return 'mine_helper' in sys.modules
"#;
    let f = p.run("a", first, "{}").await;
    assert_eq!(
        f.outcome.result_json.as_deref(),
        Some("true"),
        "{:?}",
        f.outcome.error
    );
    let second = r#"import os, sys
def run():
    return ['mine_helper' in sys.modules, os.getcwd() in sys.path]
"#;
    let f = p.run("b", second, "{}").await;
    assert_eq!(f.outcome.result_json.as_deref(), Some("[false, false]"));
}

/// Reuse mode caches compiled workflows as it runs them; a fork-mode template compiles
/// none (a child compiles its own, which would otherwise leave another organization's
/// code in every later child: see sandbox::memory). Either way an execution must run in a
/// new namespace every time, a changed source at the same path must be what runs, and a
/// source whose compilation warns must show its warning in every execution's logs.
async fn compiled_workflows_are_cached_without_changing_what_runs(isolation: Isolation) {
    let mut p = TestPool::start(|c| c.isolation = isolation).await;
    let at_one_path = |id: &str, source: &str| {
        let mut j = job(id, source, "{}", None);
        j.path = "flows/same.py".into();
        j
    };
    let counting = "SEEN = []\ndef run():\n    SEEN.append(1)\n    return len(SEEN)\n";
    for id in ["c1", "c2", "c3"] {
        assert!(p.pool.submit(at_one_path(id, counting)).is_ok());
        let f = p.finished().await;
        assert_eq!(
            f.outcome.result_json.as_deref(),
            Some("1"),
            "{id}: {:?}",
            f.outcome.error
        );
    }
    let changed = "def run():\n    return 'changed'\n";
    assert!(p.pool.submit(at_one_path("c4", changed)).is_ok());
    let f = p.finished().await;
    assert_eq!(f.outcome.result_json.as_deref(), Some("\"changed\""));

    let warns = "def run():\n    return 1 is 1\n";
    for id in ["w1", "w2", "w3"] {
        assert!(p.pool.submit(at_one_path(id, warns)).is_ok());
        let f = p.finished().await;
        assert_eq!(f.outcome.result_json.as_deref(), Some("true"));
        assert!(
            f.logs.iter().any(|l| l.message.contains("SyntaxWarning")),
            "{id} ({isolation:?}) shows the compile-time warning: {:?}",
            f.logs
        );
    }
}

#[tokio::test]
async fn fork_mode_runs_every_execution_from_its_own_source() {
    compiled_workflows_are_cached_without_changing_what_runs(Isolation::Fork).await;
}

#[tokio::test]
async fn reuse_mode_caches_compiled_workflows_without_changing_what_runs() {
    compiled_workflows_are_cached_without_changing_what_runs(Isolation::Reuse).await;
}

/// The children of `template`, waiting up to 5 s until `want` says they are as expected.
async fn children_until(
    template: u32,
    want: impl Fn(&[(u32, String)]) -> bool,
) -> Vec<(u32, String)> {
    eventually(|| {
        let kids = children_of(template);
        if want(&kids) {
            Ok(kids)
        } else {
            Err(format!("template {template} has children {kids:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn a_spare_child_killed_while_idle_is_reaped_and_the_next_execution_runs() {
    // Fork mode keeps one child forked in advance. Killed from outside, it must not stay
    // a zombie nor be handed an execution; the template forks a fresh one.
    let mut p = TestPool::start(|_| {}).await;
    let src = "import os\ndef run():\n    return os.getppid()\n";
    let f = p.run("first", src, "{}").await;
    let template: u32 = f.outcome.result_json.as_deref().unwrap().parse().unwrap();
    let one_live = |k: &[(u32, String)]| k.len() == 1 && k[0].1 != "Z";
    let spare = children_until(template, one_live).await[0].0;
    assert_ne!(Some(spare), f.pid, "the spare is not the child that ran");

    kill(Pid::from_raw(spare as i32), Signal::SIGKILL).unwrap();
    children_until(template, |k| k.is_empty()).await;

    let f = p.run("second", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    assert_ne!(f.pid, Some(spare));
    assert_eq!(
        f.outcome.result_json.as_deref(),
        Some(&*template.to_string())
    );

    // Shutting down takes the template's new spare with it.
    let spare = children_until(template, one_live).await[0].0;
    p.pool.shutdown(Duration::from_secs(5)).await;
    assert!(!alive(spare), "spare {spare} outlived its template");
    assert!(!alive(template), "template {template} outlived the pool");
}

#[tokio::test]
async fn shutdown_lets_running_work_finish_within_the_drain() {
    let mut p = TestPool::start(|_| {}).await;
    p.submit("short", SLEEPY, r#"{"s": 0.3}"#, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = p.pool.shutdown(Duration::from_secs(5)).await;
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Success);
    assert_eq!(report.abandoned, 0);
    assert_eq!(report.drained, 1);
}

#[tokio::test]
async fn shutdown_hands_back_the_queue_and_interrupts_what_outlives_the_drain() {
    let mut p = TestPool::start(|_| {}).await;
    p.submit("long", SLEEPY, r#"{"s": 30}"#, None);
    p.submit("queued", DOUBLE, r#"{"x": 1}"#, None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let report = p.pool.shutdown(Duration::from_millis(300)).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!((report.abandoned, report.returned), (1, 1));
    let ended = p.finished().await;
    assert!(ended.interrupted, "reported Interrupted: {ended:?}");
    assert_eq!(ended.outcome.execution_id, "long");
    assert_eq!(ended.outcome.status, Status::Cancelled);
    assert_eq!(ended.outcome.error.as_ref().unwrap().error_type, "Shutdown");
    // The queued one never started: handed back (before the interrupted one ended).
    assert_eq!(p.returned, vec!["queued".to_string()]);
    // Work submitted after shutdown is handed back, never silently dropped.
    let refused = p.pool.submit(job("late", DOUBLE, "{}", None));
    assert_eq!(refused.err().map(|j| j.execution_id), Some("late".into()));
}

#[tokio::test]
async fn missing_worker_binary_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PoolConfig::new(dir.path().join("no-such-worker"), dir.path().join("run"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = Pool::start(cfg, tx).await.err().expect("start fails");
    assert!(matches!(err, PoolError::WorkerBinary { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-worker") && msg.contains("--worker-bin"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_worker_that_is_not_a_worker_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PoolConfig::new("/bin/true".into(), dir.path().join("run"));
    cfg.worker_uid_base = None;
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = Pool::start(cfg, tx).await.err().expect("start fails");
    assert!(err.to_string().contains("did not become ready"), "{err}");
}
