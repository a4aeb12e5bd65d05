-- Retention (`warden serve --retention`, `warden executions prune`) deletes ended
-- executions oldest first, a small batch per statement: this index hands it the oldest
-- ended rows without reading the running ones or the whole table.
CREATE INDEX executions_ended_completed_at ON executions (completed_at)
    WHERE status NOT IN ('pending', 'running');
