-- `GET /jobs/{id}/images` and the `failures` command page a job's images by
-- image id, filtered by state: each page is a seek on one of these, never a
-- scan of the whole job. In-flight rows are few (one per worker) and are
-- read through `images_leased`; a listing without a state filter walks
-- UNIQUE (job_id, image_id). The indexes are partial, so a row's move from
-- pending to done touches two small entries, and the queries that already
-- have an index of their own (claims, metadata.jsonl, retry) keep it.
CREATE INDEX images_listed_pending ON images (job_id, image_id) WHERE state = 'pending';
CREATE INDEX images_listed_done ON images (job_id, image_id) WHERE state = 'done';
CREATE INDEX images_listed_failed ON images (job_id, image_id) WHERE state = 'failed';
