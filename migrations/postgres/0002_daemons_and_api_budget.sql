-- The daemons sharing this queue, each with its heartbeat: `/status`, the
-- page and `/metrics` on any daemon show every live one.
CREATE TABLE daemons (
    id           TEXT PRIMARY KEY,
    host         TEXT   NOT NULL,
    workers      BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- The Graph API budget of the whole cluster, as one GCRA ("theoretical
-- arrival time", Unix ms): every daemon takes its call's slot here, so the
-- cluster makes at most `calls_per_minute` plus the burst in any 60 s; and
-- a rate-limit hold (`held_until`) one daemon was told about holds them all.
CREATE TABLE api_budget (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    theoretical BIGINT NOT NULL,
    held_until  BIGINT
);
INSERT INTO api_budget (id, theoretical) VALUES (1, 0);

-- Takes the next call's slot: returns 0 to call now, a positive number of
-- ms to wait and then call (the slot is taken), or a negative number of ms
-- to wait before asking again (a hold is in force).
CREATE FUNCTION mld_api_slot(interval_ms BIGINT, tolerance_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := mld_now_ms();
    b api_budget%ROWTYPE;
    start_ms BIGINT;
BEGIN
    SELECT * INTO b FROM api_budget WHERE id = 1 FOR UPDATE;
    IF b.held_until IS NOT NULL AND b.held_until > now_ms THEN
        RETURN -(b.held_until - now_ms);
    END IF;
    start_ms := greatest(b.theoretical, now_ms);
    UPDATE api_budget SET theoretical = start_ms + interval_ms, held_until = NULL WHERE id = 1;
    RETURN greatest(start_ms - tolerance_ms - now_ms, 0);
END $$;

-- Holds every daemon's calls for `pause_ms` from now (never shortening a
-- hold in force); calls resume spaced out after it.
CREATE FUNCTION mld_api_hold(pause_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    until_ms BIGINT := mld_now_ms() + pause_ms;
BEGIN
    UPDATE api_budget SET held_until = greatest(coalesce(held_until, 0), until_ms),
                          theoretical = greatest(theoretical, until_ms)
    WHERE id = 1
    RETURNING held_until INTO until_ms;
    RETURN until_ms;
END $$;
