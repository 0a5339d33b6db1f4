-- The coordinator's state database (SQLite), created at start where absent. States are the
-- wire enums' numbers (flotilla-contract `state`); JSON columns hold contract types.

-- A submitted sweep, as its YAML was and as it was read.
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL,
    source_path TEXT NOT NULL, yaml TEXT NOT NULL, sweep_json TEXT NOT NULL,
    state INTEGER NOT NULL, error TEXT NOT NULL, created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL);

-- The files a sweep uploaded with it (sweep path -> artifact).
CREATE TABLE IF NOT EXISTS sweep_files (sweep_id TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (sweep_id, path));

-- A sweep's jobs; `depends_on` is a JSON list of job ids, `meta_json` the planner's `JobMeta`.
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, sweep_id TEXT NOT NULL,
    seq INTEGER NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, model TEXT NOT NULL,
    state INTEGER NOT NULL, depends_on TEXT NOT NULL, error TEXT NOT NULL,
    meta_json TEXT NOT NULL);

-- A job's shards; `spec_json` is the `ShardSpec`, `files_json` the artifacts it needs.
CREATE TABLE IF NOT EXISTS shards (id TEXT PRIMARY KEY, job_id TEXT NOT NULL,
    sweep_id TEXT NOT NULL, seq INTEGER NOT NULL, state INTEGER NOT NULL,
    spec_json TEXT NOT NULL, files_json TEXT NOT NULL, units INTEGER NOT NULL,
    attempt INTEGER NOT NULL, task_failures INTEGER NOT NULL,
    infra_failures INTEGER NOT NULL, worker_id TEXT NOT NULL, error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shards_by_job ON shards (job_id, seq);

-- Every attempt at a shard, open until it ends.
CREATE TABLE IF NOT EXISTS attempts (shard_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL, started_ms INTEGER NOT NULL, ended_ms INTEGER, outcome TEXT,
    PRIMARY KEY (shard_id, attempt));

-- The one stored result of a shard (`ShardOutput` JSON), from the attempt that won.
CREATE TABLE IF NOT EXISTS results (shard_id TEXT PRIMARY KEY, attempt INTEGER NOT NULL,
    result_json TEXT NOT NULL, artifacts_json TEXT NOT NULL, seconds REAL NOT NULL,
    units INTEGER NOT NULL, stored_ms INTEGER NOT NULL);

-- Content-addressed files kept by the coordinator.
CREATE TABLE IF NOT EXISTS artifacts (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL);

-- A distributed training run after each applied round: the adapter, its config and the
-- optimizer state (`adapter_json`: three artifacts), the round's figures, who contributed.
-- Round 0's `heldout_before` is the held-out loss of the initial adapter; the last row
-- (`final`) is the evaluation of the final adapter.
CREATE TABLE IF NOT EXISTS train_rounds (job_id TEXT NOT NULL, round INTEGER NOT NULL,
    adapter_json TEXT NOT NULL, state_t INTEGER NOT NULL, loss REAL, heldout_loss REAL,
    heldout_before REAL, target_tokens INTEGER NOT NULL, tokens INTEGER NOT NULL,
    workers TEXT NOT NULL, bytes_sent INTEGER NOT NULL, bytes_received INTEGER NOT NULL,
    final INTEGER NOT NULL, stored_ms INTEGER NOT NULL, PRIMARY KEY (job_id, round));

CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);

-- Models pushed to the coordinator (`flotilla model push`): a sweep names one as
-- `coordinator:NAME`; `files_json` lists its files (path inside the model, artifact).
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, files_json TEXT NOT NULL,
    size INTEGER NOT NULL, pushed_ms INTEGER NOT NULL);
