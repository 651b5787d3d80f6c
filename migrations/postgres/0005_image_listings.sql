-- `GET /jobs/{id}/images` and the `failures` command page a job's images by
-- image id, filtered by state: each page is a seek on one of these, never a
-- scan of the whole job (see the SQLite twin, 0011_image_listings.sql).
CREATE INDEX images_listed_pending ON images (job_id, image_id) WHERE state = 'pending';
CREATE INDEX images_listed_done ON images (job_id, image_id) WHERE state = 'done';
CREATE INDEX images_listed_failed ON images (job_id, image_id) WHERE state = 'failed';
