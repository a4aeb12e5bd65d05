//! Liveness: which supervisors are alive, and taking over the stream entries of those
//! that are not (and only theirs). Owns the heartbeat key of this supervisor
//! ([`Heartbeat`]), the takeover pass ([`Intake::take_over`]), the check of what a
//! peer took while this supervisor could not reach Redis ([`Intake::taken_over`]),
//! and the liveness half of `warden status` ([`consumer_liveness`]).
//!
//! # Why a heartbeat, not idle times
//!
//! A pending entry's idle time says when its consumer last touched it, not whether the
//! consumer lives: an execution runs for up to a day, and a supervisor that lost Redis
//! for a minute touched nothing. Taking entries over on idle time therefore stole live
//! work (a supervisor even re-ran its own executions after an outage), while a dead
//! supervisor's entries waited for the idle time to pass. Instead:
//!
//! - **Heartbeat.** Each supervisor keeps `warden:heartbeat:<consumer>` (a token unique
//!   to its process) with a short TTL (`--heartbeat-ttl`, 5 s), refreshed every third of
//!   it by a task of its own on a connection of its own, so a slow batch or a busy main
//!   loop cannot starve it. A clean exit deletes the key, so peers take what is left at
//!   once.
//! - **Takeover only from the dead.** About once a second (more often while a dead
//!   consumer still has entries) the reader lists the group's consumers
//!   (`XINFO CONSUMERS`), checks their heartbeats (one `EXISTS` each, one pipeline),
//!   and for each other consumer whose heartbeat is gone claims its pending entries
//!   (all of them over successive passes, bounded by this supervisor's free places) with
//!   a script that checks, atomically with the `XCLAIM`, that *its own* heartbeat
//!   exists and the dead consumer's does not. A supervisor never claims from itself or
//!   from a live peer, and one whose own heartbeat lapsed claims nothing. Entries it
//!   has no place for stay pending on the dead consumer for a later pass (or another
//!   peer): claimed entries are begun at once, so none sit claimed but idle. Dead
//!   consumers with nothing pending are removed from the group (`XGROUP DELCONSUMER`,
//!   in a script that re-checks both conditions).
//! - **A lapse.** A supervisor that could not refresh its heartbeat for two thirds of
//!   the TTL (before the key can have expired) reports itself not live: the reader
//!   stops taking work. Every refresh is `SET … GET`, so when Redis answers again the
//!   supervisor learns whether its key expired meanwhile; if it did, peers may have
//!   taken its entries, and [`Intake::taken_over`] says which (pending on another
//!   consumer now). Those executions are killed and their outcomes dropped: neither
//!   committed nor acknowledged. The store fences results by attempt as well
//!   (crate::store::commit), so even an outcome already on its way to the writer
//!   cannot overwrite the run of the peer that took the entry over.
//!
//! Peers must agree on the TTL only loosely: a peer decides from the key's existence,
//! which Redis expires, not from its own clocks.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamInfoConsumersReply;
use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::entry::{self, Entry};
use super::keys::Keys;
use super::stream::{is_nogroup, millis, ConsumerBacklog, Intake, CONNECT_TIMEOUT};
use super::IntakeError;

/// The heartbeat's default time to live: a dead supervisor's entries are taken over
/// this long (plus a takeover pass, about a second) after it died.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// The shortest TTL accepted (each refresh must fit in a third of it).
pub const MIN_HEARTBEAT_TTL: Duration = Duration::from_millis(300);
/// How often a reader with free places looks for dead consumers.
pub const TAKEOVER_EVERY: Duration = Duration::from_secs(1);
/// The most entries one claim script moves (Lua's `unpack` has a stack limit).
const CLAIM_CHUNK: usize = 1000;
/// The most commands in one pipeline of [`Intake::taken_over`].
const CHECK_CHUNK: usize = 1000;

/// `KEYS`: stream, my heartbeat, their heartbeat. `ARGV`: group, me, them, count,
/// permits, running base. Returns `{code, entries, ids}`: code 0 = my heartbeat is gone
/// (claim nothing), 1 = theirs exists (alive: claim nothing), 2 = claimed; `entries`
/// as `XCLAIM` replies them, `ids` how many were pending (more than `entries` when some
/// were deleted from the stream: `XCLAIM` drops those from the pending list).
///
/// Concurrency permits (crate::intake::limits) go with the entries: a claimed entry's
/// permit is now this consumer's (the execution runs again here, still under its
/// limit); a dropped entry's is given back.
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, {}, 0} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {1, {}, 0} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[3])
if #pending == 0 then return {2, {}, 0} end
local ids = {}
for i, p in ipairs(pending) do ids[i] = p[1] end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
if redis.call('HLEN', ARGV[5]) > 0 then
  local got = {}
  for _, e in ipairs(claimed) do
    if e then got[e[1]] = true end
  end
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', ARGV[5], id)
    if raw then
      local permit = cjson.decode(raw)
      if got[id] then
        permit[1] = ARGV[2]
        redis.call('HSET', ARGV[5], id, cjson.encode(permit))
      else
        for k = 2, #permit do redis.call('SREM', ARGV[6] .. permit[k], id) end
        redis.call('HDEL', ARGV[5], id)
      end
    end
  end
end
return {2, claimed, #ids}
"#;

/// `KEYS`: stream, their heartbeat. `ARGV`: group, them. Removes the consumer if its
/// heartbeat is gone and it has nothing pending (checked here, atomically: removing a
/// consumer drops its pending entries, which would then never be delivered again).
const FORGET_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));
static FORGET: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FORGET_SCRIPT));

/// What the heartbeat task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness {
    /// The heartbeat was refreshed recently enough that no peer can have seen it gone:
    /// this supervisor may take work.
    pub live: bool,
    /// How many times a refresh found the key gone after it had been set (Redis was
    /// unreachable, wiped, or this process stalled past the TTL). Each time, peers may
    /// have taken over entries of this consumer: see [`Intake::taken_over`].
    pub lapses: u64,
}

/// This supervisor's heartbeat: a task refreshing its key, and the [`Liveness`] it
/// reports. [`Heartbeat::stop`] deletes the key; dropping it only stops the refreshes
/// (the key then expires on its own).
pub struct Heartbeat {
    state: watch::Receiver<Liveness>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    conn: ConnectionManager,
    key: String,
    timeout: Duration,
}

impl Heartbeat {
    /// Sets the key (failing if Redis does not take it) and starts refreshing it every
    /// third of `ttl` on a connection of its own.
    pub async fn start(intake: &Intake, ttl: Duration) -> Result<Heartbeat, IntakeError> {
        let (client, keys, consumer) = (intake.client(), intake.keys(), intake.consumer());
        let ttl = ttl.max(MIN_HEARTBEAT_TTL);
        let every = ttl / 3;
        let url = intake.url().to_owned();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT.min(every)))
            .set_response_timeout(Some(every))
            .set_max_delay(every);
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(IntakeError::Unreachable { url, source }),
            Err(_) => {
                return Err(IntakeError::ConnectTimeout {
                    url,
                    timeout: CONNECT_TIMEOUT * 2,
                })
            }
        };
        let key = keys.heartbeat(consumer);
        let token = format!(
            "{}:{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let previous = refresh(&mut conn.clone(), &key, &token, ttl, every)
            .await
            .map_err(|e| match e {
                Refresh::Redis(source) => IntakeError::redis(
                    format!("setting this supervisor's heartbeat `{key}`"),
                    source,
                ),
                Refresh::TimedOut => IntakeError::TimedOut {
                    context: format!("setting this supervisor's heartbeat `{key}`"),
                    after: every,
                },
            })?;
        if previous.is_some() {
            // A predecessor under the same name (restarted within the TTL), or another
            // live process using this consumer name: the latter shows on every refresh.
            tracing::info!(%key, "a heartbeat under this consumer name was still present");
        }
        let (state_tx, state) = watch::channel(Liveness {
            live: true,
            lapses: 0,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep_alive(
            conn.clone(),
            key.clone(),
            token,
            ttl,
            state_tx,
            stopped,
        ));
        Ok(Heartbeat {
            state,
            stop,
            task: Some(task),
            conn,
            key,
            timeout: every,
        })
    }

    /// Follows this supervisor's [`Liveness`].
    pub fn watch(&self) -> watch::Receiver<Liveness> {
        self.state.clone()
    }

    /// Stops refreshing and deletes the key, so peers may take over at once whatever
    /// this supervisor leaves pending.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&self.key);
        let deleted =
            tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut self.conn)).await;
        if !matches!(deleted, Ok(Ok(()))) {
            tracing::warn!(key = %self.key, "could not delete the heartbeat; it expires on its own");
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

enum Refresh {
    Redis(redis::RedisError),
    TimedOut,
}

/// `SET key token PX ttl GET`: the key's previous value (`None`: it was gone).
async fn refresh(
    conn: &mut ConnectionManager,
    key: &str,
    token: &str,
    ttl: Duration,
    limit: Duration,
) -> Result<Option<String>, Refresh> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key)
        .arg(token)
        .arg("PX")
        .arg(millis(ttl).max(1))
        .arg("GET");
    match tokio::time::timeout(limit, cmd.query_async::<Option<String>>(conn)).await {
        Ok(Ok(previous)) => Ok(previous),
        Ok(Err(e)) => Err(Refresh::Redis(e)),
        Err(_) => Err(Refresh::TimedOut),
    }
}

async fn keep_alive(
    mut conn: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
    state: watch::Sender<Liveness>,
    mut stop: watch::Receiver<bool>,
) {
    let every = ttl / 3;
    // Not live any more before the key can have expired: a refresh that Redis applied
    // was sent before we saw its answer, so the key dies at most `ttl` after `last_ok`.
    let lapse_after = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match refresh(&mut conn, &key, &token, ttl, every).await {
            Ok(previous) => {
                last_ok = Instant::now();
                let lapsed = previous.is_none();
                if lapsed {
                    tracing::warn!(%key, "the heartbeat had expired (Redis unreachable or wiped, or this process stalled): peers may have taken over entries; checking which");
                } else if previous.as_deref() != Some(token.as_str()) {
                    tracing::error!(%key, "another live process uses this supervisor's consumer name: give each supervisor its own `--consumer`");
                }
                state.send_if_modified(|s| {
                    let changed = !s.live || lapsed;
                    if !s.live {
                        tracing::info!(%key, "heartbeat refreshed again: taking work");
                    }
                    s.live = true;
                    s.lapses += u64::from(lapsed);
                    changed
                });
            }
            Err(e) => {
                let silent = last_ok.elapsed();
                let detail = match &e {
                    Refresh::Redis(e) => e.to_string(),
                    Refresh::TimedOut => format!("no answer within {every:?}"),
                };
                tracing::debug!(%key, error = %detail, "heartbeat refresh failed");
                if silent >= lapse_after {
                    state.send_if_modified(|s| {
                        if s.live {
                            tracing::warn!(%key, error = %detail, ?silent, "cannot refresh the heartbeat: taking no new work until Redis answers");
                        }
                        std::mem::replace(&mut s.live, false)
                    });
                }
            }
        }
    }
}

/// A consumer of the group as the takeover pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub pending: u64,
    /// Its heartbeat key exists.
    pub live: bool,
}

/// What one takeover pass should do, decided from the consumers and their heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Dead consumers with pending entries, most pending first.
    pub take_from: Vec<String>,
    /// Dead consumers with nothing pending: remove them from the group.
    pub forget: Vec<String>,
}

/// Never this consumer, never a live one: the dead with entries are taken from, the
/// dead without are forgotten.
pub fn plan(me: &str, peers: &[Peer]) -> Plan {
    let mut dead: Vec<&Peer> = peers.iter().filter(|p| p.name != me && !p.live).collect();
    dead.sort_by(|a, b| b.pending.cmp(&a.pending).then_with(|| a.name.cmp(&b.name)));
    Plan {
        take_from: dead
            .iter()
            .filter(|p| p.pending > 0)
            .map(|p| p.name.clone())
            .collect(),
        forget: dead
            .iter()
            .filter(|p| p.pending == 0)
            .map(|p| p.name.clone())
            .collect(),
    }
}

/// What one [`Intake::take_over`] pass did.
#[derive(Debug, Default)]
pub struct TakeOver {
    /// Entries now pending on this consumer, to run.
    pub entries: Vec<Entry>,
    /// Per dead consumer taken from: its name and how many entries were claimed.
    pub from: Vec<(String, usize)>,
    /// Pending entries of a dead consumer had to be left for a later pass (no places).
    pub more: bool,
    /// Dead consumers removed from the group.
    pub forgotten: usize,
}

impl Intake {
    /// One takeover pass: claims up to `max` pending entries of consumers whose
    /// heartbeat is gone (see the [module docs](self)). Costs one round trip when this
    /// is the group's only consumer, two when it is not, plus one per dead consumer.
    pub async fn take_over(&self, max: usize) -> Result<TakeOver, IntakeError> {
        let mut out = TakeOver::default();
        let stream = self.keys().stream();
        let group = self.keys().group();
        let context = || format!("looking for dead consumers of `{stream}`");
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(&stream).arg(group);
        let reply: Value = match self.send(&mut self.writer_conn(), &cmd).await {
            // The stream or group is gone (Redis flushed or restarted): re-create it;
            // there is nothing to take over.
            Err(e) if is_nogroup(&e) || is_no_such_key(&e) => {
                self.ensure_group().await?;
                return Ok(out);
            }
            other => other,
        }
        .map_err(|e| IntakeError::redis(context(), e))?;
        let consumers: StreamInfoConsumersReply =
            redis::from_redis_value(reply).map_err(|e| IntakeError::UnexpectedReply {
                context: context(),
                detail: e.to_string(),
            })?;
        let others: Vec<(String, u64)> = consumers
            .consumers
            .into_iter()
            .filter(|c| c.name != self.consumer())
            .map(|c| (c.name, c.pending as u64))
            .collect();
        if others.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for (name, _) in &others {
            pipe.cmd("EXISTS").arg(self.keys().heartbeat(name));
        }
        let alive: Vec<bool> = self
            .send_pipe(&mut self.writer_conn(), &pipe)
            .await
            .map_err(|e| IntakeError::redis("reading the heartbeats of other supervisors", e))?;
        let peers: Vec<Peer> = others
            .into_iter()
            .zip(alive)
            .map(|((name, pending), live)| Peer {
                name,
                pending,
                live,
            })
            .collect();
        let plan = plan(self.consumer(), &peers);
        for name in &plan.forget {
            let mut inv = FORGET.prepare_invoke();
            inv.key(&stream)
                .key(self.keys().heartbeat(name))
                .arg(group)
                .arg(name);
            self.count(1, 1);
            match inv.invoke_async::<i64>(&mut self.writer_conn()).await {
                Ok(1) => {
                    out.forgotten += 1;
                    tracing::debug!(consumer = %name, "removed a dead consumer with nothing pending");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(consumer = %name, error = %e, "could not remove a dead consumer")
                }
            }
        }
        for name in &plan.take_from {
            let mut taken = 0;
            loop {
                let want = (max - out.entries.len()).min(CLAIM_CHUNK);
                if want == 0 {
                    out.more = true;
                    break;
                }
                let mut inv = CLAIM.prepare_invoke();
                inv.key(&stream)
                    .key(self.keys().heartbeat(self.consumer()))
                    .key(self.keys().heartbeat(name))
                    .arg(group)
                    .arg(self.consumer())
                    .arg(name)
                    .arg(want)
                    .arg(self.keys().permits())
                    .arg(self.keys().running_base());
                self.count(1, 1);
                let claiming = || format!("taking over the entries of dead consumer `{name}`");
                let reply: Value = inv
                    .invoke_async(&mut self.writer_conn())
                    .await
                    .map_err(|e| IntakeError::redis(claiming(), e))?;
                let (code, decoded, ids) =
                    decode_claim_script(reply).map_err(|detail| IntakeError::UnexpectedReply {
                        context: claiming(),
                        detail,
                    })?;
                match code {
                    // This supervisor's own heartbeat is gone: it must not claim.
                    0 => return Ok(out),
                    // It came back to life.
                    1 => break,
                    _ => {}
                }
                if ids > decoded.entries.len() {
                    tracing::warn!(
                        consumer = %name,
                        count = ids - decoded.entries.len(),
                        "pending entries of a dead consumer no longer exist; dropped"
                    );
                }
                taken += decoded.entries.len();
                out.entries.extend(decoded.entries);
                if ids < want {
                    break; // nothing more pending on it
                }
            }
            if taken > 0 {
                tracing::info!(count = taken, dead = %name, consumer = %self.consumer(), "took over the entries of a dead supervisor");
                out.from.push((name.clone(), taken));
            }
        }
        Ok(out)
    }

    /// Of `stream_ids` (entries this supervisor read), those now pending on another
    /// consumer: a peer took them over while this supervisor's heartbeat was gone.
    /// Entries pending nowhere (finished, or lost with Redis's data) are not
    /// reported: nobody else runs them. One round trip per thousand ids.
    pub async fn taken_over(&self, stream_ids: &[String]) -> Result<Vec<String>, IntakeError> {
        let stream = self.keys().stream();
        let mut taken = Vec::new();
        for chunk in stream_ids.chunks(CHECK_CHUNK) {
            let mut pipe = redis::pipe();
            for sid in chunk {
                xpending_of(&mut pipe, &stream, self.keys().group(), sid);
            }
            let replies: Vec<Vec<(String, String, u64, u64)>> =
                match self.send_pipe(&mut self.writer_conn(), &pipe).await {
                    Err(e) if is_nogroup(&e) => return Ok(taken),
                    other => other,
                }
                .map_err(|e| {
                    IntakeError::redis(
                        "checking which in-flight entries another supervisor took over",
                        e,
                    )
                })?;
            for (sid, reply) in chunk.iter().zip(replies) {
                if reply
                    .iter()
                    .any(|(_, owner, _, _)| owner != self.consumer())
                {
                    taken.push(sid.clone());
                }
            }
        }
        Ok(taken)
    }
}

impl Intake {
    /// For each consumer name, whether its heartbeat exists (one pipeline).
    pub async fn heartbeats(&self, consumers: &[String]) -> Result<Vec<bool>, IntakeError> {
        if consumers.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in consumers {
            pipe.cmd("EXISTS").arg(self.keys().heartbeat(name));
        }
        self.send_pipe(&mut self.writer_conn(), &pipe)
            .await
            .map_err(|e| IntakeError::redis("reading supervisor heartbeats", e))
    }

    /// For each stream entry id, whether it is gone for good: pending on no consumer,
    /// and either deleted from the stream or already delivered (at or before the
    /// group's last-delivered id), so no read or takeover will ever hand it out again.
    /// One pipeline: `XINFO GROUPS`, then `XPENDING` and `XRANGE` per id.
    pub async fn entries_gone(&self, stream_ids: &[String]) -> Result<Vec<bool>, IntakeError> {
        let mut gone = Vec::with_capacity(stream_ids.len());
        let stream = self.keys().stream();
        for chunk in stream_ids.chunks(CHECK_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.cmd("XINFO").arg("GROUPS").arg(&stream);
            for sid in chunk {
                xpending_of(&mut pipe, &stream, self.keys().group(), sid);
                pipe.cmd("XRANGE")
                    .arg(&stream)
                    .arg(sid)
                    .arg(sid)
                    .arg("COUNT")
                    .arg(1);
            }
            self.count(1, pipe.len() as u64);
            // A missing stream or group makes some commands fail: that is an answer.
            let replies: Vec<redis::RedisResult<Value>> = pipe
                .ignore_errors()
                .query_async(&mut self.writer_conn())
                .await
                .map_err(|e| {
                    IntakeError::redis("checking whether stream entries still exist", e)
                })?;
            let mut replies = replies.into_iter();
            let last_delivered: Option<String> = match replies.next() {
                Some(Ok(v)) => redis::from_redis_value::<redis::streams::StreamInfoGroupsReply>(v)
                    .ok()
                    .and_then(|g| {
                        g.groups
                            .into_iter()
                            .find(|g| g.name == self.keys().group())
                            .map(|g| g.last_delivered_id)
                    }),
                _ => None,
            };
            for sid in chunk {
                let pending = match replies.next() {
                    Some(Ok(Value::Array(items))) => !items.is_empty(),
                    Some(Ok(_)) => false,
                    Some(Err(e)) if is_nogroup(&e) => false,
                    Some(Err(e)) => {
                        return Err(IntakeError::redis(format!("XPENDING of entry {sid}"), e))
                    }
                    None => true,
                };
                let in_stream = match replies.next() {
                    Some(Ok(Value::Array(items))) => !items.is_empty(),
                    Some(Ok(_)) => false,
                    Some(Err(e)) => {
                        return Err(IntakeError::redis(format!("XRANGE of entry {sid}"), e))
                    }
                    None => true,
                };
                let delivered = last_delivered.as_deref().is_some_and(|last| {
                    super::stream::cmp_stream_ids(sid, last) != std::cmp::Ordering::Greater
                });
                gone.push(!pending && (!in_stream || delivered));
            }
        }
        Ok(gone)
    }
}

/// `XINFO` on a missing stream answers `ERR no such key`.
fn is_no_such_key(e: &redis::RedisError) -> bool {
    e.detail().is_some_and(|d| d.contains("no such key"))
}

/// Decodes [`CLAIM_SCRIPT`]'s `{code, entries, ids}`.
fn decode_claim_script(reply: Value) -> Result<(i64, entry::Decoded, usize), String> {
    let Value::Array(mut parts) = reply else {
        return Err(format!("expected {{code, entries, ids}}, got {reply:?}"));
    };
    if parts.len() != 3 {
        return Err(format!("expected {{code, entries, ids}}, got {parts:?}"));
    }
    let ids = match parts.pop() {
        Some(Value::Int(n)) => usize::try_from(n).unwrap_or(0),
        other => return Err(format!("expected a count of ids, got {other:?}")),
    };
    let entries = parts.pop().unwrap_or(Value::Nil);
    let code = match parts.pop() {
        Some(Value::Int(c)) => c,
        other => return Err(format!("expected a code, got {other:?}")),
    };
    let decoded = match entries {
        Value::Nil => entry::Decoded::default(),
        v => entry::decode_claim(v)?,
    };
    Ok((code, decoded, ids))
}

/// For `warden status`: marks each consumer of `backlog` live or dead (its heartbeat
/// exists or not), one pipeline.
pub(crate) async fn consumer_liveness<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    consumers: &mut [ConsumerBacklog],
) -> Result<(), IntakeError> {
    if consumers.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for c in consumers.iter() {
        pipe.cmd("EXISTS").arg(keys.heartbeat(&c.name));
    }
    let alive: Vec<bool> = pipe
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis("reading supervisor heartbeats", e))?;
    for (c, live) in consumers.iter_mut().zip(alive) {
        c.live = live;
    }
    Ok(())
}

/// Adds `XPENDING stream group id id 1` to `pipe`: the one entry `id`, with its consumer,
/// if it is pending anywhere in the group (an empty reply if not).
fn xpending_of(pipe: &mut redis::Pipeline, stream: &str, group: &str, id: &str) {
    pipe.cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(id)
        .arg(id)
        .arg(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, pending: u64, live: bool) -> Peer {
        Peer {
            name: name.into(),
            pending,
            live,
        }
    }

    #[test]
    fn only_dead_others_are_taken_from() {
        let p = plan(
            "me",
            &[
                peer("me", 10, false),
                peer("alive", 5, true),
                peer("dead-few", 2, false),
                peer("dead-many", 9, false),
                peer("dead-empty", 0, false),
                peer("alive-empty", 0, true),
            ],
        );
        assert_eq!(p.take_from, vec!["dead-many", "dead-few"]);
        assert_eq!(p.forget, vec!["dead-empty"]);
    }

    #[test]
    fn nothing_to_do_among_the_living() {
        assert_eq!(
            plan("me", &[peer("me", 3, true), peer("b", 7, true)]),
            Plan::default()
        );
        assert_eq!(plan("me", &[]), Plan::default());
    }

    #[test]
    fn itself_is_never_taken_from_even_without_a_heartbeat() {
        assert_eq!(plan("me", &[peer("me", 3, false)]), Plan::default());
    }

    #[test]
    fn claim_script_replies_decode() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"id".to_vec()),
                Value::BulkString(b"e1".to_vec()),
            ]),
        ]);
        let (code, d, ids) = decode_claim_script(Value::Array(vec![
            Value::Int(2),
            Value::Array(vec![entry]),
            Value::Int(2),
        ]))
        .unwrap();
        assert_eq!((code, d.entries.len(), ids), (2, 1, 2));
        assert_eq!(d.entries[0].stream_id, "1-0");
        let (code, d, ids) = decode_claim_script(Value::Array(vec![
            Value::Int(0),
            Value::Array(vec![]),
            Value::Int(0),
        ]))
        .unwrap();
        assert_eq!((code, d.entries.len(), ids), (0, 0, 0));
        assert!(decode_claim_script(Value::Int(1)).is_err());
    }
}
