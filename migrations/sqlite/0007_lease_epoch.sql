-- The lease fence's second half: how many times the row has been claimed,
-- ever. `attempts` cannot fence a claim: a retry of failed images resets it to
-- 0 and a release gives an attempt back, so a worker whose lease expired long
-- ago could find the row claimed again by the same daemon on the same attempt
-- number and overwrite the new holder's outcome. The epoch only grows.
-- (ADD COLUMN with a constant default: no rebuild of the images table.)
ALTER TABLE images ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
