-- One packer/finaliser per collection at a time, in the whole cluster: a
-- lease like a job's task (owner, until, epoch). Every packing write checks
-- owner and epoch in its own transaction, so a process that lost the lease
-- without knowing it cannot move a packing on.
CREATE TABLE collection_tasks (
    collection TEXT PRIMARY KEY,
    owner      TEXT,
    until_ms   INTEGER,
    epoch      INTEGER NOT NULL DEFAULT 0
);

-- Multipart uploads of tars begun and not yet completed or aborted: the
-- next packer of the collection aborts what a dead or stalled one left, so
-- no half-uploaded tar lingers in the bucket (nor completes late).
CREATE TABLE multipart_uploads (
    upload_id  TEXT PRIMARY KEY,
    collection TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX multipart_uploads_by_collection ON multipart_uploads (collection);
