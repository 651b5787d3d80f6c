-- `GET /jobs/{id}/images` and the `failures` command page a job's images by
-- image id, filtered by state. Only failed rows get an index of their own:
-- they are few, so it costs next to nothing on the state changes of millions
-- of rows (issue 24); pending and done pages walk UNIQUE (job_id, image_id)
-- with the state as a filter (dense states: about `limit` entries a page).
-- See the SQLite twin, 0011_image_listings.sql.
CREATE INDEX images_listed_failed ON images (job_id, image_id) WHERE state = 'failed';
