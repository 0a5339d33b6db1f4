//! Sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 and friends) or an
//! XLM-RoBERTa encoder (multilingual-e5, bge-m3's encoder) from a Hugging Face /
//! sentence-transformers directory: mean pooling over real tokens, L2-normed, as
//! sentence-transformers computes them. A model trained with prompts (e5's `query: ` and
//! `passage: `) gets them from `config_sentence_transformers.json`'s `prompts`; one pooled on
//! its first token (bge-m3's dense vectors) says so in `1_Pooling/config.json`.

use crate::error::{Error, Result};
use crate::loader::{resolve, safetensors_files, LoadOptions, ModelSource};
use candle_core::{DType, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::xlm_roberta::{Config as XlmRobertaConfig, XLMRobertaModel};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};

/// What a text is to the embedder: models trained with prompts embed questions and passages
/// each with its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Query,
    Passage,
}

/// The prefixes a sentence-transformers model was trained with, from
/// `config_sentence_transformers.json`'s `prompts` (`query`, and `passage` or `document`);
/// empty for models without them (MiniLM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    pub query: String,
    pub passage: String,
}

impl Prompts {
    /// The prompts of the model directory `dir` (none when the file or the key is absent; an
    /// unreadable file is an error that names it).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config_sentence_transformers.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
        let get = |keys: &[&str]| -> String {
            keys.iter()
                .find_map(|k| v.get("prompts")?.get(*k)?.as_str())
                .unwrap_or("")
                .to_string()
        };
        Ok(Self {
            query: get(&["query"]),
            passage: get(&["passage", "document"]),
        })
    }

    /// The prefix for a text of `role`.
    pub fn for_role(&self, role: Role) -> &str {
        match role {
            Role::Query => &self.query,
            Role::Passage => &self.passage,
        }
    }
}

/// How token vectors become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over real tokens (MiniLM, multilingual-e5; the default).
    Mean,
    /// The first token's vector (`[CLS]` / `<s>`: bge-m3's dense embedding).
    Cls,
}

impl Pooling {
    /// `1_Pooling/config.json` of `dir` (mean when absent); max pooling and other modes are
    /// refused by name.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("1_Pooling").join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::Mean),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
        let on = |k: &str| v.get(format!("pooling_mode_{k}")) == Some(&serde_json::json!(true));
        if on("cls_token") {
            Ok(Self::Cls)
        } else if on("mean_tokens") {
            Ok(Self::Mean)
        } else {
            let modes: Vec<&str> = [
                "max_tokens",
                "mean_sqrt_len_tokens",
                "weightedmean_tokens",
                "lasttoken",
            ]
            .into_iter()
            .filter(|k| on(k))
            .collect();
            if modes.is_empty() {
                Ok(Self::Mean)
            } else {
                Err(Error::model(
                    &path,
                    format!(
                        "pooling {} is not supported (mean_tokens and cls_token are)",
                        modes.join(", ")
                    ),
                ))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
        }
    }
}

enum Encoder {
    Bert(BertModel),
    XlmRoberta(XLMRobertaModel),
}

/// A loaded embedding model.
pub struct EmbeddingModel {
    model: Encoder,
    device: candle_core::Device,
    tokenizer: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// Longest input in tokens; longer text is truncated, as sentence-transformers does.
    pub max_tokens: usize,
    pub dimension: usize,
    /// The prefixes for questions and passages (empty for models trained without them).
    pub prompts: Prompts,
    pub pooling: Pooling,
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
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let kind = match model_type.as_str() {
            "bert" | "" => {
                let c: BertConfig = serde_json::from_value(raw.clone())
                    .map_err(|e| Error::model(&config_path, format!("not a BERT config: {e}")))?;
                EncoderConfig::Bert(c)
            }
            // RoBERTa and XLM-RoBERTa share the architecture; they differ in the tokenizer.
            "xlm-roberta" | "roberta" => {
                let c: XlmRobertaConfig = serde_json::from_value(raw.clone()).map_err(|e| {
                    Error::model(&config_path, format!("not an XLM-RoBERTa config: {e}"))
                })?;
                EncoderConfig::XlmRoberta(c)
            }
            other => {
                return Err(Error::model(
                    &config_path,
                    format!(
                        "model_type = `{other}` is not an encoder flotilla runs (bert, roberta, \
                         xlm-roberta)"
                    ),
                ))
            }
        };
        let (pad_token_id, max_positions, hidden_size) = match &kind {
            EncoderConfig::Bert(c) => (c.pad_token_id, c.max_position_embeddings, c.hidden_size),
            // XLM-RoBERTa counts positions from the padding id + 1: two rows are not positions.
            EncoderConfig::XlmRoberta(c) => (
                c.pad_token_id as usize,
                c.max_position_embeddings
                    .saturating_sub(c.pad_token_id as usize + 1),
                c.hidden_size,
            ),
        };
        let prompts = Prompts::read(dir)?;
        let pooling = Pooling::read(dir)?;

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
            .unwrap_or(max_positions)
            .min(max_positions);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: pad_token_id as u32,
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
        let mismatch = |e: candle_core::Error| {
            Error::model(dir, format!("weights do not match config.json: {e}"))
        };
        let model = match &kind {
            EncoderConfig::Bert(c) => Encoder::Bert(BertModel::load(vb, c).map_err(mismatch)?),
            EncoderConfig::XlmRoberta(c) => {
                Encoder::XlmRoberta(XLMRobertaModel::new(c, vb).map_err(mismatch)?)
            }
        };
        Ok(Self {
            model,
            device: opts.device.clone(),
            tokenizer,
            path: dir.to_path_buf(),
            max_tokens,
            dimension: hidden_size,
            prompts,
            pooling,
        })
    }

    /// One L2-normalised vector per text, each embedded as it is (no prompt).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        crate::device::in_engine_pool(|| self.embed_in_pool(texts))
    }

    /// One L2-normalised vector per text, each with the model's prompt for `role` in front.
    pub fn embed_as(&self, role: Role, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let prefix = self.prompts.for_role(role);
        if prefix.is_empty() {
            return self.embed(texts);
        }
        let prefixed: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        self.embed(&refs)
    }

    fn embed_in_pool(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::input(format!("cannot tokenize: {e}")))?;
        let device = &self.device;
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
        let hidden = match &self.model {
            Encoder::Bert(m) => m.forward(&ids, &types, Some(&mask))?,
            Encoder::XlmRoberta(m) => m.forward(&ids, &mask, &types, None, None, None)?,
        };
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

enum EncoderConfig {
    Bert(BertConfig),
    XlmRoberta(XlmRobertaConfig),
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
