-- The workflow SDK's tables: the per-organization key-value store that `warden.kv`
-- reads and writes, and event deliveries (an execution started by an event or a
-- webhook). Both are written only by the supervisor: kv rows and delivery statuses in the
-- same transaction that records the execution's result (supervisor/src/store/commit.rs),
-- delivery rows on intake (supervisor/src/store/deliveries.rs).
--
-- Secrets need no new column: a `configs` row of kind 'secret' holds a sealed envelope
-- (a JSON object with the nonce and ciphertext, see supervisor/src/sdk/crypto.rs) in
-- `value`, never the plaintext.

CREATE TABLE kv (
    -- NULL: the store of executions that belong to no organization.
    org_id     bigint      REFERENCES organizations (id) ON DELETE CASCADE,
    key        text        NOT NULL CHECK (key <> '' AND octet_length(key) <= 256),
    value      jsonb       NOT NULL,
    -- The execution whose successful result last wrote it (no foreign key: history
    -- may be pruned independently).
    updated_by text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One value per (organization, key); prefix listings use the text_pattern_ops index.
CREATE UNIQUE INDEX kv_org_key ON kv (org_id, key) NULLS NOT DISTINCT;
CREATE INDEX kv_org_key_prefix ON kv (org_id, key text_pattern_ops);

CREATE TABLE deliveries (
    -- Chosen by the event system that sent the request (`delivery_id` on the stream).
    id           text        PRIMARY KEY CHECK (id <> ''),
    -- The execution currently (or last) carrying this delivery.
    execution_id text        NOT NULL,
    status       text        NOT NULL DEFAULT 'running'
                             CHECK (status IN ('running', 'success', 'failed', 'timeout',
                                               'cancelled', 'crashed')),
    -- How many times an execution was started for it (a redelivered event or a
    -- reclaimed stream message counts again).
    attempts     integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
-- The result transaction finds a delivery by its execution.
CREATE INDEX deliveries_execution ON deliveries (execution_id);
