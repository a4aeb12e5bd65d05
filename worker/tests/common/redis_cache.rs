//! The module cache in a real Redis, for worker tests: [`TestCache`] plays the
//! supervisor's part (writes modules, the index and the generation under a key prefix
//! of its own, and deletes everything under it when dropped; keeps the manifest of
//! what it wrote, as the supervisor does from the database), and [`CountingProxy`]
//! sits between a worker and Redis and counts the commands and connections that pass,
//! so tests can prove "no Redis command in the steady state" without being confused by
//! other tests sharing the server.
//!
//! The server is `WARDEN_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). Never
//! FLUSHALL: a "wipe" deletes this prefix's keys.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub fn redis_url() -> String {
    std::env::var("WARDEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The content hash the supervisor writes in the `hash` field: hex SHA-256.
pub fn digest(content: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct TestCache {
    pub prefix: String,
    client: redis::Client,
    /// What the "database" holds: the manifest's id and paths with content hashes.
    manifest: RefCell<(u64, BTreeMap<String, [u8; 32]>)>,
}

impl TestCache {
    pub fn new() -> TestCache {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("valid WARDEN_TEST_REDIS_URL");
        let mut con = client
            .get_connection()
            .unwrap_or_else(|e| panic!("Redis at {url} is not reachable: {e}"));
        let _: String = redis::cmd("PING").query(&mut con).expect("PING");
        TestCache {
            prefix: format!("t:{}:", random_hex()),
            client,
            manifest: RefCell::new((1, BTreeMap::new())),
        }
    }

    /// The manifest of what [`TestCache::put`] and [`TestCache::remove`] wrote.
    pub fn manifest(&self) -> warden_protocol::ModuleManifest {
        let m = self.manifest.borrow();
        warden_protocol::ModuleManifest {
            id: m.0,
            modules: m.1.iter().map(|(p, h)| (p.clone(), *h)).collect(),
        }
    }

    fn record(&self, path: &str, content: Option<&str>) {
        use sha2::Digest as _;
        let mut m = self.manifest.borrow_mut();
        m.0 += 1;
        match content {
            Some(c) => m.1.insert(path.to_string(), sha2::Sha256::digest(c).into()),
            None => m.1.remove(path),
        };
    }

    /// What an attacker with write access to Redis does: new content under a matching
    /// `hash` field, and a new generation. The manifest does not change.
    pub fn tamper(&self, path: &str, content: &str) -> u64 {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key(path))
            .arg("content")
            .arg(content)
            .arg("hash")
            .arg(digest(content))
            .ignore();
        pipe.cmd("SADD").arg(self.index()).arg(path).ignore();
        pipe.cmd("INCR").arg(self.generation_key());
        let (generation,): (u64,) = pipe.query(&mut self.con()).expect("tamper");
        generation
    }

    fn con(&self) -> redis::Connection {
        self.client.get_connection().expect("connect to test Redis")
    }

    pub fn key(&self, path: &str) -> String {
        format!("{}warden:module:{path}", self.prefix)
    }

    pub fn index(&self) -> String {
        format!("{}warden:module:index", self.prefix)
    }

    pub fn generation_key(&self) -> String {
        format!("{}warden:module:generation", self.prefix)
    }

    /// Writes (or replaces) modules and bumps the generation, as a sync does.
    pub fn put(&self, modules: &[(&str, &str)]) -> u64 {
        let mut pipe = redis::pipe();
        for (path, content) in modules {
            self.record(path, Some(content));
            pipe.cmd("HSET")
                .arg(self.key(path))
                .arg("content")
                .arg(*content)
                .arg("hash")
                .arg(digest(content))
                .ignore();
            pipe.cmd("SADD").arg(self.index()).arg(*path).ignore();
        }
        pipe.cmd("INCR").arg(self.generation_key());
        let (generation,): (u64,) = pipe.query(&mut self.con()).expect("write modules");
        generation
    }

    /// Removes modules (content and index entry) and bumps the generation.
    pub fn remove(&self, paths: &[&str]) -> u64 {
        let mut pipe = redis::pipe();
        for path in paths {
            self.record(path, None);
            pipe.cmd("DEL").arg(self.key(path)).ignore();
            pipe.cmd("SREM").arg(self.index()).arg(*path).ignore();
        }
        pipe.cmd("INCR").arg(self.generation_key());
        let (generation,): (u64,) = pipe.query(&mut self.con()).expect("remove modules");
        generation
    }

    /// Deletes content keys only (a partial eviction): the index still lists them.
    pub fn evict(&self, paths: &[&str]) {
        let mut con = self.con();
        for path in paths {
            let _: i64 = redis::cmd("DEL")
                .arg(self.key(path))
                .query(&mut con)
                .expect("DEL");
        }
    }

    pub fn bump(&self) -> u64 {
        redis::cmd("INCR")
            .arg(self.generation_key())
            .query(&mut self.con())
            .expect("INCR")
    }

    pub fn generation(&self) -> Option<u64> {
        redis::cmd("GET")
            .arg(self.generation_key())
            .query(&mut self.con())
            .expect("GET")
    }

    /// Every key under the prefix gone: what a FLUSHALL does to this test's keys.
    pub fn wipe(&self) {
        let mut con = self.con();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut con)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query(&mut con).unwrap_or(0);
        }
    }
}

impl Drop for TestCache {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// A TCP proxy in front of the test Redis that counts what workers send it.
pub struct CountingProxy {
    pub url: String,
    commands: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

impl CountingProxy {
    pub fn start() -> CountingProxy {
        let upstream = redis_url();
        let addr = upstream
            .strip_prefix("redis://")
            .expect("the counting proxy needs a redis:// (TCP) URL")
            .split('/')
            .next()
            .unwrap()
            .rsplit('@')
            .next()
            .unwrap()
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let commands = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let (c, n, r) = (commands.clone(), connections.clone(), refuse.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if r.load(Ordering::SeqCst) {
                    // Closed at once: Redis is "down" for whoever connects now.
                    continue;
                }
                n.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&addr) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counter = c.clone();
                std::thread::spawn(move || pump_counting(&mut c_in, &mut s_out, &counter));
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CountingProxy {
            url,
            commands,
            connections,
            refuse,
        }
    }

    /// From now on, connections are closed as soon as they are accepted.
    pub fn refuse_connections(&self) {
        self.refuse.store(true, Ordering::SeqCst);
    }

    /// Commands received so far (every RESP array from a client is one command).
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

fn pump_counting(from: &mut TcpStream, to: &mut TcpStream, commands: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(used) = resp_command_len(&buf) {
            commands.fetch_add(1, Ordering::SeqCst);
            buf.drain(..used);
        }
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Length of the first whole command (`*N\r\n` then N `$len\r\n<bytes>\r\n`) in `buf`.
fn resp_command_len(buf: &[u8]) -> Option<usize> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
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
