-- Warden's initial schema: tenants, workflows, configuration, executions, their logs and
-- the daily metrics. Every table the supervisor writes per execution is here; see
-- supervisor/src/store.rs for which module owns which table.

CREATE TABLE organizations (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflows (
    id                 bigserial        PRIMARY KEY,
    -- NULL: a global workflow, visible to callers that name no organization.
    org_id             bigint           REFERENCES organizations (id) ON DELETE CASCADE,
    name               text             NOT NULL CHECK (name <> ''),
    path               text             NOT NULL,
    function_name      text             NOT NULL DEFAULT 'run',
    source             text             NOT NULL,
    default_timeout_ms integer          CHECK (default_timeout_ms > 0),
    active             boolean          NOT NULL DEFAULT true,
    -- ROI: what one successful execution is worth.
    time_saved_seconds double precision NOT NULL DEFAULT 0,
    value              double precision NOT NULL DEFAULT 0,
    created_at         timestamptz      NOT NULL DEFAULT now(),
    updated_at         timestamptz      NOT NULL DEFAULT now()
);
-- One name per organization, and one global workflow per name (PostgreSQL 15+).
CREATE UNIQUE INDEX workflows_org_name ON workflows (org_id, name) NULLS NOT DISTINCT;

CREATE TABLE configs (
    id         bigserial   PRIMARY KEY,
    -- NULL: global, overridden by an organization's own key.
    org_id     bigint      REFERENCES organizations (id) ON DELETE CASCADE,
    key        text        NOT NULL CHECK (key <> ''),
    value      jsonb       NOT NULL,
    kind       text        NOT NULL DEFAULT 'string'
                           CHECK (kind IN ('string', 'number', 'bool', 'json', 'secret')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX configs_org_key ON configs (org_id, key) NULLS NOT DISTINCT;

CREATE TYPE execution_status AS ENUM
    ('pending', 'running', 'success', 'failed', 'timeout', 'cancelled', 'crashed');

CREATE TABLE executions (
    -- Chosen by the client that submitted the request.
    id                text             PRIMARY KEY,
    -- A deleted workflow keeps its history.
    workflow_id       bigint           REFERENCES workflows (id) ON DELETE SET NULL,
    -- The name the request asked for (kept even when it named no known workflow).
    workflow_name     text,
    -- Denormalised (no foreign key): history outlives organizations.
    org_id            bigint,
    caller            text,
    status            execution_status NOT NULL DEFAULT 'pending',
    params            jsonb,
    result            jsonb,
    error_type        text,
    error_message     text,
    traceback         text,
    queued_at         timestamptz      NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    duration_ms       double precision,
    peak_memory_bytes bigint,
    cpu_seconds       double precision,
    exit_code         integer,
    exit_signal       integer,
    -- 1 on the first run; +1 each time a non-terminal execution is taken up again
    -- (its supervisor died and the stream message was reclaimed).
    attempt           integer          NOT NULL DEFAULT 1,
    -- Consumer name of the supervisor that ran (or runs) it.
    supervisor        text,
    -- Redis stream entry id of the request.
    stream_id         text,
    logs_dropped      integer          NOT NULL DEFAULT 0
);
CREATE INDEX executions_status ON executions (status);
CREATE INDEX executions_workflow_queued ON executions (workflow_id, queued_at);

CREATE TABLE execution_logs (
    execution_id text        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq          integer     NOT NULL,
    level        text        NOT NULL,
    message      text        NOT NULL,
    logged_at    timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- One row per (day, organization, workflow), added to by the group-commit writer.
-- org_id 0: no organization. workflow_id 0: the organization's total for the day
-- (every execution, including requests that named no known workflow).
CREATE TABLE daily_metrics (
    day                   date             NOT NULL,
    org_id                bigint           NOT NULL DEFAULT 0,
    workflow_id           bigint           NOT NULL DEFAULT 0,
    success               bigint           NOT NULL DEFAULT 0,
    failed                bigint           NOT NULL DEFAULT 0,
    timeout               bigint           NOT NULL DEFAULT 0,
    cancelled             bigint           NOT NULL DEFAULT 0,
    crashed               bigint           NOT NULL DEFAULT 0,
    total_duration_ms     double precision NOT NULL DEFAULT 0,
    total_cpu_seconds     double precision NOT NULL DEFAULT 0,
    max_peak_memory_bytes bigint           NOT NULL DEFAULT 0,
    -- ROI, counted on success only.
    time_saved_seconds    double precision NOT NULL DEFAULT 0,
    value                 double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, org_id, workflow_id)
);
