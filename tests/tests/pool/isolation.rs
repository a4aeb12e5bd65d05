//! What one execution cannot do to the host or to the next execution: fork bombs,
//! escaping grandchildren, reading the supervisor's secrets, leaking processes or file
//! descriptors over many executions.

use std::time::Duration;

use warden::Status;
use warden_tests::pool::{alive, processes_of_uid, TestPool};

#[tokio::test]
async fn fork_bomb_is_contained_and_cleaned_up() {
    let mut p = TestPool::start(|c| {
        c.limits.processes = 32;
    })
    .await;
    // Children run as their slot's own uid; the template's real uid is the same (see
    // pool::spawn), so RLIMIT_NPROC counts both.
    let Some(uid) = p.pool.slot_ids().first().map(|ids| ids.child) else {
        eprintln!("not root: RLIMIT_NPROC cannot be given a uid of its own; only the deadline contains the bomb");
        return;
    };
    let src = r#"import os
def run():
    n = 0
    while True:
        try:
            os.fork()
            n += 1
        except OSError:
            pass
"#;
    p.submit("bomb", src, "{}", Some(Duration::from_secs(2)));
    // While it runs, the uid never holds more than the limit (+ the template).
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(processes_of_uid(uid).len());
    }
    let f = p.finished().await;
    assert_eq!(f.outcome.status, Status::Timeout);
    assert!(
        peak <= 33,
        "at most 32 processes + the template, saw {peak}"
    );
    // Nothing of it survives: only the template and the spare child it forked for the
    // next execution are left under that uid.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = processes_of_uid(uid);
    assert_eq!(
        left.len(),
        2,
        "only the template and its spare remain: {left:?}"
    );
    let f = p.run("after", "def run():\n    return 1\n", "{}").await;
    assert_eq!(f.outcome.status, Status::Success);
}

#[tokio::test]
async fn grandchild_that_outlives_the_execution_is_killed() {
    let mut p = TestPool::start(|_| {}).await;
    // start_new_session: it leaves the execution's process group on purpose.
    let src = r#"import subprocess
def run():
    a = subprocess.Popen(['sleep', '300'], start_new_session=True)
    b = subprocess.Popen(['sleep', '301'])
    return [a.pid, b.pid]
"#;
    let f = p.run("escape", src, "{}").await;
    assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    let pids: Vec<u32> = serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for pid in pids {
        assert!(!alive(pid), "grandchild {pid} outlived its execution");
    }
}

#[tokio::test]
async fn environment_is_scrubbed_to_the_allow_list() {
    let mut p = TestPool::start(|_| {}).await;
    let f = p
        .run(
            "env",
            "import os\ndef run():\n    return sorted(os.environ)\n",
            "{}",
        )
        .await;
    let keys: Vec<String> =
        serde_json::from_str(f.outcome.result_json.as_deref().unwrap()).unwrap();
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONNOUSERSITE",
        "PYTHONUNBUFFERED",
    ];
    for k in &keys {
        assert!(
            allowed.contains(&k.as_str()),
            "unexpected variable {k} in {keys:?}"
        );
    }
}
