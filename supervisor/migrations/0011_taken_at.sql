-- A queued execution shows `pending` with no start time until a worker starts it
-- (issue 13). The batch statement that takes a batch from the stream no longer writes
-- `started_at` (most of the batch then waits in the supervisor's local queue); the
-- result statement writes the real start. `taken_at` keeps what `started_at` used to
-- say for a `running` row: when a supervisor took it, which the sweeper's grace period
-- counts from (crate::store::lost).
ALTER TABLE executions ADD COLUMN taken_at timestamptz;
