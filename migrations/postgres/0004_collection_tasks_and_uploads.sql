-- One packer/finaliser per collection at a time, in the whole cluster: a
-- lease like a job's task (owner, until, epoch), on the database's clock.
-- Every packing write checks owner and epoch in its own transaction (and
-- locks this row, so a take-over waits for that write to commit): a daemon
-- that lost the lease without knowing it cannot move a packing on.
CREATE TABLE collection_tasks (
    collection TEXT PRIMARY KEY,
    owner      TEXT,
    until_ms   BIGINT,
    epoch      BIGINT NOT NULL DEFAULT 0
);

-- Multipart uploads of tars begun and not yet completed or aborted: the
-- next packer of the collection aborts what a dead or stalled daemon left,
-- so no half-uploaded tar lingers in the bucket (nor completes late).
CREATE TABLE multipart_uploads (
    upload_id  TEXT PRIMARY KEY,
    collection TEXT   NOT NULL,
    path       TEXT   NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE INDEX multipart_uploads_by_collection ON multipart_uploads (collection);
