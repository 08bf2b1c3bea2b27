-- A node's certificate before its latest renewal (its fingerprint), kept
-- until the node calls with the new one: if the renewal's answer never
-- reached the node, the old certificate may renew again (and do nothing
-- else). Cleared by the node's first call with its current certificate, by
-- a revocation and by an enrollment.
ALTER TABLE nodes ADD COLUMN previous_fingerprint TEXT;
