//! The `warden bench --workload modules` workload: a workflow that imports 10 workspace
//! modules on every execution, to compare with the trivial one. What it measures beyond
//! executions/s is the module cache's Redis traffic: the supervisor's (one `GET` per
//! batch, from [`crate::modules::ModuleCache::calls`]) and the workers' (counted by a
//! small proxy the workers are pointed at, so that nothing else on the server is
//! counted). The target is 0 worker commands per execution in the steady state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::cache::ModuleCache;
use super::files::ModuleFile;
use super::store::{self, StoredModule};
use crate::intake::Keys;
use crate::store::Store;

/// Imports the 10 modules (fresh in every forked child; dropped after every execution
/// in reuse mode) and uses each.
pub const WORKFLOW: &str = r#"from benchlib import m0, m1, m2, m3, m4, m5, m6, m7, m8, m9

MODS = (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9)

def run(x):
    return {"y": sum(m.f(x) for m in MODS)}
"#;

/// `benchlib/__init__.py` and `benchlib/m0.py` … `m9.py`.
pub fn files() -> Vec<ModuleFile> {
    let mut out = vec![ModuleFile::new("benchlib/__init__.py", "")];
    for i in 0..10 {
        out.push(ModuleFile::new(
            format!("benchlib/m{i}.py"),
            format!(
                "\"\"\"Benchmark module {i}.\"\"\"\n\nOFFSET = {i}\n\n\ndef f(x):\n    return x + OFFSET\n"
            ),
        ));
    }
    out
}

/// Stores the modules in the database (`serve` syncs them to Redis at start-up).
pub async fn setup(db: &Store) -> Result<(), String> {
    store::push(db, &files())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `--local` has no database: the modules go straight into Redis under `keys`, as a
/// full sync would put them. Returns the generation and the manifest to give the jobs.
pub async fn fill_redis(
    redis_url: &str,
    keys: Keys,
) -> Result<(u64, warden_protocol::ModuleManifest), String> {
    let cache = ModuleCache::connect(redis_url, keys)
        .await
        .map_err(|e| e.to_string())?;
    let modules: Vec<StoredModule> = files()
        .into_iter()
        .map(|f| StoredModule {
            path: f.path,
            content: f.content,
            content_hash: f.hash,
        })
        .collect();
    let generation = cache
        .fill(&modules)
        .await
        .map(|s| s.generation)
        .map_err(|e| e.to_string())?;
    Ok((generation, super::sync::manifest_of(&modules)))
}

/// Deletes what [`fill_redis`] wrote.
pub async fn clear_redis(redis_url: &str, keys: &Keys) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut del = redis::cmd("DEL");
    del.arg(keys.module_generation()).arg(keys.module_index());
    for f in files() {
        del.arg(keys.module(&f.path));
    }
    let _: Result<(), _> = del.query_async(&mut conn).await;
}

/// The modules workload in `--local` mode: the cache filled straight into Redis under a
/// key prefix of its own, and the workers pointed at a counting proxy.
pub struct LocalModules {
    redis_url: String,
    keys: Keys,
    /// The generation the jobs carry.
    pub generation: u64,
    /// The manifest the jobs carry.
    pub manifest: std::sync::Arc<warden_protocol::ModuleManifest>,
    proxy: Option<CountingProxy>,
}

impl LocalModules {
    pub async fn start(redis_url: &str) -> Result<LocalModules, String> {
        let keys = Keys::new(format!("bench:{}:modules:", std::process::id()));
        let (generation, manifest) = fill_redis(redis_url, keys.clone()).await?;
        Ok(LocalModules {
            redis_url: redis_url.to_string(),
            keys,
            generation,
            manifest: std::sync::Arc::new(manifest),
            proxy: CountingProxy::start(redis_url).await,
        })
    }

    /// Points the pool's workers at the cache (through the proxy when there is one).
    pub fn configure(&self, cfg: &mut crate::pool::PoolConfig) {
        cfg.redis_url = Some(
            self.proxy
                .as_ref()
                .map_or_else(|| self.redis_url.clone(), |p| p.url.clone()),
        );
        cfg.key_prefix = self.keys.prefix().to_string();
    }

    /// Commands the workers sent so far (`None`: not counted, see [`CountingProxy`]).
    pub fn worker_commands(&self) -> Option<u64> {
        self.proxy.as_ref().map(CountingProxy::commands)
    }

    pub async fn finish(self) {
        clear_redis(&self.redis_url, &self.keys).await;
    }
}

/// A TCP proxy in front of Redis that counts the commands clients send through it.
pub struct CountingProxy {
    /// Give this to the workers.
    pub url: String,
    commands: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// `None` when `redis_url` is not plain TCP (`redis://host:port`): then workers
    /// talk to Redis directly and their commands are not counted.
    pub async fn start(redis_url: &str) -> Option<CountingProxy> {
        let rest = redis_url.strip_prefix("redis://")?;
        let authority = rest.split('/').next()?;
        let upstream = authority.rsplit('@').next()?.to_string();
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        let path = &rest[authority.len()..];
        let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
        let url = format!("redis://{userinfo}{}{path}", listener.local_addr().ok()?);
        let commands = Arc::new(AtomicU64::new(0));
        let counter = commands.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(relay(client, server, counter));
            }
        });
        Some(CountingProxy {
            url,
            commands,
            task,
        })
    }

    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, commands: Arc<AtomicU64>) {
    let (mut c_read, mut c_write) = client.into_split();
    let (mut s_read, mut s_write) = server.into_split();
    let up = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match c_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(used) = resp_command_len(&buf) {
                commands.fetch_add(1, Ordering::Relaxed);
                buf.drain(..used);
            }
            if s_write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
        let _ = s_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut s_read, &mut c_write).await;
        let _ = c_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Length of the first whole RESP command (`*N\r\n` then N `$len\r\n<bytes>\r\n`).
fn resp_command_len(buf: &[u8]) -> Option<usize> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        at = next + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_commands_are_cut_whole() {
        let two = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        // `*2\r\n$3\r\nGET\r\n$1\r\nk\r\n` is 4 + 4 + 5 + 4 + 3 = 20 bytes.
        assert_eq!(resp_command_len(two), Some(20));
        assert_eq!(resp_command_len(&two[20..]), Some(14));
        assert_eq!(resp_command_len(&two[..19]), None);
        assert_eq!(resp_command_len(b""), None);
    }

    #[test]
    fn ten_modules_and_a_package() {
        let f = files();
        assert_eq!(f.len(), 11);
        assert!(f
            .iter()
            .all(|m| super::super::files::check_path(&m.path).is_ok()));
    }
}
