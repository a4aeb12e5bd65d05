-- Third-party Python packages for workflows (docs/packages.md). The workspace's
-- requirements live here; every supervisor installs them with pip into a directory of
-- its own and rolls its worker templates over to it.

-- One row per distribution: `name` is its normalised name (PEP 503: lower case, runs
-- of `-_.` as one `-`), `requirement` the line as given (`requests>=2.31`,
-- `pydantic[email]==2.9.2`), checked by `warden package add` before it gets here.
CREATE TABLE workspace_requirements (
    name        text        PRIMARY KEY CHECK (name <> ''),
    requirement text        NOT NULL CHECK (requirement <> ''),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The requirements' generation: moves with every statement that changes them (trigger
-- below; an upsert moves it twice, as its INSERT and UPDATE triggers both fire), so a
-- supervisor compares one number to know it is current.
CREATE TABLE package_generation (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation bigint  NOT NULL
);
INSERT INTO package_generation (generation) VALUES (0);

CREATE FUNCTION workspace_requirements_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    g bigint;
BEGIN
    UPDATE package_generation SET generation = generation + 1 RETURNING generation INTO g;
    PERFORM pg_notify('warden_packages', g::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER workspace_requirements_changed
    AFTER INSERT OR UPDATE OR DELETE ON workspace_requirements
    FOR EACH STATEMENT EXECUTE FUNCTION workspace_requirements_changed();

-- What each supervisor (by consumer name) last did about the requirements: the set its
-- templates use, and its last attempt if that failed. Written by the supervisor after
-- every install attempt and rollover; read by `warden package list` and `warden status`.
CREATE TABLE package_installs (
    consumer        text        PRIMARY KEY,
    -- The generation and content hash of the set in use (NULL: none installed).
    generation      bigint,
    content_hash    text,
    directory       text,
    -- `installing`, `installed` (templates rolled over), `failed` (the set in use is
    -- the previous one; `error` says why).
    state           text        NOT NULL CHECK (state IN ('installing', 'installed', 'failed')),
    -- The generation being installed (`installing`) or that failed (`failed`).
    attempt_generation bigint,
    error           text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
