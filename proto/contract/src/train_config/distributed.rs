//! The `distributed:` block of a `train:` block: how an adapter trains across workers
//! (docs/TRAINING.md, "Training across workers"), its defaults and its checks.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a distributed run shares the work (docs/TRAINING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistMode {
    /// Every optimizer step's micro-batches are split across the workers; the coordinator
    /// sums their gradients and applies AdamW once.
    Sync,
    /// Each worker runs `inner_steps` AdamW steps on its own data; the coordinator averages
    /// their deltas and applies an outer Nesterov step (DiLoCo).
    Diloco,
}

/// How gradients and deltas travel from workers to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Fp16,
    /// Signed bytes with one scale per tensor.
    Int8,
}

/// The `distributed:` block of a `train:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distributed {
    pub mode: DistMode,
    /// At most this many workers take part in a step or round.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// A round that times out closes with at least this many contributions (else it runs
    /// again).
    #[serde(default = "default_min_workers")]
    pub min_workers: usize,
    /// diloco: local AdamW steps per round (H).
    #[serde(default = "default_inner")]
    pub inner_steps: usize,
    /// diloco: the outer Nesterov SGD's learning rate and momentum.
    #[serde(default = "default_outer_lr")]
    pub outer_lr: f64,
    #[serde(default = "default_outer_momentum")]
    pub outer_momentum: f64,
    /// A round closes with whoever reported after this long.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_s: u64,
    #[serde(default)]
    pub compression: Compression,
}

fn default_workers() -> usize {
    2
}
fn default_min_workers() -> usize {
    1
}
fn default_inner() -> usize {
    50
}
fn default_outer_lr() -> f64 {
    0.7
}
fn default_outer_momentum() -> f64 {
    0.9
}
fn default_round_timeout() -> u64 {
    600
}

impl Distributed {
    /// Optimizer steps (sync) or rounds (diloco) of a run of `steps` optimizer steps: diloco
    /// runs `steps` inner steps per worker, `inner_steps` a round.
    pub fn rounds(&self, steps: usize) -> usize {
        match self.mode {
            DistMode::Sync => steps,
            DistMode::Diloco => steps.div_ceil(self.inner_steps.max(1)),
        }
    }

    pub(super) fn validate(&self, bad: &dyn Fn(&str, String) -> Error) -> Result<()> {
        if self.workers == 0 {
            return Err(bad("distributed.workers", "must be at least 1".into()));
        }
        if self.min_workers == 0 || self.min_workers > self.workers {
            return Err(bad(
                "distributed.min_workers",
                format!(
                    "must be between 1 and distributed.workers ({}), got {}",
                    self.workers, self.min_workers
                ),
            ));
        }
        if self.inner_steps == 0 {
            return Err(bad("distributed.inner_steps", "must be at least 1".into()));
        }
        if !(self.outer_lr > 0.0) || !self.outer_lr.is_finite() {
            return Err(bad(
                "distributed.outer_lr",
                format!("must be positive, got {}", self.outer_lr),
            ));
        }
        if !(0.0..1.0).contains(&self.outer_momentum) {
            return Err(bad(
                "distributed.outer_momentum",
                format!("must be in [0, 1), got {}", self.outer_momentum),
            ));
        }
        if self.round_timeout_s == 0 {
            return Err(bad(
                "distributed.round_timeout_s",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
