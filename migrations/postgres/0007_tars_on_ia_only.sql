-- Tars held on the Internet Archive only (`ia.delete_after_confirm`, issue
-- 25); the SQLite twin is 0013_tars_on_ia_only.sql. A confirmed tar is
-- recorded here BEFORE its local file is removed, and `removed_at` is set
-- once the removal is durable: a row with it NULL is a removal to finish
-- (idempotent) at the next run. `verify` reports the images of `packing_id`
-- as held on the Internet Archive only, never as missing, and `--repair`
-- never re-queues them. `packing_id` is NULL for a tar no packing made (put
-- in the folder by hand): no image row is in it.

CREATE TABLE tars_on_ia_only (
    file_id     BIGINT PRIMARY KEY REFERENCES upload_files (id),
    packing_id  BIGINT UNIQUE REFERENCES packings (id),
    recorded_at BIGINT NOT NULL,
    removed_at  BIGINT
);
CREATE INDEX tars_on_ia_only_to_remove ON tars_on_ia_only (file_id) WHERE removed_at IS NULL;
