//! [`Held`]: the stream entries this supervisor holds, from the read that delivered
//! them until their acknowledgement (or until they are given up to a peer), and how many
//! of them each lane (queue and organization) has. What is pending on this consumer in
//! Redis but not held is an orphan: a read whose reply was lost with its connection
//! (Redis added the entries to this consumer's pending list, the reply never arrived),
//! or what this consumer's previous incarnation left. Nobody else takes a live
//! consumer's entries, so the reader runs orphans itself (crate::serve::prepare, after a
//! failed read, a heartbeat lapse, and at start-up). The counts per lane tell the
//! reader which lanes already have enough work here (crate::intake::lanes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::intake::{Entry, Lane};

#[derive(Default)]
struct Inner {
    /// Stream id → its lane.
    entries: HashMap<String, Lane>,
    per_lane: HashMap<Lane, usize>,
}

/// Shared by the reader (adds), the acker and the main loop (remove). Locked once per
/// batch, never across an `.await`.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Inner>>);

impl Held {
    pub fn insert<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        let mut held = self.0.lock().expect("held lock");
        for entry in entries {
            let lane = Lane::of_entry(entry);
            if let Some(old) = held.entries.insert(entry.stream_id.clone(), lane.clone()) {
                forget(&mut held.per_lane, &old);
            }
            *held.per_lane.entry(lane).or_default() += 1;
        }
    }

    pub fn remove<'a>(&self, stream_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.0.lock().expect("held lock");
        for sid in stream_ids {
            if let Some(lane) = held.entries.remove(sid) {
                forget(&mut held.per_lane, &lane);
            }
        }
    }

    /// Keeps only the ids of `entries` not held.
    pub fn orphans(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let held = self.0.lock().expect("held lock");
        entries
            .into_iter()
            .filter(|e| !held.entries.contains_key(&e.stream_id))
            .collect()
    }

    /// The lanes of which this supervisor holds at least `enough` entries.
    pub fn crowded(&self, enough: usize) -> Vec<Lane> {
        let held = self.0.lock().expect("held lock");
        held.per_lane
            .iter()
            .filter(|(_, n)| **n >= enough)
            .map(|(lane, _)| lane.clone())
            .collect()
    }
}

fn forget(per_lane: &mut HashMap<Lane, usize>, lane: &Lane) {
    if let Some(n) = per_lane.get_mut(lane) {
        *n -= 1;
        if *n == 0 {
            per_lane.remove(lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sid: &str, org: &str) -> Entry {
        Entry {
            stream_id: sid.into(),
            fields: vec![(b"org".to_vec(), org.as_bytes().to_vec())],
        }
    }

    #[test]
    fn lanes_are_counted_until_their_entries_are_removed() {
        let held = Held::default();
        let entries = [entry("1-0", "a"), entry("2-0", "a"), entry("3-0", "b")];
        held.insert(&entries);
        // Inserting the same entry again (a recovered orphan) does not count it twice.
        held.insert(&entries[..1]);
        let lane = |org: &str| Lane {
            queue: "default".into(),
            org: Some(org.into()),
        };
        assert_eq!(held.crowded(2), vec![lane("a")]);
        let mut both = held.crowded(1);
        both.sort();
        assert_eq!(both, vec![lane("a"), lane("b")]);
        held.remove(["1-0", "9-9"]);
        assert!(held.crowded(2).is_empty());
        held.remove(["2-0", "3-0"]);
        assert!(held.crowded(1).is_empty());
        assert_eq!(held.orphans(entries.to_vec()).len(), 3);
    }
}
