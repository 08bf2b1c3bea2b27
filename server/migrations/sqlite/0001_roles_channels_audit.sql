-- Versioned roles, channels pointing at versions, and the append-only audit log.
-- Times are microseconds since the Unix epoch (UTC), so they sort and compare
-- the same way in SQLite and PostgreSQL.

CREATE TABLE role_versions (
    role        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    digest      TEXT    NOT NULL,
    author      TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    -- The role's files, protobuf-encoded (cairn.v1.Bundle), in path order.
    bundle      BLOB    NOT NULL,
    PRIMARY KEY (role, version)
);

CREATE TABLE channels (
    role        TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    updated_by  TEXT    NOT NULL,
    PRIMARY KEY (role, channel),
    FOREIGN KEY (role, version) REFERENCES role_versions (role, version)
);

-- Every move of a channel pointer. A rollback undoes the newest promote of the
-- channel that no rollback has undone yet, and records which one in `undoes`.
CREATE TABLE channel_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    role          TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('promote', 'rollback')),
    from_version  BIGINT,
    to_version    BIGINT  NOT NULL,
    undoes        BIGINT  REFERENCES channel_events (id),
    actor         TEXT    NOT NULL,
    at            BIGINT  NOT NULL
);
CREATE INDEX channel_events_by_channel ON channel_events (role, channel, id);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    actor_role  TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    peer        TEXT    NOT NULL,
    outcome     TEXT    NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at);

-- Append-only, enforced by the database rather than by convention.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER role_versions_immutable BEFORE UPDATE ON role_versions
BEGIN
    SELECT RAISE(ABORT, 'role versions are immutable');
END;
