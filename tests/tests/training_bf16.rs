//! Mixed-precision LoRA training (`precision: bf16`) on the real SmolLM2: the frozen weights
//! are bf16 and half the memory, the adapters and optimizer stay f32, the loss is the f32
//! run's within bf16's rounding, every LoRA tensor gets a gradient, and the loss falls.

use candle_core::{DType, Device};
use flotilla_tests::{max_abs, nine_step_config, smollm2_path, temp_dir};
use flotilla_train::config::Precision;
use flotilla_train::trainer::training_dtype;
use flotilla_train::{TrainConfig, Trainer};
use std::path::Path;

fn config(dir: &Path, precision: &str) -> TrainConfig {
    let pairs: Vec<(String, String)> = (0..8)
        .map(|i| {
            (
                format!("What is {i} plus {i}? Answer in words."),
                format!("The answer is {}.", i + i),
            )
        })
        .collect();
    nine_step_config(
        dir,
        &format!("train-{precision}"),
        &pairs,
        &format!("precision: {precision}"),
    )
}

#[test]
fn auto_is_f32_on_the_cpu_and_bf16_is_bf16() {
    assert_eq!(training_dtype(Precision::Auto, &Device::Cpu), DType::F32);
    assert_eq!(training_dtype(Precision::F32, &Device::Cpu), DType::F32);
    assert_eq!(training_dtype(Precision::Bf16, &Device::Cpu), DType::BF16);
}

#[test]
fn bf16_training_matches_f32_and_learns() {
    let spec = smollm2_path();
    let spec = spec.to_str().unwrap();
    let dir = temp_dir("train-bf16");
    let mut half = Trainer::new(&config(dir.path(), "bf16"), spec, &Device::Cpu).unwrap();
    let full = Trainer::new(&config(dir.path(), "f32"), spec, &Device::Cpu).unwrap();
    assert_eq!(half.model.dtype, DType::BF16);
    assert_eq!(full.model.dtype, DType::F32);
    for (name, var) in half.model.vars() {
        assert_eq!(var.dtype(), DType::F32, "{name}: adapters stay f32");
    }
    assert_eq!(half.model.vars().len(), full.model.vars().len());

    // The same adapters (same seed) on the same batch: the loss of the bf16 model is the f32
    // model's within bf16's rounding (8 bits of mantissa through 30 layers).
    let batch = half.loader.clone().next_batch();
    let n = batch.target_tokens as f64;
    let (_, l_half) = half.model.loss(&batch, n, None).unwrap();
    let (_, l_full) = full.model.loss(&batch, n, None).unwrap();
    let (l_half, l_full) = (l_half / n, l_full / n);
    let rel = (l_half - l_full).abs() / l_full;
    assert!(
        rel < 0.02,
        "bf16 loss {l_half} vs f32 {l_full}: {rel:.4} apart"
    );
    assert!(
        l_half != l_full,
        "bf16 gave the f32 loss exactly: the weights were not bf16"
    );

    // Train: the first epoch's mean loss (3 batches of 2) vs the third's.
    let mut losses = Vec::new();
    for _ in 0..9 {
        let r = half.train_step().unwrap();
        assert!(r.loss.is_finite(), "step {}: loss {}", r.step, r.loss);
        losses.push(r.loss);
    }
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[6..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.8 * first, "bf16 loss did not fall: {losses:?}");

    // After training every B is non-zero, so every A and B has a gradient path.
    let batch = half.loader.next_batch();
    let (grads, _) = half.gradients(&[batch], 9).unwrap();
    for ((name, _), g) in half.model.vars().iter().zip(&grads) {
        assert_eq!(g.dtype(), DType::F32, "{name}: gradient dtype");
        let m = max_abs(g);
        assert!(m > 0.0 && m.is_finite(), "{name}: gradient {m}");
    }
}
