//! The shape of a model (llama, qwen2, gemma3), read from GGUF metadata or from a Hugging Face
//! `config.json`, and written back out as one.

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
    Qwen3,
    Gemma3,
}

/// What `Architecture::parse` accepts, for error messages.
const SUPPORTED: &str = "llama, qwen2, qwen3 and gemma3 (Hugging Face `gemma3_text`)";

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
        }
    }

    /// The architecture a GGUF `general.architecture` or a `config.json` `model_type` names;
    /// the error names the field and the value.
    fn parse(path: &std::path::Path, field: &str, name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            "gemma3" if field == "general.architecture" => Ok(Architecture::Gemma3),
            "gemma3_text" => Ok(Architecture::Gemma3),
            "gemma3" => Err(Error::model(
                path,
                "model_type = `gemma3` is the multimodal Gemma 3 (weights under \
                 `language_model.`); flotilla runs the text-only `gemma3_text` folders (270M, 1B)",
            )),
            other => Err(Error::model(
                path,
                format!("{field} = `{other}` is not supported (flotilla runs {SUPPORTED})"),
            )),
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// The `model_type` of a Hugging Face `config.json`.
    fn hf_model_type(self) -> &'static str {
        match self {
            Architecture::Gemma3 => "gemma3_text",
            other => other.name(),
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
    /// Gemma 3's attention layout; `None` for other families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemma3: Option<Gemma3Attention>,
}

/// What Gemma 3 adds to the shape: sliding-window layers with their own RoPE base between
/// global ones, a query scale of its own, and optional final logit soft-capping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Attention {
    /// Keys a sliding-window layer's query sees, itself included.
    pub sliding_window: usize,
    /// Layer `i` is global when `(i + 1) % sliding_window_pattern == 0` (llama.cpp's pattern,
    /// 6 in Gemma 3); the others slide.
    pub sliding_window_pattern: usize,
    /// RoPE base of the sliding-window layers (global layers use `rope_theta`).
    pub rope_local_theta: f32,
    /// Global layers' linear RoPE scaling factor (8 on the 4B+ models; 1 = none).
    pub rope_global_factor: f32,
    /// Queries are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f32,
    /// `logits = cap * tanh(logits / cap)` when set.
    pub final_logit_softcapping: Option<f32>,
}

impl Gemma3Attention {
    /// Whether layer `i` is a sliding-window layer.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window_pattern == 0 || (layer + 1) % self.sliding_window_pattern != 0
    }
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
        let key_length = opt("attention.key_length");
        if num_heads == 0 || (key_length.is_none() && hidden_size % num_heads != 0) {
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
        let mut linear_factor = 1.0;
        if let Some(kind) = md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
        {
            match kind.as_str() {
                "none" => {}
                "linear" if architecture == Architecture::Gemma3 => {
                    linear_factor = optf("rope.scaling.factor").unwrap_or(1.0);
                }
                _ => {
                    return Err(Error::model(
                        path,
                        format!("{} = `{kind}` is not supported", key("rope.scaling.type")),
                    ))
                }
            }
        }
        let gemma3 = if architecture == Architecture::Gemma3 {
            let head_dim = key_length.unwrap_or(hidden_size / num_heads);
            let layers = req("block_count")?;
            Some(Gemma3Attention {
                sliding_window: req("attention.sliding_window")?,
                sliding_window_pattern: opt("attention.sliding_window_pattern").unwrap_or(6),
                rope_local_theta: optf("rope.local_freq_base").unwrap_or(10_000.0),
                rope_global_factor: linear_factor,
                // llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 layers), which scales by
                // hidden / heads as its Hugging Face config's query_pre_attn_scalar says.
                query_pre_attn_scalar: if layers == 62 {
                    (hidden_size / num_heads) as f32
                } else {
                    head_dim as f32
                },
                final_logit_softcapping: optf("final_logit_softcapping").filter(|c| *c > 0.0),
            })
        } else {
            None
        };
        Ok(Self {
            architecture,
            hidden_size,
            intermediate_size: req("feed_forward_length")?,
            num_layers: req("block_count")?,
            num_heads,
            num_kv_heads: opt("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: key_length
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
            gemma3,
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
        let head_dim = v
            .get("head_dim")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize);
        if num_heads == 0 || (head_dim.is_none() && hidden_size % num_heads != 0) {
            return Err(Error::model(
                path,
                "num_attention_heads does not divide hidden_size",
            ));
        }
        let mut linear_factor = 1.0;
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => None,
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or(rs.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("");
                if kind == "linear" && architecture == Architecture::Gemma3 {
                    linear_factor = rs.get("factor").and_then(|x| x.as_f64()).unwrap_or(1.0);
                    None
                } else if kind != "llama3" {
                    return Err(Error::model(
                        path,
                        format!("rope_scaling type `{kind}` is not supported (only llama3)"),
                    ));
                } else {
                    Some(
                        serde_json::from_value(rs.clone())
                            .map_err(|e| Error::model(path, format!("rope_scaling: {e}")))?,
                    )
                }
            }
        };
        let gemma3 = match architecture {
            Architecture::Gemma3 => Some(gemma3_from_hf(&v, path, linear_factor as f32)?),
            _ => None,
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
            head_dim: head_dim.unwrap_or(hidden_size / num_heads),
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
                // transformers' Gemma 3 config ties by default.
                .unwrap_or(architecture == Architecture::Gemma3),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama | Architecture::Qwen3 | Architecture::Gemma3 => v
                    .get("attention_bias")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(false),
            },
            rope_scaling,
            gemma3,
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
            "model_type": self.architecture.hf_model_type(),
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
        if matches!(self.architecture, Architecture::Llama | Architecture::Qwen3) {
            v["attention_bias"] = serde_json::json!(self.attention_bias);
            v["mlp_bias"] = serde_json::json!(false);
        }
        if let Some(g) = &self.gemma3 {
            let layer_types: Vec<&str> = (0..self.num_layers)
                .map(|i| {
                    if g.is_sliding(i) {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            v["hidden_activation"] = serde_json::json!("gelu_pytorch_tanh");
            v["hidden_act"] = serde_json::json!("gelu_pytorch_tanh");
            v["sliding_window"] = serde_json::json!(g.sliding_window);
            v["layer_types"] = serde_json::json!(layer_types);
            v["rope_local_base_freq"] = serde_json::json!(g.rope_local_theta);
            v["query_pre_attn_scalar"] = serde_json::json!(g.query_pre_attn_scalar);
            v["final_logit_softcapping"] = serde_json::json!(g.final_logit_softcapping);
            v["attention_bias"] = serde_json::json!(false);
            if g.rope_global_factor != 1.0 {
                v["rope_scaling"] =
                    serde_json::json!({"rope_type": "linear", "factor": g.rope_global_factor});
            }
        }
        if let Some(rs) = &self.rope_scaling {
            let mut r = serde_json::to_value(rs).unwrap_or_default();
            r["rope_type"] = serde_json::json!("llama3");
            v["rope_scaling"] = r;
        }
        v
    }

    /// Refuse `what` (a step that has only llama / qwen2 code so far: "LoRA training",
    /// "conversion to a Hugging Face folder") on another family, naming both.
    pub fn require_llama_layout(&self, path: &Path, what: &str) -> Result<()> {
        match self.architecture {
            Architecture::Llama | Architecture::Qwen2 => Ok(()),
            other => Err(Error::model(
                path,
                format!(
                    "{what} supports llama and qwen2; this model is {} (flotilla runs it for \
                     generation, judging and scoring)",
                    other.name()
                ),
            )),
        }
    }

    /// Parameters in the transformer, embeddings and head included.
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let ff = self.intermediate_size as u64;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        // Gemma 3 adds two norms after attention and MLP, and q/k norms; Qwen3 q/k norms.
        let qk_norms = 2 * self.head_dim as u64;
        let norms = match self.architecture {
            Architecture::Gemma3 => 4 * h + qk_norms,
            Architecture::Qwen3 => 2 * h + qk_norms,
            Architecture::Llama | Architecture::Qwen2 => 2 * h,
        };
        let per_layer = h * q + 2 * h * kv + q * h + bias + 3 * h * ff + norms;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + per_layer * self.num_layers as u64
    }
}

/// Gemma 3's extras from a `gemma3_text` `config.json`: the layer pattern from `layer_types`
/// (or `sliding_window_pattern`), with transformers' defaults for what is missing.
fn gemma3_from_hf(
    v: &serde_json::Value,
    path: &Path,
    linear_factor: f32,
) -> Result<Gemma3Attention> {
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let pattern = match v.get("layer_types").and_then(|x| x.as_array()) {
        Some(types) => {
            let global = |i: usize| types[i].as_str() == Some("full_attention");
            let first = (0..types.len()).find(|&i| global(i)).map_or(0, |i| i + 1);
            let consistent = (0..types.len()).all(|i| {
                let expected = first != 0 && (i + 1) % first == 0;
                global(i) == expected
            });
            if !consistent {
                return Err(Error::model(
                    path,
                    "layer_types does not repeat one sliding/full pattern (flotilla runs Gemma 3's \
                     every-n-th-layer-global layout)",
                ));
            }
            first
        }
        None => num("sliding_window_pattern").map_or(6, |p| p as usize),
    };
    Ok(Gemma3Attention {
        sliding_window: num("sliding_window").map_or(4096, |w| w as usize),
        sliding_window_pattern: pattern,
        rope_local_theta: num("rope_local_base_freq").unwrap_or(10_000.0) as f32,
        rope_global_factor: linear_factor,
        query_pre_attn_scalar: num("query_pre_attn_scalar").unwrap_or(256.0) as f32,
        final_logit_softcapping: num("final_logit_softcapping").map(|c| c as f32),
    })
}
