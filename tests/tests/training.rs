//! LoRA training, checked where it can silently go wrong: the training forward must compute
//! what the inference forward computes, autograd must agree with finite differences, every
//! LoRA tensor must receive a gradient on the real model, an adapter must give the same
//! logits unmerged (on GGUF, whose q/k rows are permuted) and merged, and a resumed run must
//! reach the adapter of a straight one.

use candle_core::{Device, Tensor};
use flotilla_tests::tiny::write_tiny_gguf;
use flotilla_tests::{inference_logits, load_model, max_abs, smollm2_path, temp_dir};
use flotilla_train::data::Batch;
use flotilla_train::model::TrainModel;
use flotilla_train::weights::BaseWeights;
use flotilla_train::{
    apply_adapter, merge_to_hf_dir, LoraSettings, TrainConfig, TrainEvent, Trainer,
};
use std::path::{Path, PathBuf};

/// One row holding `ids`, every next token a target.
fn batch_of(ids: &[u32]) -> Batch {
    let t = ids.len();
    let mut targets: Vec<u32> = ids[1..].to_vec();
    targets.push(0);
    let mut mask = vec![1f32; t];
    mask[t - 1] = 0.0;
    Batch {
        rows: 1,
        seq_len: t,
        input_ids: ids.to_vec(),
        targets,
        loss_mask: mask,
        positions: (0..t as u32).collect(),
        segments: vec![0; t],
        target_tokens: t - 1,
    }
}

/// Give every B a small random value, so gradients reach every A too.
fn randomize_b(model: &TrainModel, scale: f64) {
    for (name, var) in model.vars() {
        if name.contains("lora_B") {
            let r =
                (Tensor::randn(0f32, 1f32, var.shape(), &Device::Cpu).unwrap() * scale).unwrap();
            var.set(&r).unwrap();
        }
    }
}

fn tiny_model(arch: &str, lora: &LoraSettings) -> (flotilla_tests::TempDir, PathBuf, TrainModel) {
    let dir = temp_dir(&format!("train-tiny-{arch}"));
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(arch, &gguf);
    let base = BaseWeights::load(gguf.to_str().unwrap(), &Device::Cpu).unwrap();
    let model = TrainModel::new(base, lora, 7).unwrap();
    (dir, gguf, model)
}

const TEXT: &str = "Rhinos eat grass and leaves in the savanna at dawn, then rest.";

#[test]
fn training_forward_computes_the_inference_logits_on_tiny_llama_and_qwen2() {
    for arch in ["llama", "qwen2"] {
        let (_dir, gguf, model) = tiny_model(arch, &LoraSettings::default());
        let lm = load_model(&gguf);
        let ids = lm.tokenizer.encode(TEXT, false).unwrap();
        let b = batch_of(&ids);
        // Fresh adapters have B = 0: the training model is exactly the base model.
        let ours = model.logits(&model.hidden(&b, None).unwrap()).unwrap();
        let reference = inference_logits(&lm, &ids);
        let diff = max_abs(&(ours - &reference).unwrap());
        let scale = max_abs(&reference);
        assert!(
            diff < 1e-4 * scale.max(1.0),
            "{arch}: logits differ by {diff}"
        );
    }
}

#[test]
fn finite_differences_agree_with_autograd() {
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let (_dir, gguf, model) = tiny_model("llama", &lora);
    randomize_b(&model, 0.05);
    let lm = load_model(&gguf);
    let ids = lm.tokenizer.encode(TEXT, false).unwrap();
    let b = batch_of(&ids);
    let n = b.target_tokens as f64;
    let loss_of = |m: &TrainModel| m.loss(&b, n, None).unwrap().1 / n;
    let (loss, _) = model.loss(&b, n, None).unwrap();
    let grads = loss.backward().unwrap();
    let vars = model.vars();
    assert_eq!(vars.len(), 2 * 2 * 7, "2 layers x 7 modules x (A, B)");
    let mut checked = 0;
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .expect("gradient recorded")
            .flatten_all()
            .unwrap();
        let gv: Vec<f32> = g.to_vec1().unwrap();
        // The entry with the largest gradient: its finite difference is well above f32 noise.
        let (idx, &g_auto) = gv
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        assert!(g_auto != 0.0, "{name}: zero gradient");
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        let shifted = |delta: f32| {
            let mut v = orig.clone();
            v[idx] += delta;
            Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()
        };
        var.set(&shifted(h)).unwrap();
        let up = loss_of(&model);
        var.set(&shifted(-h)).unwrap();
        let down = loss_of(&model);
        var.set(&Tensor::from_vec(orig, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let fd = (up - down) / (2.0 * h as f64);
        let rel = (fd - g_auto as f64).abs() / (g_auto as f64).abs().max(1e-6);
        assert!(
            rel < 0.03,
            "{name}[{idx}]: autograd {g_auto} vs finite difference {fd} (rel {rel:.4})"
        );
        checked += 1;
    }
    assert_eq!(checked, vars.len());
}

/// A few short chat records for the real model.
fn write_chat_data(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("train.jsonl");
    let mut lines = String::new();
    for i in 0..n {
        let v = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {i} plus {i}? Answer in words.")},
            {"role": "assistant", "content": format!("The answer is {}.", i + i)},
        ]});
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    std::fs::write(&p, lines).unwrap();
    p
}

fn smollm2_config(dir: &Path, yaml_extra: &str) -> TrainConfig {
    write_chat_data(dir, 8);
    let p = dir.join("train.yaml");
    std::fs::write(
        &p,
        format!(
            "data: train.jsonl\nsteps: 4\nbatch_size: 2\nmax_seq_len: 96\nholdout: 0.25\n\
             eval_every: 0\ncheckpoint_every: 2\noptimizer: {{lr: 0.001, warmup_steps: 1}}\n{yaml_extra}"
        ),
    )
    .unwrap();
    TrainConfig::from_file(&p).unwrap()
}

#[test]
fn every_lora_tensor_of_smollm2_receives_a_nonzero_gradient() {
    let dir = temp_dir("train-grads");
    let cfg = smollm2_config(dir.path(), "");
    let mut t = Trainer::new(&cfg, smollm2_path().to_str().unwrap(), &Device::Cpu).unwrap();
    // Warmup makes the first step's learning rate 0; after the second every B is non-zero,
    // so every A has a gradient path too.
    for _ in 0..2 {
        let r = t.train_step().unwrap();
        assert!(r.loss.is_finite() && r.loss > 0.0);
    }
    let batch = t.loader.next_batch();
    let (grads, _) = t.gradients(&[batch], 2).unwrap();
    assert_eq!(
        grads.len(),
        30 * 7 * 2,
        "SmolLM2: 30 layers x 7 projections x (A, B)"
    );
    for ((name, _), g) in t.model.vars().iter().zip(&grads) {
        assert!(max_abs(g) > 0.0, "{name} received a zero gradient");
        assert!(max_abs(g).is_finite(), "{name} gradient is not finite");
    }
}

#[test]
fn an_adapter_gives_the_same_logits_unmerged_on_gguf_and_merged_into_a_directory() {
    let lora = LoraSettings::default();
    for arch in ["llama", "qwen2"] {
        let (dir, gguf, model) = tiny_model(arch, &lora);
        randomize_b(&model, 0.2);
        let adapter = model.adapter("tiny").unwrap();
        let adir = dir.path().join("adapter");
        adapter.save(&adir).unwrap();
        let reloaded = flotilla_train::LoraAdapter::load(&adir).unwrap();

        let lm = load_model(&gguf);
        let ids = lm.tokenizer.encode(TEXT, false).unwrap();
        let unmerged = inference_logits(&apply_adapter(&lm, &reloaded).unwrap(), &ids);
        let merged_dir = dir.path().join("merged");
        merge_to_hf_dir(gguf.to_str().unwrap(), &reloaded, &merged_dir).unwrap();
        let merged = inference_logits(&load_model(&merged_dir), &ids);
        let training = model
            .logits(&model.hidden(&batch_of(&ids), None).unwrap())
            .unwrap();
        let base = inference_logits(&lm, &ids);

        let scale = max_abs(&merged).max(1.0);
        let d_um = max_abs(&(&unmerged - &merged).unwrap());
        let d_tm = max_abs(&(&training - &merged).unwrap());
        let d_base = max_abs(&(&base - &merged).unwrap());
        assert!(
            d_um < 1e-4 * scale,
            "{arch}: unmerged vs merged differ by {d_um}"
        );
        assert!(
            d_tm < 1e-4 * scale,
            "{arch}: training vs merged differ by {d_tm}"
        );
        assert!(
            d_base > 1e-2 * scale,
            "{arch}: the adapter changed nothing ({d_base})"
        );
    }
}

#[test]
fn a_resumed_run_reaches_the_adapter_of_a_straight_run() {
    let spec = smollm2_path();
    let spec = spec.to_str().unwrap();
    let straight = temp_dir("train-straight");
    let cfg = smollm2_config(straight.path(), "lora: {rank: 4, dropout: 0.1}\n");
    let out_a = straight.path().join("out");
    let a = flotilla_train::train(&cfg, spec, &out_a, false, &Device::Cpu, &mut |_| true).unwrap();
    assert_eq!(a.steps, 4);

    // The same run stopped right after its step-2 checkpoint (as a kill would), then resumed.
    let out_b = straight.path().join("out-b");
    let stopped = flotilla_train::train(&cfg, spec, &out_b, false, &Device::Cpu, &mut |e| {
        !matches!(e, TrainEvent::Checkpoint { step: 2, .. })
    });
    assert!(stopped.unwrap_err().to_string().contains("stopped"));
    let b = flotilla_train::train(&cfg, spec, &out_b, true, &Device::Cpu, &mut |_| true).unwrap();
    assert_eq!(b.resumed_from, Some(2));

    let ta = candle_core::safetensors::load(
        out_a.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tb = candle_core::safetensors::load(
        out_b.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ta.len(), tb.len());
    for (k, va) in &ta {
        let vb = &tb[k];
        let d = max_abs(&(va - vb).unwrap());
        assert!(d < 1e-5, "{k}: resumed differs by {d}");
    }
    let moved = ta
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .any(|(_, v)| max_abs(v) > 0.0);
    assert!(moved, "training did not move the adapter");
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_and_dropout_masks() {
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.2,
        ..Default::default()
    };
    for arch in ["llama", "qwen2"] {
        let (_dir, gguf, model) = tiny_model(arch, &lora);
        randomize_b(&model, 0.05);
        let lm = load_model(&gguf);
        let b = batch_of(&lm.tokenizer.encode(TEXT, false).unwrap());
        let n = b.target_tokens as f64;
        let (full, l_full) = model.backward(&b, n, Some(9), false).unwrap();
        let (ckpt, l_ckpt) = model.backward(&b, n, Some(9), true).unwrap();
        assert!(
            (l_full - l_ckpt).abs() < 1e-9 * l_full.abs(),
            "{l_full} vs {l_ckpt}"
        );
        // Another dropout seed gives other gradients: the masks are in play.
        let (other, _) = model.backward(&b, n, Some(10), true).unwrap();
        let mut moved = 0f32;
        for (name, var) in model.vars() {
            let a = full.get(var.as_tensor()).expect("gradient");
            let c = ckpt.get(var.as_tensor()).expect("checkpointed gradient");
            let scale = max_abs(a).max(1e-12);
            let d = max_abs(&(a - c).unwrap());
            assert!(
                d <= 1e-5 * scale,
                "{arch} {name}: differs by {d} (scale {scale})"
            );
            let o = other.get(var.as_tensor()).expect("gradient");
            moved = moved.max(max_abs(&(a - o).unwrap()) / scale);
        }
        assert!(moved > 1e-3, "{arch}: dropout seed changed nothing");
    }
}
