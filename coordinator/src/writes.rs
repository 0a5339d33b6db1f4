//! The store's half of every decision: the scheduler's [`Change`]s (and the results that come
//! with `Succeeded` changes) written to SQLite in one transaction. [`crate::core`] queues these
//! writes while it still holds the scheduler's lock, so the database sees decisions in the
//! order memory made them.

use crate::plan::{self, FileEntry};
use crate::scheduler::Change;
use crate::store::{now_ms, state::*, StoreResult};
use flotilla_contract::Attempt;
use rusqlite::{params, Connection};

/// A result to store with its `Succeeded` change.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub shard: String,
    pub attempt: Attempt,
    pub json: String,
    pub artifacts: Vec<FileEntry>,
    pub seconds: f64,
    pub units: u64,
}

/// Write changes (and results) in one transaction: the store's half of every decision.
pub fn apply(c: &Connection, changes: &[Change], results: &[ResultRow]) -> StoreResult<()> {
    let now = now_ms();
    for r in results {
        c.prepare_cached(
            "INSERT OR IGNORE INTO results (shard_id, attempt, result_json, artifacts_json,
                seconds, units, stored_ms) VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?
        .execute(params![
            r.shard,
            r.attempt.0,
            r.json,
            serde_json::to_string(&r.artifacts).expect("files serialise"),
            r.seconds,
            r.units as i64,
            now
        ])?;
    }
    for ch in changes {
        match ch {
            Change::Assigned {
                shard,
                attempt,
                worker,
            } => {
                c.prepare_cached(
                    "UPDATE shards SET state = ?2, attempt = ?3, worker_id = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    shard,
                    ShardState::Running.code(),
                    attempt.0,
                    worker
                ])?;
                c.prepare_cached(
                    "INSERT OR REPLACE INTO attempts (shard_id, attempt, worker_id, started_ms)
                     VALUES (?1,?2,?3,?4)",
                )?
                .execute(params![shard, attempt.0, worker, now])?;
            }
            Change::Succeeded { shard, attempt } => {
                c.prepare_cached("UPDATE shards SET state = ?2, worker_id = '' WHERE id = ?1")?
                    .execute(params![shard, ShardState::Succeeded.code()])?;
                end_attempt(c, shard, *attempt, "succeeded", now)?;
            }
            Change::Requeued {
                shard,
                attempt,
                outcome,
                task_failures,
                infra_failures,
            } => attempt_failed(
                c,
                shard,
                *attempt,
                ShardState::Ready,
                (*task_failures, *infra_failures),
                outcome,
                now,
            )?,
            Change::ShardFailed {
                shard,
                attempt,
                error,
                task_failures,
                infra_failures,
            } => attempt_failed(
                c,
                shard,
                *attempt,
                ShardState::Failed,
                (*task_failures, *infra_failures),
                error,
                now,
            )?,
            Change::ShardCancelled { shard } => {
                c.prepare_cached("UPDATE shards SET state = ?2, worker_id = '' WHERE id = ?1")?
                    .execute(params![shard, ShardState::Cancelled.code()])?;
                c.prepare_cached(
                    "UPDATE attempts SET ended_ms = ?2, outcome = 'cancelled'
                     WHERE shard_id = ?1 AND ended_ms IS NULL",
                )?
                .execute(params![shard, now])?;
            }
            Change::Job { job, state, error } => {
                c.prepare_cached("UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1")?
                    .execute(params![job, state.code(), error])?;
            }
            Change::Unblocked { job } => {
                plan::finalize(c, job)?;
                c.prepare_cached("UPDATE jobs SET state = ?2 WHERE id = ?1")?
                    .execute(params![job, JobState::Ready.code()])?;
                c.prepare_cached("UPDATE shards SET state = ?2 WHERE job_id = ?1 AND state = ?3")?
                    .execute(params![
                        job,
                        ShardState::Ready.code(),
                        ShardState::Blocked.code()
                    ])?;
            }
            Change::RoundReady { .. } => {}
            Change::Sweep {
                sweep,
                state,
                error,
            } => {
                c.prepare_cached(
                    "UPDATE sweeps SET state = ?2, error = ?3, updated_ms = ?4 WHERE id = ?1",
                )?
                .execute(params![sweep, state.code(), error, now])?;
            }
        }
    }
    Ok(())
}

/// A failed attempt: the shard back in the queue (`Ready`) or failed for good, its failure
/// counts and message kept, the attempt closed.
fn attempt_failed(
    c: &Connection,
    shard: &str,
    attempt: Attempt,
    state: ShardState,
    (task_failures, infra_failures): (u32, u32),
    message: &str,
    now: i64,
) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE shards SET state = ?2, worker_id = '', task_failures = ?3,
            infra_failures = ?4, error = ?5 WHERE id = ?1",
    )?
    .execute(params![
        shard,
        state.code(),
        task_failures,
        infra_failures,
        message
    ])?;
    end_attempt(c, shard, attempt, message, now)
}

fn end_attempt(
    c: &Connection,
    shard: &str,
    attempt: Attempt,
    outcome: &str,
    now: i64,
) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE attempts SET ended_ms = ?3, outcome = ?4 WHERE shard_id = ?1 AND attempt = ?2",
    )?
    .execute(params![shard, attempt.0, now, outcome])?;
    Ok(())
}

/// Insert planned shards of `job_id` in `state` (at submission, and each distributed round).
pub fn insert_shards(
    c: &Connection,
    sweep_id: &str,
    job_id: &str,
    shards: &[plan::PlannedShard],
    state: ShardState,
) -> StoreResult<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO shards (id, job_id, sweep_id, seq, state, spec_json, files_json, units,
            attempt, task_failures, infra_failures, worker_id, error)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,0,0,0,'','')",
    )?;
    for s in shards {
        stmt.execute(params![
            s.id,
            job_id,
            sweep_id,
            s.seq,
            state.code(),
            s.spec_json,
            serde_json::to_string(&s.files).expect("files serialise"),
            s.units as i64,
        ])?;
    }
    Ok(())
}
