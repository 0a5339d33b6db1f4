//! Sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 and friends) from a
//! Hugging Face / sentence-transformers directory: mean pooling over real tokens, L2-normed,
//! as sentence-transformers computes them.

use crate::error::{Error, Result};
use crate::loader::{resolve, safetensors_files, LoadOptions, ModelSource};
use candle_core::{DType, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};

/// A loaded embedding model.
pub struct EmbeddingModel {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// Longest input in tokens; longer text is truncated, as sentence-transformers does.
    pub max_tokens: usize,
    pub dimension: usize,
}

impl EmbeddingModel {
    /// Load a BERT-family model from a directory (or a demo alias such as `minilm`).
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = match resolve(spec)? {
            ModelSource::HfDir(d) => d,
            ModelSource::Gguf(p) => {
                return Err(Error::model(
                    p,
                    "embedding models load from a Hugging Face directory, not GGUF",
                ))
            }
        };
        Self::load_dir(&dir, opts)
    }

    fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&config_path, format!("not valid JSON: {e}")))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if matches!(model_type, "roberta" | "xlm-roberta") {
            // Run as BERT they would load and give wrong vectors: their position ids start
            // after the padding id, BERT's at 0.
            return Err(Error::model(
                &config_path,
                format!(
                    "model_type = `{model_type}` (multilingual-e5, bge-m3, ...) is not supported \
                     yet: its positions differ from BERT's, so its vectors would be wrong; use a \
                     BERT encoder such as minilm"
                ),
            ));
        }
        if !matches!(model_type, "bert" | "") {
            return Err(Error::model(
                &config_path,
                format!("model_type = `{model_type}` is not a BERT encoder"),
            ));
        }
        let config: BertConfig = serde_json::from_value(raw)
            .map_err(|e| Error::model(&config_path, format!("not a BERT config: {e}")))?;

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::model(
                dir,
                "no tokenizer.json in this model directory",
            ));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::model(&tok_path, format!("cannot read tokenizer: {e}")))?;
        let st_config = dir.join("sentence_bert_config.json");
        let max_tokens = std::fs::read_to_string(&st_config)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()))
            .map(|m| m as usize)
            .unwrap_or(config.max_position_embeddings);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::model(&tok_path, format!("truncation: {e}")))?;

        // Weights are read and widened to f32 on the CPU, then moved: a device may lack the
        // conversion from the stored dtype (candle's CUDA build has no f8 cast kernel for
        // every target), and the embedder is small.
        let files = safetensors_files(dir)?;
        let mut tensors = std::collections::HashMap::new();
        for f in &files {
            let read = candle_core::safetensors::load(f, &candle_core::Device::Cpu)
                .map_err(|e| Error::model(f, format!("cannot read weights: {e}")))?;
            for (name, t) in read {
                let t = t.to_dtype(DType::F32)?.to_device(&opts.device)?;
                tensors.insert(name, t);
            }
        }
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &opts.device);
        let model = BertModel::load(vb, &config)
            .map_err(|e| Error::model(dir, format!("weights do not match config.json: {e}")))?;
        Ok(Self {
            model,
            tokenizer,
            path: dir.to_path_buf(),
            max_tokens,
            dimension: config.hidden_size,
        })
    }

    /// One L2-normalised vector per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        crate::device::in_engine_pool(|| self.embed_in_pool(texts))
    }

    fn embed_in_pool(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::input(format!("cannot tokenize: {e}")))?;
        let device = &self.model.device;
        let b = enc.len();
        let t = enc[0].get_ids().len();
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let ids = Tensor::from_vec(ids, (b, t), device)?;
        let mask = Tensor::from_vec(mask, (b, t), device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
