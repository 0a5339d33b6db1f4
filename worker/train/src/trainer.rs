//! The training loop: data -> micro-batches -> loss on assistant tokens -> gradients of the
//! LoRA matrices -> clipped AdamW step, with held-out loss every few steps and checkpoints
//! (adapter, optimizer moments, data position) that `--resume` continues from exactly.
//!
//! Gradients and updates are separate steps ([`Trainer::gradients`], [`Trainer::apply`]) so
//! a coordinator can later split a global batch across workers and average their gradients.
//!
//! Layout of an output directory:
//! ```text
//! OUT/adapter/                 final adapter (PEFT layout)
//! OUT/checkpoints/step-000010/ adapter + optimizer.safetensors + state.json
//! OUT/log.jsonl                one line per step and per held-out evaluation
//! OUT/summary.json             what `flotilla train --output json` prints
//! ```

use super::config::TrainConfig;
use super::data::{self, Batch, DataLoader, DataPosition, TokenizedExample};
use super::model::TrainModel;
use super::optim::{clip_factor, lr_at, AdamW};
use super::weights::BaseWeights;
use candle_core::{DType, Device, Tensor, Var};
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::{LanguageModel, LoadOptions};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One optimizer step, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub target_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// What the loop tells its caller (progress bars, logs, a worker's heartbeat).
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Started {
        start_step: usize,
        total_steps: usize,
        train_examples: usize,
        eval_examples: usize,
        trainable_parameters: usize,
    },
    Step(StepReport),
    Eval {
        step: usize,
        loss: f64,
    },
    Checkpoint {
        step: usize,
        dir: PathBuf,
    },
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub adapter: PathBuf,
    pub base_model: String,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub trainable_parameters: usize,
    /// Held-out loss before the first step and after the last.
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    pub eval_losses: Vec<(usize, f64)>,
    /// The training loss of each step this run took (`(step, loss)`; after a resume, the
    /// steps since).
    #[serde(default)]
    pub train_losses: Vec<(usize, f64)>,
    pub final_train_loss: f64,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Checkpoint state besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    data: DataPosition,
    config: serde_json::Value,
    eval_losses: Vec<(usize, f64)>,
    eval_loss_before: Option<f64>,
    tokens: usize,
}

/// A model, its optimizer and its data, ready to step.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: TrainModel,
    pub vars: Vec<Var>,
    pub optimizer: AdamW,
    pub loader: DataLoader,
    pub eval: Vec<TokenizedExample>,
    pub base_model: String,
    /// Optimizer steps done.
    pub step: usize,
}

/// Train examples and held-out examples for `cfg`, tokenized with `lm`'s template; every
/// problem (bad line, empty set, a sequence too long) is reported here, before training.
pub fn prepare_data(
    cfg: &TrainConfig,
    lm: &LanguageModel,
) -> Result<(Vec<TokenizedExample>, Vec<TokenizedExample>)> {
    let max_len = cfg.max_seq_len.min(lm.info.context_length.max(2));
    let records = data::load_records(&cfg.data)?;
    let (train, eval) = match &cfg.eval_data {
        Some(p) => {
            let eval = data::load_records(p)?;
            (
                data::tokenize_records(&records, lm, max_len, &cfg.data)?,
                data::tokenize_records(&eval, lm, max_len, p)?,
            )
        }
        None => {
            let (tr, ev) = data::split_holdout(records, cfg.holdout, cfg.seed);
            (
                data::tokenize_records(&tr, lm, max_len, &cfg.data)?,
                data::tokenize_records(&ev, lm, max_len, &cfg.data)?,
            )
        }
    };
    if train.is_empty() {
        return Err(Error::input(format!(
            "{}: no training examples left after holding out {}",
            cfg.data.display(),
            cfg.holdout
        )));
    }
    Ok((train, eval))
}

/// The dtype of the frozen weights and activations for `precision` on `device`: the engine's
/// rule ([`flotilla_engine::device::precision_dtype`]: `auto` is bf16 on CUDA built for compute
/// capability 8.0 or later, f32 elsewhere). LoRA weights and optimizer state are f32 always.
pub fn training_dtype(precision: super::config::Precision, device: &Device) -> DType {
    flotilla_engine::device::precision_dtype(precision, device)
}

impl Trainer {
    /// Load the model named `model_spec`, tokenize the data and set up a fresh run.
    pub fn new(cfg: &TrainConfig, model_spec: &str, device: &Device) -> Result<Self> {
        let dtype = training_dtype(cfg.precision, device);
        let lm = LanguageModel::load(model_spec, &LoadOptions::default())?;
        let (train, eval) = prepare_data(cfg, &lm)?;
        let pad = lm.tokenizer.eos_ids.first().copied().unwrap_or(0);
        drop(lm);
        let base = if cfg.qlora {
            BaseWeights::load_quantized(model_spec, device)?
        } else {
            BaseWeights::load(model_spec, device)?
        };
        let model = TrainModel::with_dtype(base, &cfg.lora, cfg.seed, dtype)?;
        tracing::info!(?dtype, "training precision of the frozen weights");
        let vars: Vec<Var> = model.vars().into_iter().map(|(_, v)| v).collect();
        let optimizer = AdamW::new(&vars, &cfg.optimizer)?;
        let loader = DataLoader::new(
            train,
            cfg.batch_size,
            cfg.max_seq_len,
            cfg.packing,
            cfg.seed,
        )?
        .with_pad_id(pad);
        Ok(Self {
            config: cfg.clone(),
            model,
            vars,
            optimizer,
            loader,
            eval,
            base_model: model_spec.to_string(),
            step: 0,
        })
    }

    /// Gradients of the mean loss over `batches` (one optimizer step's micro-batches) with
    /// respect to every LoRA variable, and that loss. The loss is normalised by the target
    /// tokens of all micro-batches together, as one big batch would be.
    pub fn gradients(&self, batches: &[Batch], step: usize) -> Result<(Vec<Tensor>, f64)> {
        let total: usize = batches.iter().map(|b| b.target_tokens).sum();
        if total == 0 {
            return Err(Error::input("a training step has no target tokens"));
        }
        let (grads, nll) = self.gradient_sums(batches, step, 0, total as f64)?;
        Ok((grads, nll / total as f64))
    }

    /// Gradients of (the summed token loss over `batches`) / `denom`, and that summed loss.
    /// `batches` are the micro-batches at `first_position..` of optimizer step `step`: dropout
    /// is seeded by (step, position), so a step's micro-batches computed on several workers
    /// draw the masks one worker would.
    pub fn gradient_sums(
        &self,
        batches: &[Batch],
        step: usize,
        first_position: usize,
        denom: f64,
    ) -> Result<(Vec<Tensor>, f64)> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let mut nll = 0f64;
        for (i, b) in batches.iter().enumerate() {
            let position = (first_position + i) as u64;
            let seed = self
                .config
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((step as u64) << 16 | position);
            let (store, sum) =
                self.model
                    .backward(b, denom, Some(seed), self.config.gradient_checkpointing)?;
            nll += sum;
            for (slot, var) in grads.iter_mut().zip(&self.vars) {
                let g = store.get(var.as_tensor()).cloned().ok_or_else(|| {
                    Error::input(
                        "a LoRA weight received no gradient (the training graph is broken)",
                    )
                })?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        let grads = grads
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::input("no micro-batches to compute gradients on"))?;
        Ok((grads, nll))
    }

    /// Clip `grads` to the configured global norm and apply one AdamW step at `lr`; returns
    /// the norm before clipping.
    pub fn apply(&mut self, grads: Vec<Tensor>, lr: f64) -> Result<f64> {
        let (norm, factor) = clip_factor(&grads, self.config.optimizer.max_grad_norm)?;
        let grads = if factor < 1.0 {
            grads
                .into_iter()
                .map(|g| g * factor)
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            grads
        };
        self.optimizer.step(&self.vars, &grads, lr)?;
        Ok(norm)
    }

    /// Mean loss per target token over the held-out examples (no dropout).
    pub fn eval_loss(&self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let mut nll = 0f64;
        let mut n = 0usize;
        for b in data::eval_batches(&self.eval, self.config.batch_size, self.config.max_seq_len) {
            if b.target_tokens == 0 {
                continue;
            }
            let (_, sum) = self.model.loss(&b, 1.0, None)?;
            nll += sum;
            n += b.target_tokens;
        }
        Ok((n > 0).then(|| nll / n as f64))
    }

    /// One optimizer step: draw micro-batches, compute gradients, clip, update.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let batches: Vec<Batch> = (0..self.config.grad_accum)
            .map(|_| self.loader.next_batch())
            .collect();
        let tokens: usize = batches.iter().map(|b| b.rows * b.seq_len).sum();
        let target_tokens: usize = batches.iter().map(|b| b.target_tokens).sum();
        let (grads, loss) = self.gradients(&batches, self.step)?;
        let lr = lr_at(&self.config.optimizer, self.step, self.config.steps);
        let grad_norm = self.apply(grads, lr)?;
        self.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepReport {
            step: self.step,
            total_steps: self.config.steps,
            loss,
            lr,
            grad_norm,
            tokens,
            target_tokens,
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
        })
    }

    fn config_fingerprint(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        // Where the run writes and how often it checkpoints do not change what it computes.
        if let Some(o) = v.as_object_mut() {
            o.remove("out");
            o.remove("checkpoint_every");
            o.insert("model".into(), serde_json::json!(self.base_model));
        }
        v
    }

    fn save_checkpoint(&self, out: &Path, state: &CheckpointState) -> Result<PathBuf> {
        let root = out.join("checkpoints");
        let dir = root.join(format!("step-{:06}", self.step));
        let tmp = root.join(format!(".step-{:06}.tmp", self.step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        self.model.adapter(&self.base_model)?.save(&tmp)?;
        self.optimizer.save(&tmp.join("optimizer.safetensors"))?;
        let st = tmp.join("state.json");
        let text = serde_json::to_string_pretty(state).map_err(|e| Error::model(&st, e))?;
        std::fs::write(&st, text).map_err(|e| Error::io(&st, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        // The rename makes a checkpoint appear whole or not at all, even under kill -9.
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        // Keep the newest three.
        let mut all = checkpoints(out)?;
        while all.len() > 3 {
            let (_, old) = all.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(dir)
    }

    fn load_checkpoint(&mut self, dir: &Path) -> Result<CheckpointState> {
        let st = dir.join("state.json");
        let text = std::fs::read_to_string(&st).map_err(|e| Error::io(&st, e))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| Error::model(&st, format!("not a flotilla checkpoint: {e}")))?;
        if state.config != self.config_fingerprint() {
            return Err(Error::model(
                dir,
                "this checkpoint was made with a different training config (model, data, LoRA, \
                 optimizer or batch settings changed); start afresh without --resume or restore \
                 the config",
            ));
        }
        let adapter = super::lora::LoraAdapter::load(dir)?;
        self.model.load_adapter(&adapter)?;
        self.optimizer
            .load(&dir.join("optimizer.safetensors"), self.model.device())?;
        self.loader.seek(state.data.clone());
        self.step = state.step;
        Ok(state)
    }
}

/// Checkpoints under `out`, oldest first.
pub fn checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = out.join("checkpoints");
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut list = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
        let entry = entry.map_err(|e| Error::io(&root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            if entry.path().join("state.json").exists() {
                list.push((n, entry.path()));
            }
        }
    }
    list.sort();
    Ok(list)
}

/// Train `cfg` on `model_spec`, writing into `out`; with `resume`, continue from the newest
/// checkpoint there. `on_event` sees every step, evaluation and checkpoint; when it returns
/// `false` the run stops there with an error (a cancelled shard; the checkpoints stay).
pub fn train(
    cfg: &TrainConfig,
    model_spec: &str,
    out: &Path,
    resume: bool,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent) -> bool,
) -> Result<TrainSummary> {
    let mut t = Trainer::new(cfg, model_spec, device)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut eval_losses: Vec<(usize, f64)> = Vec::new();
    let mut eval_loss_before = None;
    let mut tokens = 0usize;
    let mut resumed_from = None;
    let log_path = out.join("log.jsonl");
    if resume {
        match checkpoints(out)?.pop() {
            Some((_, dir)) => {
                let state = t.load_checkpoint(&dir)?;
                eval_losses = state.eval_losses;
                eval_loss_before = state.eval_loss_before;
                tokens = state.tokens;
                resumed_from = Some(state.step);
                tracing::info!(step = state.step, dir = %dir.display(), "resuming");
            }
            None => {
                return Err(Error::input(format!(
                    "--resume: no checkpoint under {}",
                    out.join("checkpoints").display()
                )))
            }
        }
    } else if !checkpoints(out)?.is_empty() {
        return Err(Error::input(format!(
            "{} already holds checkpoints of a run: pass --resume to continue it, or choose \
             another --out",
            out.display()
        )));
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let mut write_log = |v: serde_json::Value| -> Result<()> {
        writeln!(log, "{v}").map_err(|e| Error::io(&log_path, e))
    };
    let mut emit = |e: TrainEvent| -> Result<()> {
        if on_event(&e) {
            Ok(())
        } else {
            Err(Error::input(format!(
                "training stopped by its caller after {e:?}; continue with --resume"
            )))
        }
    };

    let trainable = t.vars.iter().map(|v| v.elem_count()).sum();
    emit(TrainEvent::Started {
        start_step: t.step,
        total_steps: cfg.steps,
        train_examples: t.loader.len(),
        eval_examples: t.eval.len(),
        trainable_parameters: trainable,
    })?;
    if resumed_from.is_none() {
        eval_loss_before = t.eval_loss()?;
        if let Some(l) = eval_loss_before {
            eval_losses.push((0, l));
            emit(TrainEvent::Eval { step: 0, loss: l })?;
            write_log(serde_json::json!({"step": 0, "eval_loss": l}))?;
        }
    }
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    let mut train_losses: Vec<(usize, f64)> = Vec::new();
    let mut run_tokens = 0usize;
    while t.step < cfg.steps {
        let span = tracing::info_span!(
            target: "flotilla_trace",
            "train step",
            step = t.step + 1,
            loss = tracing::field::Empty,
            tokens = tracing::field::Empty
        );
        let report = span.in_scope(|| t.train_step())?;
        span.record("loss", report.loss);
        span.record("tokens", report.tokens);
        drop(span);
        if !report.loss.is_finite() {
            return Err(Error::input(format!(
                "loss became {} at step {}: lower optimizer.lr or check the data",
                report.loss, report.step
            )));
        }
        last_loss = report.loss;
        train_losses.push((report.step, report.loss));
        tokens += report.tokens;
        run_tokens += report.tokens;
        write_log(serde_json::to_value(&report).unwrap_or_default())?;
        emit(TrainEvent::Step(report))?;
        let last = t.step == cfg.steps;
        if (cfg.eval_every > 0 && t.step % cfg.eval_every == 0) || last {
            if let Some(l) = t.eval_loss()? {
                eval_losses.push((t.step, l));
                emit(TrainEvent::Eval {
                    step: t.step,
                    loss: l,
                })?;
                write_log(serde_json::json!({"step": t.step, "eval_loss": l}))?;
            }
        }
        if (cfg.checkpoint_every > 0 && t.step % cfg.checkpoint_every == 0) || last {
            let state = CheckpointState {
                step: t.step,
                data: t.loader.position(),
                config: t.config_fingerprint(),
                eval_losses: eval_losses.clone(),
                eval_loss_before,
                tokens,
            };
            let dir = t.save_checkpoint(out, &state)?;
            emit(TrainEvent::Checkpoint { step: t.step, dir })?;
        }
    }
    let adapter_dir = out.join("adapter");
    t.model.adapter(model_spec)?.save(&adapter_dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = TrainSummary {
        adapter: adapter_dir,
        base_model: model_spec.to_string(),
        steps: t.step,
        resumed_from,
        train_examples: t.loader.len(),
        eval_examples: t.eval.len(),
        trainable_parameters: trainable,
        eval_loss_before,
        eval_loss_after: eval_losses.last().map(|(_, l)| *l),
        eval_losses,
        train_losses,
        final_train_loss: last_loss,
        tokens,
        seconds,
        tokens_per_second: run_tokens as f64 / seconds.max(1e-9),
    };
    let sp = out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::model(&sp, e))?;
    std::fs::write(&sp, text + "\n").map_err(|e| Error::io(&sp, e))?;
    Ok(summary)
}
