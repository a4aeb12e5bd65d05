//! Redaction: every secret the supervisor sent to an execution is replaced by `***` in
//! that execution's log lines (live and stored), result, error message and traceback,
//! before any of them leaves the main loop.
//!
//! The supervisor is the one place that knows which plaintexts an execution received
//! (it answered the execution's `config_secret` requests), and the one place every byte
//! an execution outputs passes through, so redacting here holds whatever the workflow
//! does in its process (printing, logging, raising, returning, or writing frames by hand).
//! The ordering is causal: a secret is registered before the reply that carries it is
//! sent, so any line containing it arrives after it is registered.
//!
//! Each secret is matched as written and in the escaped forms JSON gives it (a result is
//! JSON text; Python's `json.dumps` escapes non-ASCII by default). A secret printed in
//! another encoding (base64, reversed, split across lines) is not recognised: redaction
//! is a safety net against accidents, not a sandbox.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use warden_protocol::Log;

use crate::outcome::ExecutionOutcome;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// The secrets sent to each running execution. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Redactions {
    inner: Arc<Mutex<HashMap<String, Redactor>>>,
}

impl Redactions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Redactor>> {
        // Poisoning only means a panic elsewhere while holding the lock; the map itself
        // is always consistent (single inserts and removes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `execution_id` (idempotent). Called by the main loop when the
    /// running execution first asks for something, so that a reply computed after the
    /// execution ended (and removed by [`Redactions::finish`]) cannot re-create an entry
    /// nobody would ever remove.
    pub fn open(&self, execution_id: &str) {
        self.lock().entry(execution_id.to_string()).or_default();
    }

    /// Remember that `plaintext` is about to be sent to `execution_id`; call before
    /// replying. `false` when the execution is not tracked (it ended meanwhile): then do
    /// not send the plaintext at all.
    #[must_use]
    pub fn register(&self, execution_id: &str, plaintext: &str) -> bool {
        match self.lock().get_mut(execution_id) {
            Some(r) => {
                r.add(plaintext);
                true
            }
            None => false,
        }
    }

    /// Redacts a log line of its execution in place.
    pub fn log(&self, log: &mut Log) {
        let map = self.lock();
        if let Some(r) = map.get(&log.execution_id) {
            if let Cow::Owned(s) = r.redact(&log.message) {
                log.message = s;
            }
        }
    }

    /// Redacts the outcome's result and error in place, and forgets the execution.
    pub fn finish(&self, outcome: &mut ExecutionOutcome) {
        let Some(r) = self.lock().remove(&outcome.execution_id) else {
            return;
        };
        r.outcome(outcome);
    }

    /// How many executions have secrets registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The patterns to mask for one execution, longest first (so a secret that contains
/// another is masked whole).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        for form in forms(secret) {
            if !self.patterns.contains(&form) {
                self.patterns.push(form);
            }
        }
        self.patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    }

    /// `text` with every pattern replaced by [`MASK`] (borrowed when nothing matched).
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = Cow::Owned(out.replace(p.as_str(), MASK));
            }
        }
        out
    }

    /// Redacts the result and every error field of `outcome`.
    pub fn outcome(&self, outcome: &mut ExecutionOutcome) {
        if let Some(result) = &mut outcome.result_json {
            replace(result, self);
        }
        if let Some(e) = &mut outcome.error {
            replace(&mut e.error_type, self);
            replace(&mut e.message, self);
            replace(&mut e.traceback, self);
        }
    }
}

fn replace(s: &mut String, r: &Redactor) {
    if let Cow::Owned(new) = r.redact(s) {
        *s = new;
    }
}

/// The secret as written, as JSON writes it inside a string, and as Python's
/// `json.dumps` does by default (non-ASCII as `\uXXXX`).
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json_inner = json
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&json)
        .to_string();
    let mut ascii = String::with_capacity(json_inner.len());
    for c in json_inner.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    for f in [json_inner, ascii] {
        if !forms.contains(&f) {
            forms.push(f);
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["abcd", "abcdefgh"]);
        assert_eq!(r.redact("x abcdefgh y abcd z"), "x *** y *** z");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn masks_the_json_escaped_forms_too() {
        let secret = "pa\"ss\\wörd";
        let r = Redactor::new([secret]);
        let serde = serde_json::to_string(&serde_json::json!({ "t": secret })).unwrap();
        assert_eq!(r.redact(&serde), r#"{"t":"***"}"#);
        // Python: json.dumps({"t": 'pa"ss\\wörd'})
        let python = r#"{"t": "pa\"ss\\w\u00f6rd"}"#;
        assert_eq!(r.redact(python), r#"{"t": "***"}"#);
    }

    #[test]
    fn registry_redacts_logs_and_outcomes_then_forgets() {
        let reg = Redactions::default();
        assert!(!reg.register("e1", "s3cret!"), "not tracked yet");
        reg.open("e1");
        assert!(reg.register("e1", "s3cret!"));
        let mut log = Log {
            execution_id: "e1".into(),
            seq: 0,
            timestamp_us: 0,
            level: warden_protocol::LogLevel::Info,
            message: "token=s3cret!".into(),
        };
        reg.log(&mut log);
        assert_eq!(log.message, "token=***");
        let mut other = Log {
            execution_id: "e2".into(),
            ..log.clone()
        };
        other.message = "s3cret!".into();
        reg.log(&mut other);
        assert_eq!(
            other.message, "s3cret!",
            "only the execution that received it"
        );
        assert_eq!(reg.len(), 1);
        let mut out = crate::outcome::ExecutionOutcome {
            execution_id: "e1".into(),
            status: crate::outcome::Status::Failed,
            result_json: None,
            error: Some(warden_protocol::ErrorInfo {
                error_type: "ValueError".into(),
                message: "bad s3cret!".into(),
                traceback: "raise ValueError('s3cret!')".into(),
            }),
            started_at: None,
            finished_at: std::time::SystemTime::now(),
            duration: std::time::Duration::ZERO,
            peak_memory_bytes: 0,
            cpu_seconds: 0.0,
            exit_code: None,
            exit_signal: None,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        };
        reg.finish(&mut out);
        let e = out.error.unwrap();
        assert_eq!(
            (e.message.as_str(), e.traceback.as_str()),
            ("bad ***", "raise ValueError('***')")
        );
        assert!(reg.is_empty(), "forgotten once finished");
        assert!(
            !reg.register("e1", "late"),
            "a late reply finds nothing to register"
        );
    }
}
