-- The audit log becomes tamper-evident, and operators revocable: the schema of
-- migrations/sqlite/0002.
--
-- `hash` chains each audit entry to the one before (server/src/store/audit.rs
-- says how). A PostgreSQL database never held entries from before the chain,
-- so every entry carries its hash from the start and no update is allowed
-- (audit_log_no_update, from 0001, stays as it is).
ALTER TABLE audit_log ADD COLUMN hash TEXT COLLATE "C";

CREATE TRIGGER audit_log_hash_required BEFORE INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.hash IS NULL)
    EXECUTE FUNCTION cairn_refuse('audit_log entries must carry their chain hash');

-- The one valid certificate of each operator, by its SHA-256 fingerprint (of
-- the DER). `operator add` replaces it (so earlier certificates of the name are
-- refused), `operator revoke` sets `revoked_at`. A NULL fingerprint marks an
-- operator added before certificates were recorded (SQLite databases only; it
-- is kept here so both backends read the same rows).
CREATE TABLE operators (
    name         TEXT COLLATE "C" PRIMARY KEY,
    role         TEXT COLLATE "C" NOT NULL,
    fingerprint  TEXT COLLATE "C",
    updated_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);
