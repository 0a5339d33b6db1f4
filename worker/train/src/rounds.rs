//! A worker's part of a distributed training round (`TrainRoundShard`): start from the global
//! adapter, compute the named micro-batches of the one seeded data stream, and return what the
//! coordinator aggregates.
//!
//! - **sync**: the gradients of the *summed* token loss over this worker's micro-batches (the
//!   coordinator divides by the whole step's target tokens, clips and applies AdamW once).
//!   Dropout is seeded by (step, position in the step), so N workers draw one worker's masks.
//! - **diloco**: `inner_steps` local AdamW steps of `grad_accum` micro-batches each, then the
//!   delta `global - local` (DiLoCo's outer gradient). The inner AdamW moments start at zero
//!   every round: they are neither sent nor checkpointed, so a round costs one delta on the
//!   wire and any worker can take any round (docs/TRAINING.md).
//!
//! A [`RoundTrainer`] keeps the model, the tokenized data and the loader between rounds of the
//! same run, so only the adapter travels each round.

use super::config::{DistMode, TrainConfig};
use super::data::Batch;
use super::optim::{lr_at, AdamW};
use super::trainer::Trainer;
use candle_core::{Device, Tensor};
use flotilla_contract::shard::TrainRoundShard;
use flotilla_contract::tensors::{NamedTensor, TensorSet};
use flotilla_engine::error::{Error, Result};

/// What a round shard computed.
#[derive(Debug, Clone)]
pub struct RoundOutput {
    /// sync: summed gradients; diloco: `global - local`. PEFT tensor names.
    pub contribution: TensorSet,
    /// sync: summed token loss; diloco: mean loss over the local steps.
    pub loss: f64,
    pub target_tokens: u64,
    pub tokens: u64,
    pub eval_loss: Option<f64>,
}

/// A run's model and data, kept across its rounds on one worker.
pub struct RoundTrainer {
    /// What the trainer was built for (model and config): reused only for the same key.
    pub key: String,
    trainer: Trainer,
    initial: TensorSet,
}

impl RoundTrainer {
    /// Load `model_spec` and tokenize `cfg`'s data; `cfg.distributed` must be set.
    pub fn new(cfg: &TrainConfig, model_spec: &str, key: String, device: &Device) -> Result<Self> {
        if cfg.distributed.is_none() {
            return Err(Error::input(
                "a train_round shard needs a `distributed:` block in its train config",
            ));
        }
        let trainer = Trainer::new(cfg, model_spec, device)?;
        let initial = params_of(&trainer)?;
        Ok(Self {
            key,
            trainer,
            initial,
        })
    }

    /// Saves the adapter the config's seed initialises (round 0's starting point) in PEFT
    /// layout into `dir`.
    pub fn save_initial(&self, dir: &std::path::Path) -> Result<()> {
        set_params(&self.trainer, &self.initial)?;
        self.trainer
            .model
            .adapter(&self.trainer.base_model)?
            .save(dir)
    }

    /// Run one round shard from `global` (the initial adapter when none).
    pub fn run(
        &mut self,
        spec: &TrainRoundShard,
        global: Option<&TensorSet>,
    ) -> Result<RoundOutput> {
        let span = tracing::info_span!(
            target: "flotilla_trace",
            "train round",
            round = spec.round,
            first_inner_step = spec.first_inner_step,
            loss = tracing::field::Empty,
            tokens = tracing::field::Empty
        );
        let out = span.in_scope(|| self.run_round(spec, global))?;
        span.record("loss", out.loss);
        span.record("tokens", out.tokens);
        Ok(out)
    }

    fn run_round(
        &mut self,
        spec: &TrainRoundShard,
        global: Option<&TensorSet>,
    ) -> Result<RoundOutput> {
        let global = global.unwrap_or(&self.initial).clone();
        self.initial
            .check_same_layout(&global, "the global adapter")?;
        set_params(&self.trainer, &global)?;
        let eval_loss = if spec.eval {
            self.trainer.eval_loss()?
        } else {
            None
        };
        let cfg = self.trainer.config.clone();
        let mode = cfg
            .distributed
            .as_ref()
            .map(|d| d.mode)
            .unwrap_or(DistMode::Sync);
        if spec.micro_batches.is_empty() {
            return Ok(RoundOutput {
                contribution: TensorSet::default(),
                loss: 0.0,
                target_tokens: 0,
                tokens: 0,
                eval_loss,
            });
        }
        let batches: Vec<Batch> = spec
            .micro_batches
            .iter()
            .map(|i| self.trainer.loader.batch_at(*i))
            .collect();
        let target_tokens: usize = batches.iter().map(|b| b.target_tokens).sum();
        let tokens: usize = batches.iter().map(|b| b.rows * b.seq_len).sum();
        match mode {
            DistMode::Sync => {
                let (grads, nll) = self.trainer.gradient_sums(
                    &batches,
                    spec.round as usize,
                    spec.first_position as usize,
                    1.0,
                )?;
                Ok(RoundOutput {
                    contribution: named(&self.trainer, &grads)?,
                    loss: nll,
                    target_tokens: target_tokens as u64,
                    tokens: tokens as u64,
                    eval_loss,
                })
            }
            DistMode::Diloco => {
                // Fresh inner moments every round (see the module's note).
                self.trainer.optimizer = AdamW::new(&self.trainer.vars, &cfg.optimizer)?;
                let mut losses = Vec::new();
                for (h, step_batches) in batches.chunks(cfg.grad_accum.max(1)).enumerate() {
                    let step = spec.first_inner_step as usize + h;
                    let (grads, loss) = self.trainer.gradients(step_batches, step)?;
                    if !loss.is_finite() {
                        return Err(Error::input(format!(
                            "loss became {loss} at inner step {step}: lower optimizer.lr or \
                             check the data"
                        )));
                    }
                    self.trainer
                        .apply(grads, lr_at(&cfg.optimizer, step, cfg.steps))?;
                    losses.push(loss);
                }
                let local = params_of(&self.trainer)?;
                let mut delta = global;
                for (d, l) in delta.tensors.iter_mut().zip(&local.tensors) {
                    for (x, y) in d.data.iter_mut().zip(&l.data) {
                        *x -= y;
                    }
                }
                Ok(RoundOutput {
                    contribution: delta,
                    loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
                    target_tokens: target_tokens as u64,
                    tokens: tokens as u64,
                    eval_loss,
                })
            }
        }
    }
}

/// The trainer's LoRA variables as named tensors.
fn params_of(t: &Trainer) -> Result<TensorSet> {
    let vars: Vec<Tensor> = t.vars.iter().map(|v| v.as_tensor().clone()).collect();
    named(t, &vars)
}

/// `values[i]` (one per LoRA variable, in the model's order) under the variables' PEFT names.
fn named(t: &Trainer, values: &[Tensor]) -> Result<TensorSet> {
    let names = t.model.vars();
    let mut out = Vec::with_capacity(values.len());
    for ((name, _), v) in names.into_iter().zip(values) {
        out.push(NamedTensor {
            name,
            shape: v.dims().to_vec(),
            data: v.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?,
        });
    }
    Ok(TensorSet::new(out))
}

/// Sets every LoRA variable from `set` (matched by PEFT name).
fn set_params(t: &Trainer, set: &TensorSet) -> Result<()> {
    for (name, var) in t.model.vars() {
        let src = set
            .get(&name)
            .ok_or_else(|| Error::input(format!("the global adapter has no tensor {name}")))?;
        let value = Tensor::from_slice(&src.data, src.shape.as_slice(), t.model.device())?;
        var.set(&value)?;
    }
    Ok(())
}
