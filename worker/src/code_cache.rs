//! Compiled workflow code that a fork-mode template keeps for one organization at a time,
//! so that a child loads its workflow's code (`marshal.loads`, ~1 µs) instead of
//! compiling the source (tens of µs plus the allocator pages it touches, on every
//! execution's critical path).
//!
//! Two rules keep it from becoming a channel between tenants or a way into the template:
//!
//! - **The template never compiles user code.** A child asked for it ([`Code::Wanted`])
//!   compiles its source and sends `marshal.dumps` of the code back as its very first
//!   frame, before any of the workflow's code runs: the bytes are what CPython's own
//!   compiler produced, not something the workflow chose. The relay accepts that frame
//!   only first, and only from a child that was asked (see `relay`); the template only
//!   stores the bytes and hands them to later children ([`Code::Cached`]), it never loads
//!   them itself.
//! - **Every byte of it belongs to one organization.** A fork-mode child is a copy of the
//!   template's whole memory, so the cache holds the code of the organization its last
//!   execution ran for, and nothing else. Before an execution of another organization
//!   (or of none) it is zeroed and emptied, and a spare forked while it held the other
//!   organization's code is discarded ([`Prepared::discard_spare`]): the execution's
//!   child must be forked after the wipe.
//!
//! Code is only asked for from the second execution in a row of one organization on
//! a template, so a host whose executions alternate between organizations never fills
//! the cache and never pays for discarding a spare; the dispatcher sends an
//! organization's executions to the template that ran its last one when it can.

use sha2::{Digest, Sha256};
use warden_protocol::{Code, Execute};
use zeroize::Zeroize;

/// Entries kept at most; the oldest goes first.
const MAX_ENTRIES: usize = 64;
/// Bytes of marshalled code kept at most (a child inherits all of them).
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// What identifies a workflow's code: its path (the code's filename) and its source.
type Key = [u8; 32];

#[derive(Debug, Default)]
pub struct CodeCache {
    /// The organization the last execution ran for ("" when it had none).
    org: String,
    /// Executions in a row for `org` on this template.
    streak: u32,
    /// Oldest first. Only `org`'s code.
    entries: Vec<(Key, Vec<u8>)>,
    bytes: usize,
}

/// What [`CodeCache::prepare`] decided for one execution.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Prepared {
    /// The spare was forked while the cache held another organization's code: it must
    /// not run this execution.
    pub discard_spare: bool,
    /// Where to store the code the child sends back ([`Code::Wanted`] only).
    pub key: Option<Key>,
}

impl CodeCache {
    /// Sets `e.code` before `e` is handed to its child, emptying the cache first when
    /// `e` belongs to another organization than the last execution.
    pub fn prepare(&mut self, e: &mut Execute) -> Prepared {
        let mut discard_spare = false;
        if e.org.is_empty() || e.org != self.org {
            discard_spare = !self.entries.is_empty();
            self.clear();
            self.org.zeroize();
            self.org.push_str(&e.org);
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        let mut key = None;
        e.code = if e.org.is_empty() || self.streak < 2 {
            Code::None
        } else {
            let k = key_of(e);
            match self.entries.iter().find(|(have, _)| *have == k) {
                Some((_, code)) => Code::Cached(code.clone()),
                None => {
                    key = Some(k);
                    Code::Wanted
                }
            }
        };
        Prepared { discard_spare, key }
    }

    /// Keeps the code a child compiled for `key` (from [`CodeCache::prepare`]). Empty
    /// code (the child could not offer any) is not kept.
    pub fn store(&mut self, key: Key, code: Vec<u8>) {
        if code.is_empty() || code.len() > MAX_BYTES {
            return;
        }
        while self.entries.len() >= MAX_ENTRIES || self.bytes + code.len() > MAX_BYTES {
            let (_, mut old) = self.entries.remove(0);
            self.bytes -= old.len();
            old.zeroize();
        }
        self.bytes += code.len();
        self.entries.push((key, code));
    }

    /// Zeroes and drops every entry.
    fn clear(&mut self) {
        for (_, code) in &mut self.entries {
            code.zeroize();
        }
        self.entries.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

fn key_of(e: &Execute) -> Key {
    let mut h = Sha256::new();
    h.update((e.path.len() as u64).to_le_bytes());
    h.update(e.path.as_bytes());
    h.update(e.source.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(org: &str, source: &str) -> Execute {
        Execute {
            org: org.into(),
            path: "w.py".into(),
            source: source.into(),
            ..Default::default()
        }
    }

    /// Runs `e` through the cache as the template does; the child "compiles" to
    /// `compiled` when asked.
    fn run(cache: &mut CodeCache, e: &mut Execute, compiled: &[u8]) -> Prepared {
        let p = cache.prepare(e);
        if let (Some(key), Code::Wanted) = (p.key, &e.code) {
            cache.store(key, compiled.to_vec());
        }
        Prepared {
            discard_spare: p.discard_spare,
            key: p.key,
        }
    }

    #[test]
    fn code_is_asked_for_from_the_second_execution_of_an_organization_and_then_handed_down() {
        let mut cache = CodeCache::default();
        let mut e = exec("a", "src");
        assert!(!run(&mut cache, &mut e, b"code").discard_spare);
        assert_eq!(e.code, Code::None, "first of a row: nothing asked");
        let mut e = exec("a", "src");
        let _ = run(&mut cache, &mut e, b"code");
        assert_eq!(e.code, Code::Wanted);
        let mut e = exec("a", "src");
        let _ = run(&mut cache, &mut e, b"other");
        assert_eq!(e.code, Code::Cached(b"code".to_vec()));
        let mut e = exec("a", "another source");
        let _ = run(&mut cache, &mut e, b"code2");
        assert_eq!(e.code, Code::Wanted, "another source is another key");
    }

    #[test]
    fn another_organization_empties_the_cache_and_discards_the_spare() {
        let mut cache = CodeCache::default();
        for _ in 0..2 {
            let _ = run(&mut cache, &mut exec("a", "src"), b"code");
        }
        assert_eq!(cache.len(), 1);
        let mut e = exec("b", "src");
        let p = run(&mut cache, &mut e, b"code-b");
        assert!(p.discard_spare, "the spare holds a's code");
        assert_eq!(e.code, Code::None);
        assert_eq!(cache.len(), 0);
        // Back to a: it starts over, and b's (empty) cache costs no discard.
        let mut e = exec("a", "src");
        assert!(!run(&mut cache, &mut e, b"code").discard_spare);
        assert_eq!(e.code, Code::None);
    }

    #[test]
    fn executions_without_an_organization_never_use_it() {
        let mut cache = CodeCache::default();
        for _ in 0..3 {
            let mut e = exec("", "src");
            let p = run(&mut cache, &mut e, b"code");
            assert_eq!(e.code, Code::None);
            assert!(!p.discard_spare);
        }
        for _ in 0..2 {
            let _ = run(&mut cache, &mut exec("a", "src"), b"code");
        }
        let p = run(&mut cache, &mut exec("", "src"), b"code");
        assert!(p.discard_spare, "no organization is not organization a");
    }

    #[test]
    fn alternating_organizations_never_fill_it() {
        let mut cache = CodeCache::default();
        for i in 0..20 {
            let org = if i % 2 == 0 { "a" } else { "b" };
            let mut e = exec(org, "src");
            let p = run(&mut cache, &mut e, b"code");
            assert!(!p.discard_spare);
            assert_eq!(e.code, Code::None);
        }
    }

    #[test]
    fn it_is_bounded() {
        let mut cache = CodeCache::default();
        let _ = run(&mut cache, &mut exec("a", "s"), b"");
        for i in 0..(MAX_ENTRIES + 10) {
            let _ = run(&mut cache, &mut exec("a", &format!("src{i}")), b"code");
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let big = vec![1u8; MAX_BYTES / 2 + 1];
        let _ = run(&mut cache, &mut exec("a", "big1"), &big);
        let _ = run(&mut cache, &mut exec("a", "big2"), &big);
        assert!(cache.bytes <= MAX_BYTES);
        let _ = run(&mut cache, &mut exec("a", "empty"), b"");
        let mut e = exec("a", "empty");
        let _ = cache.prepare(&mut e);
        assert_eq!(e.code, Code::Wanted, "empty code is not kept");
    }
}
