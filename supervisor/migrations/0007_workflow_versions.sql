-- Workflow versions (issue 13): every push that changes a workflow's source makes a new
-- version; each execution records the version (and source hash) it ran.
--
-- The current version and hash live on the workflow row itself, so they travel with the
-- record the supervisor already loads for each batch (Store::load_for_batch) and are
-- written with the execution's row by the same statement that begins it: no query per
-- execution is added. Triggers keep them right for every writer of `workflows`
-- (`warden workflow push`, tests, hand-written SQL): the version goes up by one exactly
-- when the source's SHA-256 changes, and each new version is added to
-- `workflow_versions`, the history `warden workflow history` lists.

ALTER TABLE workflows
    ADD COLUMN version     integer NOT NULL DEFAULT 1,
    ADD COLUMN source_hash text;
UPDATE workflows SET source_hash = encode(sha256(convert_to(source, 'UTF8')), 'hex');
ALTER TABLE workflows ALTER COLUMN source_hash SET NOT NULL;

CREATE TABLE workflow_versions (
    workflow_id bigint      NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     integer     NOT NULL CHECK (version > 0),
    -- SHA-256 of the source, hex.
    source_hash text        NOT NULL,
    pushed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);
INSERT INTO workflow_versions (workflow_id, version, source_hash, pushed_at)
    SELECT id, version, source_hash, updated_at FROM workflows;

-- Before a row is written: its hash from its source, and its version (1 when new; one
-- more than before when the source changed).
CREATE FUNCTION workflows_set_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.source_hash := encode(sha256(convert_to(NEW.source, 'UTF8')), 'hex');
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
    ELSIF NEW.source_hash IS DISTINCT FROM OLD.source_hash THEN
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER workflows_set_version BEFORE INSERT OR UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION workflows_set_version();

-- After: a new version goes into the history.
CREATE FUNCTION workflows_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO workflow_versions (workflow_id, version, source_hash)
        VALUES (NEW.id, NEW.version, NEW.source_hash)
        ON CONFLICT (workflow_id, version) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER workflows_record_version AFTER INSERT OR UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION workflows_record_version();

-- The version an execution ran (NULL: begun before this migration, or no workflow).
ALTER TABLE executions
    ADD COLUMN workflow_version integer,
    ADD COLUMN workflow_hash    text;
