//! A thousand executions leave no zombies and no leaked descriptors. In a file of its
//! own so that this test binary's process holds only this pool's templates.

use std::collections::BTreeMap;

use warden::Status;
use warden_tests::pool::{children_of, eventually, fd_count, TestPool};

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

/// Between executions a fork-mode template has exactly one child: the spare it forked
/// for its next execution, alive. Waits for the spares of executions that just ended, and
/// for the descriptor counts to hold still (the spare's socket and pidfd are opened just
/// after its fork).
async fn settled_templates() -> BTreeMap<u32, usize> {
    let mut last = BTreeMap::new();
    eventually(|| {
        let templates = templates();
        let spares: Vec<Vec<(u32, String)>> =
            templates.keys().map(|pid| children_of(*pid)).collect();
        if !spares
            .iter()
            .all(|kids| kids.len() == 1 && kids[0].1 != "Z")
        {
            return Err(format!(
                "each template should have one live child (its spare), have: {spares:?}"
            ));
        }
        if templates != last {
            last = templates;
            return Err(format!("descriptor counts still changing: {last:?}"));
        }
        Ok(templates)
    })
    .await
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
    let before = settled_templates().await;
    assert_eq!(before.len(), 2, "two templates: {before:?}");
    let spares_before: Vec<_> = before.keys().map(|pid| children_of(*pid)).collect();
    let fds_before = fd_count("self");

    for i in 0..1000 {
        p.submit(&format!("e{i}"), src, &format!("{{\"i\": {i}}}"), None);
    }
    for _ in 0..1000 {
        let f = p.finished().await;
        assert_eq!(f.outcome.status, Status::Success, "{:?}", f.outcome.error);
    }

    // Same templates, same descriptor counts, and each still has exactly one child: a
    // new spare (every earlier child was reaped, none left behind as a zombie).
    let after = settled_templates().await;
    assert_eq!(after, before, "same templates, same descriptor counts");
    let spares_after: Vec<_> = after.keys().map(|pid| children_of(*pid)).collect();
    for (old, new) in spares_before.iter().zip(&spares_after) {
        assert_ne!(
            old[0].0, new[0].0,
            "the spare is a fresh child: {old:?} {new:?}"
        );
    }
    let fds_after = fd_count("self");
    assert!(
        fds_after <= fds_before + 2,
        "supervisor descriptors grew from {fds_before} to {fds_after}"
    );
}
