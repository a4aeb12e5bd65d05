//! A thousand executions leave no zombies and no leaked descriptors. In a file of its
//! own so that this test binary's process holds only this pool's templates.

use std::collections::BTreeMap;

use warden::outcome::Status;
use warden_tests::pool::{children_of, fd_count, TestPool};

/// Our direct children that are worker templates, with their open descriptor counts.
fn templates() -> BTreeMap<u32, usize> {
    children_of(std::process::id())
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("warden-worker")
        })
        .map(|(pid, state)| {
            assert_ne!(state, "Z", "template {pid} is a zombie");
            (pid, fd_count(&pid.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_executions_leave_no_zombies_and_no_leaked_descriptors() {
    let mut p = TestPool::start(|c| c.workers = 2).await;
    let src = "def run(i):\n    return i\n";
    for i in 0..20 {
        p.submit(&format!("w{i}"), src, &format!("{{\"i\": {i}}}"), None);
    }
    for _ in 0..20 {
        p.finished().await;
    }
    let before = templates();
    assert_eq!(before.len(), 2, "two templates: {before:?}");
    let fds_before = fd_count("self");

    for i in 0..1000 {
        p.submit(&format!("e{i}"), src, &format!("{{\"i\": {i}}}"), None);
    }
    for _ in 0..1000 {
        let f = p.finished().await;
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    }

    let after = templates();
    assert_eq!(after, before, "same templates, same descriptor counts");
    for pid in after.keys() {
        let kids = children_of(*pid);
        assert!(
            kids.is_empty(),
            "template {pid} still has children: {kids:?}"
        );
    }
    let fds_after = fd_count("self");
    assert!(
        fds_after <= fds_before + 2,
        "supervisor descriptors grew from {fds_before} to {fds_after}"
    );
}
