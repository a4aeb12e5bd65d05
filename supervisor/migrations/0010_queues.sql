-- Fair intake (docs/architecture.md, "Fair intake"): the named queue an execution was
-- submitted to (NULL: the default queue), so that its later attempts and a delayed start
-- wait in the same queue (crate::serve::due).
ALTER TABLE executions ADD COLUMN queue text;
