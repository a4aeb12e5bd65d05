//! Whether Redis keeps the request stream across its own restart: the start-up check
//! behind `warden serve`'s warning when Redis persists nothing (no AOF, no RDB
//! snapshots), in which case a Redis restart silently loses every request not yet read.
//!
//! [`warning`] is the decision (pure, from the two config values); [`check`] reads them
//! (`CONFIG GET appendonly`, `CONFIG GET save`); [`warn_if_unpersisted`] is what `serve`
//! calls: one `tracing::warn!` when nothing persists, a `debug!` when the check itself
//! cannot run (e.g. the supervisor's Redis user may not run `CONFIG`), and it never fails.

use std::collections::HashMap;
use std::time::Duration;

use super::stream::CONNECT_TIMEOUT;
use super::IntakeError;

/// How long the whole check may take before it is given up (it is only advice).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The warning for an operator when Redis, configured with `appendonly` and `save` as
/// given (the values `CONFIG GET` returns), writes nothing to disk; `None` when it keeps
/// the stream with AOF (`appendonly yes`) or RDB snapshots (a non-empty `save`).
pub fn warning(appendonly: &str, save: &str) -> Option<String> {
    if appendonly.trim().eq_ignore_ascii_case("yes") || !save.trim().is_empty() {
        return None;
    }
    Some(format!(
        "Redis persists nothing (appendonly {}, save \"\"): if Redis restarts, every \
         execution request not yet read by a supervisor is lost without a trace (and so \
         are stored completions and pending cancel requests). Turn on AOF: \
         `redis-cli CONFIG SET appendonly yes` now, and `appendonly yes` plus \
         `appendfsync everysec` in redis.conf to keep it (docs/setup.md)",
        appendonly.trim()
    ))
}

/// Reads `appendonly` and `save` from Redis and returns [`warning`]'s verdict. An error
/// when Redis refuses `CONFIG` (an ACL user without it, a renamed command) or the
/// reply is not what `CONFIG GET` returns.
pub async fn check(client: &redis::Client) -> Result<Option<String>, IntakeError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| IntakeError::redis("connecting to check persistence", e))?;
    let appendonly = config_get(&mut conn, "appendonly").await?;
    let save = config_get(&mut conn, "save").await?;
    Ok(warning(&appendonly, &save))
}

/// Logs [`check`]'s warning once, or at debug level why persistence could not be
/// checked. Never fails: the supervisor runs either way.
pub async fn warn_if_unpersisted(client: &redis::Client, url: &str) {
    let url = super::redact_url(url);
    match tokio::time::timeout(CHECK_TIMEOUT, check(client)).await {
        Ok(Ok(Some(warning))) => tracing::warn!(redis = %url, "{warning}"),
        Ok(Ok(None)) => tracing::debug!(redis = %url, "Redis persists its data"),
        Ok(Err(e)) => tracing::debug!(
            redis = %url,
            error = %e,
            "could not check whether Redis persists its data (CONFIG GET refused?); going on"
        ),
        Err(_) => tracing::debug!(
            redis = %url,
            "could not check whether Redis persists its data (no reply within {CHECK_TIMEOUT:?}); going on"
        ),
    }
}

/// The value of one parameter: `CONFIG GET name` answers `[name, value]` (a map in RESP3).
async fn config_get(
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> Result<String, IntakeError> {
    let context = format!("reading `CONFIG GET {name}`");
    let reply: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(context.clone(), e))?;
    reply
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .ok_or_else(|| IntakeError::UnexpectedReply {
            context,
            detail: format!("no `{name}` in the reply"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_persisted_is_reported() {
        let text = warning("no", "").expect("a warning");
        assert!(text.contains("persists nothing"), "{text}");
        assert!(text.contains("appendonly yes"), "{text}");
        assert!(text.contains("docs/setup.md"), "{text}");
        // Whitespace and case as some servers or versions may answer.
        assert!(warning("NO", " ").is_some());
    }

    #[test]
    fn aof_or_snapshots_are_enough() {
        assert_eq!(warning("yes", ""), None);
        assert_eq!(warning("YES", ""), None);
        assert_eq!(warning("no", "3600 1 300 100 60 10000"), None);
        assert_eq!(warning("yes", "900 1"), None);
    }
}
