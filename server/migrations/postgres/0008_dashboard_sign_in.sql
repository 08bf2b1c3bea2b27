-- The web dashboard's sign-in links and the sessions they start: the schema
-- of migrations/sqlite/0008. Only the SHA-256 of each secret is stored, so reading
-- the database gives neither a link nor a session that works. Times are
-- microseconds since the Unix epoch (UTC).

-- A link `cairn ui login` asked for: the operator, role and certificate
-- (fingerprint) it signs in as, until `expires_at`, once (`used_at`).
CREATE TABLE ui_links (
    secret_sha256 TEXT COLLATE "C" PRIMARY KEY,
    operator      TEXT COLLATE "C" NOT NULL,
    role          TEXT COLLATE "C" NOT NULL,
    fingerprint   TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    used_at       BIGINT
);
CREATE INDEX ui_links_by_expiry ON ui_links (expires_at);

-- A browser's session (its cookie), started by one link; `ended_at` once
-- signed out.
CREATE TABLE ui_sessions (
    secret_sha256 TEXT COLLATE "C" PRIMARY KEY,
    operator      TEXT COLLATE "C" NOT NULL,
    role          TEXT COLLATE "C" NOT NULL,
    fingerprint   TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    ended_at      BIGINT
);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);

-- The overview's last failures, newest first, without walking every report;
-- its runs per hour by outcome, from the index alone.
CREATE INDEX reports_by_status ON reports (status, id);
CREATE INDEX reports_by_status_received ON reports (status, received_at);
