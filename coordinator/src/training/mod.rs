//! Distributed LoRA training on the coordinator (`distributed:` in a `train:` block;
//! docs/TRAINING.md): the round shards, and applying a finished round.
//!
//! A distributed train job is a `train_round` job whose shards are added one round at a time.
//! When every shard of round `r` has succeeded (`Change::RoundReady`), [`close_round`], inside
//! one store transaction, reads their contributions, applies the optimizer — sync: the summed
//! gradients divided by the step's target tokens, clipped, one AdamW step; diloco: the
//! token-weighted mean of the deltas as the outer gradient of a Nesterov SGD step — stores the
//! new adapter and optimizer state as artifacts, records the round in `train_rounds`, and
//! inserts round `r + 1`'s shards. The row and the next shards commit together: a round is
//! applied exactly once, and a coordinator killed at any point resumes at the last applied
//! round (a round whose shards all succeeded but which was not applied is applied at start).
//!
//! After the last training round comes one evaluation shard (the held-out loss of the final
//! adapter); its row is marked final and the job ends. The final adapter is then the files
//! `adapters/<job>/` that dependent generate jobs use, as for a one-worker train job.

mod layout;
mod rows;
mod summary;

pub use layout::{adapter_dir, round_of, round_prefix, round_shards, RoundShard};
use layout::{shard_prefix, Layout};
use rows::insert_row;
pub use rows::{final_adapter, rounds, RoundRow};
pub use summary::{progress, training_runs};

use crate::artifacts::ArtifactStore;
use crate::plan::{FileEntry, JobMeta, PlannedShard};
use crate::store::{state::*, StoreError, StoreResult};
use crate::writes::insert_shards;
use flotilla_contract::optim::{
    add_scaled, check_finite, clip_factor_of, global_norm, lr_at, nesterov_step, scale, AdamState,
};
use flotilla_contract::shard::TrainRoundResult;
use flotilla_contract::tensors::{NamedTensor, TensorSet};
use flotilla_contract::train_config::{Compression, DistMode, TrainConfig};
use flotilla_contract::{JobKind, ShardOutput, ShardSpec};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

/// What every round shard of a run shares (stored in the job's meta).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Base model spec.
    pub model: String,
    /// The sweep's model name (results folders: `adapters/<adapter>/<model name>/`).
    #[serde(default)]
    pub model_name: String,
    /// The sweep's adapter name.
    pub adapter: String,
    /// The `train:` block (sweep paths, seed filled in).
    pub config: serde_json::Value,
    /// The training data files every shard needs.
    pub files: Vec<FileEntry>,
}

impl RunMeta {
    pub fn config(&self) -> StoreResult<TrainConfig> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| StoreError::Other(format!("adapter {}: train: {e}", self.adapter)))
    }
}

/// What applying a round led to.
#[derive(Debug)]
pub enum RoundOutcome {
    /// The round's shards have not all succeeded (or were already applied).
    NotReady,
    /// The next round's shards, stored `Ready`, and where the run stands.
    Next(Vec<RoundShard>, Option<flotilla_proto::v1::TrainProgress>),
    /// The run is complete.
    Done(Option<flotilla_proto::v1::TrainProgress>),
}

/// One contribution, as stored.
struct Contribution {
    shard: String,
    worker: String,
    /// The attempt's seconds, as the worker reported them.
    seconds: f64,
    output: TrainRoundResult,
    files: Vec<FileEntry>,
}

/// A message as a store error.
pub(crate) fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

/// The run's meta, from its job.
pub fn run_meta(c: &Connection, job_id: &str) -> StoreResult<RunMeta> {
    let meta: String = c.query_row(
        "SELECT meta_json FROM jobs WHERE id = ?1",
        params![job_id],
        |r| r.get(0),
    )?;
    match serde_json::from_str::<JobMeta>(&meta) {
        Ok(JobMeta::TrainRound(run)) => Ok(run),
        Ok(_) => Err(other(format!(
            "job {job_id} is not a distributed train job"
        ))),
        Err(e) => Err(other(format!("job {job_id}: bad meta: {e}"))),
    }
}

/// The contributions to `round`, and the micro-batches of its shards dropped at the
/// round's timeout; `None` while a shard is still open (or none succeeded).
fn contributions(
    c: &Connection,
    job_id: &str,
    round: usize,
) -> StoreResult<Option<(Vec<Contribution>, Vec<u64>)>> {
    let mut stmt = c.prepare_cached(
        "SELECT s.id, s.state, r.result_json, r.artifacts_json, s.spec_json, r.seconds,
                (SELECT a.worker_id FROM attempts a WHERE a.shard_id = s.id AND a.attempt = r.attempt)
         FROM shards s LEFT JOIN results r ON r.shard_id = s.id
         WHERE s.job_id = ?1 AND s.id LIKE ?2 ORDER BY s.seq",
    )?;
    let rows = stmt
        .query_map(
            params![job_id, format!("{}%", shard_prefix(job_id, round))],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<f64>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let mut leftover = Vec::new();
    for (shard, state, result, files, spec, seconds, worker) in rows {
        if state == ShardState::Cancelled.code() {
            match ShardSpec::from_json(spec.as_bytes()).map_err(other)? {
                ShardSpec::TrainRound(s) => leftover.extend(s.micro_batches),
                s => return Err(other(format!("shard {shard}: a {} spec", s.kind()))),
            }
            continue;
        }
        let (Some(result), Some(files)) = (result, files) else {
            return Ok(None);
        };
        if state != ShardState::Succeeded.code() {
            return Ok(None);
        }
        let output = match ShardOutput::from_json(result.as_bytes()).map_err(other)? {
            ShardOutput::TrainRound(o) => o,
            o => return Err(other(format!("shard {shard}: a {} output", o.kind()))),
        };
        out.push(Contribution {
            shard,
            worker: worker.unwrap_or_default(),
            seconds: seconds.unwrap_or(0.0),
            output,
            files: serde_json::from_str(&files).map_err(other)?,
        });
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some((out, leftover)))
}

fn read_set(store: &ArtifactStore, f: &FileEntry, what: &str) -> StoreResult<TensorSet> {
    let bytes = store.read(&f.sha256).map_err(other)?;
    TensorSet::decode(&bytes, what).map_err(other)
}

fn put(store: &ArtifactStore, path: &str, bytes: &[u8]) -> StoreResult<FileEntry> {
    Ok(FileEntry {
        path: path.to_string(),
        sha256: store.put(bytes).map_err(other)?,
        size: bytes.len() as u64,
    })
}

/// Optimizer state as one tensor file: `m/<name>`, `v/<name>` (AdamW) or `momentum/<name>`
/// (Nesterov).
fn state_set(parts: &[(&str, &TensorSet)]) -> TensorSet {
    let mut out = Vec::new();
    for (prefix, set) in parts {
        for t in &set.tensors {
            out.push(NamedTensor {
                name: format!("{prefix}/{}", t.name),
                ..t.clone()
            });
        }
    }
    TensorSet::new(out)
}

fn state_part(state: &TensorSet, prefix: &str) -> TensorSet {
    let p = format!("{prefix}/");
    TensorSet::new(
        state
            .tensors
            .iter()
            .filter_map(|t| {
                t.name.strip_prefix(&p).map(|n| NamedTensor {
                    name: n.to_string(),
                    ..t.clone()
                })
            })
            .collect(),
    )
}

/// Apply round `r` of `job_id` if all its shards succeeded (see the module's note). Runs
/// inside one store transaction.
pub fn close_round(
    c: &Connection,
    store: &ArtifactStore,
    job_id: &str,
) -> StoreResult<RoundOutcome> {
    let meta = run_meta(c, job_id)?;
    let cfg = meta.config()?;
    let l = Layout::of(&cfg)?;
    let done = rounds(c, job_id)?;
    if done.last().is_some_and(|r| r.last) {
        return Ok(RoundOutcome::Done(progress(c, job_id)?));
    }
    let r = done.len();
    let Some((contribs, leftover)) = contributions(c, job_id, r)? else {
        return Ok(RoundOutcome::NotReady);
    };
    if !leftover.is_empty() {
        tracing::info!(
            job = job_id,
            round = r,
            micro_batches = leftover.len(),
            "round closed at its timeout; the dropped shards' data moves to the next round (diloco)"
        );
    }
    let eval = contribs.iter().find_map(|c| c.output.eval_loss);
    let workers: Vec<String> = {
        let mut w: Vec<String> = contribs.iter().map(|c| c.worker.clone()).collect();
        w.sort();
        w.dedup();
        w
    };
    let bytes_sent: u64 = contribs.iter().flat_map(|c| &c.files).map(|f| f.size).sum();
    let prev = done.last().cloned();
    let bytes_received = prev
        .as_ref()
        .map(|p| (p.adapter.size + p.config.size) * contribs.len() as u64)
        .unwrap_or(0);
    let target_tokens: u64 = contribs.iter().map(|c| c.output.target_tokens).sum();
    let tokens: u64 = contribs.iter().map(|c| c.output.tokens).sum();
    // The held-out loss measured at the start of this round belongs to the previous adapter.
    if let (Some(p), Some(e)) = (&prev, eval) {
        c.execute(
            "UPDATE train_rounds SET heldout_loss = ?3 WHERE job_id = ?1 AND round = ?2",
            params![job_id, p.round as i64, e],
        )?;
    }
    if r >= l.rounds {
        let p = prev.ok_or_else(|| other(format!("job {job_id}: an evaluation round first")))?;
        insert_row(
            c,
            job_id,
            &RoundRow {
                round: r,
                loss: None,
                heldout_loss: eval,
                target_tokens: 0,
                tokens: 0,
                workers,
                bytes_sent,
                bytes_received,
                last: true,
                ..p
            },
        )?;
        return Ok(RoundOutcome::Done(progress(c, job_id)?));
    }
    // Where the run stands before this round.
    let (mut adapter, config_file, mut state, state_t) = match &prev {
        Some(p) => (
            read_set(store, &p.adapter, "the global adapter")?,
            p.config.clone(),
            Some(read_set(store, &p.state, "the optimizer state")?),
            p.state_t,
        ),
        None => {
            let file = |name: &str| {
                contribs
                    .iter()
                    .flat_map(|c| &c.files)
                    .find(|f| f.path == format!("initial/{name}"))
                    .cloned()
                    .ok_or_else(|| other(format!("round 0 of {job_id} uploaded no initial {name}")))
            };
            (
                read_set(
                    store,
                    &file("adapter_model.safetensors")?,
                    "the initial adapter",
                )?,
                file("adapter_config.json")?,
                None,
                0,
            )
        }
    };
    let mut sets = Vec::new();
    for c in &contribs {
        let f = c
            .files
            .iter()
            .find(|f| f.path == "contribution.safetensors")
            .ok_or_else(|| other(format!("shard {} uploaded no contribution", c.shard)))?;
        let set = read_set(store, f, &format!("shard {}: contribution", c.shard))?;
        adapter
            .check_same_layout(&set, &format!("shard {}: contribution", c.shard))
            .map_err(other)?;
        check_finite(&set, &format!("shard {}: contribution", c.shard)).map_err(other)?;
        sets.push((c.output.target_tokens, c.output.loss, set));
    }
    if target_tokens == 0 {
        return Err(other(format!("round {r} of {job_id} had no target tokens")));
    }
    let (loss, state_out, t) = match l.mode {
        DistMode::Sync => {
            let mut grad = adapter.zeros_like();
            let mut nll = 0.0;
            for (_, loss, set) in &sets {
                add_scaled(&mut grad, set, 1.0, "gradient").map_err(other)?;
                nll += loss;
            }
            scale(&mut grad, 1.0 / target_tokens as f32);
            let factor = clip_factor_of(global_norm(&grad), cfg.optimizer.max_grad_norm);
            if factor < 1.0 {
                scale(&mut grad, factor as f32);
            }
            let mut adam = match &state {
                Some(s) => AdamState {
                    t: state_t,
                    m: state_part(s, "m"),
                    v: state_part(s, "v"),
                },
                None => AdamState::new(&adapter),
            };
            let lr = lr_at(&cfg.optimizer, r, l.steps);
            adam.step(&cfg.optimizer, &mut adapter, &grad, lr)
                .map_err(other)?;
            let out = state_set(&[("m", &adam.m), ("v", &adam.v)]);
            (nll / target_tokens as f64, out, adam.t)
        }
        DistMode::Diloco => {
            let d = cfg
                .distributed
                .as_ref()
                .ok_or_else(|| other(format!("job {job_id}: no distributed block")))?;
            let mut outer = adapter.zeros_like();
            let mut loss = 0.0;
            for (tt, l, set) in &sets {
                let w = *tt as f64 / target_tokens as f64;
                add_scaled(&mut outer, set, w as f32, "delta").map_err(other)?;
                loss += w * l;
            }
            let mut momentum = match state.take() {
                Some(s) => state_part(&s, "momentum"),
                None => adapter.zeros_like(),
            };
            nesterov_step(
                &mut adapter,
                &mut momentum,
                &outer,
                d.outer_lr,
                d.outer_momentum,
            )
            .map_err(other)?;
            (loss, state_set(&[("momentum", &momentum)]), state_t + 1)
        }
    };
    check_finite(&adapter, &format!("round {r}: the new adapter")).map_err(other)?;
    let dir = adapter_dir(job_id, r);
    let adapter_file = put(
        store,
        &format!("{dir}/adapter_model.safetensors"),
        &adapter.encode(Compression::None).map_err(other)?,
    )?;
    let config_file = FileEntry {
        path: format!("{dir}/adapter_config.json"),
        ..config_file
    };
    let state_file = put(
        store,
        &format!("{dir}/optimizer.safetensors"),
        &state_out.encode(Compression::None).map_err(other)?,
    )?;
    insert_row(
        c,
        job_id,
        &RoundRow {
            round: r,
            adapter: adapter_file.clone(),
            config: config_file.clone(),
            state: state_file,
            state_t: t,
            loss: Some(loss),
            heldout_loss: None,
            target_tokens,
            tokens,
            workers,
            bytes_sent,
            bytes_received,
            last: false,
            stored_ms: 0,
        },
    )?;
    if r == 0 {
        if let Some(e) = eval {
            c.execute(
                "UPDATE train_rounds SET heldout_before = ?3 WHERE job_id = ?1 AND round = ?2",
                params![job_id, 0i64, e],
            )?;
        }
    }
    let leftover = if l.mode == DistMode::Diloco {
        leftover
    } else {
        Vec::new()
    };
    let next = round_shards(
        job_id,
        &meta,
        r + 1,
        Some(&[config_file, adapter_file]),
        &leftover,
        &speeds(&contribs),
    )?;
    let sweep: String = c.query_row(
        "SELECT sweep_id FROM jobs WHERE id = ?1",
        params![job_id],
        |row| row.get(0),
    )?;
    let planned: Vec<PlannedShard> = next.iter().map(|n| n.shard.clone()).collect();
    insert_shards(c, &sweep, job_id, &planned, ShardState::Ready)?;
    prune(c, store, job_id, cfg.keep_checkpoints)?;
    Ok(RoundOutcome::Next(next, progress(c, job_id)?))
}

/// Each contributing worker's tokens per second in a round, fastest first (ties by id).
fn speeds(contribs: &[Contribution]) -> Vec<(String, f64)> {
    let mut per: std::collections::BTreeMap<&str, (u64, f64)> = Default::default();
    for c in contribs.iter().filter(|c| !c.worker.is_empty()) {
        let e = per.entry(c.worker.as_str()).or_default();
        e.0 += c.output.tokens;
        e.1 += c.seconds;
    }
    let mut out: Vec<(String, f64)> = per
        .into_iter()
        .filter(|(_, (tokens, secs))| *tokens > 0 && *secs > 0.0)
        .map(|(w, (tokens, secs))| (w.to_string(), tokens as f64 / secs))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// After a round is applied and committed: remove its contributions (gradients or deltas)
/// from the artifact store, unless a shard of another live distributed run stored the same
/// bytes. Returns the
/// bytes freed.
pub fn drop_contributions(c: &Connection, store: &ArtifactStore, job_id: &str) -> StoreResult<u64> {
    let Some(last) = rounds(c, job_id)?.pop() else {
        return Ok(0);
    };
    let prefix = shard_prefix(job_id, last.round);
    let mut stmt =
        c.prepare_cached("SELECT r.artifacts_json FROM results r WHERE r.shard_id LIKE ?1")?;
    let files: Vec<String> = stmt
        .query_map(params![format!("{prefix}%")], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut freed = 0;
    for f in files {
        let entries: Vec<FileEntry> = serde_json::from_str(&f).map_err(other)?;
        for e in entries
            .iter()
            .filter(|e| e.path == "contribution.safetensors")
        {
            // Only another live distributed run can still need the same bytes (two identical
            // runs side by side); looked up through its jobs, not by scanning every result.
            let shared: i64 = c.query_row(
                "SELECT COUNT(*) FROM jobs j JOIN shards s ON s.job_id = j.id
                 JOIN results r ON r.shard_id = s.id
                 WHERE j.kind = ?3 AND j.state NOT IN (?4, ?5, ?6)
                   AND s.id NOT LIKE ?1 AND r.artifacts_json LIKE ?2",
                params![
                    format!("{prefix}%"),
                    format!("%{}%", e.sha256),
                    JobKind::TrainRound.as_str(),
                    JobState::Succeeded.code(),
                    JobState::Failed.code(),
                    JobState::Cancelled.code()
                ],
                |r| r.get(0),
            )?;
            if shared == 0 {
                store.remove(&e.sha256).map_err(other)?;
                freed += e.size;
            }
        }
    }
    Ok(freed)
}

/// Keep the newest `keep` checkpoints' adapter and optimizer files; older rounds keep their
/// figures, and their files are removed from the artifact store.
fn prune(c: &Connection, store: &ArtifactStore, job_id: &str, keep: usize) -> StoreResult<()> {
    let all = rounds(c, job_id)?;
    if all.len() <= keep {
        return Ok(());
    }
    let (old, kept) = all.split_at(all.len() - keep);
    let live: std::collections::HashSet<&str> = kept
        .iter()
        .flat_map(|r| [r.adapter.sha256.as_str(), r.state.sha256.as_str()])
        .collect();
    for r in old {
        for f in [&r.adapter, &r.state] {
            if !live.contains(f.sha256.as_str()) {
                store.remove(&f.sha256).map_err(other)?;
            }
        }
    }
    Ok(())
}
