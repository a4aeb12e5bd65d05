-- Settings the supervisors of one installation share. Today: the password of the Redis
-- ACL user the workers read the module cache with (supervisor/src/modules/access.rs),
-- made once by the first supervisor that needs it, so every supervisor gives Redis the
-- same one and none locks the others' workers out.
CREATE TABLE settings (
    name       text        PRIMARY KEY,
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
