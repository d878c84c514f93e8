-- Several controllers on one store: who they are, who leads rollouts, the files they share, and a
-- revision every write bumps so the others notice.
CREATE TABLE controllers (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    seen_revision BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    epoch BIGINT NOT NULL
);
CREATE TABLE shared_files (
    path TEXT PRIMARY KEY,
    data BYTEA NOT NULL,
    revision BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE revision (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO revision (id, n) VALUES (1, 0);
-- Which revision last wrote each agent and spec: another controller reads only what changed.
ALTER TABLE agents ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE specs ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
-- Uploaded artifacts, for controllers that did not receive the upload (1 MiB chunks).
CREATE TABLE artifact_chunks (
    sha256 TEXT NOT NULL,
    idx BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, idx)
);
