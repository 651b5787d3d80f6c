-- Facts about the store itself, one row each. `archive_root`: the archive
-- directory the stored image paths begin with, so a data dir opened under
-- another spelling, or moved, has its paths rebased once at open.
CREATE TABLE store_facts (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
