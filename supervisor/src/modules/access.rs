//! The workers' Redis credentials: a Redis ACL user that may only read the module
//! cache's keys (`GET`, `HGET`, `HMGET`, `SMEMBERS`, `EXISTS` on `<prefix>warden:module:*`)
//! and run no other command. A worker's memory is readable by the child it forks, so
//! whatever credential a worker holds, a workflow may hold too: this one lets it write
//! nothing, read no other key (the intake stream, completions, the config cache) and
//! run no admin command.
//!
//! The supervisor makes (or brings up to date) the user at start-up, with `ACL SETUSER
//! ... reset ...` (idempotent), its password from the `settings` table (made once, so
//! every supervisor of an installation sets the same one), and hands the workers a URL
//! with that user, never its own. Workers given a URL explicitly (`PoolConfig::redis_url`)
//! are checked instead: if it can write, the supervisor refuses to start.

use sqlx::PgPool;

/// The settings row holding the workers' password.
const PASSWORD_SETTING: &str = "worker_redis_password";

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read or store the workers' Redis password in PostgreSQL: {0}. Run `warden migrate` if the `settings` table is missing")]
    Database(#[source] sqlx::Error),
    #[error("Redis refused to create the workers' read-only ACL user ({0}): Warden needs Redis 6 or later with ACLs, and its own user needs the `acl` command (+@admin)")]
    Acl(#[source] redis::RedisError),
    #[error("cannot use the Redis URL {0:?} for the workers: {1}")]
    Url(String, String),
    #[error("the workers' Redis URL can write to Redis ({0}): workers must get a read-only user. Leave the workers' URL unset so that warden makes one")]
    Writable(String),
}

/// The ACL user name for a key prefix (each test run's prefix gets its own user).
pub fn user_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "warden-worker".to_string()
    } else {
        let clean: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("warden-worker-{}", clean.trim_matches('-'))
    }
}

/// Makes the read-only user on the Redis at `admin_url` (the supervisor's own URL) and
/// returns the URL the workers use: `admin_url`'s host with that user.
pub async fn worker_url(db: &PgPool, admin_url: &str, prefix: &str) -> Result<String, AccessError> {
    let password = password(db).await?;
    let user = user_name(prefix);
    let mut con = admin_connection(admin_url).await?;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(format!("~{prefix}warden:module:*"))
        .arg("resetchannels")
        .arg("-@all");
    for allowed in [
        "+get",
        "+hget",
        "+hmget",
        "+smembers",
        "+exists",
        "+hexists",
        "+ping",
        "+hello",
        "+auth",
        "+select",
    ] {
        cmd.arg(allowed);
    }
    let _: () = cmd.query_async(&mut con).await.map_err(AccessError::Acl)?;
    with_user(admin_url, &user, &password)
}

/// Deletes the workers' user of `prefix` from the Redis at `admin_url`: for a prefix used
/// once (each `warden bench` run has its own), whose user would otherwise stay in Redis
/// for good. A supervisor never calls this: its workers' user outlives it.
pub async fn remove_user(admin_url: &str, prefix: &str) -> Result<(), AccessError> {
    let mut con = admin_connection(admin_url).await?;
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user_name(prefix))
        .query_async(&mut con)
        .await
        .map_err(AccessError::Acl)?;
    Ok(())
}

/// A connection to the Redis at `admin_url` (the supervisor's own URL), for `ACL`.
async fn admin_connection(
    admin_url: &str,
) -> Result<redis::aio::MultiplexedConnection, AccessError> {
    redis::Client::open(admin_url)
        .map_err(|e| AccessError::Url(crate::store::redact_url(admin_url), e.to_string()))?
        .get_multiplexed_async_connection()
        .await
        .map_err(AccessError::Acl)
}

/// Refuses a workers' URL that can write: tries to `SET` a key workers may not touch.
pub async fn check_read_only(url: &str, prefix: &str) -> Result<(), AccessError> {
    let shown = crate::store::redact_url(url);
    let client =
        redis::Client::open(url).map_err(|e| AccessError::Url(shown.clone(), e.to_string()))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| AccessError::Url(shown.clone(), e.to_string()))?;
    let probe = format!("{prefix}warden:write-probe");
    let wrote: Result<(), _> = redis::cmd("SET")
        .arg(&probe)
        .arg(1)
        .arg("EX")
        .arg(1)
        .query_async(&mut con)
        .await;
    match wrote {
        Ok(()) => Err(AccessError::Writable(shown)),
        Err(_) => Ok(()),
    }
}

async fn password(db: &PgPool) -> Result<String, AccessError> {
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // The first supervisor's password wins; later ones read it.
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(PASSWORD_SETTING)
        .bind(&fresh)
        .execute(db)
        .await
        .map_err(AccessError::Database)?;
    sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
        .bind(PASSWORD_SETTING)
        .fetch_one(db)
        .await
        .map_err(AccessError::Database)
}

/// `url` with `user:password` as its credentials (`redis://`, `rediss://`), or as the
/// `user`/`pass` query parameters of a Unix socket URL (`unix://`, `redis+unix://`).
fn with_user(url: &str, user: &str, password: &str) -> Result<String, AccessError> {
    let bad = |why: &str| AccessError::Url(crate::store::redact_url(url), why.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    match scheme {
        "redis" | "rediss" => {
            // The authority ends at the first '/'; its credentials at its last '@'.
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            Ok(format!("{scheme}://{user}:{password}@{host}{path}"))
        }
        "unix" | "redis+unix" => {
            let sep = if rest.contains('?') { '&' } else { '?' };
            Ok(format!("{scheme}://{rest}{sep}user={user}&pass={password}"))
        }
        _ => Err(bad("unknown scheme")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_url_carries_their_user_only() {
        let u = |url| with_user(url, "w", "pw").unwrap();
        assert_eq!(u("redis://127.0.0.1:6379"), "redis://w:pw@127.0.0.1:6379");
        assert_eq!(u("redis://:admin@h:1/2"), "redis://w:pw@h:1/2");
        assert_eq!(u("rediss://root:admin@h"), "rediss://w:pw@h");
        assert_eq!(
            u("unix:///run/redis.sock"),
            "unix:///run/redis.sock?user=w&pass=pw"
        );
        assert_eq!(
            u("redis+unix:///s?db=1"),
            "redis+unix:///s?db=1&user=w&pass=pw"
        );
        assert!(with_user("http://x", "w", "pw").is_err());
    }

    #[test]
    fn user_names_follow_the_prefix() {
        assert_eq!(user_name(""), "warden-worker");
        assert_eq!(user_name("t:12:"), "warden-worker-t-12");
    }
}
