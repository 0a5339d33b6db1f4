//! The training configuration (`flotilla train --config train.yaml`, and the `train:` block of
//! a sweep's adapter). Every field is checked before any training starts, and an error names
//! the file and the field at fault.

mod distributed;

pub use distributed::{Compression, DistMode, Distributed};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A projection of a llama / qwen2 block that can carry a LoRA adapter, by its Hugging Face /
/// PEFT module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl TargetModule {
    pub const ALL: [TargetModule; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// `q_proj`, `k_proj`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::DownProj => "down_proj",
        }
    }

    /// The module's path inside a block: `self_attn.q_proj`, `mlp.gate_proj`, ...
    pub fn path(self) -> &'static str {
        match self {
            Self::QProj => "self_attn.q_proj",
            Self::KProj => "self_attn.k_proj",
            Self::VProj => "self_attn.v_proj",
            Self::OProj => "self_attn.o_proj",
            Self::GateProj => "mlp.gate_proj",
            Self::UpProj => "mlp.up_proj",
            Self::DownProj => "mlp.down_proj",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

fn default_target_modules() -> Vec<String> {
    TargetModule::ALL
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

/// LoRA settings, named as PEFT names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    /// Module names (`q_proj`, ...), or `all` for every projection.
    #[serde(default = "default_target_modules")]
    pub target_modules: Vec<String>,
    /// Scale by alpha / sqrt(rank) instead of alpha / rank (PEFT's `use_rslora`).
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_target_modules(),
            use_rslora: false,
        }
    }
}

impl LoraSettings {
    /// The parsed target modules (checked by [`TrainConfig::validate`]).
    pub fn modules(&self) -> Result<Vec<TargetModule>> {
        let mut out = Vec::new();
        for name in &self.target_modules {
            if name == "all" || name == "all-linear" {
                out.extend(TargetModule::ALL);
                continue;
            }
            match TargetModule::parse(name) {
                Some(m) => out.push(m),
                None => {
                    return Err(Error::input(format!(
                        "lora.target_modules: unknown module `{name}` (expected one of {}, or all)",
                        default_target_modules().join(", ")
                    )))
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// AdamW and its schedule, with PyTorch's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSettings {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Clip gradients to this global L2 norm; 0 turns clipping off.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
}

fn default_lr() -> f64 {
    2e-4
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}
fn default_clip() -> f64 {
    1.0
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            weight_decay: 0.0,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            warmup_steps: 0,
            schedule: default_schedule(),
            max_grad_norm: default_clip(),
        }
    }
}

/// Numeric precision of the frozen base model during training. LoRA weights, optimizer state
/// and the loss are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on a CUDA GPU with bf16 arithmetic (a build for compute capability 8.0 and up),
    /// f32 elsewhere.
    Auto,
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// `auto`, `f32` or `bf16`, as in a config file (for command-line flags).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("`{other}` is not a precision (auto, f32 or bf16)")),
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The base model: a GGUF file, a Hugging Face directory, `hf:org/name` or a demo alias.
    /// In a sweep the model comes from the sweep and this field may be left out.
    #[serde(default)]
    pub model: Option<String>,
    /// Training data (JSONL, chat or prompt/completion form).
    pub data: PathBuf,
    /// Held-out data for the eval loss; when absent, `holdout` of `data` is held out.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    #[serde(default)]
    pub lora: LoraSettings,
    #[serde(default)]
    pub optimizer: OptimizerSettings,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    /// Longest sequence, in tokens; longer examples are an error.
    #[serde(default = "default_seq")]
    pub max_seq_len: usize,
    /// Pack several examples into each row instead of padding one per row.
    #[serde(default)]
    pub packing: bool,
    #[serde(default)]
    pub seed: u64,
    /// Held-out loss every this many steps (0: only at the end).
    #[serde(default = "default_every")]
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: only at the end).
    #[serde(default = "default_every")]
    pub checkpoint_every: usize,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// QLoRA: keep the base model's projections quantized as its GGUF file has them (forward
    /// through the quantized matmul, backward through one dequantized weight at a time).
    /// Needs a quantized GGUF base.
    #[serde(default)]
    pub qlora: bool,
    /// Gradient checkpointing: keep only each block's input through the forward and rebuild
    /// one block's graph at a time in the backward (about a third more compute; activation
    /// memory of one block instead of all of them).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Output directory (adapter, checkpoints, log). For `flotilla train`, `--out` overrides.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Checkpoints kept (the newest), on disk for one worker and in the coordinator's artifact
    /// store for a distributed run.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Train across workers (in a sweep); absent: one worker.
    #[serde(default)]
    pub distributed: Option<Distributed>,
}

fn default_keep() -> usize {
    3
}

fn default_holdout() -> f64 {
    0.1
}
fn default_batch() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_seq() -> usize {
    512
}
fn default_every() -> usize {
    10
}
fn default_precision() -> Precision {
    Precision::Auto
}

impl TrainConfig {
    /// Read a YAML (or JSON) file; relative paths in it are taken relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: TrainConfig = serde_yaml_ng::from_str(&text)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The config file as a sweep's `train:` block: its keys as written (paths still relative
    /// to the file), less `model` and `out`, which a sweep sets. The file is validated first.
    pub fn sweep_block(path: &Path) -> Result<serde_json::Value> {
        Self::from_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut v: serde_json::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        if let Some(m) = v.as_object_mut() {
            m.remove("model");
            m.remove("out");
        }
        Ok(v)
    }

    /// From a JSON value (a sweep's `train:` block); `source` names it in errors, `base_dir`
    /// resolves relative paths.
    pub fn from_json_value(
        value: &serde_json::Value,
        source: &Path,
        base_dir: &Path,
    ) -> Result<Self> {
        let mut cfg: TrainConfig = serde_json::from_value(value.clone())
            .map_err(|e| Error::input(format!("{}: train: {e}", source.display())))?;
        cfg.resolve_paths(base_dir);
        cfg.validate(source)?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data);
        if let Some(p) = self.eval_data.as_mut() {
            fix(p);
        }
        if let Some(p) = self.out.as_mut() {
            fix(p);
        }
    }

    /// Check every field that can be checked without loading the model; `source` names the
    /// file in errors.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let bad = |field: &str, why: String| {
            Err(Error::input(format!(
                "{}: {field}: {why}",
                source.display()
            )))
        };
        if self.lora.rank == 0 {
            return bad("lora.rank", "must be at least 1".into());
        }
        if !(self.lora.alpha > 0.0) {
            return bad(
                "lora.alpha",
                format!("must be positive, got {}", self.lora.alpha),
            );
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad(
                "lora.dropout",
                format!("must be in [0, 1), got {}", self.lora.dropout),
            );
        }
        if self.lora.target_modules.is_empty() {
            return bad("lora.target_modules", "is empty".into());
        }
        if let Err(e) = self.lora.modules() {
            return Err(Error::input(format!("{}: {e}", source.display())));
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0) || !o.lr.is_finite() {
            return bad("optimizer.lr", format!("must be positive, got {}", o.lr));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return bad("optimizer.beta1/beta2", "must be in [0, 1)".into());
        }
        if o.weight_decay < 0.0 || o.max_grad_norm < 0.0 || !(o.eps > 0.0) {
            return bad(
                "optimizer",
                "weight_decay and max_grad_norm must be >= 0 and eps > 0".into(),
            );
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len", "must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return bad(
                "holdout",
                format!("must be in [0, 1), got {}", self.holdout),
            );
        }
        if !self.data.is_file() {
            return bad(
                "data",
                format!("{} does not exist or is not a file", self.data.display()),
            );
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must be at least 1".into());
        }
        if let Some(d) = &self.distributed {
            d.validate(&|field: &str, why: String| {
                Error::input(format!("{}: {field}: {why}", source.display()))
            })?;
        }
        if let Some(p) = &self.eval_data {
            if !p.is_file() {
                return bad(
                    "eval_data",
                    format!("{} does not exist or is not a file", p.display()),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flotilla-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn defaults_follow_peft_and_pytorch() {
        let d = tmp("defaults");
        write(&d, "train.jsonl", "{}\n");
        let p = write(&d, "t.yaml", "data: train.jsonl\nsteps: 3\n");
        let c = TrainConfig::from_file(&p).unwrap();
        assert_eq!(c.data, d.join("train.jsonl"));
        assert_eq!(c.lora.rank, 8);
        assert_eq!(c.lora.modules().unwrap().len(), 7);
        assert_eq!(c.lora.scaling(), 2.0);
        assert_eq!(c.optimizer.beta2, 0.999);
    }

    #[test]
    fn bad_fields_are_named() {
        let d = tmp("bad");
        write(&d, "train.jsonl", "{}\n");
        for (yaml, needle) in [
            (
                "data: train.jsonl\nsteps: 3\nlora: {rank: 0}\n",
                "lora.rank",
            ),
            (
                "data: train.jsonl\nsteps: 3\nlora: {target_modules: [q_proj, qkv]}\n",
                "unknown module `qkv`",
            ),
            ("data: missing.jsonl\nsteps: 3\n", "data:"),
            ("data: train.jsonl\nsteps: 0\n", "steps"),
            (
                "data: train.jsonl\nsteps: 3\nbatchsize: 2\n",
                "unknown field `batchsize`",
            ),
        ] {
            let p = write(&d, "t.yaml", yaml);
            let e = TrainConfig::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{yaml:?} -> {e}");
            assert!(e.contains("t.yaml"), "{e}");
        }
    }
}
