-- Retries, delayed executions and their due-work poller (supervisor/src/serve/due.rs).
--
-- An execution whose attempt failed and whose workflow's retry policy
-- (supervisor/src/retry_policy.rs) allows another is left `retrying`, with the time of
-- its next attempt in `next_attempt_at` and `attempt` already counting that next attempt,
-- by the same transaction that records the failed one (supervisor/src/store/commit.rs).
-- A request submitted with `not_before` in the future is `scheduled` until then. Every
-- supervisor polls both with one statement on the partial index below.
--
-- `next_attempt_at` is set only while a row is `retrying` or `scheduled` (every
-- statement that moves a row out of those states clears it), which is what lets the
-- index be partial on it rather than on the new enum values (a value added by
-- ALTER TYPE cannot be used in the transaction that adds it).

ALTER TYPE execution_status ADD VALUE IF NOT EXISTS 'retrying';
ALTER TYPE execution_status ADD VALUE IF NOT EXISTS 'scheduled';

ALTER TABLE executions
    ADD COLUMN next_attempt_at timestamptz,
    -- What the request asked for, kept so that a later attempt (or a delayed start)
    -- runs as the request said: its deadline and its `retries` override.
    ADD COLUMN requested_timeout_ms integer,
    ADD COLUMN requested_retries integer;
CREATE INDEX executions_due ON executions (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- The retry policy a workflow was pushed with (JSON of retry_policy::RetryPolicy);
-- NULL: no retries.
ALTER TABLE workflows ADD COLUMN retry_policy jsonb;

-- One row per attempt that ran to an end, written by the transaction that records it.
CREATE TABLE execution_attempts (
    execution_id      text             NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    attempt           integer          NOT NULL,
    -- success, failed, timeout, cancelled or crashed (text: the enum's terminal values).
    status            text             NOT NULL,
    error_type        text,
    error_message     text,
    traceback         text,
    started_at        timestamptz,
    completed_at      timestamptz      NOT NULL,
    duration_ms       double precision,
    peak_memory_bytes bigint,
    cpu_seconds       double precision,
    exit_code         integer,
    exit_signal       integer,
    supervisor        text,
    -- When the next attempt was due after this one (NULL: this one was the last).
    next_attempt_at   timestamptz,
    PRIMARY KEY (execution_id, attempt)
);

-- Log lines belong to an attempt: each attempt numbers its lines from 0.
ALTER TABLE execution_logs ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE execution_logs DROP CONSTRAINT execution_logs_pkey;
ALTER TABLE execution_logs ADD PRIMARY KEY (execution_id, attempt, seq);

-- Cron schedules (supervisor/src/schedule.rs, supervisor/src/store/schedules.rs). Each
-- tick becomes one execution with a deterministic id (`schedule:<name>:<tick>`),
-- inserted `scheduled` by the supervisor that holds the schedule's row lock, in the
-- same transaction that moves `next_tick_at` on; the due-work poller starts it.
CREATE TABLE schedules (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL UNIQUE CHECK (name <> ''),
    workflow_id  bigint      NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    cron         text        NOT NULL,
    -- IANA zone the cron expression is read in (`Europe/Berlin`); UTC by default.
    tz           text        NOT NULL DEFAULT 'UTC',
    params       jsonb       NOT NULL DEFAULT '{}',
    -- What to do with ticks missed while no supervisor ran: none, latest or all.
    catch_up     text        NOT NULL DEFAULT 'latest'
                             CHECK (catch_up IN ('none', 'latest', 'all')),
    paused       boolean     NOT NULL DEFAULT false,
    -- The first tick not yet fired.
    next_tick_at timestamptz NOT NULL,
    last_tick_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE NOT paused;
