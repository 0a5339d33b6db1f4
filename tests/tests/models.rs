//! A user converts the GGUF demo model to a Hugging Face directory and loads it back; and
//! hands the loader broken files, which must give clear errors naming the file, not panics.

use candle_core::{Device, Tensor};
use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::device::Precision;
use flotilla_engine::models::llama::KvCache;
use flotilla_engine::{LanguageModel, LoadOptions, Prompt, SamplingParams, TokenLogprob};
use flotilla_tests::{demo_model, smollm2, smollm2_path, temp_dir};
use std::path::Path;
use std::sync::OnceLock;

const TEXT: &str = "The rhinoceros is a large mammal that lives in Africa and Asia. It has thick \
grey skin and one or two horns on its nose. Rhinos eat grass and leaves, and they spend much \
of the day resting in mud to keep cool.";

fn top1_per_position(lm: &LanguageModel, ids: &[u32]) -> Vec<u32> {
    let m = &lm.model;
    let mut cache = KvCache::new(m.config().num_layers, vec![0]);
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m.forward(&input, &mut cache, true).unwrap();
    logits
        .squeeze(0)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

fn load(path: &Path) -> flotilla_engine::Result<LanguageModel> {
    LanguageModel::load(path.to_str().unwrap(), &LoadOptions::default())
}

/// SmolLM2 converted to a dense f32 Hugging Face directory: the names of the files the
/// conversion wrote, and the model loaded in f32 and with `precision: bf16`. Converted once per
/// test binary; the files are removed once loaded.
struct Dense {
    files: Vec<String>,
    f32: LanguageModel,
    bf16: LanguageModel,
}

fn dense() -> &'static Dense {
    static MODELS: OnceLock<Dense> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = temp_dir("convert-dense");
        let written = gguf_to_hf(&smollm2_path(), dir.path(), OutDType::F32).unwrap();
        let files = written
            .iter()
            .filter(|f| f.parent() == Some(dir.path()))
            .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
            .collect();
        let f32 = load(dir.path()).unwrap();
        let opts = LoadOptions {
            device: Device::Cpu,
            precision: Precision::Bf16,
        };
        let bf16 = LanguageModel::load(dir.path().to_str().unwrap(), &opts).unwrap();
        Dense { files, f32, bf16 }
    })
}

#[test]
fn converted_hf_directory_agrees_with_the_gguf() {
    let gguf = smollm2();
    let Dense { files, f32: hf, .. } = dense();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(files.iter().any(|f| f == name), "{name} not written");
    }
    assert_eq!(hf.info.format, "safetensors");
    assert_eq!(hf.info.architecture, "llama");
    assert_eq!(hf.model.config().num_layers, gguf.model.config().num_layers);
    assert_eq!(hf.info.chat_template, gguf.info.chat_template);
    assert_eq!(hf.tokenizer.eos_ids, gguf.tokenizer.eos_ids);

    // Same tokens from both tokenizers, same chat rendering.
    let ids = gguf.tokenizer.encode(TEXT, true).unwrap();
    assert_eq!(hf.tokenizer.encode(TEXT, true).unwrap(), ids);
    let chat = [Prompt::Chat(vec![flotilla_engine::ChatMessage::new(
        "user", "Hello",
    )])];
    assert_eq!(
        hf.prompt_ids(&chat[0]).unwrap(),
        gguf.prompt_ids(&chat[0]).unwrap()
    );

    // Dequantized weights, rotate-half RoPE: the top-1 next token agrees almost everywhere.
    let a = top1_per_position(gguf, &ids);
    let b = top1_per_position(hf, &ids);
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let share = agree as f64 / a.len() as f64;
    assert!(
        share >= 0.9,
        "top-1 agreement {agree}/{} = {share:.2}",
        a.len()
    );

    // And it generates the same greedy answer to a plain question.
    let p = [Prompt::Text("The capital of France is".into())];
    let params = SamplingParams {
        max_tokens: 6,
        ..Default::default()
    };
    let (x, _) = hf.generate(&p, &params).unwrap();
    assert!(x[0].text.contains("Paris"), "{:?}", x[0].text);
}

fn err_of(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_corrupt_gguf_files_are_named_in_clear_errors() {
    let dir = temp_dir("bad-gguf");
    let bytes = std::fs::read(smollm2_path()).unwrap();

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&truncated);
    assert!(
        e.contains("truncated.gguf") && e.contains("truncated"),
        "{e}"
    );

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..4096]).unwrap();
    let e = err_of(&header_only);
    assert!(e.contains("header.gguf"), "{e}");

    let mut garbage = b"GGUF".to_vec();
    garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, &garbage).unwrap();
    let e = err_of(&corrupt);
    assert!(e.contains("corrupt.gguf"), "{e}");

    let not_gguf = dir.path().join("notes.txt");
    std::fs::write(&not_gguf, "hello").unwrap();
    let e = err_of(&not_gguf);
    assert!(e.contains("notes.txt") && e.contains("not a GGUF"), "{e}");

    let e = err_of(&dir.path().join("missing.gguf"));
    assert!(
        e.contains("missing.gguf") && e.contains("no such file"),
        "{e}"
    );
}

/// A K-quant file cut short, or whose header gives a tensor rows that are not whole 256-value
/// blocks, is refused with the tensor named, before anything is multiplied.
#[test]
fn broken_k_quant_files_name_the_tensor() {
    let dir = temp_dir("bad-kquant");
    let bytes = std::fs::read(demo_model("gemma-3-270m-Q4_K_M.gguf")).unwrap();

    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let e = err_of(&cut);
    assert!(
        e.contains("cut.gguf") && e.contains("truncated") && e.contains("tensor `"),
        "{e}"
    );

    // The tensor's header entry: name, then the number of dimensions (u32) and the row
    // length (u64, ggml's ne[0]) of this Q4_K / Q6_K weight.
    let name = b"blk.0.ffn_down.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in the header")
        + name.len()
        + 4;
    let row = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(row, 2048);
    let mut bad = bytes;
    bad[at..at + 8].copy_from_slice(&2000u64.to_le_bytes());
    let corrupt = dir.path().join("rows.gguf");
    std::fs::write(&corrupt, &bad).unwrap();
    let e = err_of(&corrupt);
    assert!(
        e.contains("rows.gguf") && e.contains("blk.0.ffn_down.weight") && e.contains("2000"),
        "{e}"
    );
}

#[test]
fn broken_hf_directories_are_named_in_clear_errors() {
    let dir = temp_dir("bad-hf");
    let d = dir.path();
    // No config.json at all.
    let e = err_of(d);
    assert!(e.contains("config.json"), "{e}");

    // An architecture flotilla does not run.
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "mamba", "hidden_size": 8}"#,
    )
    .unwrap();
    let e = err_of(d);
    assert!(e.contains("config.json") && e.contains("mamba"), "{e}");

    // A llama config but no tokenizer.
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 10}"#,
    )
    .unwrap();
    let e = err_of(d);
    assert!(e.contains("tokenizer.json"), "{e}");

    // A tokenizer, but a safetensors file cut short.
    let conv = temp_dir("bad-hf-src");
    gguf_to_hf(&smollm2_path(), conv.path(), OutDType::F16).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(conv.path().join(f), d.join(f)).unwrap();
    }
    let st = std::fs::read(conv.path().join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &st[..st.len() / 3]).unwrap();
    let e = err_of(d);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn empty_and_overlong_prompts_are_refused_before_running() {
    let lm = smollm2();
    let params = SamplingParams::default();
    let e = lm
        .generate(&[Prompt::Text(String::new())], &params)
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let long = "word ".repeat(9000);
    let e = lm.generate(&[Prompt::Text(long)], &params).unwrap_err();
    assert!(e.to_string().contains("context is 8192"), "{e}");
    let bad = SamplingParams {
        top_p: 1.5,
        ..Default::default()
    };
    let e = lm.generate(&[Prompt::Text("hi".into())], &bad).unwrap_err();
    assert!(e.to_string().contains("top_p"), "{e}");
}

#[test]
fn inspect_reports_the_demo_model() {
    let i = &smollm2().info;
    assert_eq!(i.format, "gguf");
    assert_eq!(i.architecture, "llama");
    assert_eq!(i.context_length, 8192);
    assert_eq!(i.weight_dtypes.get("Q4_1"), Some(&210));
    // Which code multiplies each weight type on this CPU: flotilla's kernels for the
    // quantized ones (with the instruction set they run), dense for the norms.
    assert!(
        i.kernels["Q4_1"].starts_with("flotilla "),
        "{:?}",
        i.kernels
    );
    assert_eq!(i.kernels["F32"], "dense");
    // 134.5 M parameters: 30 layers of 576 wide, a 49152-token vocabulary, tied embeddings.
    assert!(
        (134_000_000..136_000_000).contains(&i.parameters),
        "{}",
        i.parameters
    );
    assert_eq!(i.config.parameter_count(), i.parameters);
    assert!(i.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!(
        i.eos_tokens.first().map(String::as_str),
        Some("<|endoftext|>")
    );
}

/// Batched prompts of different lengths are left-padded. On a dense model (no quantized
/// kernel to zero NaN activations, as on a GPU) a pad row that attends to nothing would turn
/// every shorter prompt's answer into NaN and then a lone end-of-text token: found by the GPU
/// device check, reproduced here on CPU with the converted dense model.
#[test]
fn a_dense_model_answers_padded_batched_prompts_as_one_by_one() {
    let hf = &dense().f32;
    let prompts: Vec<Prompt> = [
        "Tokyo is the capital city of the country called",
        "Water boils at",
        "The three primary colours are",
    ]
    .iter()
    .map(|t| Prompt::Text(t.to_string()))
    .collect();
    let greedy = SamplingParams {
        max_tokens: 6,
        ..Default::default()
    };
    let (batched, _) = hf.generate(&prompts, &greedy).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let (single, _) = hf.generate(std::slice::from_ref(p), &greedy).unwrap();
        assert_eq!(
            b.token_ids, single[0].token_ids,
            "prompt {p:?}: batched {:?} vs single {:?}",
            b.text, single[0].text
        );
        assert!(
            b.token_ids.len() > 1,
            "prompt {p:?} ended at once: {:?}",
            b.token_ids
        );
    }
}

fn ids_of(t: &TokenLogprob) -> Vec<u32> {
    t.top.iter().map(|c| c.token_id).collect()
}

/// Three paths to one token's log-probability: the decode loop (one row at a time from the
/// KV cache), a teacher-forced pass over prompt and continuation, and the judge's continuation
/// scorer. On the dense model (no quantized activations to round differently per path) they
/// agree to float noise.
#[test]
fn a_dense_model_gives_the_same_logprobs_decoding_and_teacher_forced() {
    let lm = &dense().f32;
    let prompt = Prompt::Text("The harbor library opens at nine. Its oldest book is".into());
    let params = SamplingParams {
        max_tokens: 12,
        repetition_penalty: 1.3,
        ..Default::default()
    };
    let (c, _) = lm
        .generate_with_logprobs(std::slice::from_ref(&prompt), &params, 3)
        .unwrap();
    let lps = c[0].logprobs.as_ref().unwrap();
    let mut ids = lm.prompt_ids(&prompt).unwrap();
    let n_prompt = ids.len();
    ids.extend_from_slice(&c[0].token_ids);
    let forced = lm.prompt_logprobs(&ids, 3).unwrap();
    assert_eq!(forced.len(), ids.len() - 1);
    for (k, t) in lps.iter().enumerate() {
        let f = &forced[n_prompt - 1 + k];
        assert_eq!(f.token_id, t.token_id);
        assert!(
            (f.logprob - t.logprob).abs() < 1e-3,
            "token {k}: decode {} vs teacher-forced {}",
            t.logprob,
            f.logprob
        );
        assert_eq!(ids_of(f), ids_of(t), "token {k}: the top 3 differ");
    }
    let sum: f64 = lps.iter().map(|t| t.logprob as f64).sum();
    let scored = lm
        .continuation_logprobs(&ids[..n_prompt], std::slice::from_ref(&c[0].token_ids))
        .unwrap();
    assert!((scored[0] - sum).abs() < 1e-2, "{} vs {sum}", scored[0]);

    // A prompt longer than one scoring chunk (128 positions): the cache carries across
    // chunks, so its first part scores as it does alone.
    let text = "Tide tables list the high and low water for each day of the month.".repeat(16);
    let ids = lm.prompt_ids(&Prompt::Text(text)).unwrap();
    assert!(ids.len() > 200, "{} tokens", ids.len());
    let all = lm.prompt_logprobs(&ids, 1).unwrap();
    let head = lm.prompt_logprobs(&ids[..100], 1).unwrap();
    for (k, (a, b)) in head.iter().zip(&all).enumerate() {
        assert!(
            (a.logprob - b.logprob).abs() < 1e-3,
            "position {k}: {a:?} vs {b:?}"
        );
    }
    // A repeated sentence is predictable: its late repeats are near certain.
    let late = &all[all.len() - 20..];
    assert!(late.iter().all(|t| t.logprob > -0.5), "{late:?}");
    assert!(lm.prompt_logprobs(&[], 1).is_err());
    let e = lm.prompt_logprobs(&ids, 21).unwrap_err().to_string();
    assert!(e.contains("at most 20"), "{e}");
    assert!(lm.prompt_logprobs(&ids[..1], 0).unwrap().is_empty());
}

/// bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value): over 30 layers the
/// log-probabilities move by a few hundredths, the size of the gap between two correct 8-bit
/// activation kernels on the quantized model (0.06 mean, docs/GPU.md).
const BF16_MEAN_TOL: f32 = 0.1;

/// `precision: bf16` on a dense model: half the weight memory, and teacher-forced
/// log-probabilities within bf16's rounding of the f32 ones. A GGUF model refuses it.
#[test]
fn bf16_precision_halves_a_dense_model_and_stays_close_to_f32() {
    let Dense { f32, bf16, .. } = dense();
    assert_eq!(f32.model.dtype(), candle_core::DType::F32);
    assert_eq!(bf16.model.dtype(), candle_core::DType::BF16);
    let ids = f32.tokenizer.encode(TEXT, true).unwrap();
    let a = f32.prompt_logprobs(&ids, 1).unwrap();
    let b = bf16.prompt_logprobs(&ids, 1).unwrap();
    let diffs: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x.logprob - y.logprob).abs())
        .collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let same_top = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.top[0].token_id == y.top[0].token_id)
        .count();
    eprintln!(
        "bf16 vs f32 over {} positions: mean |d logprob| {mean:.4}, max {:.4}, same top-1 {same_top}",
        diffs.len(),
        diffs.iter().copied().fold(0.0, f32::max)
    );
    assert!(mean > 0.0, "bf16 gave f32's values exactly: not bf16");
    assert!(mean < BF16_MEAN_TOL, "mean |d logprob| {mean}");
    assert!(
        same_top * 10 >= diffs.len() * 9,
        "same top-1 at {same_top} of {}",
        diffs.len()
    );

    let opts = LoadOptions {
        device: Device::Cpu,
        precision: Precision::Bf16,
    };
    let e = LanguageModel::load(smollm2_path().to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GGUF") && e.contains("bf16"), "{e}");
}
