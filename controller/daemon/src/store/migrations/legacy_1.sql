-- The first SQLite schema (user_version 1), kept to bring stores made before refinery up to date.
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE plans (
    generation INTEGER PRIMARY KEY,
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    plan_path TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    secrets TEXT NOT NULL
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE rollout_targets (
    rollout_id TEXT NOT NULL,
    machine TEXT NOT NULL,
    spec BLOB NOT NULL,
    PRIMARY KEY (rollout_id, machine)
);
CREATE TABLE agents (machine TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    name TEXT NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE TABLE specs (machine TEXT PRIMARY KEY, generation INTEGER NOT NULL, spec BLOB NOT NULL);
CREATE TABLE baseline (machine TEXT PRIMARY KEY, spec BLOB NOT NULL);
