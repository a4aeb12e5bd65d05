//! The supervisor's answers to the SDK's reads that a running execution cannot answer
//! itself: a kv key it did not write (`kv_get`), a kv listing (`kv_list`), and a secret
//! (`config_secret`). Everything else the SDK reads travels with the execution
//! (crate::sdk::context), and every write is buffered in the execution until its result.
//!
//! One function per operation, chosen by one `match` ([`answer`]). Each reads through
//! the supervisor's fixed store pool or the config cache: a worker never holds a
//! database connection, and an execution never causes a new one.
//!
//! | op | args | value |
//! | --- | --- | --- |
//! | `kv_get` | `{"key": k}` | `{"found": true, "value": v}` or `{"found": false}` |
//! | `kv_list` | `{"prefix": p}` | `{"keys": [k, ...]}` (sorted, at most [`MAX_LIST_KEYS`]) |
//! | `config_secret` | `{"key": k, "scope": "org" \| "global"}` | `{"value": "plaintext"}` |

use serde::Deserialize;
use serde_json::json;
use warden_protocol::{Reply, ReplyOutcome, Request};

use crate::sdk::cache::ConfigCache;
use crate::sdk::crypto::{Scope, SecretKey};
use crate::sdk::redact::Redactions;
use crate::sdk::writes::check_key;
use crate::store::Store;

/// The operations answered here.
pub const OPS: [&str; 3] = ["kv_get", "kv_list", "config_secret"];

/// Most keys one `kv_list` returns; a longer listing is refused (use a longer prefix).
pub const MAX_LIST_KEYS: i64 = 10_000;

/// What the handlers read from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub store: Store,
    pub cache: ConfigCache,
    pub key: Option<SecretKey>,
    pub redactions: Redactions,
}

/// The running execution the request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    /// Its organization (`None`: none; its kv and config are the global ones).
    pub org_id: Option<i64>,
}

/// The reply to `req`.
pub async fn answer(src: &Sources, req: &Request, asker: Asker) -> Reply {
    let outcome = match req.op.as_str() {
        "kv_get" => kv_get(src, req, asker).await,
        "kv_list" => kv_list(src, req, asker).await,
        "config_secret" => config_secret(src, req, asker).await,
        other => Err(format!("unknown SDK operation `{other}`")),
    };
    Reply {
        execution_id: req.execution_id.clone(),
        request_id: req.request_id,
        outcome: match outcome {
            Ok(value) => ReplyOutcome::Ok {
                value_json: value.to_string(),
            },
            Err(message) => ReplyOutcome::Err { message },
        },
    }
}

/// Runs a store read, trying again (briefly) when it failed for a reason that passes: a
/// connection killed by a database restart is only noticed by the statement that uses
/// it, and the workflow should not see that as an error.
async fn transient_retry<T, F, Fut>(mut read: F) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut tries = 0;
    loop {
        match read().await {
            Err(e) if e.is_transient() && tries < 3 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 << tries)).await;
            }
            other => return other,
        }
    }
}

fn args<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, String> {
    serde_json::from_str(&req.args_json)
        .map_err(|e| format!("the arguments of `{}` are malformed: {e}", req.op))
}

#[derive(Deserialize)]
struct KeyArgs {
    key: String,
}

async fn kv_get(src: &Sources, req: &Request, asker: Asker) -> Result<serde_json::Value, String> {
    let KeyArgs { key } = args(req)?;
    check_key(&key)?;
    match transient_retry(|| src.store.kv_get(asker.org_id, &key)).await {
        Ok(Some(value)) => Ok(json!({ "found": true, "value": value })),
        Ok(None) => Ok(json!({ "found": false })),
        Err(e) => Err(format!(
            "the key-value store cannot be read right now ({e})"
        )),
    }
}

#[derive(Deserialize)]
struct PrefixArgs {
    #[serde(default)]
    prefix: String,
}

async fn kv_list(src: &Sources, req: &Request, asker: Asker) -> Result<serde_json::Value, String> {
    let PrefixArgs { prefix } = args(req)?;
    if prefix.contains('\0') {
        return Err("a kv prefix may not contain NUL characters".into());
    }
    let keys = transient_retry(|| src.store.kv_keys(asker.org_id, &prefix, MAX_LIST_KEYS + 1))
        .await
        .map_err(|e| format!("the key-value store cannot be read right now ({e})"))?;
    if keys.len() as i64 > MAX_LIST_KEYS {
        return Err(format!(
            "more than {MAX_LIST_KEYS} keys start with {prefix:?}; list a longer prefix"
        ));
    }
    Ok(json!({ "keys": keys }))
}

#[derive(Deserialize)]
struct SecretArgs {
    key: String,
    #[serde(default)]
    scope: Option<String>,
}

async fn config_secret(
    src: &Sources,
    req: &Request,
    asker: Asker,
) -> Result<serde_json::Value, String> {
    let SecretArgs { key, scope } = args(req)?;
    let scopes: Vec<Scope> = match (scope.as_deref(), asker.org_id) {
        (Some("global"), _) | (_, None) => vec![Scope::Global],
        (Some("org"), Some(org)) => vec![Scope::Org(org)],
        (None, Some(org)) => vec![Scope::Org(org), Scope::Global],
        (Some(other), _) => {
            return Err(format!(
                "unknown config scope `{other}` (expected `org` or `global`)"
            ))
        }
    };
    let Some(secret_key) = &src.key else {
        return Err(format!(
            "the secret `{key}` cannot be read: this supervisor has no secret key (start it \
             with --secret-key-file or the WARDEN_SECRET_KEY environment variable)"
        ));
    };
    let snapshot = src
        .cache
        .load(&scopes)
        .await
        .map_err(|e| format!("the secret `{key}` cannot be read right now ({e})"))?;
    for scope in scopes {
        let config = snapshot.get(scope);
        if let Some(envelope) = config.secrets.get(&key) {
            let plaintext = secret_key
                .open(scope, &key, envelope)
                .map_err(|e| e.to_string())?;
            // Registered before the reply leaves: whatever the execution prints with it
            // arrives after this, and is redacted. Not tracked: it ended meanwhile, and
            // the plaintext goes nowhere.
            if !src.redactions.register(&req.execution_id, &plaintext) {
                return Err("the execution is no longer running".into());
            }
            return Ok(json!({ "value": plaintext }));
        }
    }
    Err(format!(
        "there is no secret `{key}` in this execution's configuration"
    ))
}
