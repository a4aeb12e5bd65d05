//! [`Intake`]: the supervisor's handle on the execution stream: join the consumer group,
//! read entries (taking over dead supervisors' entries is [`super::liveness`]'s),
//! acknowledge them and publish completions after commit,
//! dead-letter bad ones, publish live logs and the supervisor's status.
//!
//! See the [module overview](super) for the command budget per batch and why reads
//! get their own connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::{Cmd, Pipeline, RedisError, Value};
use warden_protocol::Log;

use super::cancel::{self, CancelListener};
use super::entry::{self, Entry, Field};
use super::keys::Keys;
use super::messages::{Completion, Done, LogLine, StartMark, SupervisorStatus};
use super::request::{ExecutionRequest, InvalidEntry};
use super::{redact_url, IntakeError};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a non-blocking command or pipeline may take to answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a blocking read may take beyond its `BLOCK` before we give up on it.
const READ_GRACE: Duration = Duration::from_secs(5);
/// The most entries one read returns, whatever is asked.
pub const MAX_READ: usize = 10_000;
/// How long a completion stays readable at its key after it was published.
pub const COMPLETION_TTL: Duration = Duration::from_secs(60 * 60);
/// The supervisor status key's TTL: a supervisor that stops publishing drops out.
/// How long an execution's live-log stream outlives its last line while it runs (a
/// safety net for a supervisor that dies: the completion shortens it).
pub const LIVE_LOG_TTL: Duration = Duration::from_secs(60 * 60);
/// How long the live-log stream stays once the completion is published: long enough
/// for a follower to read its last lines; the database holds them all.
pub const COMPLETED_LOG_TTL: Duration = Duration::from_secs(60);
/// Most lines one live-log stream keeps (approximately: `MAXLEN ~`); the default log
/// cap per execution.
pub const LIVE_LOG_MAXLEN: usize = 10_000;
pub const STATUS_TTL: Duration = Duration::from_secs(5);
/// The dead-letter stream is capped (approximately) at this many entries.
pub const DEAD_LETTER_MAXLEN: usize = 10_000;
/// A dead letter copies at most this many bytes of each raw field value ...
pub const DEAD_LETTER_MAX_VALUE: usize = 64 * 1024;
/// ... and at most this many raw fields.
pub const DEAD_LETTER_MAX_FIELDS: usize = 64;

/// Round trips and commands sent to Redis by one [`Intake`] (and its clones) since it
/// connected. A pipeline is one round trip of several commands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisCalls {
    pub round_trips: u64,
    pub commands: u64,
}

impl std::ops::Sub for RedisCalls {
    type Output = RedisCalls;
    fn sub(self, rhs: RedisCalls) -> RedisCalls {
        RedisCalls {
            round_trips: self.round_trips - rhs.round_trips,
            commands: self.commands - rhs.commands,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    round_trips: AtomicU64,
    commands: AtomicU64,
    /// Calls that failed (for `/metrics`).
    errors: AtomicU64,
}

/// The stream and its consumer group as seen by `warden status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries in the stream: waiting to be read, plus read but not yet finished
    /// (finished entries are deleted).
    pub length: u64,
    /// Whether the consumer group exists (no supervisor has started yet if not).
    pub group_exists: bool,
    /// Read by some supervisor, not yet acknowledged.
    pub pending: u64,
    /// Redis's own count of entries not yet delivered to the group, when it can tell
    /// (it cannot once entries have been deleted behind the group's position).
    pub lag: Option<u64>,
    pub last_delivered_id: Option<String>,
    /// Consumers with their pending counts and idle times.
    pub consumers: Vec<ConsumerBacklog>,
}

impl Backlog {
    /// Entries nobody has read yet.
    pub fn waiting(&self) -> u64 {
        self.length.saturating_sub(self.pending)
    }

    /// Pending entries of consumers whose heartbeat is gone (peers take them over).
    pub fn left_by_dead(&self) -> u64 {
        self.consumers
            .iter()
            .filter(|c| !c.live)
            .map(|c| c.pending)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerBacklog {
    pub name: String,
    pub pending: u64,
    /// Milliseconds since this consumer last read or claimed.
    pub idle_ms: u64,
    /// Its heartbeat exists (filled by `warden status`; `false` until checked).
    pub live: bool,
}

/// The supervisor's connection to the execution stream. Cheap to clone: clones share
/// the connections and the call counters.
#[derive(Clone)]
pub struct Intake {
    client: redis::Client,
    /// Blocking reads only (`XREADGROUP … BLOCK`), so they never delay the writer.
    reader: ConnectionManager,
    /// Everything else.
    writer: ConnectionManager,
    keys: Keys,
    consumer: String,
    /// The URL with its password redacted.
    url: String,
    calls: Arc<Counters>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("url", &self.url)
            .field("keys", &self.keys)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Connects (two connections: blocking reads, everything else) and checks that
    /// Redis answers. Does not create the consumer group: call [`Intake::ensure_group`].
    ///
    /// `consumer` names this supervisor in the group; it should be stable across
    /// restarts of the same supervisor (e.g. the host name) so that
    /// [`Intake::recover_own`] finds what its previous incarnation left pending.
    pub async fn connect(
        redis_url: &str,
        keys: Keys,
        consumer: impl Into<String>,
    ) -> Result<Intake, IntakeError> {
        let consumer = consumer.into();
        check_consumer(&consumer)?;
        let url = redact_url(redis_url);
        let client = redis::Client::open(redis_url).map_err(|source| IntakeError::InvalidUrl {
            url: url.clone(),
            source,
        })?;
        // A connection manager retries its first connection for seconds; probe once
        // first so an unreachable Redis is reported at once, with the real cause.
        probe(&client, &url).await?;
        // The reader's replies may legitimately take as long as its BLOCK: `read`
        // bounds each call itself instead.
        let reader = manager(&client, None, &url).await?;
        let writer = manager(&client, Some(RESPONSE_TIMEOUT), &url).await?;
        tracing::debug!(%url, prefix = keys.prefix(), %consumer, "connected to Redis");
        Ok(Intake {
            client,
            reader,
            writer,
            keys,
            consumer,
            url,
            calls: Arc::default(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The Redis URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying client, for opening further connections (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// What this intake (and its clones) has sent so far.
    pub fn calls(&self) -> RedisCalls {
        RedisCalls {
            round_trips: self.calls.round_trips.load(Ordering::Relaxed),
            commands: self.calls.commands.load(Ordering::Relaxed),
        }
    }

    /// Calls of this intake (and its clones) that failed.
    pub fn errors(&self) -> u64 {
        self.calls.errors.load(Ordering::Relaxed)
    }

    /// Whether Redis answers a `PING` on the non-blocking connection (for `/readyz`;
    /// not counted in [`Intake::calls`]).
    pub async fn ping(&self) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.writer.clone())
            .await
    }

    /// Creates the consumer group (and the stream, if missing). Idempotent.
    ///
    /// The group starts at id `0`, so requests added before any supervisor ever ran,
    /// or after the stream was lost, are all read; since finished entries are deleted
    /// this never replays finished work.
    pub async fn ensure_group(&self) -> Result<(), IntakeError> {
        let stream = self.keys.stream();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&stream)
            .arg(self.keys.group())
            .arg("0")
            .arg("MKSTREAM");
        match self.send::<()>(&mut self.writer.clone(), &cmd).await {
            Ok(()) => {
                tracing::info!(stream, group = self.keys.group(), "created consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(IntakeError::redis(
                format!(
                    "creating consumer group `{}` on `{stream}`",
                    self.keys.group()
                ),
                e,
            )),
        }
    }

    /// Takes up to `max` new entries for this consumer as a supervisor serving only the
    /// default queue would ([`Intake::take`]: the stream's direct entries, then the
    /// default queue's lanes in turn), waiting up to `block` for the first one
    /// (`Duration::ZERO`: don't wait). The entries become pending on this consumer until
    /// acknowledged. Heals a vanished stream or group.
    pub async fn read(&self, max: usize, block: Duration) -> Result<Vec<Entry>, IntakeError> {
        let default = [super::lanes::DEFAULT_QUEUE.to_owned()];
        self.take(max, &default, &[], block).await
    }

    /// Everything pending on this consumer name, at most `max` entries: at start-up,
    /// what its previous incarnation read and never acknowledged; once reading has
    /// begun, work in flight too, so the caller filters out what it holds
    /// (crate::serve::held). Pending ids whose entry was deleted are acknowledged.
    pub async fn recover_own(&self, max: usize) -> Result<Vec<Entry>, IntakeError> {
        let mut entries = Vec::new();
        let mut gone = Vec::new();
        let mut after = "0".to_owned();
        while entries.len() < max {
            let want = (max - entries.len()).min(MAX_READ);
            let cmd = self.xreadgroup(want, None, &after);
            let reply = match self.send::<Value>(&mut self.writer.clone(), &cmd).await {
                Err(e) if is_nogroup(&e) => {
                    self.ensure_group().await?;
                    return Ok(Vec::new());
                }
                other => other,
            }
            .map_err(|e| IntakeError::redis(self.recovering_context(), e))?;
            let decoded =
                entry::decode_read(reply).map_err(|detail| IntakeError::UnexpectedReply {
                    context: self.recovering_context(),
                    detail,
                })?;
            let last = decoded
                .entries
                .last()
                .map(|e| e.stream_id.clone())
                .into_iter()
                .chain(decoded.gone.last().cloned())
                .max_by(|a, b| cmp_stream_ids(a, b));
            let got = decoded.entries.len() + decoded.gone.len();
            entries.extend(decoded.entries);
            gone.extend(decoded.gone);
            match last {
                Some(last) if got >= want => after = last,
                _ => break,
            }
        }
        if !gone.is_empty() {
            tracing::warn!(
                count = gone.len(),
                "acknowledging pending entries that no longer exist"
            );
            self.ack_ids(&gone).await?;
        }
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), consumer = %self.consumer, "recovered own pending entries");
        }
        Ok(entries)
    }

    /// After the store committed these executions: acknowledge and delete their
    /// entries, release their concurrency permits, and store and publish each
    /// completion. One pipeline, one round trip: `XACK` + `XDEL` + the release script
    /// (crate::intake::limits) for all, then `SET EX` + `PUBLISH` + `PEXPIRE` (of its
    /// live-log stream) per completion.
    ///
    /// If this fails the entries stay pending; retry with the same `done` (every
    /// command here is idempotent), or, if this supervisor dies, a peer takes them over
    /// and finds them committed.
    pub async fn ack_and_publish(&self, done: &[Done]) -> Result<(), IntakeError> {
        if done.is_empty() {
            return Ok(());
        }
        let stream = self.keys.stream();
        let ids: Vec<&str> = done.iter().map(|d| d.stream_id.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(self.keys.group())
            .arg(&ids)
            .ignore();
        pipe.cmd("XDEL").arg(&stream).arg(&ids).ignore();
        super::limits::queue_release(&mut pipe, &self.keys, &ids);
        for completion in done.iter().filter_map(|d| d.completion.as_ref()) {
            self.queue_completion(&mut pipe, completion);
        }
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| {
                IntakeError::redis(
                    format!(
                        "acknowledging {} entries and publishing their completions",
                        done.len()
                    ),
                    e,
                )
            })
    }

    /// Adds a completion's `SET … EX` (kept for late waiters) and `PUBLISH` to `pipe`.
    fn queue_completion(&self, pipe: &mut redis::Pipeline, completion: &Completion) {
        let json = completion.to_json();
        if completion.is_stored() {
            pipe.cmd("SET")
                .arg(self.keys.completion_key(completion.id.as_str()))
                .arg(&json)
                .arg("EX")
                .arg(COMPLETION_TTL.as_secs())
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(self.keys.completion_channel(completion.id.as_str()))
            .arg(&json)
            .ignore();
        // Its live lines are in the database now; followers get a minute to read the
        // last ones (a no-op when it logged nothing).
        pipe.cmd("PEXPIRE")
            .arg(self.keys.log_stream(completion.id.as_str()))
            .arg(COMPLETED_LOG_TTL.as_millis() as u64)
            .ignore();
    }

    /// Stores and publishes completions that have no stream entry to acknowledge (the
    /// sweeper's: the entry is gone). One pipeline of `SET EX` + `PUBLISH` each.
    pub async fn publish_completions(&self, completions: &[Completion]) -> Result<(), IntakeError> {
        if completions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for completion in completions {
            self.queue_completion(&mut pipe, completion);
        }
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| {
                IntakeError::redis(format!("publishing {} completions", completions.len()), e)
            })
    }

    /// Copies a rejected entry to the dead-letter stream with the reason. The entry
    /// itself is acknowledged later, with its batch, once its `failed` row (if it had
    /// an id) is committed.
    pub async fn dead_letter(
        &self,
        rejected: &InvalidEntry,
        fields: &[Field],
    ) -> Result<(), IntakeError> {
        self.dead_letter_batch(&[(rejected, fields)]).await
    }

    /// [`Intake::dead_letter`] for many entries in one round trip.
    pub async fn dead_letter_batch(
        &self,
        items: &[(&InvalidEntry, &[Field])],
    ) -> Result<(), IntakeError> {
        if items.is_empty() {
            return Ok(());
        }
        let dead = self.keys.dead_letters();
        let now = chrono::Utc::now().to_rfc3339();
        let mut pipe = redis::pipe();
        for (rejected, fields) in items {
            let cmd = pipe
                .cmd("XADD")
                .arg(&dead)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTER_MAXLEN)
                .arg("*")
                .arg("reason")
                .arg(&rejected.reason)
                .arg("stream_id")
                .arg(&rejected.stream_id)
                .arg("consumer")
                .arg(&self.consumer)
                .arg("rejected_at")
                .arg(&now);
            if let Some(id) = &rejected.execution_id {
                cmd.arg("execution_id").arg(id.as_str());
            }
            let mut truncated = false;
            for (name, value) in fields.iter().take(DEAD_LETTER_MAX_FIELDS) {
                let mut raw_name = b"raw.".to_vec();
                raw_name.extend_from_slice(name);
                let keep = value.len().min(DEAD_LETTER_MAX_VALUE);
                truncated |= keep < value.len();
                cmd.arg(raw_name).arg(&value[..keep]);
            }
            if truncated || fields.len() > DEAD_LETTER_MAX_FIELDS {
                cmd.arg("raw_truncated").arg(1);
            }
            cmd.ignore();
        }
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| {
                IntakeError::redis(
                    format!("dead-lettering {} entries to `{dead}`", items.len()),
                    e,
                )
            })?;
        for (rejected, _) in items {
            tracing::warn!(
                stream_id = %rejected.stream_id,
                execution_id = rejected.execution_id.as_ref().map_or("-", |id| id.as_str()),
                reason = %rejected.reason,
                "rejected stream entry"
            );
        }
        Ok(())
    }

    /// Adds requests to the stream in one pipeline (the due-work poller's entries for
    /// due attempts: crate::serve::due); returns their stream ids.
    pub async fn enqueue(&self, requests: &[ExecutionRequest]) -> Result<Vec<String>, IntakeError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = super::lanes::add_all(&self.keys, requests);
        self.send_pipe(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| {
                IntakeError::redis(format!("enqueueing {} due attempts", requests.len()), e)
            })
    }

    /// Appends log lines to their executions' live-log streams (one pipeline): `XADD`
    /// per line, then one `PEXPIRE` per execution in the batch ([`LIVE_LOG_TTL`]); in
    /// the same pipeline, one `SET … PX` per start mark (the mark's key expires after
    /// the given time: its attempt's deadline and a margin).
    pub async fn publish_logs(
        &self,
        batch: &[Log],
        marks: &[(String, StartMark, Duration)],
    ) -> Result<(), IntakeError> {
        if batch.is_empty() && marks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, mark, ttl) in marks {
            // Strings and numbers: serialising cannot fail.
            pipe.cmd("SET")
                .arg(self.keys.start_mark(id))
                .arg(serde_json::to_string(mark).unwrap_or_default())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        let mut streams: Vec<&str> = Vec::new();
        for log in batch {
            // Plain strings and numbers: serialising cannot fail.
            let json = serde_json::to_string(&LogLine::from_log(log)).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(self.keys.log_stream(&log.execution_id))
                .arg("MAXLEN")
                .arg("~")
                .arg(LIVE_LOG_MAXLEN)
                .arg("*")
                .arg("line")
                .arg(json)
                .ignore();
            if !streams.contains(&log.execution_id.as_str()) {
                streams.push(&log.execution_id);
            }
        }
        for id in streams {
            pipe.cmd("PEXPIRE")
                .arg(self.keys.log_stream(id))
                .arg(LIVE_LOG_TTL.as_millis() as u64)
                .ignore();
        }
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| {
                IntakeError::redis(
                    format!(
                        "publishing {} log lines and {} start marks",
                        batch.len(),
                        marks.len()
                    ),
                    e,
                )
            })
    }

    /// Stores this supervisor's status (expiring after [`STATUS_TTL`]) and registers it
    /// in the set of supervisors. Call every second or two.
    pub async fn publish_status(&self, status: &SupervisorStatus) -> Result<(), IntakeError> {
        if status.consumer != self.consumer {
            tracing::warn!(
                status = %status.consumer,
                intake = %self.consumer,
                "status names another consumer; storing it under this intake's name"
            );
        }
        // Strings and numbers: serialising cannot fail.
        let json = serde_json::to_string(status).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.supervisor_status(&self.consumer))
            .arg(json)
            .arg("EX")
            .arg(STATUS_TTL.as_secs())
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.supervisors())
            .arg(&self.consumer)
            .ignore();
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| IntakeError::redis("publishing supervisor status", e))
    }

    /// Removes this supervisor's status at a clean shutdown.
    pub async fn retire_status(&self) -> Result<(), IntakeError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.supervisor_status(&self.consumer))
            .ignore();
        pipe.cmd("SREM")
            .arg(self.keys.supervisors())
            .arg(&self.consumer)
            .ignore();
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| IntakeError::redis("removing supervisor status", e))
    }

    /// The stream's length, pending count, lag and per-consumer pending counts.
    pub async fn stream_backlog(&self) -> Result<Backlog, IntakeError> {
        self.count(1, 3);
        backlog(&mut self.writer.clone(), &self.keys).await
    }

    /// For each id, whether a cancel was requested (one `MGET`).
    pub async fn is_cancelled(
        &self,
        execution_ids: &[impl AsRef<str>],
    ) -> Result<Vec<bool>, IntakeError> {
        if execution_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.count(1, 1);
        cancel::is_cancelled(&mut self.writer.clone(), &self.keys, execution_ids).await
    }

    /// Subscribes to cancel requests on a connection of its own. Start it before the
    /// first [`Intake::read`], so that no cancel falls between reading an entry and
    /// listening for it.
    pub async fn cancel_listener(&self) -> Result<CancelListener, IntakeError> {
        CancelListener::start(self.client.clone(), &self.keys).await
    }

    // ---- plumbing ----

    fn xreadgroup(&self, count: usize, block: Option<Duration>, id: &str) -> Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.keys.group())
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        // `BLOCK 0` would mean "forever": a zero duration means "don't block" instead.
        if let Some(block) = block.filter(|b| !b.is_zero()) {
            cmd.arg("BLOCK").arg(millis(block).max(1));
        }
        cmd.arg("STREAMS").arg(self.keys.stream()).arg(id);
        cmd
    }

    /// A read on the reader connection, bounded by `block` plus a grace period.
    pub(super) async fn send_read(
        &self,
        cmd: &Cmd,
        block: Duration,
    ) -> Result<Result<Value, RedisError>, IntakeError> {
        let limit = block + READ_GRACE;
        let mut reader = self.reader.clone();
        tokio::time::timeout(limit, self.send::<Value>(&mut reader, cmd))
            .await
            .map_err(|_| IntakeError::TimedOut {
                context: self.reading_context(),
                after: limit,
            })
    }

    /// The connection for everything but blocking reads.
    pub(super) fn writer_conn(&self) -> ConnectionManager {
        self.writer.clone()
    }

    pub(super) fn count_error(&self) {
        self.calls.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count(&self, round_trips: u64, commands: u64) {
        self.calls
            .round_trips
            .fetch_add(round_trips, Ordering::Relaxed);
        self.calls.commands.fetch_add(commands, Ordering::Relaxed);
    }

    pub(super) async fn send<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
        cmd: &Cmd,
    ) -> Result<T, RedisError> {
        self.count(1, 1);
        let reply = cmd.query_async(conn).await;
        if reply.is_err() {
            self.calls.errors.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    pub(super) async fn send_pipe<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
        pipe: &Pipeline,
    ) -> Result<T, RedisError> {
        self.count(1, pipe.len() as u64);
        let reply = pipe.query_async(conn).await;
        if reply.is_err() {
            self.calls.errors.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    async fn ack_ids(&self, ids: &[String]) -> Result<(), IntakeError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(self.keys.stream())
            .arg(self.keys.group())
            .arg(ids)
            .ignore();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        super::limits::queue_release(&mut pipe, &self.keys, &refs);
        self.send_pipe::<()>(&mut self.writer.clone(), &pipe)
            .await
            .map_err(|e| IntakeError::redis("acknowledging deleted pending entries", e))
    }

    fn reading_context(&self) -> String {
        format!(
            "reading stream `{}` as consumer `{}` of group `{}`",
            self.keys.stream(),
            self.consumer,
            self.keys.group()
        )
    }

    fn recovering_context(&self) -> String {
        format!(
            "reading entries left pending on consumer `{}` in `{}`",
            self.consumer,
            self.keys.stream()
        )
    }
}

/// [`Intake::stream_backlog`] on any connection (the CLI's too): one pipeline of
/// `XLEN`, `XINFO GROUPS` and `XINFO CONSUMERS`.
pub(crate) async fn backlog<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Backlog, IntakeError> {
    let stream = keys.stream();
    let mut pipe = redis::pipe();
    pipe.cmd("XLEN").arg(&stream);
    pipe.cmd("XINFO").arg("GROUPS").arg(&stream);
    pipe.cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(keys.group());
    // A missing stream or group makes the XINFOs fail; that just means "nothing yet".
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(format!("reading the backlog of `{stream}`"), e))?;
    let mut replies = replies.into_iter();
    let unexpected = |detail: String| IntakeError::UnexpectedReply {
        context: format!("reading the backlog of `{stream}`"),
        detail,
    };
    let length = match replies.next() {
        Some(Ok(v)) => redis::from_redis_value::<u64>(v).map_err(|e| unexpected(e.to_string()))?,
        Some(Err(e)) => return Err(IntakeError::redis(format!("XLEN `{stream}`"), e)),
        None => return Err(unexpected("no reply to XLEN".to_owned())),
    };
    let mut out = Backlog {
        length,
        ..Backlog::default()
    };
    if let Some(Ok(v)) = replies.next() {
        let groups: StreamInfoGroupsReply =
            redis::from_redis_value(v).map_err(|e| unexpected(e.to_string()))?;
        if let Some(g) = groups.groups.into_iter().find(|g| g.name == keys.group()) {
            out.group_exists = true;
            out.pending = g.pending as u64;
            out.lag = g.lag.map(|l| l as u64);
            out.last_delivered_id = Some(g.last_delivered_id);
        }
    }
    if let Some(Ok(v)) = replies.next() {
        let consumers: StreamInfoConsumersReply =
            redis::from_redis_value(v).map_err(|e| unexpected(e.to_string()))?;
        out.consumers = consumers
            .consumers
            .into_iter()
            .map(|c| ConsumerBacklog {
                name: c.name,
                pending: c.pending as u64,
                idle_ms: c.idle as u64,
                live: false,
            })
            .collect();
    }
    Ok(out)
}

/// Opens one plain connection and `PING`s, to fail fast with the real cause.
pub(crate) async fn probe(client: &redis::Client, url: &str) -> Result<(), IntakeError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(IntakeError::Unreachable {
            url: url.to_owned(),
            source,
        }),
        Err(_) => Err(IntakeError::ConnectTimeout {
            url: url.to_owned(),
            timeout: CONNECT_TIMEOUT * 2,
        }),
    }
}

async fn manager(
    client: &redis::Client,
    response_timeout: Option<Duration>,
    url: &str,
) -> Result<ConnectionManager, IntakeError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout)
        .set_max_delay(Duration::from_secs(2));
    // The manager retries its first connection too; bound the whole attempt so an
    // unreachable Redis is reported promptly.
    let limit = CONNECT_TIMEOUT * 2;
    match tokio::time::timeout(
        limit,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(source)) => Err(IntakeError::Unreachable {
            url: url.to_owned(),
            source,
        }),
        Err(_) => Err(IntakeError::ConnectTimeout {
            url: url.to_owned(),
            timeout: limit,
        }),
    }
}

fn check_consumer(name: &str) -> Result<(), IntakeError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IntakeError::InvalidConsumer {
            name: name.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

pub(super) fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Orders `ms-seq` stream ids numerically (a plain string compare gets `9-0` > `10-0` wrong).
pub(crate) fn cmp_stream_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_stream_ids("9-0", "10-0"), Less);
        assert_eq!(cmp_stream_ids("10-2", "10-10"), Less);
        assert_eq!(cmp_stream_ids("5-5", "5-5"), Equal);
    }

    #[test]
    fn consumer_names_are_checked() {
        assert!(check_consumer("host-1").is_ok());
        assert!(check_consumer("").is_err());
        assert!(check_consumer("a b").is_err());
        assert!(check_consumer(&"x".repeat(201)).is_err());
    }
}
