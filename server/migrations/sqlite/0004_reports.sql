-- Run reports sent by nodes, and what the server knows of each node's last run.
-- Times are microseconds since the Unix epoch (UTC). No audit entries: a
-- report is a node's account of its run, not an action on the server.

-- One row per run a node reported. A node re-sends a report it could not
-- deliver (spooled during an outage): (node, run_id) is stored once.
CREATE TABLE reports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    node          TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    role_version  BIGINT  NOT NULL,
    role_digest   TEXT    NOT NULL,
    -- failed (a resource failed), changed (one changed), or unchanged.
    status        TEXT    NOT NULL CHECK (status IN ('failed', 'changed', 'unchanged')),
    noop          BOOLEAN NOT NULL,
    from_cache    BOOLEAN NOT NULL,
    resources     BIGINT  NOT NULL,
    changed       BIGINT  NOT NULL,
    failed        BIGINT  NOT NULL,
    -- When the run finished, by the node's clock.
    finished_at   BIGINT  NOT NULL,
    -- When the server stored it, by its own clock: what retention goes by.
    received_at   BIGINT  NOT NULL,
    -- The whole report, protobuf-encoded (cairn.v1.RunReport).
    report        BLOB    NOT NULL,
    UNIQUE (node, run_id)
);
CREATE INDEX reports_by_received ON reports (received_at);
CREATE INDEX reports_by_node ON reports (node, id);
CREATE INDEX reports_by_role ON reports (role, id);

-- Each node's newest run (by finished_at: a spooled report delivered late does
-- not hide a newer one), when it was last heard from, and its last facts.
CREATE TABLE node_runs (
    node           TEXT    PRIMARY KEY,
    report_id      BIGINT  NOT NULL,
    role           TEXT    NOT NULL,
    channel        TEXT    NOT NULL,
    role_version   BIGINT  NOT NULL,
    status         TEXT    NOT NULL,
    from_cache     BOOLEAN NOT NULL,
    finished_at    BIGINT  NOT NULL,
    -- The newest received_at of any of its reports.
    seen_at        BIGINT  NOT NULL,
    -- The agent's run interval: not seen for two of them is stale.
    interval_secs  BIGINT  NOT NULL,
    -- JSON, at most 64 KiB.
    facts          TEXT    NOT NULL
);
