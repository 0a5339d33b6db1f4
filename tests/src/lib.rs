//! Shared helpers for flotilla's workspace-level tests: where the demo models and fixtures
//! live, and one model load per test binary.
//!
//! The demo models come from `scripts/fetch-models.sh` (the test command runs it). A test
//! that finds them missing fails with that instruction rather than skipping.

pub mod etcd;
pub mod tiny;

use flotilla_engine::{EmbeddingModel, LanguageModel, LoadOptions};
use std::path::PathBuf;
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
