-- The audit log becomes tamper-evident, and operators revocable.
--
-- `hash` chains each audit entry to the one before (server/src/store/audit.rs
-- says how). Rows stored before this migration have none; the server fills
-- them in, in id order, when it opens the database, and that is the only update
-- the log allows: a hash may be set once, on a row without one, changing
-- nothing else. New rows must carry their hash.
ALTER TABLE audit_log ADD COLUMN hash TEXT;

DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (OLD.hash IS NULL AND NEW.hash IS NOT NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.actor IS OLD.actor
          AND NEW.actor_role IS OLD.actor_role AND NEW.action IS OLD.action
          AND NEW.target IS OLD.target AND NEW.detail IS OLD.detail
          AND NEW.peer IS OLD.peer AND NEW.outcome IS OLD.outcome)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_hash_required BEFORE INSERT ON audit_log
WHEN NEW.hash IS NULL
BEGIN
    SELECT RAISE(ABORT, 'audit_log entries must carry their chain hash');
END;

-- The one valid certificate of each operator, by its SHA-256 fingerprint (of
-- the DER). `operator add` replaces it (so earlier certificates of the name are
-- refused), `operator revoke` sets `revoked_at`. A NULL fingerprint marks an
-- operator added before this table existed: any certificate the CA issued for
-- that name is accepted until the name is added again or revoked.
CREATE TABLE operators (
    name         TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL,
    fingerprint  TEXT,
    updated_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);

-- Operators added before: every `operator add` was audited as done locally,
-- with the detail `role ROLE`; the newest one of each name counts.
INSERT INTO operators (name, role, fingerprint, updated_at)
SELECT target, substr(detail, 6), NULL, MAX(at)
FROM audit_log
WHERE action = 'operator add' AND actor_role = 'local' AND outcome = 'ok'
GROUP BY target;
