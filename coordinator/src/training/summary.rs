//! What a sweep's training jobs did, for `results.json`'s `training` section, and the
//! adapter files a results folder downloads: a one-worker `train` job from its shard's
//! figures, a distributed `train_round` job from its `train_rounds` rows.

use super::{final_adapter, other, rounds, run_meta, Layout, RoundRow};
use crate::plan::{FileEntry, JobMeta};
use crate::store::StoreResult;
use flotilla_contract::report::{Checkpoint, LossPoint, TrainingRun};
use flotilla_contract::train_config::DistMode;
use flotilla_contract::{JobKind, ShardOutput};
use flotilla_proto::v1::TrainProgress;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;

/// A sweep's trained adapters.
#[derive(Debug, Default)]
pub struct Trained {
    pub runs: Vec<TrainingRun>,
    /// `(adapter name, model name, file)` of each finished adapter's files.
    pub adapters: Vec<(String, String, FileEntry)>,
}

/// The training runs of `sweep_id`'s jobs, in plan order; jobs still training are listed
/// with what they have done so far.
pub fn training_runs(c: &Connection, sweep_id: &str) -> StoreResult<Trained> {
    let mut stmt = c.prepare(
        "SELECT id, meta_json FROM jobs WHERE sweep_id = ?1 AND kind IN (?2, ?3) ORDER BY seq",
    )?;
    let jobs = stmt
        .query_map(
            params![
                sweep_id,
                JobKind::Train.as_str(),
                JobKind::TrainRound.as_str()
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Trained::default();
    for (job, meta) in jobs {
        match serde_json::from_str::<JobMeta>(&meta) {
            Ok(JobMeta::Train { model, adapter }) => single(c, &job, model, adapter, &mut out)?,
            Ok(JobMeta::TrainRound(_)) => distributed(c, &job, &mut out)?,
            Ok(_) => {}
            Err(e) => return Err(other(format!("job {job}: bad meta: {e}"))),
        }
    }
    Ok(out)
}

/// Where a distributed job's rounds stand, for `sweep watch` (None before its first round).
pub fn progress(c: &Connection, job: &str) -> StoreResult<Option<TrainProgress>> {
    let cfg = run_meta(c, job)?.config()?;
    let l = Layout::of(&cfg)?;
    let rows = rounds(c, job)?;
    let Some(last) = rows.iter().rev().find(|r| !r.last) else {
        return Ok(None);
    };
    Ok(Some(TrainProgress {
        round: (last.round + 1) as u32,
        rounds: l.rounds as u32,
        step: l.step_after(last.round) as u32,
        steps: l.steps as u32,
        loss: last.loss,
        heldout_loss: rows.iter().rev().find_map(|r| r.heldout_loss),
    }))
}

/// When the job's first attempt started.
fn started_ms(c: &Connection, job: &str) -> StoreResult<Option<i64>> {
    Ok(c.query_row(
        "SELECT MIN(a.started_ms) FROM attempts a JOIN shards s ON s.id = a.shard_id
         WHERE s.job_id = ?1",
        params![job],
        |r| r.get::<_, Option<i64>>(0),
    )?)
}

fn single(
    c: &Connection,
    job: &str,
    model: String,
    adapter: String,
    out: &mut Trained,
) -> StoreResult<()> {
    let row = c
        .query_row(
            "SELECT r.result_json, r.artifacts_json, r.seconds,
                (SELECT a.worker_id FROM attempts a WHERE a.shard_id = s.id AND a.attempt = r.attempt)
             FROM results r JOIN shards s ON s.id = r.shard_id WHERE s.job_id = ?1",
            params![job],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((result, files, seconds, worker)) = row else {
        return Ok(());
    };
    let files: Vec<FileEntry> = serde_json::from_str(&files).map_err(other)?;
    let metrics = match ShardOutput::from_json(result.as_bytes()).map_err(other)? {
        ShardOutput::Train(t) => t.metrics,
        o => {
            return Err(other(format!(
                "train job {job} stored a {} result",
                o.kind()
            )))
        }
    };
    let steps = metrics["steps"].as_u64().unwrap_or(0) as usize;
    out.runs.push(TrainingRun {
        adapter: adapter.clone(),
        model: model.clone(),
        mode: "single".into(),
        workers: worker.into_iter().collect(),
        steps,
        rounds: 0,
        bytes_sent: files.iter().map(|f| f.size).sum(),
        bytes_received: 0,
        tokens: metrics["tokens"].as_u64().unwrap_or(0),
        loss: single_curve(&metrics, steps),
        heldout_loss: metrics["eval_loss_after"].as_f64(),
        heldout_loss_before: metrics["eval_loss_before"].as_f64(),
        wall_s: metrics["seconds"].as_f64().unwrap_or(seconds),
        checkpoints: Vec::new(),
    });
    for f in files {
        out.adapters.push((adapter.clone(), model.clone(), f));
    }
    Ok(())
}

fn distributed(c: &Connection, job: &str, out: &mut Trained) -> StoreResult<()> {
    let meta = run_meta(c, job)?;
    let cfg = meta.config()?;
    let l = Layout::of(&cfg)?;
    let rows = rounds(c, job)?;
    let model = if meta.model_name.is_empty() {
        meta.model.clone()
    } else {
        meta.model_name.clone()
    };
    let step_of = |r: &RoundRow| l.step_after(r.round);
    let per_worker = worker_losses(c, job, l.mode)?;
    let training: Vec<&RoundRow> = rows.iter().filter(|r| !r.last).collect();
    let mut workers: Vec<String> = rows.iter().flat_map(|r| r.workers.clone()).collect();
    workers.sort();
    workers.dedup();
    workers.retain(|w| !w.is_empty());
    let wall_s = match (started_ms(c, job)?, rows.last()) {
        (Some(a), Some(b)) => (b.stored_ms - a).max(0) as f64 / 1000.0,
        _ => 0.0,
    };
    let keep = cfg.keep_checkpoints.min(training.len());
    out.runs.push(TrainingRun {
        adapter: meta.adapter.clone(),
        model: model.clone(),
        mode: match l.mode {
            DistMode::Sync => "sync",
            DistMode::Diloco => "diloco",
        }
        .into(),
        workers,
        steps: training.last().map(|r| step_of(r)).unwrap_or(0),
        rounds: training.len(),
        bytes_sent: rows.iter().map(|r| r.bytes_sent).sum(),
        bytes_received: rows.iter().map(|r| r.bytes_received).sum(),
        tokens: rows.iter().map(|r| r.tokens).sum(),
        loss: training
            .iter()
            .filter_map(|r| {
                r.loss.map(|loss| LossPoint {
                    round: Some(r.round),
                    step: step_of(r),
                    loss,
                    heldout_loss: r.heldout_loss,
                    workers: per_worker.get(&r.round).cloned().unwrap_or_default(),
                })
            })
            .collect(),
        heldout_loss: rows.iter().rev().find_map(|r| r.heldout_loss),
        heldout_loss_before: c
            .query_row(
                "SELECT heldout_before FROM train_rounds WHERE job_id = ?1 AND round = 0",
                params![job],
                |r| r.get::<_, Option<f64>>(0),
            )
            .optional()?
            .flatten(),
        wall_s,
        checkpoints: training[training.len() - keep..]
            .iter()
            .map(|r| Checkpoint {
                round: r.round,
                step: step_of(r),
                loss: r.loss,
                heldout_loss: r.heldout_loss,
                path: super::adapter_dir(job, r.round),
                sha256: r.adapter.sha256.clone(),
            })
            .collect(),
    });
    for f in final_adapter(c, job)?.unwrap_or_default() {
        out.adapters.push((meta.adapter.clone(), model.clone(), f));
    }
    Ok(())
}

/// A single worker's loss curve: every step's training loss, with the held-out loss where it
/// was measured (older results have only the final loss).
fn single_curve(metrics: &serde_json::Value, steps: usize) -> Vec<LossPoint> {
    let pairs = |key: &str| -> Vec<(usize, f64)> {
        serde_json::from_value(metrics[key].clone()).unwrap_or_default()
    };
    let held: BTreeMap<usize, f64> = pairs("eval_losses").into_iter().collect();
    let curve: Vec<LossPoint> = pairs("train_losses")
        .into_iter()
        .map(|(step, loss)| LossPoint {
            round: None,
            step,
            loss,
            heldout_loss: held.get(&step).copied(),
            workers: BTreeMap::new(),
        })
        .collect();
    if !curve.is_empty() {
        return curve;
    }
    metrics["final_train_loss"]
        .as_f64()
        .map(|loss| LossPoint {
            round: None,
            step: steps,
            loss,
            heldout_loss: metrics["eval_loss_after"].as_f64(),
            workers: BTreeMap::new(),
        })
        .into_iter()
        .collect()
}

/// Each worker's own training loss per round of a distributed job, from the stored results of
/// its `train_round` shards: sync shards carry summed token losses (divided by their target
/// tokens here), diloco shards the mean loss of their local steps (averaged).
fn worker_losses(
    c: &Connection,
    job: &str,
    mode: DistMode,
) -> StoreResult<BTreeMap<usize, BTreeMap<String, f64>>> {
    let mut stmt = c.prepare_cached(
        "SELECT s.spec_json, r.result_json, a.worker_id FROM shards s
         JOIN results r ON r.shard_id = s.id
         JOIN attempts a ON a.shard_id = r.shard_id AND a.attempt = r.attempt
         WHERE s.job_id = ?1",
    )?;
    // (round, worker) -> (sum, weight)
    let mut acc: BTreeMap<(usize, String), (f64, f64)> = BTreeMap::new();
    let rows = stmt.query_map(params![job], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (spec, result, worker) = row?;
        let Ok(flotilla_contract::ShardSpec::TrainRound(spec)) =
            flotilla_contract::ShardSpec::from_json(spec.as_bytes())
        else {
            continue;
        };
        let Ok(ShardOutput::TrainRound(out)) = ShardOutput::from_json(result.as_bytes()) else {
            continue;
        };
        if out.target_tokens == 0 && out.loss == 0.0 {
            // A shard that only measured (the last round's evaluation).
            continue;
        }
        let e = acc.entry((spec.round as usize, worker)).or_default();
        match mode {
            DistMode::Sync => {
                e.0 += out.loss;
                e.1 += out.target_tokens as f64;
            }
            DistMode::Diloco => {
                e.0 += out.loss;
                e.1 += 1.0;
            }
        }
    }
    let mut out: BTreeMap<usize, BTreeMap<String, f64>> = BTreeMap::new();
    for ((round, worker), (sum, weight)) in acc {
        if weight > 0.0 {
            out.entry(round).or_default().insert(worker, sum / weight);
        }
    }
    Ok(out)
}
