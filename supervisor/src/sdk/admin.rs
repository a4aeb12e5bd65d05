//! Config administration for the CLI (`warden config set|delete|list`): turning a value
//! typed on the command line into a stored one (sealing secrets), and invalidating the
//! Redis cache once the change is committed.

use crate::intake::Keys;
use crate::sdk::crypto::{check_plaintext, Scope, SecretKey};
use crate::sdk::writes::check_key;
use crate::sdk::{cache, SdkError};
use crate::store::{ConfigEntry, ConfigKind, Store};

/// A command-line value: JSON when it parses as JSON (`3`, `true`, `{"a":1}`,
/// `"quoted"`), otherwise the text itself as a string (`eu-west-1`).
pub fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// Stores `key` = `text` for `org` (created if new) or globally, and returns its scope.
/// A secret is sealed with `secret_key` first (required then); a plain value is typed
/// by [`parse_value`].
pub async fn set(
    store: &Store,
    org: Option<&str>,
    key: &str,
    text: &str,
    secret: bool,
    secret_key: Option<&SecretKey>,
) -> Result<Scope, SdkError> {
    check_key(key).map_err(|reason| SdkError::InvalidValue {
        key: key.to_string(),
        reason,
    })?;
    // Everything that can be refused is checked before the organization is created.
    let secret_key = match (secret, secret_key) {
        (true, None) => return Err(SdkError::NoKey),
        (true, Some(k)) => {
            check_plaintext(key, text)?;
            Some(k)
        }
        (false, _) => None,
    };
    let org_id = match org {
        Some(name) => Some(store.org_get_or_create(name).await?),
        None => None,
    };
    let scope = Scope::from_org(org_id);
    if let Some(secret_key) = secret_key {
        let envelope = secret_key.seal(scope, key, text)?;
        let value = serde_json::to_value(&envelope).map_err(|e| SdkError::Crypto {
            what: "encode the sealed secret",
            reason: e.to_string(),
        })?;
        store
            .set_config(org, key, &value, ConfigKind::Secret)
            .await?;
    } else {
        let value = parse_value(text);
        if value.to_string().contains("\\u0000") {
            return Err(SdkError::InvalidValue {
                key: key.to_string(),
                reason: "it contains a NUL character, which PostgreSQL cannot store".into(),
            });
        }
        store
            .set_config(org, key, &value, ConfigKind::of(&value))
            .await?;
    }
    Ok(scope)
}

/// Makes supervisors re-read `scope`'s config (after a committed change).
pub async fn invalidate(redis_url: &str, keys: &Keys, scope: Scope) -> Result<(), SdkError> {
    let client =
        redis::Client::open(redis_url).map_err(|e| SdkError::redis("open the Redis URL", e))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| SdkError::redis("connect to Redis", e))?;
    cache::invalidate(&mut conn, keys, &[scope]).await
}

/// How a config value is shown to a person: secrets as `***`.
pub fn display_value(entry: &ConfigEntry) -> String {
    if entry.kind == ConfigKind::Secret {
        crate::sdk::MASK.to_string()
    } else {
        entry.value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_line_values_are_json_or_text() {
        assert_eq!(parse_value("3"), json!(3));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(parse_value(r#""3""#), json!("3"));
        assert_eq!(parse_value("eu-west-1"), json!("eu-west-1"));
    }
}
