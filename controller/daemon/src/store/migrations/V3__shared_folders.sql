-- Shared folders (3.x gateways in HA): the newest state of every file of each group, tagged with
-- the store revision that wrote it, so an agent that was away gets exactly what changed.
CREATE TABLE shared_folder_files (
    grp TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content BYTEA NOT NULL,
    deleted BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    PRIMARY KEY (grp, path)
);
CREATE INDEX shared_folder_files_revision ON shared_folder_files (grp, revision);
