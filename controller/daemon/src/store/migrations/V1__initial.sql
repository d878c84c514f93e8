-- The store as it stood before several controllers (legacy SQLite user_version 3). Portable:
-- TEXT, BIGINT and BYTEA only, ON CONFLICT upserts; the same text runs on SQLite and PostgreSQL.
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE plans (
    generation BIGINT PRIMARY KEY,
    author TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    plan_path TEXT NOT NULL,
    plan_toml BYTEA NOT NULL,
    secrets BYTEA NOT NULL,
    run_state TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX rollouts_by_generation ON rollouts (generation);
CREATE TABLE rollout_targets (
    rollout_id TEXT NOT NULL,
    machine TEXT NOT NULL,
    spec BYTEA NOT NULL,
    PRIMARY KEY (rollout_id, machine)
);
CREATE TABLE agents (machine TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    name TEXT NOT NULL,
    stored_at BIGINT NOT NULL
);
CREATE TABLE specs (machine TEXT PRIMARY KEY, generation BIGINT NOT NULL, spec BYTEA NOT NULL);
CREATE TABLE baseline (machine TEXT PRIMARY KEY, spec BYTEA NOT NULL);
CREATE TABLE spec_history (
    machine TEXT NOT NULL,
    generation BIGINT NOT NULL,
    plan_generation BIGINT NOT NULL,
    PRIMARY KEY (machine, generation)
);
