//! How a distributed run is cut into rounds and shards: which micro-batches each shard of a
//! round computes (sync: the step's micro-batches in shares sized by measured speed; diloco:
//! each worker's own stretch of the stream, plus data dropped at the previous round's
//! timeout), and the names of rounds, shards and checkpoint folders.

use super::RunMeta;
use crate::plan::{FileEntry, PlannedShard};
use crate::store::{StoreError, StoreResult};
use flotilla_contract::shard::TrainRoundShard;
use flotilla_contract::train_config::{DistMode, TrainConfig};
use flotilla_contract::ShardSpec;

/// How a run is cut into rounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) mode: DistMode,
    pub(super) workers: usize,
    pub(super) grad_accum: usize,
    pub(super) inner_steps: usize,
    pub(super) steps: usize,
    /// Training rounds; round `rounds` is the final evaluation.
    pub(super) rounds: usize,
    pub(super) eval_every: usize,
}

impl Layout {
    pub(super) fn of(cfg: &TrainConfig) -> StoreResult<Self> {
        let d = cfg.distributed.as_ref().ok_or_else(|| {
            StoreError::Other("a train_round job without a distributed block".into())
        })?;
        Ok(Self {
            mode: d.mode,
            workers: d.workers.max(1),
            grad_accum: cfg.grad_accum.max(1),
            inner_steps: d.inner_steps.max(1),
            steps: cfg.steps,
            rounds: d.rounds(cfg.steps),
            eval_every: cfg.eval_every,
        })
    }

    /// The optimizer steps done after training round `round` (diloco: inner steps).
    pub(super) fn step_after(&self, round: usize) -> usize {
        match self.mode {
            DistMode::Sync => round + 1,
            DistMode::Diloco => ((round + 1) * self.inner_steps).min(self.steps),
        }
    }
}

/// The sweep path of the adapter after round `round` (before round `round + 1`).
pub fn adapter_dir(job_id: &str, round: usize) -> String {
    format!("adapters/{job_id}/round-{round:05}")
}

pub(super) fn shard_prefix(job_id: &str, round: usize) -> String {
    format!("{job_id}.r{round:05}.")
}

/// The round a round shard's id names (`<job>.rNNNNN.sK`).
pub fn round_of(shard_id: &str) -> Option<usize> {
    let (_, tail) = shard_id.rsplit_once(".r")?;
    let (round, _) = tail.split_once(".s")?;
    round.parse().ok()
}

/// The shard-id prefix of `round` of `job_id`.
pub fn round_prefix(job_id: &str, round: usize) -> String {
    shard_prefix(job_id, round)
}

/// The shards of `round` (the final evaluation when `round` is the number of training
/// rounds), starting from `adapter` (the files of the global adapter, none in round 0).
/// `leftover`: micro-batches of the previous round's shards that were dropped at its
/// timeout; diloco runs them in one more shard of this round (sync skips them: a step uses
/// the slices that arrived). `speeds`: the tokens/s each worker measured in the previous
/// round, fastest first; sync sizes its shares by them, each share meant for its worker.
pub fn round_shards(
    job_id: &str,
    meta: &RunMeta,
    round: usize,
    adapter: Option<&[FileEntry]>,
    leftover: &[u64],
    speeds: &[(String, f64)],
) -> StoreResult<Vec<RoundShard>> {
    let cfg = meta.config()?;
    let l = Layout::of(&cfg)?;
    let adapter_path = adapter.map(|_| adapter_dir(job_id, round.saturating_sub(1)));
    let mut parts: Vec<(Vec<u64>, u32, u64)> = Vec::new();
    let mut prefer: Vec<Option<String>> = Vec::new();
    if round >= l.rounds {
        parts.push((Vec::new(), 0, 0));
    } else {
        match l.mode {
            DistMode::Sync => {
                // This step's micro-batches, cut into at most `workers` contiguous parts sized
                // by the measured speeds (equal for workers not measured yet).
                let first = (round * l.grad_accum) as u64;
                let n = l.workers.min(l.grad_accum);
                let known: Vec<f64> = speeds.iter().take(n).map(|s| s.1).collect();
                let mean = if known.is_empty() {
                    1.0
                } else {
                    known.iter().sum::<f64>() / known.len() as f64
                };
                let weights: Vec<f64> = (0..n)
                    .map(|k| known.get(k).copied().unwrap_or(mean))
                    .collect();
                let mut at = 0usize;
                for (k, len) in shares(l.grad_accum, &weights).into_iter().enumerate() {
                    let ids = (at..at + len).map(|i| first + i as u64).collect();
                    parts.push((ids, at as u32, 0));
                    prefer.push(speeds.get(k).map(|s| s.0.clone()));
                    at += len;
                }
            }
            DistMode::Diloco => {
                // Each worker: `inner_steps` local steps (fewer in a last, short round) on its
                // own stretch of the stream.
                let h = l.inner_steps.min(l.steps - round * l.inner_steps);
                let per = h * l.grad_accum;
                let base = (round * l.inner_steps * l.grad_accum * l.workers) as u64;
                for k in 0..l.workers {
                    let first = base + (k * per) as u64;
                    let ids = (first..first + per as u64).collect();
                    parts.push((ids, 0, (round * l.inner_steps) as u64));
                }
                if !leftover.is_empty() {
                    parts.push((leftover.to_vec(), 0, (round * l.inner_steps) as u64));
                }
            }
        }
    }
    let eval_round = l.eval_every > 0 && round % l.eval_every.max(1) == 0;
    let mut out = Vec::new();
    for (k, (ids, first_position, first_inner_step)) in parts.into_iter().enumerate() {
        let spec = TrainRoundShard {
            model: meta.model.clone(),
            adapter_name: meta.adapter.clone(),
            config: meta.config.clone(),
            round: round as u32,
            adapter: adapter_path.clone(),
            micro_batches: ids,
            first_position,
            first_inner_step,
            eval: k == 0 && (round >= l.rounds || eval_round || round == 0),
        };
        let mut files = meta.files.clone();
        files.extend(adapter.unwrap_or_default().iter().cloned());
        out.push(RoundShard {
            shard: PlannedShard {
                id: format!("{}s{}", shard_prefix(job_id, round), k + 1),
                seq: (round * 1000 + k + 1) as i64,
                units: (spec.micro_batches.len() as u64).max(1),
                spec_json: ShardSpec::TrainRound(spec).to_json(),
                files,
            },
            prefer: prefer.get(k).cloned().flatten(),
        });
    }
    Ok(out)
}

/// A round's shard, and the worker its share was sized for.
#[derive(Debug)]
pub struct RoundShard {
    pub shard: PlannedShard,
    pub prefer: Option<String>,
}

/// `total` split in proportion to `weights` (largest remainder), every part at least 1;
/// `total` must be at least the number of parts.
fn shares(total: usize, weights: &[f64]) -> Vec<usize> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let spare = total.saturating_sub(n);
    let sum: f64 = weights.iter().map(|w| w.max(0.0)).sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| {
            if sum > 0.0 {
                spare as f64 * w.max(0.0) / sum
            } else {
                spare as f64 / n as f64
            }
        })
        .collect();
    let mut out: Vec<usize> = exact.iter().map(|x| 1 + x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| {
        let fa = exact[*a] - exact[*a].floor();
        let fb = exact[*b] - exact[*b].floor();
        fb.total_cmp(&fa).then(a.cmp(b))
    });
    let mut left = total - out.iter().sum::<usize>().min(total);
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights_and_give_everyone_at_least_one() {
        assert_eq!(shares(6, &[1.0, 1.0, 1.0]), [2, 2, 2]);
        assert_eq!(shares(6, &[2.0, 1.0]), [4, 2]);
        assert_eq!(shares(7, &[3.0, 1.0]), [5, 2]);
        assert_eq!(shares(3, &[100.0, 1.0, 1.0]), [1, 1, 1]);
        assert_eq!(shares(5, &[0.0, 0.0]), [3, 2]);
        for (total, w) in [(9, vec![5.0, 3.0, 1.0]), (4, vec![1.0, 2.0, 3.0, 4.0])] {
            let s = shares(total, &w);
            assert_eq!(s.iter().sum::<usize>(), total, "{s:?}");
            assert!(s.iter().all(|x| *x >= 1), "{s:?}");
        }
    }

    #[test]
    fn round_ids_name_their_round() {
        assert_eq!(round_of("sw-1.j1.r00012.s3"), Some(12));
        assert_eq!(round_of("sw-1.j1.s3"), None);
        assert!(round_prefix("j", 3).starts_with("j.r00003."));
    }
}
