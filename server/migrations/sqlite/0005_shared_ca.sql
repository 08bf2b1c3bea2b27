-- The certificate authority every server on this database shares, so that a
-- certificate one server issued is accepted by all. One row at most: the first
-- server to start stores it (or adopts the one its data directory held).
-- `key_pem` is the CA's private key: whoever reads this table can issue
-- certificates any server accepts.
CREATE TABLE ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT    NOT NULL,
    key_pem    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
