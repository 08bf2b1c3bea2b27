-- The certificate authority every server on this database shares: the schema
-- of migrations/sqlite/0005. `key_pem` is the CA's private key: whoever reads
-- this table can issue certificates any server accepts.
CREATE TABLE ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT    NOT NULL,
    key_pem    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
