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
//!
//! Every pattern is found in one pass over the text (an Aho-Corasick automaton, rebuilt
//! when a secret is added), and every byte any occurrence covers is masked: occurrences
//! that overlap (one secret a prefix of another, or one secret's end another's start)
//! become a single `***`, so no part of either shows.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aho_corasick::AhoCorasick;
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

/// The patterns to mask for one execution (each secret in all its forms) and the
/// automaton that finds them all at once.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Vec<String>,
    /// Built on first use after a secret is added (registering several secrets builds
    /// it once). `Err` if it could not be built (only past limits no execution's
    /// secrets reach), which masks whole texts.
    matcher: OnceLock<Result<AhoCorasick, ()>>,
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
        let before = self.patterns.len();
        for form in forms(secret) {
            if !self.patterns.contains(&form) {
                self.patterns.push(form);
            }
        }
        if self.patterns.len() != before {
            self.matcher = OnceLock::new();
        }
    }

    /// `text` with every run of bytes covered by some occurrence of a pattern replaced
    /// by one [`MASK`] (borrowed when nothing matched). Occurrences that overlap are one
    /// run; occurrences that only touch stay two masks, as two secrets side by side.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.patterns.is_empty() {
            return Cow::Borrowed(text);
        }
        let built = self.matcher.get_or_init(|| {
            AhoCorasick::new(&self.patterns).map_err(|e| {
                tracing::error!(error = %e, "cannot build the secret matcher; masking whole texts");
            })
        });
        let Ok(matcher) = built else {
            // Owned: callers keep their text when given it back borrowed.
            return Cow::Owned(MASK.to_string());
        };
        // Every occurrence, overlapping ones included, reported in order of their ends.
        let mut hits: Vec<(usize, usize)> = matcher
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        if hits.is_empty() {
            return Cow::Borrowed(text);
        }
        hits.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (start, end) in hits {
            match runs.last_mut() {
                Some(run) if start < run.1 => run.1 = run.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        // Matches of UTF-8 patterns in UTF-8 text start and end on character boundaries.
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for (start, end) in runs {
            out.push_str(&text[copied..start]);
            out.push_str(MASK);
            copied = end;
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
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
    fn masks_every_occurrence_of_a_secret_that_is_a_prefix_of_another_whole() {
        for secrets in [["abcd", "abcdefgh"], ["abcdefgh", "abcd"]] {
            let r = Redactor::new(secrets);
            assert_eq!(
                r.redact("x abcdefgh y abcd z abcdabcdefgh"),
                "x *** y *** z ******",
                "{secrets:?}"
            );
            assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        }
        // A suffix, and one inside another.
        let r = Redactor::new(["efgh", "abcdefgh", "cdef"]);
        assert_eq!(r.redact("abcdefgh|efgh|cdef"), "***|***|***");
    }

    #[test]
    fn overlapping_secrets_leave_no_part_of_either() {
        // The end of one is the start of the other: masking one first would leave the
        // other's tail ("ijkl") in clear.
        let r = Redactor::new(["abcdefgh", "efghijkl"]);
        assert_eq!(r.redact("<abcdefghijkl>"), "<***>");
        assert_eq!(
            r.redact("<efghijklabcdefgh>"),
            "<******>",
            "touching, not overlapping"
        );
        // A chain of overlaps is one run.
        let r = Redactor::new(["aaaabbbb", "bbbbcccc", "ccccdddd"]);
        assert_eq!(r.redact("xaaaabbbbccccddddx"), "x***x");
    }

    #[test]
    fn many_secrets_are_all_masked_in_one_pass() {
        let secrets: Vec<String> = (0..500).map(|i| format!("secret-{i:04}-value")).collect();
        let r = Redactor::new(secrets.iter().map(String::as_str));
        let text: String = secrets.iter().rev().map(|s| format!("{s} ")).collect();
        assert_eq!(r.redact(&text), "*** ".repeat(500));
        // Their encodings too, and text between them stays.
        let encoded = STANDARD.encode("secret-0042-value");
        assert_eq!(
            r.redact(&format!(
                "a={encoded}; b=secret-0499-value; c=secret-0500-value"
            )),
            "a=***; b=***; c=secret-0500-value"
        );
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
        assert_eq!(r.patterns, vec!["ab".to_string(), "YWI=".to_string()]);
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
