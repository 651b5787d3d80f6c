-- Cluster-wide throughput from the database, not one daemon's memory:
-- images that became done, per minute (Unix ms / 60000), kept like the job
-- counters: deltas appended by the update trigger (no hot row), folded into
-- `done_minutes` with the counters. `/status`, the page's chart and the ETA
-- on any daemon read these.
CREATE TABLE done_minutes (
    minute BIGINT PRIMARY KEY,
    images BIGINT NOT NULL,
    bytes  BIGINT NOT NULL
);
CREATE TABLE done_minute_deltas (
    minute BIGINT NOT NULL,
    images BIGINT NOT NULL,
    bytes  BIGINT NOT NULL
);

CREATE OR REPLACE FUNCTION mld_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas
    SELECT job_id, sum(n_pending), sum(n_in_progress), sum(n_done), sum(n_failed),
           sum(n_deleted), sum(n_kept_jpeg), sum(bytes_done), max(progress_at)
    FROM (
        SELECT o.job_id, t.*, NULL::BIGINT AS progress_at
        FROM old_rows o JOIN new_rows n ON n.rowid = o.rowid,
             LATERAL mld_count_terms(o.state, o.fail_reason, o.kept_jpeg, o.bytes, -1) t
        WHERE (o.state, o.bytes, o.job_id, o.fail_reason, o.kept_jpeg)
              IS DISTINCT FROM (n.state, n.bytes, n.job_id, n.fail_reason, n.kept_jpeg)
        UNION ALL
        SELECT n.job_id, t.*,
               CASE WHEN n.state IN ('done', 'failed') AND o.state IS DISTINCT FROM n.state
                    THEN n.updated_at END
        FROM old_rows o JOIN new_rows n ON n.rowid = o.rowid,
             LATERAL mld_count_terms(n.state, n.fail_reason, n.kept_jpeg, n.bytes, 1) t
        WHERE (o.state, o.bytes, o.job_id, o.fail_reason, o.kept_jpeg)
              IS DISTINCT FROM (n.state, n.bytes, n.job_id, n.fail_reason, n.kept_jpeg)
    ) changed
    GROUP BY job_id;
    -- Images that became done, by the minute they did: the throughput
    -- history every daemon shows, without reading the images table.
    INSERT INTO done_minute_deltas
    SELECT n.updated_at / 60000, count(*), coalesce(sum(n.bytes), 0)
    FROM old_rows o JOIN new_rows n ON n.rowid = o.rowid
    WHERE n.state = 'done' AND o.state IS DISTINCT FROM 'done'
    GROUP BY n.updated_at / 60000;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mld_fold_counts() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE folded BIGINT;
BEGIN
    WITH moved AS (
        DELETE FROM job_count_deltas RETURNING *
    ), sums AS (
        SELECT job_id, sum(n_pending) AS n_pending, sum(n_in_progress) AS n_in_progress,
               sum(n_done) AS n_done, sum(n_failed) AS n_failed, sum(n_deleted) AS n_deleted,
               sum(n_kept_jpeg) AS n_kept_jpeg, sum(bytes_done) AS bytes_done,
               max(progress_at) AS progress_at, count(*) AS n
        FROM moved GROUP BY job_id
    ), applied AS (
        UPDATE jobs SET
            n_pending     = jobs.n_pending     + s.n_pending,
            n_in_progress = jobs.n_in_progress + s.n_in_progress,
            n_done        = jobs.n_done        + s.n_done,
            n_failed      = jobs.n_failed      + s.n_failed,
            n_deleted     = jobs.n_deleted     + s.n_deleted,
            n_kept_jpeg   = jobs.n_kept_jpeg   + s.n_kept_jpeg,
            bytes_done    = jobs.bytes_done    + s.bytes_done,
            progress_at   = greatest(jobs.progress_at, s.progress_at)
        FROM sums s WHERE jobs.id = s.job_id
        RETURNING s.n
    )
    SELECT coalesce(sum(n), 0) INTO folded FROM applied;
    WITH moved AS (
        DELETE FROM done_minute_deltas RETURNING *
    )
    INSERT INTO done_minutes (minute, images, bytes)
    SELECT minute, sum(images), sum(bytes) FROM moved GROUP BY minute
    ON CONFLICT (minute) DO UPDATE SET images = done_minutes.images + EXCLUDED.images,
                                       bytes = done_minutes.bytes + EXCLUDED.bytes;
    -- Three hours are kept (the history shows one).
    DELETE FROM done_minutes WHERE minute < (SELECT max(minute) FROM done_minutes) - 180;
    RETURN folded;
END $$;

