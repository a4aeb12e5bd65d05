//! The execution request as it travels in the stream, and its parser.
//!
//! A request is one stream entry whose fields are flat strings, so that any client in
//! any language can write one with a plain `XADD`:
//!
//! | field         | required | value                                                        |
//! |---------------|----------|--------------------------------------------------------------|
//! | `id`          | yes      | execution id, 1..=128 chars of `[A-Za-z0-9_.:-]`             |
//! | `workflow`    | yes      | numeric workflow id (`42`) or workflow name (`billing/sync`) |
//! | `params`      | no       | JSON object text, its keys become keyword arguments; `{}`    |
//! | `org`         | no       | organisation name                                            |
//! | `caller`      | no       | who asked (user, service), recorded with the execution       |
//! | `timeout`     | no       | deadline in seconds (`30`, `2.5`), > 0 and <= 86400          |
//! | `delivery_id` | no       | reserved for event delivery; same charset as `id`            |
//! | `retries`     | no       | retries for this execution (`0`..=`100`), instead of the workflow's |
//! | `not_before`  | no       | do not start before: RFC 3339 (`2026-12-24T07:00:00+01:00`) or Unix seconds |
//! | `attempt`     | no       | set by supervisors on a due attempt's entry (crate::serve::due), not by clients |
//! | `queue`       | no       | named queue (`critical`), 1..=64 chars of `[A-Za-z0-9_.-]`; `default` when absent |
//! | `enqueued`    | no       | set by the take script (crate::intake::lanes): the lane entry's id, i.e. when it was submitted |
//!
//! An empty value of an optional field means "absent" (clients that cannot omit a
//! field send `""`). Unknown fields are ignored, so newer clients can talk to older
//! supervisors. A field given twice is rejected rather than guessed at.
//!
//! [`parse`] never panics and never allocates more than a bounded amount per field
//! beyond the entry itself: every way an entry can be wrong ends in an [`InvalidEntry`]
//! whose `reason` says what was wrong and what was expected. When the entry carried a
//! usable `id`, [`InvalidEntry::execution_id`] is set so the execution can still be
//! recorded as `failed` and its completion published.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::outcome::ExecutionId;

/// Longest execution id (and `delivery_id`), in bytes (the charset is ASCII).
pub const MAX_ID_LEN: usize = 128;
/// Longest workflow name, org or caller, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Largest `params` JSON text. Parameters travel inside one protocol frame to the
/// worker and into the execution row; anything this big belongs in storage, not here.
pub const MAX_PARAMS_BYTES: usize = 1024 * 1024;
/// Longest `timeout` a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Which workflow to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkflowRef {
    /// The workflow's numeric id (the field was all ASCII digits).
    Id(i64),
    /// The workflow's name.
    Name(String),
}

impl fmt::Display for WorkflowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkflowRef::Id(id) => write!(f, "{id}"),
            WorkflowRef::Name(name) => f.write_str(name),
        }
    }
}

/// A valid execution request: one stream entry, parsed (not the SDK's
/// `warden_protocol::Request`, which a running execution sends).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRequest {
    pub execution_id: ExecutionId,
    pub workflow: WorkflowRef,
    /// A JSON object, exactly as the client sent it (validated, not re-encoded).
    pub params_json: String,
    pub org: Option<String>,
    pub caller: Option<String>,
    /// `None`: the supervisor's default deadline.
    pub timeout: Option<Duration>,
    pub delivery_id: Option<String>,
    /// Retries for this execution, instead of its workflow's policy's number.
    pub retries: Option<u32>,
    /// Not to start before this time (`scheduled` until then).
    pub not_before: Option<DateTime<Utc>>,
    /// On an entry the due-work poller enqueues: the attempt it starts (a waiting row
    /// is begun only by the entry carrying the attempt it waits for).
    pub attempt: Option<i32>,
    /// The named queue it waits in (crate::intake::lanes); `None`: the default queue.
    pub queue: Option<String>,
    /// When it was submitted to its lane (the `enqueued` field the take script adds);
    /// `None` for entries added to the stream directly. Not sent by clients.
    pub enqueued_at: Option<std::time::SystemTime>,
}

/// Why a stream entry is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEntry {
    /// The stream entry's id (`1700000000000-0`), for acknowledging and dead-lettering it.
    pub stream_id: String,
    /// The entry's `id` field, when it was present and valid.
    pub execution_id: Option<ExecutionId>,
    /// What was wrong, for a human: "missing field `workflow`".
    pub reason: String,
}

impl fmt::Display for InvalidEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream entry {}", self.stream_id)?;
        if let Some(id) = &self.execution_id {
            write!(f, " (execution {id})")?;
        }
        write!(f, " rejected: {}", self.reason)
    }
}

impl std::error::Error for InvalidEntry {}

impl ExecutionRequest {
    /// A request with empty params and no optional fields.
    pub fn new(execution_id: impl Into<ExecutionId>, workflow: WorkflowRef) -> Self {
        ExecutionRequest {
            execution_id: execution_id.into(),
            workflow,
            params_json: "{}".to_owned(),
            org: None,
            caller: None,
            timeout: None,
            delivery_id: None,
            retries: None,
            not_before: None,
            attempt: None,
            queue: None,
            enqueued_at: None,
        }
    }

    /// The queue it waits in: its own, else [`super::lanes::DEFAULT_QUEUE`].
    pub fn queue_name(&self) -> &str {
        self.queue.as_deref().unwrap_or(super::lanes::DEFAULT_QUEUE)
    }

    /// A fresh random execution id (a UUID v4), for clients that do not bring their own.
    pub fn new_id() -> ExecutionId {
        uuid::Uuid::new_v4().to_string().into()
    }

    /// The stream entry fields for this request, in a stable order; absent optional
    /// fields are left out. `parse(_, to_fields())` gives the request back.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.execution_id.to_string()),
            ("workflow", self.workflow.to_string()),
            ("params", self.params_json.clone()),
        ];
        if let Some(org) = &self.org {
            fields.push(("org", org.clone()));
        }
        if let Some(caller) = &self.caller {
            fields.push(("caller", caller.clone()));
        }
        if let Some(timeout) = self.timeout {
            fields.push(("timeout", format_seconds(timeout)));
        }
        if let Some(delivery_id) = &self.delivery_id {
            fields.push(("delivery_id", delivery_id.clone()));
        }
        if let Some(retries) = self.retries {
            fields.push(("retries", retries.to_string()));
        }
        if let Some(at) = self.not_before {
            fields.push((
                "not_before",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ));
        }
        if let Some(attempt) = self.attempt {
            fields.push(("attempt", attempt.to_string()));
        }
        if let Some(queue) = &self.queue {
            fields.push(("queue", queue.clone()));
        }
        fields
    }

    /// Checks the request the way the supervisor will, so a client learns of a mistake
    /// at submit time rather than from a dead letter.
    pub fn validate(&self) -> Result<(), InvalidEntry> {
        let parsed = parse("(not submitted)", self.to_fields())?;
        // A name that is all digits would come back as an id: say so instead of
        // silently running a different workflow.
        if parsed.workflow != self.workflow {
            return Err(InvalidEntry {
                stream_id: "(not submitted)".to_owned(),
                execution_id: Some(self.execution_id.clone()),
                reason: format!(
                    "workflow name `{}` is all digits and would be read as a workflow id",
                    self.workflow
                ),
            });
        }
        Ok(())
    }
}

/// `30` for whole seconds, `2.5` otherwise: what [`parse`] reads back exactly.
fn format_seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

const FIELD_ID: &str = "id";
const FIELD_WORKFLOW: &str = "workflow";
const FIELD_PARAMS: &str = "params";
const FIELD_ORG: &str = "org";
const FIELD_CALLER: &str = "caller";
const FIELD_TIMEOUT: &str = "timeout";
const FIELD_DELIVERY_ID: &str = "delivery_id";
const FIELD_RETRIES: &str = "retries";
const FIELD_NOT_BEFORE: &str = "not_before";
const FIELD_ATTEMPT: &str = "attempt";
const FIELD_QUEUE: &str = "queue";
const FIELD_ENQUEUED: &str = "enqueued";

/// The known fields, raw, as found in the entry.
#[derive(Default)]
struct RawFields<'a> {
    id: Option<&'a [u8]>,
    workflow: Option<&'a [u8]>,
    params: Option<&'a [u8]>,
    org: Option<&'a [u8]>,
    caller: Option<&'a [u8]>,
    timeout: Option<&'a [u8]>,
    delivery_id: Option<&'a [u8]>,
    retries: Option<&'a [u8]>,
    not_before: Option<&'a [u8]>,
    attempt: Option<&'a [u8]>,
    queue: Option<&'a [u8]>,
    enqueued: Option<&'a [u8]>,
}

/// Turns one stream entry into an [`ExecutionRequest`], or says why it is not one.
pub fn parse<I, K, V>(stream_id: &str, fields: I) -> Result<ExecutionRequest, InvalidEntry>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    // Keep the pairs alive while we borrow from them.
    let pairs: Vec<(K, V)> = fields.into_iter().collect();
    let mut raw = RawFields::default();
    let mut duplicate: Option<&'static str> = None;
    let mut unknown = 0usize;
    for (name, value) in &pairs {
        let slot = match name.as_ref() {
            b"id" => (&mut raw.id, FIELD_ID),
            b"workflow" => (&mut raw.workflow, FIELD_WORKFLOW),
            b"params" => (&mut raw.params, FIELD_PARAMS),
            b"org" => (&mut raw.org, FIELD_ORG),
            b"caller" => (&mut raw.caller, FIELD_CALLER),
            b"timeout" => (&mut raw.timeout, FIELD_TIMEOUT),
            b"delivery_id" => (&mut raw.delivery_id, FIELD_DELIVERY_ID),
            b"retries" => (&mut raw.retries, FIELD_RETRIES),
            b"not_before" => (&mut raw.not_before, FIELD_NOT_BEFORE),
            b"attempt" => (&mut raw.attempt, FIELD_ATTEMPT),
            b"queue" => (&mut raw.queue, FIELD_QUEUE),
            b"enqueued" => (&mut raw.enqueued, FIELD_ENQUEUED),
            _ => {
                unknown += 1;
                continue;
            }
        };
        if slot.0.is_some() {
            duplicate.get_or_insert(slot.1);
        }
        *slot.0 = Some(value.as_ref());
    }
    if unknown > 0 {
        tracing::debug!(
            stream_id,
            unknown,
            "ignoring unknown fields in stream entry"
        );
    }

    // The id first: with it, every later rejection can still be recorded against the
    // execution the client is waiting for.
    let execution_id = match raw.id {
        None => return Err(reject(stream_id, None, "missing field `id`".to_owned())),
        Some(bytes) => match parse_id(FIELD_ID, bytes) {
            Ok(id) => ExecutionId::from(id),
            Err(reason) => return Err(reject(stream_id, None, reason)),
        },
    };
    let fail = |reason: String| reject(stream_id, Some(execution_id.clone()), reason);

    if let Some(field) = duplicate {
        return Err(fail(format!("field `{field}` appears more than once")));
    }

    let workflow = match raw.workflow {
        None => return Err(fail("missing field `workflow`".to_owned())),
        Some(bytes) => parse_workflow(bytes).map_err(&fail)?,
    };
    let params_json = match raw.params {
        None => "{}".to_owned(),
        Some([]) => "{}".to_owned(),
        Some(bytes) => parse_params(bytes).map_err(&fail)?,
    };
    let org = optional(raw.org)
        .map(|b| parse_name(FIELD_ORG, b))
        .transpose()
        .map_err(&fail)?;
    let caller = optional(raw.caller)
        .map(|b| parse_name(FIELD_CALLER, b))
        .transpose()
        .map_err(&fail)?;
    let timeout = optional(raw.timeout)
        .map(parse_timeout)
        .transpose()
        .map_err(&fail)?;
    let delivery_id = optional(raw.delivery_id)
        .map(|b| parse_id(FIELD_DELIVERY_ID, b))
        .transpose()
        .map_err(&fail)?;
    let retries = optional(raw.retries)
        .map(|b| parse_count(FIELD_RETRIES, b, crate::retry_policy::MAX_RETRIES as i64))
        .transpose()
        .map_err(&fail)?
        .map(|n| n as u32);
    let not_before = optional(raw.not_before)
        .map(parse_time)
        .transpose()
        .map_err(&fail)?;
    let attempt = optional(raw.attempt)
        .map(|b| parse_count(FIELD_ATTEMPT, b, i32::MAX as i64))
        .transpose()
        .map_err(&fail)?
        .map(|n| n as i32)
        .filter(|n| *n >= 1);
    let queue = optional(raw.queue)
        .map(|b| {
            std::str::from_utf8(b)
                .map_err(|_| "field `queue` is not UTF-8".to_owned())
                .and_then(|q| super::lanes::check_queue(q).map(str::to_owned))
        })
        .transpose()
        .map_err(&fail)?
        .filter(|q| q != super::lanes::DEFAULT_QUEUE);
    // Informational: a value that is not a stream id is ignored, not rejected.
    let enqueued_at = optional(raw.enqueued)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(stream_id_time);

    Ok(ExecutionRequest {
        execution_id,
        workflow,
        params_json,
        org,
        caller,
        timeout,
        delivery_id,
        retries,
        not_before,
        attempt,
        queue,
        enqueued_at,
    })
}

/// When a stream entry was added: its id starts with the milliseconds (`1700000000000-0`).
pub fn stream_id_time(sid: &str) -> Option<std::time::SystemTime> {
    let ms: u64 = sid.split('-').next()?.parse().ok()?;
    Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

fn reject(stream_id: &str, execution_id: Option<ExecutionId>, reason: String) -> InvalidEntry {
    InvalidEntry {
        stream_id: stream_id.to_owned(),
        execution_id,
        reason,
    }
}

/// An optional field: absent or empty both mean "not given".
fn optional(value: Option<&[u8]>) -> Option<&[u8]> {
    value.filter(|b| !b.is_empty())
}

fn utf8<'a>(field: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "field `{field}` is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        )
    })
}

/// Whether `id` is a valid execution id (1..=128 chars of `[A-Za-z0-9_.:-]`), and if
/// not, why.
pub fn check_execution_id(id: &str) -> Result<(), String> {
    parse_id(FIELD_ID, id.as_bytes()).map(|_| ())
}

fn id_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn parse_id(field: &str, bytes: &[u8]) -> Result<String, String> {
    if bytes.is_empty() {
        return Err(format!("field `{field}` is empty"));
    }
    // Length before UTF-8 so a huge value is refused without being scanned twice.
    if bytes.len() > MAX_ID_LEN {
        return Err(format!(
            "field `{field}` is {} bytes long; the maximum is {MAX_ID_LEN}",
            bytes.len()
        ));
    }
    let text = utf8(field, bytes)?;
    if let Some((pos, c)) = text.char_indices().find(|&(_, c)| !id_char_ok(c)) {
        return Err(format!(
            "field `{field}` has the character {c:?} at offset {pos}; \
             allowed are A-Z a-z 0-9 _ . : -"
        ));
    }
    Ok(text.to_owned())
}

fn parse_name(field: &str, bytes: &[u8]) -> Result<String, String> {
    // A name of MAX_NAME_LEN chars is at most 4 * MAX_NAME_LEN bytes.
    if bytes.len() > 4 * MAX_NAME_LEN {
        return Err(format!(
            "field `{field}` is {} bytes long; the maximum is {MAX_NAME_LEN} characters",
            bytes.len()
        ));
    }
    let text = utf8(field, bytes)?;
    let chars = text.chars().count();
    if chars > MAX_NAME_LEN {
        return Err(format!(
            "field `{field}` is {chars} characters long; the maximum is {MAX_NAME_LEN}"
        ));
    }
    if let Some((pos, c)) = text.char_indices().find(|&(_, c)| c.is_control()) {
        return Err(format!(
            "field `{field}` has the control character {c:?} at offset {pos}"
        ));
    }
    Ok(text.to_owned())
}

fn parse_workflow(bytes: &[u8]) -> Result<WorkflowRef, String> {
    if bytes.is_empty() {
        return Err("field `workflow` is empty: expected a workflow id or name".to_owned());
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        // All digits: an id. Digits are ASCII, so this cannot fail on UTF-8.
        let text = utf8(FIELD_WORKFLOW, bytes)?;
        return text.parse::<i64>().map(WorkflowRef::Id).map_err(|_| {
            format!(
                "field `workflow` is the number {}, which is out of range for a workflow id",
                snippet(text)
            )
        });
    }
    parse_name(FIELD_WORKFLOW, bytes).map(WorkflowRef::Name)
}

fn parse_params(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() > MAX_PARAMS_BYTES {
        return Err(format!(
            "params is {} bytes of JSON; the maximum is {MAX_PARAMS_BYTES}",
            bytes.len()
        ));
    }
    let text = utf8(FIELD_PARAMS, bytes)?;
    // Validate without building a tree: a RawValue is the value's own text, and a
    // valid JSON value whose text starts with `{` is an object.
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| format!("params is not valid JSON ({e}): got `{}`", snippet(text)))?;
    if !raw.get().starts_with('{') {
        return Err(format!(
            "params is not a JSON object: expected `{{...}}`, got `{}`",
            snippet(raw.get())
        ));
    }
    Ok(text.to_owned())
}

fn parse_timeout(bytes: &[u8]) -> Result<Duration, String> {
    let text = utf8(FIELD_TIMEOUT, bytes)?;
    let bad = || {
        format!(
            "field `timeout` must be a number of seconds greater than 0 and at most {}, got `{}`",
            MAX_TIMEOUT.as_secs(),
            snippet(text)
        )
    };
    let seconds: f64 = text.trim().parse().map_err(|_| bad())?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > MAX_TIMEOUT.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A whole number in `0..=max`.
fn parse_count(field: &str, bytes: &[u8], max: i64) -> Result<i64, String> {
    let text = utf8(field, bytes)?;
    match text.trim().parse::<i64>() {
        Ok(n) if (0..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "field `{field}` must be a whole number from 0 to {max}, got `{}`",
            snippet(text)
        )),
    }
}

/// `not_before`: RFC 3339 with an offset, or Unix seconds.
fn parse_time(bytes: &[u8]) -> Result<DateTime<Utc>, String> {
    let text = utf8(FIELD_NOT_BEFORE, bytes)?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 253_402_300_800.0)
        .and_then(|s| DateTime::<Utc>::from_timestamp_micros((s * 1e6) as i64))
        .ok_or_else(|| {
            format!(
                "field `not_before` must be an RFC 3339 time with an offset \
                 (`2026-12-24T07:00:00+01:00`) or Unix seconds, got `{}`",
                snippet(text)
            )
        })
}

/// At most 40 characters of `text`, for quoting a bad value in a reason.
fn snippet(text: &str) -> String {
    const MAX: usize = 40;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX).collect();
    let head = head.escape_debug().to_string();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(fields: &[(&str, &str)]) -> ExecutionRequest {
        parse("1-0", fields.iter().copied()).expect("valid request")
    }

    fn err(fields: &[(&[u8], &[u8])]) -> InvalidEntry {
        parse("1-0", fields.iter().copied()).expect_err("should be rejected")
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let r = ok(&[("id", "e1"), ("workflow", "7")]);
        assert_eq!(r.execution_id, "e1");
        assert_eq!(r.workflow, WorkflowRef::Id(7));
        assert_eq!(r.params_json, "{}");
        assert_eq!(r.timeout, None);
        assert_eq!(r.org, None);
    }

    #[test]
    fn names_and_ids_are_told_apart() {
        assert_eq!(
            ok(&[("id", "e"), ("workflow", "billing/sync")]).workflow,
            WorkflowRef::Name("billing/sync".into())
        );
        assert_eq!(
            ok(&[("id", "e"), ("workflow", "v2")]).workflow,
            WorkflowRef::Name("v2".into())
        );
        let r = err(&[(b"id", b"e"), (b"workflow", b"99999999999999999999999")]);
        assert!(r.reason.contains("out of range"), "{}", r.reason);
    }

    #[test]
    fn full_request_round_trips() {
        let mut req = ExecutionRequest::new("exec-1:a.b_c", WorkflowRef::Name("etl".into()));
        req.params_json = r#"{"a": [1, 2], "b": {"c": null}}"#.into();
        req.org = Some("acme".into());
        req.caller = Some("user:42".into());
        req.timeout = Some(Duration::from_millis(2500));
        req.delivery_id = Some("d-9".into());
        let back = parse("1-0", req.to_fields()).expect("round trip");
        assert_eq!(back, req);
        req.timeout = Some(Duration::from_secs(30));
        assert_eq!(parse("1-0", req.to_fields()).expect("round trip"), req);
        req.validate().expect("valid");
    }

    #[test]
    fn missing_required_fields() {
        let r = err(&[(b"workflow", b"1")]);
        assert_eq!(r.reason, "missing field `id`");
        assert_eq!(r.execution_id, None);
        let r = err(&[(b"id", b"e1")]);
        assert_eq!(r.reason, "missing field `workflow`");
        assert_eq!(r.execution_id.as_ref().map(ExecutionId::as_str), Some("e1"));
        assert_eq!(r.stream_id, "1-0");
        let r = err(&[]);
        assert_eq!(r.reason, "missing field `id`");
    }

    #[test]
    fn bad_ids() {
        let r = err(&[(b"id", b""), (b"workflow", b"1")]);
        assert!(r.reason.contains("empty"), "{}", r.reason);
        let r = err(&[(b"id", b"a/b"), (b"workflow", b"1")]);
        assert!(r.reason.contains("'/'"), "{}", r.reason);
        let long = "x".repeat(MAX_ID_LEN + 1);
        let r = err(&[(b"id", long.as_bytes()), (b"workflow", b"1")]);
        assert!(r.reason.contains("129 bytes"), "{}", r.reason);
        let max = "x".repeat(MAX_ID_LEN);
        ok(&[("id", &max), ("workflow", "1")]);
        let r = err(&[(b"id", "é".as_bytes()), (b"workflow", b"1")]);
        assert!(r.reason.contains("'é'"), "{}", r.reason);
    }

    #[test]
    fn params_must_be_a_json_object() {
        let r = err(&[(b"id", b"e"), (b"workflow", b"1"), (b"params", b"[1,2]")]);
        assert_eq!(
            r.reason,
            "params is not a JSON object: expected `{...}`, got `[1,2]`"
        );
        assert_eq!(r.execution_id.as_ref().map(ExecutionId::as_str), Some("e"));
        let r = err(&[(b"id", b"e"), (b"workflow", b"1"), (b"params", b"{\"a\":")]);
        assert!(
            r.reason.starts_with("params is not valid JSON"),
            "{}",
            r.reason
        );
        let r = err(&[(b"id", b"e"), (b"workflow", b"1"), (b"params", b"{} {}")]);
        assert!(
            r.reason.starts_with("params is not valid JSON"),
            "{}",
            r.reason
        );
        let r = err(&[(b"id", b"e"), (b"workflow", b"1"), (b"params", b"null")]);
        assert!(r.reason.contains("not a JSON object"), "{}", r.reason);
        // Whitespace around an object is fine; an empty value means `{}`.
        ok(&[("id", "e"), ("workflow", "1"), ("params", " {\"a\":1} ")]);
        assert_eq!(
            ok(&[("id", "e"), ("workflow", "1"), ("params", "")]).params_json,
            "{}"
        );
    }

    #[test]
    fn deeply_nested_params_are_rejected_not_overflowed() {
        let deep = "[".repeat(100_000);
        let text = format!("{{\"a\":{deep}");
        let r = err(&[
            (b"id", b"e"),
            (b"workflow", b"1"),
            (b"params", text.as_bytes()),
        ]);
        assert!(
            r.reason.starts_with("params is not valid JSON"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn huge_values_are_refused_with_their_size() {
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_PARAMS_BYTES));
        let r = err(&[
            (b"id", b"e"),
            (b"workflow", b"1"),
            (b"params", big.as_bytes()),
        ]);
        assert!(r.reason.contains("maximum"), "{}", r.reason);
        let name = "n".repeat(MAX_NAME_LEN + 1);
        let r = err(&[(b"id", b"e"), (b"workflow", name.as_bytes())]);
        assert!(r.reason.contains("maximum"), "{}", r.reason);
        let r = err(&[
            (b"id", b"e"),
            (b"workflow", b"1"),
            (b"org", &[b'o'; 10_000]),
        ]);
        assert!(r.reason.contains("maximum"), "{}", r.reason);
        // The quoted snippet stays short however long the value.
        let r = err(&[
            (b"id", b"e"),
            (b"workflow", b"1"),
            (b"timeout", &[b'9'; 5000]),
        ]);
        assert!(r.reason.len() < 200, "{}", r.reason);
    }

    #[test]
    fn non_utf8_values() {
        let r = err(&[(b"id", b"e"), (b"workflow", b"a\xffb")]);
        assert!(r.reason.contains("not valid UTF-8"), "{}", r.reason);
        assert!(r.reason.contains("offset 1"), "{}", r.reason);
        let r = err(&[(b"id", b"\xc3"), (b"workflow", b"1")]);
        assert!(r.reason.contains("`id` is not valid UTF-8"), "{}", r.reason);
        let r = err(&[
            (b"id", b"e"),
            (b"workflow", b"1"),
            (b"params", b"{\"\xff\":1}"),
        ]);
        assert!(
            r.reason.contains("`params` is not valid UTF-8"),
            "{}",
            r.reason
        );
        // A non-UTF-8 *field name* is just an unknown field.
        parse(
            "1-0",
            [
                (&b"\xff\xfe"[..], &b"x"[..]),
                (b"id", b"e"),
                (b"workflow", b"1"),
            ],
        )
        .expect("unknown binary field ignored");
    }

    #[test]
    fn timeouts() {
        let t = |v: &str| parse("1-0", [("id", "e"), ("workflow", "1"), ("timeout", v)]);
        assert_eq!(t("30").expect("ok").timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            t("0.25").expect("ok").timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(t("86400").expect("ok").timeout, Some(MAX_TIMEOUT));
        assert_eq!(t("").expect("empty = absent").timeout, None);
        for bad in ["0", "-1", "86400.5", "abc", "NaN", "inf", "1e400", "30s"] {
            let r = t(bad).expect_err(bad);
            assert!(r.reason.contains("`timeout`"), "{bad}: {}", r.reason);
        }
    }

    #[test]
    fn duplicates_and_unknowns() {
        let r = err(&[(b"id", b"e"), (b"workflow", b"1"), (b"workflow", b"2")]);
        assert_eq!(r.reason, "field `workflow` appears more than once");
        ok(&[("id", "e"), ("workflow", "1"), ("future_field", "x")]);
    }

    #[test]
    fn control_characters_in_names() {
        let r = err(&[(b"id", b"e"), (b"workflow", b"a\nb")]);
        assert!(r.reason.contains("control character"), "{}", r.reason);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: random bytes in random known fields.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let names: [&[u8]; 8] = [
            b"id",
            b"workflow",
            b"params",
            b"org",
            b"caller",
            b"timeout",
            b"delivery_id",
            b"?",
        ];
        for _ in 0..2000 {
            let n = (next() % 6) as usize;
            let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|_| {
                    let name = names[(next() % 8) as usize].to_vec();
                    let len = (next() % 24) as usize;
                    let value = (0..len).map(|_| (next() % 256) as u8).collect();
                    (name, value)
                })
                .collect();
            let _ = parse("1-0", fields);
        }
    }

    #[test]
    fn all_digit_names_are_caught_at_validate() {
        let req = ExecutionRequest::new("e", WorkflowRef::Name("123".into()));
        assert!(req.validate().is_err());
    }
}
