-- Concurrency limits (docs/architecture.md, "Concurrency limits"): how many executions
-- of a workflow, or of an organization, may run at once across every supervisor.
-- 0: unlimited. Mirrored into Redis (`warden:limits`), where the take script enforces
-- them; `warden workflow push --max-concurrency` and `warden org set` change them.
ALTER TABLE workflows
    ADD COLUMN max_concurrency integer NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0);
ALTER TABLE organizations
    ADD COLUMN max_concurrency integer NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0);
