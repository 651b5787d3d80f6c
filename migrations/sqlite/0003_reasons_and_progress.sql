-- Reasons as data, deleted images counted apart, and what no-progress
-- detection and per-image backoff need. Columns are added, never rebuilt:
-- an archive of millions of rows migrates in milliseconds.

-- Why a paused job is paused; NULL unless state = 'paused'.
ALTER TABLE jobs ADD COLUMN pause_reason TEXT
    CHECK (pause_reason IN ('user', 'disk_full', 'token_rejected'));
-- Jobs paused before this version: recover the reason from the message the
-- engine wrote (the last time any code reads a message).
UPDATE jobs SET pause_reason = CASE
        WHEN last_error LIKE 'disk full%' THEN 'disk_full'
        WHEN last_error LIKE '%MAPILLARY_TOKEN%' THEN 'token_rejected'
        ELSE 'user' END
    WHERE state = 'paused';

-- Images failed because Mapillary deleted them: a subset of n_failed.
ALTER TABLE jobs ADD COLUMN n_deleted INTEGER NOT NULL DEFAULT 0;
-- Last time the job moved forward (an image finished, a page was stored, or
-- the job was (re)started): no-progress detection compares against it.
ALTER TABLE jobs ADD COLUMN progress_at INTEGER;
UPDATE jobs SET progress_at = updated_at;
-- Set while the job has work but made no progress for too long; last_error
-- then says why. Cleared by the next progress.
ALTER TABLE jobs ADD COLUMN stalled_at INTEGER;

-- Why a failed image failed; NULL unless state = 'failed'.
ALTER TABLE images ADD COLUMN fail_reason TEXT CHECK (fail_reason IN ('deleted', 'error'));
UPDATE images SET fail_reason = 'error' WHERE state = 'failed';
-- Times the image was handed back for a fault that was not its own but
-- repeated (an API refusing its URL refresh): each one doubles its next delay,
-- so one bad image never makes a tight loop. Reset when it completes.
ALTER TABLE images ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;

-- The counters now also count deleted images and stamp progress.
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
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
END;

-- Fires only when something counted changes, so re-claiming an expired lease
-- (in_progress -> in_progress) costs nothing extra. An image reaching done or
-- failed is progress of its job.
CREATE TRIGGER images_count_update AFTER UPDATE OF state, bytes, job_id, fail_reason ON images
WHEN OLD.state IS NOT NEW.state OR OLD.bytes IS NOT NEW.bytes OR OLD.job_id IS NOT NEW.job_id
  OR OLD.fail_reason IS NOT NEW.fail_reason
BEGIN
    UPDATE jobs SET
        n_pending     = n_pending     - (OLD.state = 'pending'),
        n_in_progress = n_in_progress - (OLD.state = 'in_progress'),
        n_done        = n_done        - (OLD.state = 'done'),
        n_failed      = n_failed      - (OLD.state = 'failed'),
        n_deleted     = n_deleted     - (OLD.state = 'failed' AND OLD.fail_reason IS 'deleted'),
        bytes_done    = bytes_done    - (CASE WHEN OLD.state = 'done' THEN ifnull(OLD.bytes, 0) ELSE 0 END)
    WHERE id = OLD.job_id;
    UPDATE jobs SET
        n_pending     = n_pending     + (NEW.state = 'pending'),
        n_in_progress = n_in_progress + (NEW.state = 'in_progress'),
        n_done        = n_done        + (NEW.state = 'done'),
        n_failed      = n_failed      + (NEW.state = 'failed'),
        n_deleted     = n_deleted     + (NEW.state = 'failed' AND NEW.fail_reason IS 'deleted'),
        bytes_done    = bytes_done    + (CASE WHEN NEW.state = 'done' THEN ifnull(NEW.bytes, 0) ELSE 0 END),
        progress_at   = CASE WHEN NEW.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state
                             THEN max(ifnull(progress_at, 0), NEW.updated_at) ELSE progress_at END
    WHERE id = NEW.job_id;
END;

-- Existing deleted counts start at zero (no image was known deleted before).
