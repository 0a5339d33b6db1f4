//! QLoRA on the real SmolLM2 GGUF (Q4_1): the projections stay quantized, the loss is the
//! dense model's within the kernels' 8-bit activation rounding, the LoRA gradients point where
//! the dense model's do (which also proves llama's permuted q/k rows are put back in order),
//! every LoRA tensor learns, and the frozen weights take a third of the dense memory.

use candle_core::Device;
use flotilla_tests::{max_abs, nine_step_config, smollm2_path, temp_dir};
use flotilla_train::weights::BaseWeights;
use flotilla_train::{TrainConfig, Trainer};
use std::path::Path;

fn config(dir: &Path, qlora: bool) -> TrainConfig {
    let pairs: Vec<(String, String)> = (0..8)
        .map(|i| {
            (
                format!("Name the colour number {i} of the rainbow."),
                format!("Colour {i} is the one after {}.", i + 1),
            )
        })
        .collect();
    nine_step_config(
        dir,
        &format!("train-{qlora}"),
        &pairs,
        &format!("qlora: {qlora}"),
    )
}

fn cosine(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn qlora_matches_the_dense_model_and_learns_in_a_third_of_the_memory() {
    let spec = smollm2_path();
    let spec = spec.to_str().unwrap();
    let dir = temp_dir("train-qlora");
    let mut quant = Trainer::new(&config(dir.path(), true), spec, &Device::Cpu).unwrap();
    let mut dense = Trainer::new(&config(dir.path(), false), spec, &Device::Cpu).unwrap();
    let (qb, db) = (quant.model.frozen_bytes(), dense.model.frozen_bytes());
    assert!(
        (qb as f64) < 0.4 * db as f64,
        "QLoRA frozen weights {qb} bytes vs dense {db}"
    );

    // One step each with the same data: then B is non-zero and every tensor has a gradient.
    quant.train_step().unwrap();
    dense.train_step().unwrap();
    quant.train_step().unwrap();
    dense.train_step().unwrap();
    // The same adapters in both, so what differs is the base alone.
    for ((_, vq), (_, vd)) in quant.model.vars().iter().zip(dense.model.vars().iter()) {
        vd.set(vq.as_tensor()).unwrap();
    }
    let batch = quant.loader.clone().next_batch();
    let n = batch.target_tokens as f64;
    let (_, lq) = quant.model.loss(&batch, n, None).unwrap();
    let (_, ld) = dense.model.loss(&batch, n, None).unwrap();
    let rel = (lq - ld).abs() / ld;
    assert!(rel < 0.03, "QLoRA loss {} vs dense {}", lq / n, ld / n);
    assert!(lq != ld, "identical losses: the base was not quantized");

    let (gq, _) = quant.gradients(&[batch.clone()], 2).unwrap();
    let (gd, _) = dense.gradients(&[batch], 2).unwrap();
    let mut worst = (1f32, String::new());
    let mut all = Vec::new();
    for (((name, _), a), b) in quant.model.vars().iter().zip(&gq).zip(&gd) {
        let m = max_abs(a);
        assert!(m > 0.0 && m.is_finite(), "{name}: gradient {m}");
        let c = cosine(a, b);
        all.push(c);
        if c < worst.0 {
            worst = (c, name.clone());
        }
    }
    all.sort_by(f32::total_cmp);
    eprintln!(
        "gradient cosine QLoRA vs dense: min {} median {} ({} tensors); loss {} vs {}",
        all[0],
        all[all.len() / 2],
        all.len(),
        lq / n,
        ld / n
    );
    assert!(
        all[all.len() / 2] > 0.99,
        "median gradient cosine {}",
        all[all.len() / 2]
    );
    assert!(
        worst.0 > 0.9,
        "QLoRA gradient of {} points elsewhere than the dense one: cosine {}",
        worst.1,
        worst.0
    );

    // And it learns.
    let mut losses = Vec::new();
    for _ in 0..7 {
        losses.push(quant.train_step().unwrap().loss);
    }
    let first = losses[..2].iter().sum::<f64>();
    let last = losses[5..].iter().sum::<f64>();
    assert!(last < 0.8 * first, "QLoRA loss did not fall: {losses:?}");
}

#[test]
fn qlora_on_a_safetensors_model_is_a_clear_error() {
    let dir = temp_dir("qlora-hf");
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = BaseWeights::load_quantized(dir.path().to_str().unwrap(), &Device::Cpu)
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("qlora") && msg.contains("GGUF"), "{msg}");
}
