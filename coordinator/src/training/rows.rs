//! The `train_rounds` table: a distributed run after each applied round, and the final
//! adapter that the jobs evaluating it use.

use super::other;
use crate::plan::FileEntry;
use crate::store::{now_ms, StoreResult};
use rusqlite::{params, Connection};
use serde::Serialize;

/// A row of `train_rounds`: the run after a round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub adapter: FileEntry,
    pub config: FileEntry,
    pub state: FileEntry,
    pub state_t: usize,
    pub loss: Option<f64>,
    pub heldout_loss: Option<f64>,
    pub target_tokens: u64,
    pub tokens: u64,
    pub workers: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub last: bool,
    /// When the row was stored (ms since the epoch; set by the store).
    pub stored_ms: i64,
}

/// The rows of a job, oldest first.
pub fn rounds(c: &Connection, job_id: &str) -> StoreResult<Vec<RoundRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT round, adapter_json, state_t, loss, heldout_loss, target_tokens, tokens,
                workers, bytes_sent, bytes_received, final, stored_ms
         FROM train_rounds WHERE job_id = ?1 ORDER BY round",
    )?;
    let rows = stmt
        .query_map(params![job_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<f64>>(3)?,
                r.get::<_, Option<f64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, bool>(10)?,
                r.get::<_, i64>(11)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(round, files, t, loss, held, tt, tok, workers, sent, recv, last, stored_ms)| {
                let [adapter, config, state]: [FileEntry; 3] = serde_json::from_str(&files)
                    .map_err(|e| other(format!("train_rounds {job_id}/{round}: {e}")))?;
                Ok(RoundRow {
                    round: round as usize,
                    adapter,
                    config,
                    state,
                    state_t: t as usize,
                    loss,
                    heldout_loss: held,
                    target_tokens: tt as u64,
                    tokens: tok as u64,
                    workers: serde_json::from_str(&workers).unwrap_or_default(),
                    bytes_sent: sent as u64,
                    bytes_received: recv as u64,
                    last,
                    stored_ms,
                })
            },
        )
        .collect()
}

pub(super) fn insert_row(c: &Connection, job_id: &str, row: &RoundRow) -> StoreResult<()> {
    let files = [&row.adapter, &row.config, &row.state];
    c.execute(
        "INSERT INTO train_rounds (job_id, round, adapter_json, state_t, loss, heldout_loss,
            target_tokens, tokens, workers, bytes_sent, bytes_received, final, stored_ms)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
        params![
            job_id,
            row.round as i64,
            serde_json::to_string(&files).map_err(other)?,
            row.state_t as i64,
            row.loss,
            row.heldout_loss,
            row.target_tokens as i64,
            row.tokens as i64,
            serde_json::to_string(&row.workers).map_err(other)?,
            row.bytes_sent as i64,
            row.bytes_received as i64,
            row.last,
            now_ms()
        ],
    )?;
    Ok(())
}

/// The files of the final adapter of a finished run, under `adapters/<job>/` (for the jobs
/// that evaluate it); None if the job is not a finished distributed run.
pub fn final_adapter(c: &Connection, job_id: &str) -> StoreResult<Option<Vec<FileEntry>>> {
    let Some(last) = rounds(c, job_id)?.pop().filter(|r| r.last) else {
        return Ok(None);
    };
    Ok(Some(vec![
        FileEntry {
            path: "adapter_config.json".into(),
            ..last.config
        },
        FileEntry {
            path: "adapter_model.safetensors".into(),
            ..last.adapter
        },
    ]))
}
