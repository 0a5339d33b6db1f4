//! `flotilla model convert`: a GGUF model written out as a dequantized Hugging Face directory
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) that flotilla's own loader, transformers and PEFT read back.
//! This gives the safetensors path, and training, real weights.

use crate::error::{Error, Result};
use crate::loader::{builtin_template, read_gguf, BLOCK_TENSORS};
use crate::models::config::{Architecture, ModelConfig};
use crate::tokenizer::TextTokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Weight dtype of the written safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDType {
    F32,
    F16,
    BF16,
}

impl OutDType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            other => Err(Error::input(format!(
                "--dtype {other}: expected f32, f16 or bf16"
            ))),
        }
    }

    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }
}

/// Undo llama.cpp's q/k row permutation (Hugging Face rotate-half layout -> interleaved
/// pairs), so the weights rotate correctly in a Hugging Face llama.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let head_dim = out / heads;
    Ok(w.reshape((heads, head_dim / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// The tensors of a GGUF model, dequantized to f32 and named and laid out as in a Hugging Face
/// checkpoint (llama q/k rows un-permuted). Training and adapter merging start from these.
pub fn gguf_hf_tensors(gguf: &Path) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let (content, mut reader) = read_gguf(gguf)?;
    let config = ModelConfig::from_gguf(&content, gguf)?;
    let cpu = Device::Cpu;
    let mut read = |name: &str| -> Result<Tensor> {
        let q = content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| Error::model(gguf, format!("tensor `{name}`: {e}")))?;
        Ok(q.dequantize(&cpu)?)
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let permuted = config.architecture == Architecture::Llama;
    // Gemma's norm is x * (1 + w): llama.cpp's converter stored 1 + w, Hugging Face keeps w.
    let gemma = config.architecture == Architecture::Gemma3;
    let unshift = |name: &str, w: Tensor| -> Result<Tensor> {
        Ok(if gemma && name.ends_with("norm") {
            (w - 1.0)?
        } else {
            w
        })
    };
    for i in 0..config.num_layers {
        for (g, h) in block_tensors(config.architecture) {
            let mut w = unshift(g, read(&format!("blk.{i}.{g}.weight"))?)?;
            if permuted && *g == "attn_q" {
                w = unpermute(&w, config.num_heads)?;
            }
            if permuted && *g == "attn_k" {
                w = unpermute(&w, config.num_kv_heads)?;
            }
            tensors.insert(format!("model.layers.{i}.{h}.weight"), w);
            let bias = format!("blk.{i}.{g}.bias");
            if content.tensor_infos.contains_key(&bias) {
                tensors.insert(format!("model.layers.{i}.{h}.bias"), read(&bias)?);
            }
        }
    }
    tensors.insert(
        "model.embed_tokens.weight".into(),
        read("token_embd.weight")?,
    );
    tensors.insert(
        "model.norm.weight".into(),
        unshift("output_norm", read("output_norm.weight")?)?,
    );
    if !config.tie_word_embeddings {
        tensors.insert("lm_head.weight".into(), read("output.weight")?);
    }
    Ok((config, tensors))
}

/// The GGUF / Hugging Face names of a block's tensors for each family.
fn block_tensors(arch: Architecture) -> &'static [(&'static str, &'static str)] {
    match arch {
        Architecture::Llama | Architecture::Qwen2 => BLOCK_TENSORS,
        Architecture::Qwen3 => crate::models::qwen3::BLOCK_TENSORS,
        Architecture::Gemma3 => crate::models::gemma3::BLOCK_TENSORS,
    }
}

/// Convert `gguf` into a Hugging Face directory at `out`; returns the files written.
pub fn gguf_to_hf(gguf: &Path, out: &Path, dtype: OutDType) -> Result<Vec<PathBuf>> {
    let (tensors_config, tensors) = gguf_hf_tensors(gguf)?;
    let (content, mut reader) = read_gguf(gguf)?;
    let config = tensors_config;
    let tokenizer = TextTokenizer::from_gguf(&content, gguf)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype.dtype())?)))
        .collect::<Result<HashMap<_, _>>>()?;

    let mut written = Vec::new();
    let st = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|e| Error::model(&st, e))?;
    written.push(st);

    let bos_id = tokenizer
        .bos_token
        .as_deref()
        .and_then(|t| tokenizer.token_to_id(t));
    let eos_id = tokenizer
        .eos_token
        .as_deref()
        .and_then(|t| tokenizer.token_to_id(t));
    let mut cfg = config.to_hf_json(dtype.torch_name(), bos_id, eos_id);
    if let Some(rs) = rope_scaling_from_freqs(&content, &mut reader, gguf)? {
        cfg["rope_scaling"] = rs;
    }
    written.push(write_json(&out.join("config.json"), &cfg)?);

    let tok = out.join("tokenizer.json");
    tokenizer
        .inner()
        .save(&tok, true)
        .map_err(|e| Error::model(&tok, format!("cannot write tokenizer: {e}")))?;
    written.push(tok);

    let md = &content.metadata;
    let add_bos = md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .or_else(|| builtin_template(config.architecture));
    let tok_cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
        "chat_template": template,
    });
    written.push(write_json(&out.join("tokenizer_config.json"), &tok_cfg)?);
    let gen = serde_json::json!({
        "bos_token_id": bos_id,
        "eos_token_id": tokenizer.eos_ids,
    });
    written.push(write_json(&out.join("generation_config.json"), &gen)?);
    Ok(written)
}

/// A Llama 3.1 / 3.2 GGUF stores its scaled RoPE frequencies as the `rope_freqs` tensor
/// (one divisor per frequency) rather than as config keys. The largest divisor is the scaling
/// factor; the band edges (1 and 4) and original context (8192) are the values every Llama 3.x
/// release uses.
fn rope_scaling_from_freqs(
    content: &candle_core::quantized::gguf_file::Content,
    reader: &mut std::io::BufReader<std::fs::File>,
    gguf: &Path,
) -> Result<Option<serde_json::Value>> {
    if !content.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    let freqs = content
        .tensor(reader, "rope_freqs.weight", &Device::Cpu)
        .map_err(|e| Error::model(gguf, format!("tensor `rope_freqs.weight`: {e}")))?
        .dequantize(&Device::Cpu)?
        .to_vec1::<f32>()?;
    let factor = freqs.iter().cloned().fold(1.0f32, f32::max);
    Ok(Some(serde_json::json!({
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    })))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::model(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    Ok(path.to_path_buf())
}
