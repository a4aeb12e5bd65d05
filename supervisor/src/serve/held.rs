//! [`Held`]: the stream entries this supervisor holds, from the read that delivered
//! them until their acknowledgement (or until they are given up to a peer). What is
//! pending on this consumer in Redis but not held is an orphan: a read whose reply was
//! lost with its connection (Redis added the entries to this consumer's pending list,
//! the reply never arrived), or what this consumer's previous incarnation left. Nobody
//! else takes a live consumer's entries, so the reader runs orphans itself
//! (crate::serve::prepare, after a failed read, a heartbeat lapse, and at start-up).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Shared by the reader (adds), the acker and the main loop (remove). Locked once per
/// batch, never across an `.await`.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashSet<String>>>);

impl Held {
    pub fn insert<'a>(&self, stream_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.0.lock().expect("held lock");
        held.extend(stream_ids.into_iter().map(str::to_owned));
    }

    pub fn remove<'a>(&self, stream_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.0.lock().expect("held lock");
        for sid in stream_ids {
            held.remove(sid);
        }
    }

    /// Keeps only the ids of `entries` not held.
    pub fn orphans(&self, entries: Vec<crate::intake::Entry>) -> Vec<crate::intake::Entry> {
        let held = self.0.lock().expect("held lock");
        entries
            .into_iter()
            .filter(|e| !held.contains(&e.stream_id))
            .collect()
    }
}
