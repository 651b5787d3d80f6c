-- Archives for the Internet Archive: WebP output, tar packing per capture
-- date, and a checksum of every archived file.

-- SHA-256 (hex) of the file as archived; NULL for images archived before
-- this version, until `verify` hashes them.
ALTER TABLE images ADD COLUMN sha256 TEXT;
-- 1 when a WebP job kept the JPEG (an image over WebP's 16,383-pixel side).
ALTER TABLE images ADD COLUMN kept_jpeg INTEGER NOT NULL DEFAULT 0;
-- One tar of one capture date of one collection, in the making or made:
--   planned  images chosen (their packing_id set); the tar may not exist yet;
--   written  `<tar_name>` is durable in the collection folder;
--   cleaned  the loose files it replaced are gone.
-- A crash at any state is finished by the next start.
CREATE TABLE packings (
    id         INTEGER PRIMARY KEY,
    collection TEXT    NOT NULL,
    date       TEXT    NOT NULL,
    tar_name   TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('planned', 'written', 'cleaned')),
    members    INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER,
    sha256     TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (collection, tar_name)
);
-- The packing that holds (or is writing) the image's tar member; NULL while
-- loose. Where the image is depends on that packing's state: until its tar
-- is durable the loose file is the image.
ALTER TABLE images ADD COLUMN packing_id INTEGER REFERENCES packings (id);

CREATE INDEX packings_unfinished ON packings (collection) WHERE state <> 'cleaned';
-- A packing's members in tar order.
CREATE INDEX images_in_packing ON images (packing_id, path) WHERE packing_id IS NOT NULL;
-- Images of a collection not yet packed, by path (date folder first).
CREATE INDEX images_to_pack ON images (collection, path) WHERE state = 'done' AND packing_id IS NULL;
-- Archived copies of one image in a collection, whichever job made them:
-- adoption finds a packed copy here instead of downloading it again.
CREATE INDEX images_copies ON images (collection, image_id) WHERE state = 'done';

ALTER TABLE jobs ADD COLUMN n_kept_jpeg INTEGER NOT NULL DEFAULT 0;

DROP TRIGGER images_count_insert;
DROP TRIGGER images_count_delete;
DROP TRIGGER images_count_update;

CREATE TRIGGER images_count_insert AFTER INSERT ON images
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     + (NEW.state = 'pending'),
        n_in_progress = n_in_progress + (NEW.state = 'in_progress'),
        n_done        = n_done        + (NEW.state = 'done'),
        n_failed      = n_failed      + (NEW.state = 'failed'),
        n_deleted     = n_deleted     + (NEW.state = 'failed' AND NEW.fail_reason IS 'deleted'),
        n_kept_jpeg   = n_kept_jpeg   + (NEW.state = 'done' AND NEW.kept_jpeg = 1),
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
        n_deleted     = n_deleted     - (OLD.state = 'failed' AND OLD.fail_reason IS 'deleted'),
        n_kept_jpeg   = n_kept_jpeg   - (OLD.state = 'done' AND OLD.kept_jpeg = 1),
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
END;

CREATE TRIGGER images_count_update AFTER UPDATE OF state, bytes, job_id, fail_reason, kept_jpeg ON images
WHEN OLD.state IS NOT NEW.state OR OLD.bytes IS NOT NEW.bytes OR OLD.job_id IS NOT NEW.job_id
  OR OLD.fail_reason IS NOT NEW.fail_reason OR OLD.kept_jpeg IS NOT NEW.kept_jpeg
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     - (OLD.state = 'pending'),
        n_in_progress = n_in_progress - (OLD.state = 'in_progress'),
        n_done        = n_done        - (OLD.state = 'done'),
        n_failed      = n_failed      - (OLD.state = 'failed'),
        n_deleted     = n_deleted     - (OLD.state = 'failed' AND OLD.fail_reason IS 'deleted'),
        n_kept_jpeg   = n_kept_jpeg   - (OLD.state = 'done' AND OLD.kept_jpeg = 1),
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
    UPDATE jobs SET
        n_pending     = n_pending     + (NEW.state = 'pending'),
        n_in_progress = n_in_progress + (NEW.state = 'in_progress'),
        n_done        = n_done        + (NEW.state = 'done'),
        n_failed      = n_failed      + (NEW.state = 'failed'),
        n_deleted     = n_deleted     + (NEW.state = 'failed' AND NEW.fail_reason IS 'deleted'),
        n_kept_jpeg   = n_kept_jpeg   + (NEW.state = 'done' AND NEW.kept_jpeg = 1),
        bytes_done    = bytes_done    + (CASE WHEN NEW.state = 'done' THEN ifnull(NEW.bytes, 0) ELSE 0 END),
        progress_at   = CASE WHEN NEW.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state
                             THEN max(ifnull(progress_at, 0), NEW.updated_at) ELSE progress_at END
    WHERE id = NEW.job_id;
END;
