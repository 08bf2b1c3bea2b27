-- Join tokens, and the nodes they enrolled: the schema of migrations/sqlite/0003.
--
-- A join token is `ID.SECRET`: `id` is public (listed, revoked, named in the
-- audit log); only the SHA-256 of the secret is stored, so reading the
-- database does not give a token that works. A token admits `uses_allowed`
-- enrollments until `expires_at`, unless revoked.
CREATE TABLE tokens (
    id            TEXT COLLATE "C" PRIMARY KEY,
    secret_sha256 TEXT COLLATE "C" NOT NULL,
    role          TEXT COLLATE "C" NOT NULL,
    channel       TEXT COLLATE "C" NOT NULL,
    created_by    TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    uses_allowed  BIGINT  NOT NULL CHECK (uses_allowed > 0),
    uses_used     BIGINT  NOT NULL DEFAULT 0 CHECK (uses_used <= uses_allowed),
    revoked_at    BIGINT
);

-- Every enrolled node, with the fingerprint (SHA-256 of the DER) of its one
-- valid certificate, as `operators` has for operators: enrolling the name
-- again replaces it, so the earlier certificate no longer counts; revoking
-- sets `revoked_at`. The assignment is one role at one channel for now.
-- `token_id` names the token of the latest enrollment (tokens are kept).
CREATE TABLE nodes (
    name         TEXT COLLATE "C" PRIMARY KEY,
    role         TEXT COLLATE "C" NOT NULL,
    channel      TEXT COLLATE "C" NOT NULL,
    fingerprint  TEXT COLLATE "C" NOT NULL,
    enrolled_at  BIGINT  NOT NULL,
    revoked_at   BIGINT,
    token_id     TEXT COLLATE "C" NOT NULL REFERENCES tokens (id),
    -- The facts the node sent when it enrolled (JSON), if any.
    facts        TEXT COLLATE "C"
);
CREATE INDEX nodes_by_assignment ON nodes (role, channel);
