-- The web dashboard's reads made cheap on a large fleet.
-- The schema of migrations/sqlite/0009, in PostgreSQL's types.

-- Reports per hour (received_at / 3600 s, by the server's clock) and status:
-- the overview's runs over the last day, read without counting the reports.
-- Derived from `reports`: kept in the transaction that stores a batch of
-- reports (one upsert per batch) and the one that deletes them (retention),
-- rebuilt by an import; never archived.
CREATE TABLE report_hours (
    hour    BIGINT NOT NULL,
    status  TEXT COLLATE "C" NOT NULL,
    runs    BIGINT NOT NULL,
    PRIMARY KEY (hour, status)
);
INSERT INTO report_hours (hour, status, runs)
    SELECT received_at / 3600000000, status, COUNT(*) FROM reports
    GROUP BY received_at / 3600000000, status;

-- The audit log page filtered by actor or action, newest first, a page at a
-- time: read from these instead of walking every entry.
CREATE INDEX audit_log_by_actor ON audit_log (actor, id);
CREATE INDEX audit_log_by_action ON audit_log (action, id);
