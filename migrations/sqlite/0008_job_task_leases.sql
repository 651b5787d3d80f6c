-- A lease on a job's task (its enumeration, or its finishing and packing):
-- one process at a time works on a job, and its page writes are fenced by
-- the epoch, which only grows. On SQLite one daemon runs anyway; the same
-- rule keeps the two backends one behaviour. (ADD COLUMN: no rebuild.)
ALTER TABLE jobs ADD COLUMN task_owner TEXT;
ALTER TABLE jobs ADD COLUMN task_until INTEGER;
ALTER TABLE jobs ADD COLUMN task_epoch INTEGER NOT NULL DEFAULT 0;
