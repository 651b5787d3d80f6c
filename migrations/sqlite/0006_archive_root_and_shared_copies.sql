-- Facts about the store itself, one row each. `archive_root`: the archive
-- directory the stored image paths begin with, so a data dir opened under
-- another spelling, or moved, has its paths rebased once at open.
CREATE TABLE store_facts (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One loose file, one truth: when a row is completed with a loose file, every
-- other done row of the same image at the same path (another job of the
-- collection, which wrote or adopted that file earlier) takes its checksum
-- and size. The file is what the last writer left; a row keeping the old
-- checksum would make `verify` call a good file corrupt (and `--repair`
-- delete it), and packing pick between two checksums for one file.
-- (A trigger keeps completion one statement; `images_copies` serves it. It
-- watches `path`, which only a completion sets (a re-queue clears it, a
-- rebase moves it). On `state` it also ran at every claim: claim+complete
-- fell from 3,300 to 2,542 images per CPU-second; on `path`, 3,269
-- (`STORE_BENCH_ROWS=300000 cargo bench --bench store`).)
CREATE TRIGGER images_share_loose_copy AFTER UPDATE OF path ON images
WHEN NEW.state = 'done' AND NEW.packing_id IS NULL AND NEW.path IS NOT NULL
BEGIN
    UPDATE images SET sha256 = NEW.sha256, bytes = NEW.bytes
    WHERE collection = NEW.collection AND image_id = NEW.image_id AND state = 'done'
      AND rowid <> NEW.rowid AND path = NEW.path AND packing_id IS NULL
      AND (sha256 IS NOT NEW.sha256 OR bytes IS NOT NEW.bytes);
END;
