//! `flotilla bench train`: the time of one LoRA training step (forward, backward, AdamW) on a
//! fixed batch of seeded random tokens, every position a target: the same work as
//! `peft_step_bench.py --data random` does in PyTorch, so the two compare in one run
//! (`scripts/bench/vs-peft.sh`).

use crate::output::{bar, print_json, OutputFormat};
use anyhow::Context;
use candle_core::{Tensor, Var};
use flotilla_engine::device;
use flotilla_train::config::Precision;
use flotilla_train::data::Batch;
use flotilla_train::model::TrainModel;
use flotilla_train::optim::AdamW;
use flotilla_train::trainer::training_dtype;
use flotilla_train::weights::BaseWeights;
use flotilla_train::LoraSettings;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the frozen weights and activations: f32, bf16, or auto (bf16 on a CUDA
    /// GPU with bf16, f32 elsewhere). LoRA weights and optimizer state are f32 always.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// QLoRA: keep the GGUF model's projections quantized.
    #[arg(long)]
    pub qlora: bool,
    /// Gradient checkpointing (one block's graph at a time in the backward).
    #[arg(long)]
    pub checkpoint: bool,
    /// Estimate the peak memory from tensor sizes instead of running: a shape
    /// (smollm2-135m, llama-3.2-3b, qwen2.5-7b) or a model (GGUF file, HF folder, alias).
    /// Uses --batch, --seq, --rank, --precision, --qlora (with --weight-bits), --checkpoint and
    /// --device (attention keeps its probabilities off the CPU).
    #[arg(long, value_name = "SHAPE_OR_MODEL")]
    pub estimate: Option<String>,
    /// Bits per frozen projection weight for --estimate --qlora (Q4_0 / Q4_K: 4.5, Q8_0: 8.5).
    #[arg(long, default_value_t = 4.5)]
    pub weight_bits: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// `--estimate`: the memory a run would need, by part.
fn run_estimate(a: &TrainArgs, spec: &str, out: OutputFormat) -> anyhow::Result<()> {
    use flotilla_train::memory::{estimate, known_shape, AttentionKeeps, MemoryOptions};
    let config = match known_shape(spec) {
        Some(c) => c,
        None => flotilla_engine::loader::model_config(spec)
            .with_context(|| format!("--estimate {spec}: not a known shape nor a model"))?,
    };
    // The device is only described (an estimate for a GPU runs anywhere): attention keeps its
    // probabilities off the CPU, and auto precision is bf16 on CUDA.
    let on_cpu = a.device == "cpu";
    let dtype = match a.precision {
        Precision::F32 => candle_core::DType::F32,
        Precision::Bf16 => candle_core::DType::BF16,
        _ if a.device.starts_with("cuda") => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    let act_bytes = dtype.size_in_bytes();
    let opts = MemoryOptions {
        batch: a.batch,
        seq: a.seq,
        rank: a.rank,
        all_projections: true,
        weight_bits: if a.qlora {
            a.weight_bits
        } else {
            8.0 * act_bytes as f64
        },
        act_bytes,
        checkpoint: a.checkpoint,
        attention: if on_cpu {
            AttentionKeeps::Inputs
        } else {
            AttentionKeeps::Probabilities
        },
    };
    let e = estimate(&config, &opts);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "shape": spec, "options": opts, "estimate": e,
            "total_gib": gib(e.total),
        })),
        OutputFormat::Text => {
            println!(
                "{spec}: batch {} x {}, r = {} on all projections, {}{}{}, attention keeps {:?}",
                a.batch,
                a.seq,
                a.rank,
                format!("{dtype:?}").to_lowercase(),
                if a.qlora {
                    format!(", QLoRA at {} bits", a.weight_bits)
                } else {
                    String::new()
                },
                if a.checkpoint { ", checkpointing" } else { "" },
                opts.attention,
            );
            for (k, v) in [
                ("frozen projections", e.frozen_projections),
                ("embeddings, lm_head", e.embeddings),
                ("LoRA + AdamW", e.lora_and_optimizer),
                ("activations", e.activations),
                ("backward transient", e.transient),
                ("total", e.total),
            ] {
                println!("  {k:20} {:8.2} GiB", gib(v));
            }
            Ok(())
        }
    }
}

pub fn run(a: TrainArgs, out: OutputFormat, threads: usize) -> anyhow::Result<()> {
    if let Some(spec) = a.estimate.clone() {
        return run_estimate(&a, &spec, out);
    }
    anyhow::ensure!(a.steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(a.seq >= 2, "--seq must be at least 2");
    let device = device::parse_device(&a.device)?;
    let t0 = Instant::now();
    let base = if a.qlora {
        BaseWeights::load_quantized(&a.model, &device)
    } else {
        BaseWeights::load(&a.model, &device)
    }
    .with_context(|| format!("--model {}", a.model))?;
    let vocab = base.config.vocab_size;
    anyhow::ensure!(
        a.seq <= base.config.max_position_embeddings,
        "--seq {} is longer than the model's context ({})",
        a.seq,
        base.config.max_position_embeddings
    );
    let lora = LoraSettings {
        rank: a.rank,
        alpha: a.alpha,
        ..Default::default()
    };
    let dtype = training_dtype(a.precision, &device);
    let model = TrainModel::with_dtype(base, &lora, a.seed, dtype)?;
    let frozen_bytes = model.frozen_bytes();
    let load_s = t0.elapsed().as_secs_f64();
    let vars: Vec<Var> = model.vars().into_iter().map(|(_, v)| v).collect();
    let trainable: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(&vars, &Default::default())?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let (b, t) = (a.batch, a.seq);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let mut targets = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    for r in 0..b {
        for i in 0..t - 1 {
            targets[r * t + i] = ids[r * t + i + 1];
            mask[r * t + i] = 1.0;
        }
    }
    let batch = Batch {
        rows: b,
        seq_len: t,
        input_ids: ids,
        targets,
        loss_mask: mask,
        positions: (0..b).flat_map(|_| 0..t as u32).collect(),
        segments: vec![0; b * t],
        target_tokens: b * (t - 1),
    };
    let n = batch.target_tokens as f64;

    let step = |opt: &mut AdamW| -> anyhow::Result<(f64, f64, f64, f64)> {
        // Forward and backward timed apart, except with checkpointing, whose backward runs
        // the forward again block by block (all of it is counted as backward then).
        let t_a = Instant::now();
        let pick = |get: &dyn Fn(&Tensor) -> Option<Tensor>| -> anyhow::Result<Vec<Tensor>> {
            vars.iter()
                .map(|v| get(v.as_tensor()).context("missing gradient"))
                .collect()
        };
        let (g, sum, t_b) = if a.checkpoint {
            let t_b = Instant::now();
            let (grads, sum) = model.backward(&batch, n, None, true)?;
            (pick(&|t| grads.get(t).cloned())?, sum, t_b)
        } else {
            let (loss, sum) = model.loss(&batch, n, None)?;
            let t_b = Instant::now();
            let grads = loss.backward()?;
            (pick(&|t| grads.get(t).cloned())?, sum, t_b)
        };
        let t_c = Instant::now();
        opt.step(&vars, &g, 1e-4)?;
        let t_d = Instant::now();
        Ok((
            sum / n,
            (t_b - t_a).as_secs_f64() * 1e3,
            (t_c - t_b).as_secs_f64() * 1e3,
            (t_d - t_c).as_secs_f64() * 1e3,
        ))
    };
    let pb = bar((a.warmup + a.steps) as u64, "bench train");
    let rows = device::in_engine_pool(|| -> anyhow::Result<Vec<(f64, f64, f64, f64, f64)>> {
        let mut rows = Vec::new();
        for i in 0..a.warmup + a.steps {
            let t = Instant::now();
            let (loss, f, bw, o) = step(&mut opt)?;
            let total = t.elapsed().as_secs_f64() * 1e3;
            if i >= a.warmup {
                rows.push((loss, f, bw, o, total));
            }
            pb.set_message(format!("loss {loss:.3} {total:.0} ms"));
            pb.inc(1);
        }
        Ok(rows)
    })?;
    pb.finish_and_clear();
    let med = median(rows.iter().map(|r| r.4).collect());
    let tokens = b * t;
    let report = serde_json::json!({
        "engine": "flotilla",
        "model": a.model,
        "threads": threads,
        "batch": b,
        "seq": t,
        "lora": {"r": a.rank, "alpha": a.alpha, "dropout": 0.0, "modules": 7},
        "trainable_params": trainable,
        "precision": format!("{dtype:?}").to_lowercase(),
        "qlora": a.qlora,
        "gradient_checkpointing": a.checkpoint,
        "frozen_weight_mib": frozen_bytes as f64 / (1024.0 * 1024.0),
        "load_s": load_s,
        "median_ms": med,
        "median_fwd_ms": median(rows.iter().map(|r| r.1).collect()),
        "median_bwd_ms": median(rows.iter().map(|r| r.2).collect()),
        "median_opt_ms": median(rows.iter().map(|r| r.3).collect()),
        "tokens_per_s": tokens as f64 / (med / 1e3),
        "losses": rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        "peak_rss_mib": crate::bench::peak_rss_mib(),
    });
    match out {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for (k, v) in report.as_object().into_iter().flatten() {
                println!("{k:20} {v}");
            }
        }
    }
    Ok(())
}
