//! Redis test fixtures: every [`TestRedis`] gets a key prefix no other test uses
//! (`t:<random hex>:`), so tests share one Redis server and still run in parallel, and
//! deletes every key under its prefix when dropped.
//!
//! The server is `WARDEN_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`. Tests must
//! never `FLUSHALL`/`FLUSHDB`: to simulate a wiped Redis, delete keys under the prefix.
//! Direct pokes at Redis use the `redis` crate itself.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use warden::{Intake, IntakeClient, Keys};

/// The Redis server the tests use.
pub fn redis_url() -> String {
    std::env::var("WARDEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// 16 random hex digits: std's per-process random hasher keys, the time, the pid and
/// a counter (so two fixtures in one process never collide either).
pub fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

/// A private key space on the shared test Redis.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
    pub client: redis::Client,
}

impl TestRedis {
    /// A fresh prefix. Panics with a hint if Redis is not reachable.
    pub fn new() -> TestRedis {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("valid WARDEN_TEST_REDIS_URL");
        let mut conn = client.get_connection().unwrap_or_else(|e| {
            panic!("Redis at {url} is not reachable ({e}); start it (scripts/ has a helper) or set WARDEN_TEST_REDIS_URL")
        });
        let _: String = redis::cmd("PING").query(&mut conn).expect("PING");
        TestRedis {
            url,
            prefix: format!("t:{}:", random_hex()),
            client,
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.prefix.clone())
    }

    /// A plain async connection, for poking at Redis directly.
    pub async fn conn(&self) -> MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test Redis")
    }

    /// A supervisor-side intake under this prefix, group created.
    pub async fn intake(&self, consumer: &str) -> Intake {
        let intake = Intake::connect(&self.url, self.keys(), consumer)
            .await
            .expect("connect intake");
        intake.ensure_group().await.expect("ensure group");
        intake
    }

    /// A client-side handle under this prefix.
    pub async fn client(&self) -> IntakeClient {
        IntakeClient::connect(&self.url, self.keys())
            .await
            .expect("connect intake client")
    }

    /// Adds one entry to this prefix's execution stream with exactly `fields` (names and
    /// values in order, any bytes), the way a client that bypasses `IntakeClient` would;
    /// returns its stream id.
    pub async fn add_to_stream<K, V>(&self, fields: &[(K, V)]) -> String
    where
        (K, V): redis::ToRedisArgs,
    {
        redis::cmd("XADD")
            .arg(self.keys().stream())
            .arg("*")
            .arg(fields)
            .query_async(&mut self.conn().await)
            .await
            .expect("XADD to the execution stream")
    }

    /// Deletes one entry from this prefix's execution stream (`XDEL`), the way an
    /// operator or a trim would behind the supervisors' backs.
    pub async fn delete_from_stream(&self, stream_id: &str) {
        let _: i64 = redis::cmd("XDEL")
            .arg(self.keys().stream())
            .arg(stream_id)
            .query_async(&mut self.conn().await)
            .await
            .expect("XDEL from the execution stream");
    }

    /// The server's `calls` per command (`INFO commandstats`), for tests that check what
    /// reaches Redis: other tests' commands can only add to it.
    pub async fn command_calls(&self) -> std::collections::HashMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn().await)
            .await
            .expect("INFO commandstats");
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    /// Every key under this prefix.
    pub fn scan_keys(&self) -> Vec<String> {
        let Ok(mut conn) = self.client.get_connection() else {
            return Vec::new();
        };
        let pattern = format!("{}*", self.prefix);
        match redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter::<String>(&mut conn)
        {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        TestRedis::new()
    }
}

impl Drop for TestRedis {
    /// Best effort: deletes every key under the prefix and the workers' ACL user a
    /// service under it made (blocking client, so it works from any context, runtime or
    /// not).
    fn drop(&mut self) {
        let keys = self.scan_keys();
        if let Ok(mut conn) = self.client.get_connection() {
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
            let _: Result<i64, _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(warden::testing::user_name(&self.prefix))
                .query(&mut conn);
        }
    }
}
