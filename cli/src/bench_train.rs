//! `flotilla bench train`: the time of one LoRA training step (forward, backward, AdamW) on a
//! fixed batch of seeded random tokens, every position a target: the same work as
//! `peft_step_bench.py --data random` does in PyTorch, so the two compare in one run
//! (`scripts/bench/vs-peft.sh`).

use crate::output::{bar, print_json, OutputFormat};
use anyhow::Context;
use candle_core::Var;
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
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16"])]
    pub precision: String,
    /// QLoRA: keep the GGUF model's projections quantized.
    #[arg(long)]
    pub qlora: bool,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn run(a: TrainArgs, out: OutputFormat, threads: usize) -> anyhow::Result<()> {
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
    let precision = match a.precision.as_str() {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        _ => Precision::Auto,
    };
    let dtype = training_dtype(precision, &device);
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
        let t_a = Instant::now();
        let (loss, sum) = model.loss(&batch, n, None)?;
        let t_b = Instant::now();
        let grads = loss.backward()?;
        let g: Vec<_> = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .context("missing gradient")
            })
            .collect::<anyhow::Result<_>>()?;
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
