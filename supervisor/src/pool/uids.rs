//! Worker uids that no other pool on this host uses: each slot leases one uid from the
//! range `[base, base + RANGE)` by holding an exclusive `flock` on a lock file named
//! after it, for as long as the pool lives. A lock is released by the kernel when its
//! holder dies, so a killed supervisor leaks nothing.
//!
//! A slot runs two identities ([`SlotIds`]): its template as `template` (uid and gid),
//! and the children the template forks as `child = template + RANGE`. Two pools (two
//! `warden serve`s, a `warden exec` beside them, the test suite) therefore never share a
//! uid, so no execution can signal or trace another pool's processes, and the firewall
//! rule for children's gids ([`super::firewall`]) covers exactly
//! `[base + RANGE, base + 2 * RANGE)`.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::config::PoolError;

/// How many slots (template uids) one host's range holds.
pub const RANGE: u32 = 1000;

/// Where the lock files live (root only: only a root supervisor drops to worker uids).
pub const LOCK_DIR: &str = "/run/warden/uids";

/// The two identities of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotIds {
    /// The template's uid and gid.
    pub template: u32,
    /// Its children's uid and gid.
    pub child: u32,
}

impl SlotIds {
    pub fn for_template(template: u32) -> SlotIds {
        SlotIds {
            template,
            child: template + RANGE,
        }
    }
}

/// The uids a pool holds; dropping it releases them.
#[derive(Debug)]
pub struct Lease {
    pub ids: Vec<SlotIds>,
    _locks: Vec<Flock<File>>,
}

/// Leases `n` uids from `[base, base + RANGE)` through lock files in `dir`.
pub fn lease(dir: &Path, base: u32, n: usize) -> Result<Lease, PoolError> {
    let err = |path: PathBuf| move |source| PoolError::RunDir { path, source };
    std::fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
    let mut ids = Vec::with_capacity(n);
    let mut locks = Vec::with_capacity(n);
    for uid in base..base.saturating_add(RANGE) {
        if ids.len() == n {
            break;
        }
        let path = dir.join(format!("{uid}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err(path.clone()))?;
        // Held by another pool (or failed): try the next uid.
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            ids.push(SlotIds::for_template(uid));
            locks.push(lock);
        }
    }
    if ids.len() < n {
        return Err(PoolError::Config(format!(
            "only {} of the {RANGE} worker uids from {base} are free on this host ({n} needed): \
             other Warden pools hold the rest (their locks are in {}). Stop one, use fewer \
             --workers, or give this pool another range with --worker-uid-base",
            ids.len(),
            dir.display()
        )));
    }
    Ok(Lease { ids, _locks: locks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_never_share_a_uid_and_a_dropped_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease(dir.path(), 5000, 3).unwrap();
        let b = lease(dir.path(), 5000, 2).unwrap();
        let taken: Vec<u32> = a.ids.iter().chain(&b.ids).map(|i| i.template).collect();
        assert_eq!(taken, vec![5000, 5001, 5002, 5003, 5004]);
        assert_eq!(a.ids[0].child, 5000 + RANGE);
        drop(a);
        let c = lease(dir.path(), 5000, 1).unwrap();
        assert_eq!(c.ids[0].template, 5000);
    }

    #[test]
    fn an_exhausted_range_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _all = lease(dir.path(), 7000, RANGE as usize).unwrap();
        let e = lease(dir.path(), 7000, 1).unwrap_err().to_string();
        assert!(
            e.contains("only 0 of the 1000 worker uids from 7000 are free"),
            "{e}"
        );
    }
}
