//! The shape of a llama-family model (llama, qwen2), read from GGUF metadata or from a Hugging
//! Face `config.json`, and written back out as one.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The model families flotilla runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The architecture a GGUF `general.architecture` or a `config.json` `model_type` names;
    /// the error names the field and the value.
    fn parse(path: &std::path::Path, field: &str, name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            other => Err(Error::model(
                path,
                format!("{field} = `{other}` is not supported (flotilla runs llama and qwen2)"),
            )),
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Llama 3.1-style RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub attention_bias: bool,
    pub rope_scaling: Option<Llama3RopeScaling>,
}

impl ModelConfig {
    /// Read from GGUF metadata (`general.architecture` and `<arch>.*` keys).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::model(path, "GGUF metadata has no general.architecture"))?
            .clone();
        let architecture = Architecture::parse(path, "general.architecture", &arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            md.get(&key(k))
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
                .ok_or_else(|| Error::model(path, format!("GGUF metadata has no `{}`", key(k))))
        };
        let opt = |k: &str| -> Option<usize> {
            md.get(&key(k))
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
        };
        let optf = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let hidden_size = req("embedding_length")?;
        let num_heads = req("attention.head_count")?;
        if num_heads == 0 || hidden_size % num_heads != 0 {
            return Err(Error::model(
                path,
                format!(
                    "{}: {num_heads} heads do not divide {hidden_size}",
                    key("attention.head_count")
                ),
            ));
        }
        let vocab_size = match opt("vocab_size") {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| Error::model(path, "GGUF metadata has no vocabulary size"))?,
        };
        if let Some(kind) = md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
        {
            if kind != "none" {
                return Err(Error::model(
                    path,
                    format!("{} = `{kind}` is not supported", key("rope.scaling.type")),
                ));
            }
        }
        Ok(Self {
            architecture,
            hidden_size,
            intermediate_size: req("feed_forward_length")?,
            num_layers: req("block_count")?,
            num_heads,
            num_kv_heads: opt("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: opt("attention.key_length")
                .or(opt("rope.dimension_count"))
                .unwrap_or(hidden_size / num_heads),
            vocab_size,
            rms_norm_eps: optf("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
            rope_theta: optf("rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: opt("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            // Llama 3.1 GGUFs carry their scaled frequencies as the `rope_freqs` tensor.
            rope_scaling: None,
        })
    }

    /// Read a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
        let model_type = v
            .get("model_type")
            .and_then(|x| x.as_str())
            .ok_or_else(|| Error::model(path, "field `model_type` is missing"))?;
        let architecture = Architecture::parse(path, "model_type", model_type)?;
        let req = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| {
                    Error::model(path, format!("field `{k}` is missing or not a number"))
                })
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        if num_heads == 0 || hidden_size % num_heads != 0 {
            return Err(Error::model(
                path,
                "num_attention_heads does not divide hidden_size",
            ));
        }
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => None,
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or(rs.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("");
                if kind != "llama3" {
                    return Err(Error::model(
                        path,
                        format!("rope_scaling type `{kind}` is not supported (only llama3)"),
                    ));
                }
                Some(
                    serde_json::from_value(rs.clone())
                        .map_err(|e| Error::model(path, format!("rope_scaling: {e}")))?,
                )
            }
        };
        Ok(Self {
            architecture,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads,
            num_kv_heads: v
                .get("num_key_value_heads")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(num_heads),
            head_dim: v
                .get("head_dim")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(hidden_size / num_heads),
            vocab_size: req("vocab_size")?,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6),
            rope_theta: v
                .get("rope_theta")
                .and_then(|x| x.as_f64())
                .unwrap_or(10_000.0) as f32,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(4096),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => v
                    .get("attention_bias")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(false),
            },
            rope_scaling,
        })
    }

    /// The `config.json` a Hugging Face loader (transformers, PEFT, vLLM) reads for this model.
    pub fn to_hf_json(
        &self,
        torch_dtype: &str,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.name(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": torch_dtype,
            "bos_token_id": bos,
            "eos_token_id": eos,
        });
        if self.architecture == Architecture::Llama {
            v["attention_bias"] = serde_json::json!(self.attention_bias);
            v["mlp_bias"] = serde_json::json!(false);
        }
        if let Some(rs) = &self.rope_scaling {
            let mut r = serde_json::to_value(rs).unwrap_or_default();
            r["rope_type"] = serde_json::json!("llama3");
            v["rope_scaling"] = r;
        }
        v
    }

    /// Parameters in the transformer, embeddings and head included.
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let ff = self.intermediate_size as u64;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let per_layer = h * q + 2 * h * kv + q * h + bias + 3 * h * ff + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + per_layer * self.num_layers as u64
    }
}
