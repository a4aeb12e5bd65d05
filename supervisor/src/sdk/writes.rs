//! The SDK writes an execution buffered (`ExecutionResult.sdk_writes_json`), parsed and
//! checked. The worker's `warden` module produces them (worker/src/python/sdk.py); the
//! result transaction applies them (crate::store::commit), only when the execution
//! ended `success`.
//!
//! The format is a JSON array of operations, in the order each key was first written,
//! holding only each key's final state (the worker collapses repeated writes):
//!
//! ```json
//! [
//!   {"op": "config.set",    "key": "region", "value": "eu"},
//!   {"op": "config.delete", "key": "old"},
//!   {"op": "kv.set",        "key": "cursor", "value": {"page": 3}},
//!   {"op": "kv.delete",     "key": "lock"},
//!   {"op": "roi", "time_saved": 120.0, "value": 4.5}
//! ]
//! ```
//!
//! `value` is any JSON. `roi` appears at most once, and only when the execution changed
//! `context.roi`; without it the workflow's defaults count. The empty string means no
//! writes. The limits below are enforced by the worker when the workflow writes (so the
//! workflow gets the error) and again here (the supervisor trusts no frame).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::sdk::SdkError;

/// Longest key, in bytes (kv and config alike).
pub const MAX_KEY_BYTES: usize = 256;
/// Largest single value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest `sdk_writes_json` of one execution.
pub const MAX_WRITES_BYTES: usize = 4 * 1024 * 1024;
/// Most operations in one execution.
pub const MAX_WRITES: usize = 10_000;

/// What one buffered write does to its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set(serde_json::Value),
    Delete,
}

/// The checked writes of one execution: each key at most once per namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SdkWrites {
    /// Config keys of the execution's scope (its organization, or global without one).
    pub config: BTreeMap<String, Change>,
    /// Keys of the execution's organization's key-value store.
    pub kv: BTreeMap<String, Change>,
    /// ROI the execution set (`None`: the workflow's defaults).
    pub roi: Option<Roi>,
}

/// What one successful execution was worth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    pub time_saved_seconds: f64,
    pub value: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    op: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    time_saved: Option<f64>,
}

impl SdkWrites {
    /// Parses and checks `json` (`""`: no writes). A later write of the same key
    /// replaces an earlier one.
    pub fn parse(json: &str) -> Result<SdkWrites, SdkError> {
        let mut out = SdkWrites::default();
        if json.trim().is_empty() {
            return Ok(out);
        }
        let invalid = |reason: String| SdkError::InvalidWrites { reason };
        if json.len() > MAX_WRITES_BYTES {
            return Err(invalid(format!(
                "they are {} bytes of JSON, more than the limit of {MAX_WRITES_BYTES}",
                json.len()
            )));
        }
        let ops: Vec<RawOp> = serde_json::from_str(json)
            .map_err(|e| invalid(format!("they are not a JSON array of operations: {e}")))?;
        if ops.len() > MAX_WRITES {
            return Err(invalid(format!(
                "there are {} of them, more than the limit of {MAX_WRITES}",
                ops.len()
            )));
        }
        for op in ops {
            if op.op == "roi" {
                let time_saved = op.time_saved.unwrap_or(0.0);
                let value = match &op.value {
                    None => 0.0,
                    Some(v) => v
                        .as_f64()
                        .ok_or_else(|| invalid("the ROI value is not a number".to_string()))?,
                };
                if !time_saved.is_finite() || time_saved < 0.0 || !value.is_finite() {
                    return Err(invalid(
                        "the ROI time saved must be a finite number of seconds, at least 0, \
                         and its value a finite number"
                            .into(),
                    ));
                }
                out.roi = Some(Roi {
                    time_saved_seconds: time_saved,
                    value,
                });
                continue;
            }
            let (namespace, change) = match op.op.as_str() {
                "config.set" | "kv.set" => {
                    let value = op
                        .value
                        .ok_or_else(|| invalid(format!("a `{}` operation has no value", op.op)))?;
                    let (ns, _) = op.op.split_once('.').unwrap_or(("kv", ""));
                    (ns.to_string(), Change::Set(value))
                }
                "config.delete" => ("config".to_string(), Change::Delete),
                "kv.delete" => ("kv".to_string(), Change::Delete),
                other => return Err(invalid(format!("unknown operation `{other}`"))),
            };
            let key = op
                .key
                .ok_or_else(|| invalid(format!("a `{}` operation has no key", op.op)))?;
            check_key(&key).map_err(invalid)?;
            if let Change::Set(value) = &change {
                let text = value.to_string();
                let len = text.len();
                if text.contains("\\u0000") {
                    return Err(invalid(format!(
                        "the value of `{key}` contains a NUL character, which cannot be stored"
                    )));
                }
                if len > MAX_VALUE_BYTES {
                    return Err(invalid(format!(
                        "the value of `{key}` is {len} bytes of JSON, more than the limit of \
                         {MAX_VALUE_BYTES}"
                    )));
                }
            }
            let map = if namespace == "config" {
                &mut out.config
            } else {
                &mut out.kv
            };
            map.insert(key, change);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.config.is_empty() && self.kv.is_empty() && self.roi.is_none()
    }
}

/// Why `key` cannot be a kv or config key, if it cannot.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key may not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key `{}…` is {} bytes long, more than the limit of {MAX_KEY_BYTES}",
            key.chars().take(32).collect::<String>(),
            key.len()
        ));
    }
    if key.contains('\0') {
        return Err(format!("the key {key:?} contains a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_operation_and_keeps_the_last_write_of_a_key() {
        let w = SdkWrites::parse(
            r#"[{"op":"config.set","key":"a","value":1},
                {"op":"kv.set","key":"k","value":{"x":[1,2]}},
                {"op":"kv.delete","key":"gone"},
                {"op":"config.delete","key":"b"},
                {"op":"kv.set","key":"k","value":"again"},
                {"op":"roi","time_saved":12.5,"value":3}]"#,
        )
        .unwrap();
        assert_eq!(w.config["a"], Change::Set(json!(1)));
        assert_eq!(w.config["b"], Change::Delete);
        assert_eq!(w.kv["k"], Change::Set(json!("again")));
        assert_eq!(w.kv["gone"], Change::Delete);
        assert_eq!(
            w.roi,
            Some(Roi {
                time_saved_seconds: 12.5,
                value: 3.0
            })
        );
        assert!(SdkWrites::parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_writes_say_what_is_wrong() {
        for (json, expect) in [
            ("{}", "not a JSON array"),
            (
                r#"[{"op":"kv.drop","key":"k"}]"#,
                "unknown operation `kv.drop`",
            ),
            (r#"[{"op":"kv.set","key":"k"}]"#, "has no value"),
            (r#"[{"op":"kv.set","value":1}]"#, "has no key"),
            (
                r#"[{"op":"kv.set","key":"","value":1}]"#,
                "may not be empty",
            ),
            (r#"[{"op":"roi","time_saved":-1}]"#, "at least 0"),
            (
                r#"[{"op":"kv.set","key":"k","value":"a\u0000b"}]"#,
                "NUL character",
            ),
        ] {
            let err = SdkWrites::parse(json).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err}");
        }
        let long_key = format!(
            r#"[{{"op":"kv.set","key":"{}","value":1}}]"#,
            "k".repeat(300)
        );
        assert!(SdkWrites::parse(&long_key).is_err());
    }
}
