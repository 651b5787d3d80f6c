-- Jobs choose their images: a source (user, organization, sequences, image
-- ids) and filters; images land in the collection of their creator; a job's
-- enumeration is a list of parts, each resumable on its own.

-- The whole normalised selection as canonical JSON (source and filters),
-- and the identity of the job: that selection plus quality, format and
-- package, also canonical JSON. Jobs made before this version get both from
-- the binary at its first start (it alone knows the canonical form).
ALTER TABLE jobs ADD COLUMN source_kind TEXT NOT NULL DEFAULT 'username'
    CHECK (source_kind IN ('username', 'organization', 'sequences', 'images'));
ALTER TABLE jobs ADD COLUMN selection TEXT;
ALTER TABLE jobs ADD COLUMN job_key TEXT;
ALTER TABLE jobs ADD COLUMN format TEXT NOT NULL DEFAULT 'jpeg' CHECK (format IN ('jpeg', 'webp'));
ALTER TABLE jobs ADD COLUMN package TEXT NOT NULL DEFAULT 'none' CHECK (package IN ('none', 'tar'));
-- Re-sync a done job by itself every this many ms; NULL = never.
ALTER TABLE jobs ADD COLUMN resync_every_ms INTEGER;
-- When the next re-sync is due (Unix ms); set when the job finishes.
ALTER TABLE jobs ADD COLUMN next_sync_at INTEGER;
-- The `limit` of this job's listing pages; NULL = the configured page size.
-- Halved (to 100 at least) after a query timeout, for the rest of the job.
ALTER TABLE jobs ADD COLUMN page_size INTEGER;
-- Something the user should know that is not an error (a bbox tile still
-- full at the smallest size, an archive already on the Internet Archive).
ALTER TABLE jobs ADD COLUMN note TEXT;

CREATE INDEX jobs_by_identity ON jobs (job_key);
CREATE INDEX jobs_due_for_resync ON jobs (next_sync_at) WHERE state = 'done';

-- The enumeration of a job, part by part, in `seq` order. A part is:
--   'listing'  a `GET /images` query (the job's own, or one bbox tile of it),
--              resumed from `cursor` (its token-free `next`);
--   'sequence' one sequence id (`item`): its image ids become 'images' parts;
--   'images'   up to 50 image ids (`item`, a JSON array) fetched with `?ids=`.
-- A part finished is `done`; the job's enumeration is complete when all are.
CREATE TABLE job_parts (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('listing', 'sequence', 'images')),
    west    REAL,
    south   REAL,
    east    REAL,
    north   REAL,
    item    TEXT,
    cursor  TEXT,
    done    INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE INDEX job_parts_open ON job_parts (job_id, seq) WHERE done = 0;

-- Every job so far was one listing: its cursor and completeness carry over.
INSERT INTO job_parts (job_id, seq, kind, west, south, east, north, cursor, done)
    SELECT id, 0, 'listing', bbox_west, bbox_south, bbox_east, bbox_north, cursor, enumeration_complete
    FROM jobs;
UPDATE jobs SET cursor = NULL;

-- The collection folder an image belongs to (`mapillary-<user>-<quality>`),
-- fixed when it is discovered: by creator for organization, sequence and
-- image-id jobs, the posted username's for username jobs. metadata.jsonl of a
-- collection is one ordered read of this index, whichever jobs wrote to it.
ALTER TABLE images ADD COLUMN collection TEXT;
UPDATE images SET collection = (
    SELECT 'mapillary-' || jobs.username || '-' || jobs.quality FROM jobs WHERE jobs.id = images.job_id);
CREATE INDEX images_in_collection ON images (collection, capture_order, image_id) WHERE state = 'done';

-- The collections each job has written to: what its metadata.jsonl (and,
-- for tar jobs, its packing) must cover when it finishes.
CREATE TABLE job_collections (
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    collection TEXT    NOT NULL,
    PRIMARY KEY (job_id, collection)
) WITHOUT ROWID;
INSERT INTO job_collections (job_id, collection)
    SELECT id, 'mapillary-' || username || '-' || quality FROM jobs;
