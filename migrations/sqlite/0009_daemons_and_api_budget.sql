-- The daemons working on this queue, each with its heartbeat, for `/status`
-- (on SQLite there is one; the table keeps one behaviour on both backends).
CREATE TABLE daemons (
    id           TEXT PRIMARY KEY,
    host         TEXT    NOT NULL,
    workers      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
