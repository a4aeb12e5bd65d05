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
//! Each secret is matched as written, in the escaped forms JSON gives it (a result is
//! JSON text; Python's `json.dumps` escapes non-ASCII by default), and in the encodings a
//! workflow most often passes a credential through by accident, as GitHub Actions masks
//! them: base64 (standard and URL-safe alphabets, padded or not: what `base64.b64encode`
//! and `urlsafe_b64encode` print) and percent-encoding (what `urllib.parse.quote` and
//! `quote_plus` print, for a basic-auth header or a URL). Base64 is matched only as the
//! encoding of the secret alone: inside a longer base64 string (`user:secret` encoded
//! together) the secret's characters depend on its offset, so they are not recognised.
//! Nor is any other transformation (reversed, split across lines, hex): redaction is a
//! safety net against accidents, not a sandbox.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use warden_protocol::Log;

use super::crypto::MIN_SECRET_CHARS;
use crate::outcome::{ExecutionId, ExecutionOutcome};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// The secrets sent to each running execution. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Redactions {
    inner: Arc<Mutex<HashMap<ExecutionId, Redactor>>>,
}

impl Redactions {
    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Redactor>> {
        // Poisoning only means a panic elsewhere while holding the lock; the map itself
        // is always consistent (single inserts and removes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `execution_id` (idempotent). Called by the main loop when the
    /// running execution first asks for something, so that a reply computed after the
    /// execution ended (and removed by [`Redactions::finish`]) cannot re-create an entry
    /// nobody would ever remove.
    pub fn open(&self, execution_id: &str) {
        self.lock().entry(execution_id.into()).or_default();
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
        if let Some(r) = map.get(log.execution_id.as_str()) {
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
    #[cfg(test)]
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

/// The secret as written, as JSON writes it inside a string, as Python's `json.dumps`
/// does by default (non-ASCII as `\uXXXX`), base64-encoded and percent-encoded.
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
    let mut candidates = vec![json_inner, ascii];
    candidates.extend(encoded_forms(secret));
    for f in candidates {
        // An encoded form is never shorter than the secret, but the rule that keeps
        // masking from garbling ordinary text is stated once, for every pattern.
        if f.chars().count() >= MIN_SECRET_CHARS && !forms.contains(&f) {
            forms.push(f);
        }
    }
    forms
}

/// The secret's base64 encodings (both alphabets, with and without padding) and
/// percent-encodings (Python's `quote` with its default `safe='/'` and with `safe=''`,
/// and `quote_plus`, which writes a space as `+`). Each is ASCII without quotes or
/// backslashes, so JSON writes it unchanged.
fn encoded_forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut out: Vec<String> = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .map(|engine| engine.encode(bytes))
        .collect();
    for keep_slash in [true, false] {
        for space_as_plus in [false, true] {
            out.push(percent_encode(bytes, keep_slash, space_as_plus));
        }
    }
    out
}

/// Percent-encodes `bytes` as Python's `urllib.parse.quote` does (UTF-8, upper-case hex,
/// letters, digits and `_.-~` left alone), keeping `/` when `keep_slash` (`quote`'s
/// default) and writing a space as `+` when `space_as_plus` (`quote_plus`).
fn percent_encode(bytes: &[u8], keep_slash: bool, space_as_plus: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            b' ' if space_as_plus => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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
    fn masks_the_base64_forms() {
        // Every alphabet and padding differs for this secret: `+`/`/` in the standard
        // alphabet, `-`/`_` in the URL-safe one, and one `=` of padding.
        let secret = "s3cr\u{fb}t>?~";
        let r = Redactor::new([secret]);
        // Python: base64.b64encode / urlsafe_b64encode of the UTF-8 bytes.
        for (encoded, why) in [
            ("czNjcsO7dD4/fg==", "standard"),
            ("czNjcsO7dD4/fg", "standard, unpadded"),
            ("czNjcsO7dD4_fg==", "URL-safe"),
            ("czNjcsO7dD4_fg", "URL-safe, unpadded"),
        ] {
            assert_eq!(
                r.redact(&format!("auth={encoded};")),
                "auth=***;",
                "{why}: {encoded}"
            );
        }
        // Also inside a JSON result, which writes base64 unchanged.
        let json = serde_json::to_string(&serde_json::json!({ "b": "czNjcsO7dD4/fg==" })).unwrap();
        assert_eq!(r.redact(&json), r#"{"b":"***"}"#);
    }

    #[test]
    fn masks_the_percent_encoded_forms() {
        let secret = "p@ss w/rd+\u{e9}";
        let r = Redactor::new([secret]);
        // Python: urllib.parse.quote(s), quote(s, safe=''), quote_plus(s).
        for (encoded, why) in [
            ("p%40ss%20w/rd%2B%C3%A9", "quote"),
            ("p%40ss%20w%2Frd%2B%C3%A9", "quote, safe=''"),
            ("p%40ss+w%2Frd%2B%C3%A9", "quote_plus"),
        ] {
            assert_eq!(
                r.redact(&format!("https://h/?t={encoded}&x=1")),
                "https://h/?t=***&x=1",
                "{why}: {encoded}"
            );
        }
    }

    #[test]
    fn leaves_other_text_alone() {
        let r = Redactor::new(["p@ss w/rd+\u{e9}"]);
        // Another secret's encodings, and this one's encoding with a byte changed.
        for text in [
            "cDBzcyB3L3JkK8Op",
            "p%40ss%20w/rd%2B%C3%A8",
            "p%40ss%20w/rd",
            "plain text with no secret",
        ] {
            assert!(matches!(r.redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn no_encoded_form_is_shorter_than_a_secret_may_be() {
        // The SDK refuses a secret this short; given one anyway, it is masked as
        // written, and so is its padded base64 form, but not the unpadded one ("YWI"),
        // which would garble ordinary text.
        let r = Redactor::new(["ab"]);
        assert_eq!(r.patterns, vec!["YWI=".to_string(), "ab".to_string()]);
        assert_eq!(r.redact("YWI ab YWI="), "YWI *** ***");
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
