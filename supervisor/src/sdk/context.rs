//! The SDK part of `Execute.context_json`: the execution's config layers and its ROI
//! defaults, added to the context the intake builds (execution id, workflow, org,
//! caller, attempt, deadline, delivery id).
//!
//! ```json
//! {"execution_id": "...", ..., "delivery_id": null,
//!  "config": {"org":    {"values": {"region": "us"}, "secrets": ["api_token"]},
//!             "global": {"values": {"region": "eu", "retries": 3}, "secrets": []}},
//!  "roi": {"time_saved": 30.0, "value": 1.5}}
//! ```
//!
//! The layers travel separately (rather than merged) so the SDK can answer exactly after
//! the execution deletes an organization key: the global value shows through, as it
//! will once the delete is committed. `org` is absent for an execution with no
//! organization; its writes go to the global layer. Secret *names* are sent so
//! `config.get` knows to ask the supervisor; their values never are.
//!
//! Each layer's JSON is serialised once per batch (crate::sdk::cache::ScopeConfig) and
//! spliced in as text, so a dispatch costs no re-serialisation of the config.

use crate::sdk::cache::ConfigSnapshot;
use crate::sdk::crypto::Scope;

/// `base` (a JSON object, as text) with `config` and `roi` added.
pub fn extend(
    base: &str,
    snapshot: &ConfigSnapshot,
    org_id: Option<i64>,
    time_saved_seconds: f64,
    value: f64,
) -> String {
    let global = snapshot.get(Scope::Global);
    let org = org_id.map(|id| snapshot.get(Scope::Org(id)));
    let mut extra = String::with_capacity(
        64 + global.public_json.len() + org.as_ref().map_or(0, |o| o.public_json.len()),
    );
    extra.push_str("\"config\":{");
    if let Some(org) = &org {
        extra.push_str("\"org\":");
        extra.push_str(&org.public_json);
        extra.push(',');
    }
    extra.push_str("\"global\":");
    extra.push_str(&global.public_json);
    extra.push_str("},\"roi\":");
    extra.push_str(
        &serde_json::json!({
            "time_saved": finite(time_saved_seconds),
            "value": finite(value),
        })
        .to_string(),
    );
    splice(base, &extra)
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Adds `members` (`"a":1,"b":2`) to the JSON object `base`.
fn splice(base: &str, members: &str) -> String {
    let trimmed = base.trim_end();
    let Some(body) = trimmed.strip_suffix('}') else {
        // Not an object: the SDK part alone.
        return format!("{{{members}}}");
    };
    let needs_comma = !body.trim_end().ends_with('{');
    let mut out = String::with_capacity(body.len() + members.len() + 2);
    out.push_str(body);
    if needs_comma {
        out.push(',');
    }
    out.push_str(members);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::sdk::cache::ScopeConfig;

    fn scope(values: serde_json::Value, secrets: &[&str]) -> ScopeConfig {
        let values: BTreeMap<String, serde_json::Value> = serde_json::from_value(values).unwrap();
        let envelope = crate::sdk::crypto::Envelope {
            sealed: "xchacha20poly1305".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
        };
        let secrets = secrets
            .iter()
            .map(|s| (s.to_string(), envelope.clone()))
            .collect();
        ScopeConfig::new(values, secrets)
    }

    #[test]
    fn adds_both_layers_and_roi_without_secret_values() {
        let snap = ConfigSnapshot::from_scopes([
            (Scope::Global, scope(json!({"region": "eu", "n": 3}), &[])),
            (Scope::Org(7), scope(json!({"region": "us"}), &["token"])),
        ]);
        let ctx = extend(r#"{"execution_id":"e1"}"#, &snap, Some(7), 30.0, 1.5);
        let v: serde_json::Value = serde_json::from_str(&ctx).unwrap();
        assert_eq!(v["execution_id"], "e1");
        assert_eq!(v["config"]["org"]["values"]["region"], "us");
        assert_eq!(v["config"]["org"]["secrets"], json!(["token"]));
        assert_eq!(v["config"]["global"]["values"]["n"], 3);
        assert_eq!(v["roi"], json!({"time_saved": 30.0, "value": 1.5}));
        assert!(!ctx.contains("ciphertext"));

        let none = extend("{}", &snap, None, f64::NAN, 0.0);
        let v: serde_json::Value = serde_json::from_str(&none).unwrap();
        assert!(v["config"].get("org").is_none());
        assert_eq!(v["roi"]["time_saved"], 0.0);
    }
}
