-- Upload to the Internet Archive (issue 25). A job that asked for it
-- (`"upload": "ia"`) has a row in `job_uploads`: the state of its upload
-- track, which runs after the job is done (packed). Items and files belong
-- to a collection, not a job: two jobs of one collection share one item.

CREATE TABLE job_uploads (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs (id),
    target     TEXT    NOT NULL DEFAULT 'ia',
    -- waiting | uploading | confirming | confirmed | paused | failed
    state      TEXT    NOT NULL DEFAULT 'waiting',
    last_error TEXT,
    updated_at INTEGER NOT NULL
);

-- An item on archive.org: part 1 is `<collection>`, part N `<collection>-N`.
-- `bytes` and `files` are what has been placed in it (its limits' budget).
CREATE TABLE upload_items (
    id         INTEGER PRIMARY KEY,
    collection TEXT    NOT NULL,
    part       INTEGER NOT NULL,
    identifier TEXT    NOT NULL UNIQUE,
    bytes      INTEGER NOT NULL DEFAULT 0,
    files      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (collection, part)
);

-- One file of an item: a tar (`kind = 'tar'`, placed once and never moved:
-- the partial unique index below) or one of the item's own files
-- (`metadata.jsonl.gz`, `__ia_thumb__.jpg`: `kind = 'item'`, whose content
-- may change and is then sent again). pending -> sent -> confirmed.
CREATE TABLE upload_files (
    id         INTEGER PRIMARY KEY,
    item_id    INTEGER NOT NULL REFERENCES upload_items (id),
    collection TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    local_path TEXT    NOT NULL,
    bytes      INTEGER NOT NULL,
    md5        TEXT    NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    sent_at    INTEGER,
    UNIQUE (item_id, name)
);
CREATE UNIQUE INDEX upload_files_tar_placed ON upload_files (collection, name) WHERE kind = 'tar';
CREATE INDEX upload_files_by_collection ON upload_files (collection, state);
