-- The job store. Every statement the daemon runs lives in src/store/.
--
-- Per-job counters live on the job row and are maintained by triggers on
-- `images`, so `/status` reads O(jobs) rows however many images exist, and no
-- query can make the counters drift from the rows.

CREATE TABLE jobs (
    id                   INTEGER PRIMARY KEY,
    username             TEXT    NOT NULL,
    quality              TEXT    NOT NULL,
    bbox_west            REAL,
    bbox_south           REAL,
    bbox_east            REAL,
    bbox_north           REAL,
    -- '' without a bbox, else 'w,s,e,n' in shortest round-trip form: the dedupe key.
    bbox_key             TEXT    NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN
                             ('queued','enumerating','downloading','paused','done','failed','cancelled')),
    enumeration_complete INTEGER NOT NULL DEFAULT 0 CHECK (enumeration_complete IN (0, 1)),
    -- Token-free `next` URL of the enumeration; NULL before the first page and after the last.
    cursor               TEXT,
    last_error           TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    n_pending            INTEGER NOT NULL DEFAULT 0,
    n_in_progress        INTEGER NOT NULL DEFAULT 0,
    n_done               INTEGER NOT NULL DEFAULT 0,
    n_failed             INTEGER NOT NULL DEFAULT 0,
    bytes_done           INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX jobs_by_key ON jobs (username, quality, bbox_key);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE images (
    rowid       INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- Not validated here: an invalid id must be storable so a worker can mark it failed.
    image_id    TEXT    NOT NULL,
    -- ImageMeta as JSON without any URL (URLs expire; they live in `url`).
    meta        TEXT    NOT NULL,
    -- Last known CDN URL for the job's quality. CDN URLs carry no token.
    url         TEXT,
    state       TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','in_progress','done','failed')),
    -- Attempts burnt so far; a claim burns one, a release gives it back.
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_at      INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    bytes       INTEGER,
    path        TEXT,
    last_error  TEXT,
    captured_at INTEGER,
    updated_at  INTEGER NOT NULL,
    -- metadata.jsonl order: capture time, images without one last.
    capture_order INTEGER GENERATED ALWAYS AS (ifnull(captured_at, 9223372036854775807)) VIRTUAL,
    UNIQUE (job_id, image_id)
);

-- Claim: due pending rows of one job in (run_at, rowid) order, O(limit).
CREATE INDEX images_due ON images (job_id, run_at) WHERE state = 'pending';
-- Claim of expired leases and the startup reset: only in-flight rows.
CREATE INDEX images_leased ON images (lease_until) WHERE state = 'in_progress';
-- metadata.jsonl pages: done rows by (capture_order, rowid), seekable by a row value.
CREATE INDEX images_archived ON images (job_id, capture_order) WHERE state = 'done';
-- Retry and the failed-images listing.
CREATE INDEX images_failed ON images (job_id) WHERE state = 'failed';

CREATE TRIGGER images_count_insert AFTER INSERT ON images
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     + (NEW.state = 'pending'),
        n_in_progress = n_in_progress + (NEW.state = 'in_progress'),
        n_done        = n_done        + (NEW.state = 'done'),
        n_failed      = n_failed      + (NEW.state = 'failed'),
        bytes_done    = bytes_done    + (CASE WHEN NEW.state = 'done' THEN ifnull(NEW.bytes, 0) ELSE 0 END)
    WHERE id = NEW.job_id;
END;

CREATE TRIGGER images_count_delete AFTER DELETE ON images
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     - (OLD.state = 'pending'),
        n_in_progress = n_in_progress - (OLD.state = 'in_progress'),
        n_done        = n_done        - (OLD.state = 'done'),
        n_failed      = n_failed      - (OLD.state = 'failed'),
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
END;

-- Fires only when something counted changes, so re-claiming an expired lease
-- (in_progress -> in_progress) costs nothing extra.
CREATE TRIGGER images_count_update AFTER UPDATE OF state, bytes, job_id ON images
WHEN OLD.state IS NOT NEW.state OR OLD.bytes IS NOT NEW.bytes OR OLD.job_id IS NOT NEW.job_id
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     - (OLD.state = 'pending'),
        n_in_progress = n_in_progress - (OLD.state = 'in_progress'),
        n_done        = n_done        - (OLD.state = 'done'),
        n_failed      = n_failed      - (OLD.state = 'failed'),
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
    UPDATE jobs SET
        n_pending     = n_pending     + (NEW.state = 'pending'),
        n_in_progress = n_in_progress + (NEW.state = 'in_progress'),
        n_done        = n_done        + (NEW.state = 'done'),
        n_failed      = n_failed      + (NEW.state = 'failed'),
        bytes_done    = bytes_done    + (CASE WHEN NEW.state = 'done' THEN ifnull(NEW.bytes, 0) ELSE 0 END)
    WHERE id = NEW.job_id;
END;
