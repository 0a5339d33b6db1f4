//! Tiny random llama, qwen2, qwen3 and gemma3 models written as GGUF (with SmolLM2's real
//! tokenizer), then converted to Hugging Face directories: both loaders must compute the same
//! logits. This pins the two RoPE layouts (llama GGUF rows are permuted for interleaved
//! rotation, the others' are not), qwen2's q/k/v biases, the q/k norms and wide heads of qwen3
//! and gemma3, Gemma's `1 + w` norms (stored shifted in GGUF, not in Hugging Face weights) and
//! its sliding window, and the hub-cache lookup of `hf:` ids.

use candle_core::{DType, Device, Tensor};
use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::{LanguageModel, LoadOptions};
use flotilla_tests::tiny::{write_tiny_gguf, write_tiny_gguf_with, LAYERS, WINDOW};
use flotilla_tests::{inference_logits, load_model, max_abs, temp_dir};

fn check_arch(arch: &str) {
    let dir = temp_dir(&format!("tiny-{arch}"));
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(arch, &gguf);
    let hf_dir = dir.path().join("hf");
    gguf_to_hf(&gguf, &hf_dir, OutDType::F32).unwrap();
    let a = load_model(&gguf);
    let b = load_model(&hf_dir);
    assert_eq!(a.info.architecture, arch);
    assert_eq!(b.info.architecture, arch);
    assert_eq!(a.model.config().attention_bias, arch == "qwen2");
    assert_eq!(b.model.config().attention_bias, arch == "qwen2");
    let ids = a
        .tokenizer
        .encode("Rhinos eat grass and leaves in the savanna at dawn.", false)
        .unwrap();
    let (la, lb) = (inference_logits(&a, &ids), inference_logits(&b, &ids));
    let diff = max_abs(&(la - &lb).unwrap());
    let scale = max_abs(&lb);
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "{arch}: GGUF and HF logits differ by {diff} (scale {scale})"
    );
    // Later positions depend on RoPE: a wrong layout would show up as a large difference.
    assert!(ids.len() >= 8);
}

#[test]
fn tiny_llama_gguf_and_hf_directory_compute_the_same_logits() {
    check_arch("llama");
}

#[test]
fn tiny_qwen2_gguf_and_hf_directory_compute_the_same_logits() {
    check_arch("qwen2");
}

#[test]
fn tiny_qwen3_gguf_and_hf_directory_compute_the_same_logits() {
    check_arch("qwen3");
}

#[test]
fn tiny_gemma3_gguf_and_hf_directory_compute_the_same_logits() {
    check_arch("gemma3");
}

#[test]
fn hub_ids_resolve_from_the_local_hugging_face_cache_only() {
    let home = temp_dir("hf-home");
    let repo = home.path().join("hub").join("models--tiny-org--tiny-llama");
    let snap = repo
        .join("snapshots")
        .join("0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(
        repo.join("refs").join("main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    let gguf = home.path().join("tiny.gguf");
    write_tiny_gguf("llama", &gguf);
    gguf_to_hf(&gguf, &snap, OutDType::BF16).unwrap();

    std::env::set_var("HF_HOME", home.path());
    let lm = LanguageModel::load("hf:tiny-org/tiny-llama", &LoadOptions::default()).unwrap();
    assert_eq!(lm.info.path, snap);
    assert_eq!(
        lm.info.weight_dtypes.get("BF16").copied(),
        Some(2 + 1 + LAYERS * 9)
    );
    assert_eq!(
        lm.model.dtype(),
        DType::F32,
        "bf16 weights run in f32 on CPU"
    );
    let by_hash = LanguageModel::load(
        "hf:tiny-org/tiny-llama@0123456789abcdef0123456789abcdef01234567",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(by_hash.info.path, snap);
    let err = LanguageModel::load("hf:tiny-org/not-cached", &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not in the Hugging Face cache")
            && msg.contains("huggingface-cli download tiny-org/not-cached"),
        "{msg}"
    );
    let err = LanguageModel::load("hf:no-slash", &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("hf:<org>/<name>"), "{err}");
}

#[test]
fn sharded_safetensors_directories_load_like_single_files() {
    let dir = temp_dir("sharded");
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf("qwen2", &gguf);
    let single = dir.path().join("single");
    gguf_to_hf(&gguf, &single, OutDType::F32).unwrap();
    // Split model.safetensors into two shards plus the index transformers writes.
    let sharded = dir.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(single.join(f), sharded.join(f)).unwrap();
    }
    let all =
        candle_core::safetensors::load(single.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.join(&file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let (a, b) = (load_model(&single), load_model(&sharded));
    let ids = a.tokenizer.encode("Two shards, one model.", false).unwrap();
    let diff = max_abs(&(inference_logits(&a, &ids) - inference_logits(&b, &ids)).unwrap());
    assert_eq!(diff, 0.0);
    // A shard named in the index but missing is named in the error.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = LanguageModel::load(sharded.to_str().unwrap(), &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

/// The error of loading `path`, as the user reads it.
fn load_error(path: &std::path::Path) -> String {
    match LanguageModel::load(path.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_unknown_architecture_or_tokenizer_is_refused_by_name_before_loading() {
    let dir = temp_dir("tiny-refused");
    let arch = dir.path().join("phi3.gguf");
    write_tiny_gguf("phi3", &arch);
    let e = load_error(&arch);
    assert!(
        e.contains("general.architecture = `phi3`") && e.contains("llama, qwen2, qwen3 and gemma3"),
        "{e}"
    );

    let tok = dir.path().join("bert-vocab.gguf");
    write_tiny_gguf_with("llama", &tok, |md| {
        for (k, v) in md.iter_mut() {
            if k == "tokenizer.ggml.model" {
                *v = candle_core::quantized::gguf_file::Value::String("bert".into());
            }
        }
    });
    let e = load_error(&tok);
    assert!(
        e.contains("tokenizer.ggml.model = `bert`")
            && e.contains("`gpt2`")
            && e.contains("`llama`"),
        "{e}"
    );
}

/// Last-position logits of `steps` fed one after the other (a prompt, then decode tokens) to a
/// one-sequence cache.
fn one_by_one(model: &flotilla_engine::models::Model, steps: &[Vec<u32>]) -> Vec<Tensor> {
    let mut cache = model.new_cache(vec![0]);
    steps
        .iter()
        .map(|ids| {
            let x = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model
                .forward(&x, &mut cache, false)
                .unwrap()
                .squeeze(0)
                .unwrap()
        })
        .collect()
}

#[test]
fn tiny_gemma3_left_padded_batch_matches_one_by_one_past_the_sliding_window() {
    let dir = temp_dir("tiny-gemma3-batch");
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf("gemma3", &gguf);
    let lm = load_model(&gguf);
    let mut model = (*lm.model).clone();
    model.set_f16_attention(false);
    let tok = |s: &str| lm.tokenizer.encode(s, false).unwrap();
    let long = tok("Rhinos eat grass and leaves in the savanna at dawn.");
    let short = tok("Zebras drink at noon, then rest.");
    assert!(short.len() > WINDOW && long.len() > short.len());
    let pad = long.len() - short.len();

    let mut rows = vec![0u32; pad];
    rows.extend(&short);
    rows.extend(&long);
    let x = Tensor::from_vec(rows, (2, long.len()), &Device::Cpu).unwrap();
    let mut cache = model.new_cache(vec![pad, 0]);
    let prefill = model.forward(&x, &mut cache, false).unwrap();
    let step = Tensor::new(&[[42u32], [42u32]], &Device::Cpu).unwrap();
    let decode = model.forward(&step, &mut cache, false).unwrap();

    for (row, ids) in [short, long].into_iter().enumerate() {
        let single = one_by_one(&model, &[ids, vec![42]]);
        for (batched, alone) in [&prefill, &decode].into_iter().zip(&single) {
            let b = batched.get(row).unwrap();
            let diff = max_abs(&(&b - alone).unwrap());
            assert!(
                diff < 1e-4 * max_abs(alone).max(1.0),
                "sequence {row}: batched and alone differ by {diff}"
            );
        }
    }
}
