-- The workspace's Python modules: the source of truth for the Redis module cache
-- (see DESIGN.md, "Module cache"). A change notifies `warden_modules` with the path so
-- a supervisor listening there can sync just that module.

CREATE TABLE workspace_modules (
    -- e.g. `helpers/text.py` or `helpers/__init__.py`, relative to the workspace root.
    path         text        PRIMARY KEY CHECK (path <> ''),
    content      text        NOT NULL,
    -- Hex digest of `content`; what the cache compares.
    content_hash text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION workspace_modules_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('warden_modules', OLD.path);
    ELSE
        PERFORM pg_notify('warden_modules', NEW.path);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER workspace_modules_changed
    AFTER INSERT OR UPDATE OR DELETE ON workspace_modules
    FOR EACH ROW EXECUTE FUNCTION workspace_modules_notify();
