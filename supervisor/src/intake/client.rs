//! [`IntakeClient`]: the client side, for the CLI (`warden submit`, `cancel`, `status`),
//! the benchmark and tests: submit requests, cancel them, wait for their completion
//! while following their logs, and read the supervisors' status.
//!
//! Waiting never loses a wake-up: [`IntakeClient::wait_for_completion`] subscribes to
//! the execution's completion channel *first*, and only then looks for a completion
//! already stored. A completion published before the subscription is in
//! the key; one published after it arrives on the channel.

use std::time::Duration;

use std::collections::VecDeque;

use futures::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubStream};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;
use tokio::time::Instant;

use super::cancel;
use super::keys::Keys;
use super::messages::{Completion, LogLine, StartMark, SupervisorStatus};
use super::request::ExecutionRequest;
use super::stream::{backlog, Backlog, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use super::{redact_url, IntakeError};
use crate::outcome::ExecutionId;

/// A connection for clients. Cheap to clone.
#[derive(Clone)]
pub struct IntakeClient {
    client: redis::Client,
    conn: MultiplexedConnection,
    keys: Keys,
    url: String,
}

impl std::fmt::Debug for IntakeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeClient")
            .field("url", &self.url)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Every supervisor that is alive, and the stream's backlog.
#[derive(Debug, Clone)]
pub struct Overview {
    pub supervisors: Vec<SupervisorStatus>,
    pub backlog: Backlog,
    /// Every lane with work waiting, deepest first.
    pub lanes: Vec<super::LaneDepth>,
}

/// What [`Waiter::next`] yields: log lines as they come, then the completion.
#[derive(Debug, Clone)]
pub enum WaitEvent {
    Log(LogLine),
    Completed(Completion),
}

impl IntakeClient {
    /// Connects and checks that Redis answers.
    pub async fn connect(redis_url: &str, keys: Keys) -> Result<IntakeClient, IntakeError> {
        let url = redact_url(redis_url);
        let client = redis::Client::open(redis_url).map_err(|source| IntakeError::InvalidUrl {
            url: url.clone(),
            source,
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| IntakeError::Unreachable {
                url: url.clone(),
                source,
            })?;
        Ok(IntakeClient {
            client,
            conn,
            keys,
            url,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection on which to run other commands.
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Validates `request` and adds it to its lane; returns its lane entry id.
    pub async fn submit(&self, request: &ExecutionRequest) -> Result<String, IntakeError> {
        submit(&mut self.conn.clone(), &self.keys, request).await
    }

    /// Submits many requests in one round trip; returns their lane entry ids, in order.
    /// Nothing is submitted if any request is invalid.
    pub async fn submit_many(
        &self,
        requests: &[ExecutionRequest],
    ) -> Result<Vec<String>, IntakeError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for request in requests {
            request.validate()?;
        }
        let pipe = super::lanes::add_all(&self.keys, requests);
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| IntakeError::redis(format!("submitting {} requests", requests.len()), e))
    }

    /// Like [`IntakeClient::submit_many`], but straight into the execution stream, first
    /// come first served, as before queues: what `bench --workload fairness` compares
    /// with. Not for production use.
    pub async fn submit_many_fifo(
        &self,
        requests: &[ExecutionRequest],
    ) -> Result<Vec<String>, IntakeError> {
        let pipe = super::lanes::add_all_fifo(&self.keys, requests);
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| IntakeError::redis(format!("submitting {} requests", requests.len()), e))
    }

    /// Stores and publishes a completion (`SET … EX` + `PUBLISH`), for an execution that
    /// ended without a supervisor (cancelled while waiting for its next attempt).
    pub async fn publish_completion(&self, completion: &Completion) -> Result<(), IntakeError> {
        let json = completion.to_json();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.completion_key(completion.id.as_str()))
            .arg(&json)
            .arg("EX")
            .arg(super::stream::COMPLETION_TTL.as_secs())
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(self.keys.completion_channel(completion.id.as_str()))
            .arg(&json)
            .ignore();
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| {
                IntakeError::redis(format!("publishing the completion of {}", completion.id), e)
            })
    }

    /// The start marks of these executions (crate::intake::messages::StartMark), in
    /// order; `None` where a worker has not started it, or the mark expired (one `MGET`).
    /// A mark that does not parse reads as `None`.
    pub async fn start_marks(
        &self,
        execution_ids: &[&str],
    ) -> Result<Vec<Option<StartMark>>, IntakeError> {
        if execution_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = execution_ids
            .iter()
            .map(|id| self.keys.start_mark(id))
            .collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| IntakeError::redis("reading the executions' start marks", e))?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|json| serde_json::from_str(&json).ok()))
            .collect())
    }

    /// Asks for an execution to be cancelled (queued or running).
    pub async fn cancel(&self, execution_id: &str) -> Result<(), IntakeError> {
        cancel::request_cancel(&mut self.conn.clone(), &self.keys, execution_id).await
    }

    /// The stored completion of an execution, if it finished within the last hour.
    pub async fn completion(&self, execution_id: &str) -> Result<Option<Completion>, IntakeError> {
        completion(&mut self.conn.clone(), &self.keys, execution_id).await
    }

    /// Subscribes to the execution's completion, then checks whether it already
    /// completed. Read events from the returned [`Waiter`]: its log lines from the first
    /// (the live-log stream keeps them while it runs), then its completion. It gives up
    /// `timeout` from now.
    pub async fn wait_for_completion(
        &self,
        execution_id: &str,
        timeout: Duration,
    ) -> Result<Waiter, IntakeError> {
        let deadline = Instant::now() + timeout;
        let completion_channel = self.keys.completion_channel(execution_id);
        let context = || format!("subscribing to the completion of execution {execution_id}");
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&completion_channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let messages = match tokio::time::timeout(RESPONSE_TIMEOUT, subscribe).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => return Err(IntakeError::redis(context(), e)),
            Err(_) => {
                return Err(IntakeError::TimedOut {
                    context: context(),
                    after: RESPONSE_TIMEOUT,
                })
            }
        };
        // Subscribed: anything published from now on reaches us. Only now look for a
        // completion published before.
        let ready = self.completion(execution_id).await?;
        Ok(Waiter {
            execution_id: execution_id.into(),
            client: self.client.clone(),
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            messages,
            completion_channel,
            log_stream: self.keys.log_stream(execution_id),
            log_conn: None,
            last_log_id: "0".to_owned(),
            lines: VecDeque::new(),
            deadline,
            timeout,
            ready,
            finished: false,
        })
    }

    /// Whether a request with this execution id waits in a queue's lane or in the stream
    /// (submitted, not yet finished). Reads them in pages of 1,000 entries, up to
    /// [`MAX_QUEUED_SCAN`] entries in all.
    pub async fn is_queued(&self, execution_id: &str) -> Result<bool, IntakeError> {
        let mut streams = vec![self.keys.stream()];
        streams.extend(
            super::lanes::depths(&mut self.conn.clone(), &self.keys)
                .await?
                .into_iter()
                .map(|d| self.keys.lane(&d.lane.queue, d.lane.org.as_deref())),
        );
        let mut scanned = 0;
        for stream in streams {
            let mut from = "-".to_owned();
            while scanned < MAX_QUEUED_SCAN {
                let page: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| IntakeError::redis(format!("reading `{stream}`"), e))?;
                if page
                    .ids
                    .iter()
                    .any(|e| e.get::<String>("id").as_deref() == Some(execution_id))
                {
                    return Ok(true);
                }
                let Some(last) = page.ids.last() else {
                    break;
                };
                scanned += page.ids.len();
                from = format!("({}", last.id);
            }
        }
        Ok(false)
    }

    /// The log lines of a running execution so far, from its live-log stream (empty
    /// when it has logged nothing yet, or ended more than a minute ago).
    pub async fn live_logs(&self, execution_id: &str) -> Result<Vec<LogLine>, IntakeError> {
        let key = self.keys.log_stream(execution_id);
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| IntakeError::redis(format!("reading `{key}`"), e))?;
        Ok(reply.ids.iter().filter_map(log_line).collect())
    }

    /// The supervisors whose status is current, sorted by consumer name. Names whose
    /// status expired are removed from the set.
    pub async fn list_supervisors(&self) -> Result<Vec<SupervisorStatus>, IntakeError> {
        list_supervisors(&mut self.conn.clone(), &self.keys).await
    }

    /// Supervisors and backlog together, each consumer marked live or dead.
    pub async fn status(&self) -> Result<Overview, IntakeError> {
        let supervisors = self.list_supervisors().await?;
        let mut backlog = backlog(&mut self.conn.clone(), &self.keys).await?;
        super::liveness::consumer_liveness(
            &mut self.conn.clone(),
            &self.keys,
            &mut backlog.consumers,
        )
        .await?;
        let lanes = super::lanes::depths(&mut self.conn.clone(), &self.keys).await?;
        Ok(Overview {
            supervisors,
            backlog,
            lanes,
        })
    }
}

/// Validates `request` and adds it to its lane (crate::intake::lanes); returns its
/// lane entry id.
pub async fn submit<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    request: &ExecutionRequest,
) -> Result<String, IntakeError> {
    request.validate()?;
    let ids: Vec<String> = super::lanes::add_all(keys, std::slice::from_ref(request))
        .query_async(conn)
        .await
        .map_err(|e| {
            IntakeError::redis(
                format!(
                    "submitting execution {} to queue `{}`",
                    request.execution_id,
                    request.queue_name()
                ),
                e,
            )
        })?;
    ids.into_iter()
        .next()
        .ok_or_else(|| IntakeError::UnexpectedReply {
            context: format!("submitting execution {}", request.execution_id),
            detail: "no entry id in the reply".to_owned(),
        })
}

async fn completion<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    execution_id: &str,
) -> Result<Option<Completion>, IntakeError> {
    let key = keys.completion_key(execution_id);
    let json: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(format!("reading `{key}`"), e))?;
    json.map(|json| {
        serde_json::from_str(&json).map_err(|e| IntakeError::UnexpectedReply {
            context: format!("reading `{key}`"),
            detail: format!("not a completion: {e}"),
        })
    })
    .transpose()
}

async fn list_supervisors<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<SupervisorStatus>, IntakeError> {
    let set = keys.supervisors();
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&set)
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis(format!("reading `{set}`"), e))?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    names.sort();
    let status_keys: Vec<String> = names.iter().map(|n| keys.supervisor_status(n)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&status_keys)
        .query_async(conn)
        .await
        .map_err(|e| IntakeError::redis("reading supervisor status keys", e))?;
    let mut alive = Vec::new();
    let mut stale = Vec::new();
    for (name, value) in names.into_iter().zip(values) {
        match value.map(|json| serde_json::from_str::<SupervisorStatus>(&json)) {
            Some(Ok(status)) => alive.push(status),
            Some(Err(e)) => {
                tracing::warn!(consumer = %name, error = %e, "unreadable supervisor status")
            }
            None => stale.push(name),
        }
    }
    if !stale.is_empty() {
        // Best effort: a supervisor that comes back simply re-adds itself.
        let removed: Result<(), _> = redis::cmd("SREM")
            .arg(&set)
            .arg(&stale)
            .query_async(conn)
            .await;
        if let Err(e) = removed {
            tracing::debug!(error = %e, "could not prune stale supervisors");
        }
    }
    Ok(alive)
}

/// Follows one execution: its log lines from the first, as they are produced, then its
/// completion.
///
/// Lines come from the execution's live-log stream (`XREAD BLOCK` on a connection of
/// the waiter's own, opened at the first [`Waiter::next`]); the completion from pub/sub.
/// When the completion arrives, the lines still unread are yielded first: the
/// supervisor appends them before it publishes the completion, and the stream is kept
/// for a minute after it.
pub struct Waiter {
    execution_id: ExecutionId,
    client: redis::Client,
    conn: MultiplexedConnection,
    keys: Keys,
    messages: PubSubStream,
    completion_channel: String,
    log_stream: String,
    /// For the blocking reads of the live-log stream.
    log_conn: Option<MultiplexedConnection>,
    /// The stream id of the last line read (`0`: none yet).
    last_log_id: String,
    /// Lines read and not yet yielded.
    lines: VecDeque<LogLine>,
    deadline: Instant,
    timeout: Duration,
    /// The completion, once known (found in the key, or received): yielded after the
    /// remaining lines.
    ready: Option<Completion>,
    finished: bool,
}

/// Most stream entries [`IntakeClient::is_queued`] looks through.
pub const MAX_QUEUED_SCAN: usize = 100_000;

/// How long one blocking read of the live-log stream waits.
const LOG_BLOCK: Duration = Duration::from_millis(1000);

/// Lines read from the live-log stream at a time.
const LOG_READ_COUNT: usize = 1000;

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("execution_id", &self.execution_id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Waiter {
    /// The next log line or the completion; `None` after the completion was yielded.
    /// Errors with [`IntakeError::WaitTimedOut`] at the deadline.
    pub async fn next(&mut self) -> Result<Option<WaitEvent>, IntakeError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(line) = self.lines.pop_front() {
                return Ok(Some(WaitEvent::Log(line)));
            }
            if let Some(c) = self.ready.take() {
                // The lines appended before the completion was published, not yet read.
                let mut conn = self.conn.clone();
                let rest = self.read_logs(&mut conn, None).await?;
                if rest {
                    self.ready = Some(c);
                    continue;
                }
                self.finished = true;
                return Ok(Some(WaitEvent::Completed(c)));
            }
            let mut log_conn = match &self.log_conn {
                Some(c) => c.clone(),
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT));
                    let c = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| {
                            IntakeError::redis(
                                format!("connecting to read the logs of {}", self.execution_id),
                                e,
                            )
                        })?;
                    self.log_conn = Some(c.clone());
                    c
                }
            };
            let (key, from) = (self.log_stream.clone(), self.last_log_id.clone());
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => {
                    return Err(IntakeError::WaitTimedOut {
                        execution_id: self.execution_id.clone(),
                        timeout: self.timeout,
                    })
                }
                msg = self.messages.next() => self.on_message(msg).await?,
                read = xread(&mut log_conn, &key, &from, Some(LOG_BLOCK)) => {
                    let read = read.map_err(|e| IntakeError::redis(format!("reading `{key}`"), e))?;
                    self.take(read);
                }
            }
        }
    }

    /// Reads the lines after the last one read into `self.lines`; whether there were any.
    async fn read_logs(
        &mut self,
        conn: &mut MultiplexedConnection,
        block: Option<Duration>,
    ) -> Result<bool, IntakeError> {
        let key = self.log_stream.clone();
        let read = xread(conn, &key, &self.last_log_id, block)
            .await
            .map_err(|e| IntakeError::redis(format!("reading `{key}`"), e))?;
        let before = self.lines.len();
        self.take(read);
        Ok(self.lines.len() > before)
    }

    fn take(&mut self, read: Option<StreamReadReply>) {
        for stream in read.into_iter().flat_map(|r| r.keys) {
            for entry in &stream.ids {
                self.last_log_id.clone_from(&entry.id);
                match log_line(entry) {
                    Some(line) => self.lines.push_back(line),
                    None => tracing::warn!(id = %entry.id, "ignoring malformed log line"),
                }
            }
        }
    }

    /// Skips the logs (never reads them) and returns the completion.
    pub async fn completion(mut self) -> Result<Completion, IntakeError> {
        loop {
            if let Some(c) = self.ready.take() {
                return Ok(c);
            }
            let msg = tokio::time::timeout_at(self.deadline, self.messages.next())
                .await
                .map_err(|_| IntakeError::WaitTimedOut {
                    execution_id: self.execution_id.clone(),
                    timeout: self.timeout,
                })?;
            self.on_message(msg).await?;
        }
    }

    /// One pub/sub message, or `None` for the end of the subscription: the completion
    /// (or, when the connection dropped, the stored one) goes to `ready`.
    async fn on_message(&mut self, msg: Option<redis::Msg>) -> Result<(), IntakeError> {
        let Some(msg) = msg else {
            // The connection dropped. The completion may still have been stored.
            return match completion(&mut self.conn, &self.keys, self.execution_id.as_str()).await? {
                Some(c) => {
                    self.ready = Some(c);
                    Ok(())
                }
                None => Err(IntakeError::SubscriptionClosed {
                    execution_id: self.execution_id.clone(),
                }),
            };
        };
        if msg.get_channel_name() == self.completion_channel {
            match serde_json::from_slice::<Completion>(msg.get_payload_bytes()) {
                Ok(c) => self.ready = Some(c),
                Err(e) => tracing::warn!(error = %e, "ignoring malformed completion message"),
            }
        }
        Ok(())
    }
}

/// `XREAD [BLOCK ms] COUNT n STREAMS key from`: nil (`None`) when a block times out.
async fn xread(
    conn: &mut MultiplexedConnection,
    key: &str,
    from: &str,
    block: Option<Duration>,
) -> redis::RedisResult<Option<StreamReadReply>> {
    let mut cmd = redis::cmd("XREAD");
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(b.as_millis() as u64);
    }
    cmd.arg("COUNT")
        .arg(LOG_READ_COUNT)
        .arg("STREAMS")
        .arg(key)
        .arg(from)
        .query_async(conn)
        .await
}

/// One entry of a live-log stream (`line` → the [`LogLine`] JSON).
fn log_line(entry: &StreamId) -> Option<LogLine> {
    let json: String = entry.get("line")?;
    serde_json::from_str(&json).ok()
}
