//! The frozen base model for training and merging: every tensor dense (f32), named and laid
//! out as in a Hugging Face checkpoint, whatever the source (GGUF dequantized at load, or
//! safetensors in f32 / bf16 / f16). PEFT adapters address these names, so training in this
//! layout gives adapters that load anywhere.
//!
//! For QLoRA ([`BaseWeights::load_quantized`]) the seven projections of every block stay as
//! the GGUF file quantized them; the rest (norms, biases, embeddings, output) is dense.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use flotilla_engine::convert::gguf_hf_tensors;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::{read_gguf, resolve, safetensors_files, ModelSource};
use flotilla_engine::models::config::ModelConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A base model's dense weights.
pub struct BaseWeights {
    pub config: ModelConfig,
    /// Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub tensors: HashMap<String, Tensor>,
    /// Projections kept quantized (QLoRA), by Hugging Face name; llama's q/k still in
    /// llama.cpp's row order (see [`QuantWeight::heads`]).
    pub quantized: HashMap<String, QuantWeight>,
    /// Llama 3.1 GGUF `rope_freqs` (scaled RoPE frequencies), when present.
    pub freq_factors: Option<Vec<f32>>,
    /// The file or directory the weights came from.
    pub source: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
}

/// A frozen projection kept as the GGUF file quantized it.
#[derive(Clone)]
pub struct QuantWeight {
    pub q: Arc<QTensor>,
    /// For llama's q/k: the number of heads whose rows llama.cpp permuted (interleaved RoPE
    /// pairs); the product's columns are put back in Hugging Face order.
    pub heads: Option<usize>,
}

impl BaseWeights {
    /// [`BaseWeights::load`] for QLoRA: a GGUF model whose block projections stay quantized
    /// on `device` (F32/F16/BF16 ones are read dense). Anything else is an error: a
    /// safetensors model has nothing quantized to keep.
    pub fn load_quantized(spec: &str, device: &Device) -> Result<Self> {
        let p = match resolve(spec)? {
            ModelSource::Gguf(p) => p,
            ModelSource::HfDir(dir) => {
                return Err(Error::input(format!(
                    "qlora: {} is a safetensors model; QLoRA trains on a quantized GGUF file",
                    dir.display()
                )))
            }
        };
        let (content, mut reader) = read_gguf(&p)?;
        let config = ModelConfig::from_gguf(&content, &p)?;
        config.require_llama_layout(&p, "LoRA training")?;
        let permuted = config.architecture == flotilla_engine::models::config::Architecture::Llama;
        let mut tensors = HashMap::new();
        let mut quantized = HashMap::new();
        let mut read = |name: &str, dev: &Device| -> Result<QTensor> {
            content
                .tensor(&mut reader, name, dev)
                .map_err(|e| Error::model(&p, format!("tensor `{name}`: {e}")))
        };
        for i in 0..config.num_layers {
            for (g, h) in flotilla_engine::loader::BLOCK_TENSORS {
                let hf = format!("model.layers.{i}.{h}.weight");
                let is_proj = !g.ends_with("_norm");
                let q = read(&format!("blk.{i}.{g}.weight"), device)?;
                let dense = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
                if is_proj && !dense {
                    let heads = match *g {
                        "attn_q" if permuted => Some(config.num_heads),
                        "attn_k" if permuted => Some(config.num_kv_heads),
                        _ => None,
                    };
                    quantized.insert(
                        hf,
                        QuantWeight {
                            q: Arc::new(q),
                            heads,
                        },
                    );
                } else {
                    let mut w = q.dequantize(device)?;
                    if permuted && (*g == "attn_q" || *g == "attn_k") {
                        let heads = if *g == "attn_q" {
                            config.num_heads
                        } else {
                            config.num_kv_heads
                        };
                        w = flotilla_engine::convert::unpermute(&w, heads)?;
                    }
                    tensors.insert(hf, w);
                }
                let bias = format!("blk.{i}.{g}.bias");
                if content.tensor_infos.contains_key(&bias) {
                    let b = read(&bias, device)?.dequantize(device)?;
                    tensors.insert(format!("model.layers.{i}.{h}.bias"), b);
                }
            }
        }
        let dense = |n: &str, r: &mut dyn FnMut(&str, &Device) -> Result<QTensor>| {
            r(n, &Device::Cpu)?
                .dequantize(&Device::Cpu)?
                .to_device(device)
                .map_err(Error::from)
        };
        tensors.insert(
            "model.embed_tokens.weight".into(),
            dense("token_embd.weight", &mut read)?,
        );
        tensors.insert(
            "model.norm.weight".into(),
            dense("output_norm.weight", &mut read)?,
        );
        if !config.tie_word_embeddings {
            tensors.insert("lm_head.weight".into(), dense("output.weight", &mut read)?);
        }
        let freq_factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(
                dense("rope_freqs.weight", &mut read)?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        Ok(Self {
            config,
            tensors,
            quantized,
            freq_factors,
            source: p,
            format: "gguf",
        })
    }

    /// Resolve `spec` (path, `hf:` id, demo alias) and read its weights as f32 on `device`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        flotilla_engine::loader::model_config(spec)?
            .require_llama_layout(std::path::Path::new(spec), "LoRA training")?;
        match resolve(spec)? {
            ModelSource::Gguf(p) => {
                let (config, tensors) = gguf_hf_tensors(&p)?;
                let (content, mut reader) = read_gguf(&p)?;
                let freq_factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
                    Some(
                        content
                            .tensor(&mut reader, "rope_freqs.weight", &Device::Cpu)
                            .map_err(|e| Error::model(&p, format!("tensor `rope_freqs`: {e}")))?
                            .dequantize(&Device::Cpu)?
                            .to_vec1::<f32>()?,
                    )
                } else {
                    None
                };
                let tensors = tensors
                    .into_iter()
                    .map(|(k, v)| Ok((k, v.to_device(device)?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                Ok(Self {
                    config,
                    tensors,
                    quantized: HashMap::new(),
                    freq_factors,
                    source: p,
                    format: "gguf",
                })
            }
            ModelSource::HfDir(dir) => {
                let config = ModelConfig::from_hf_json(&dir.join("config.json"))?;
                let mut tensors = HashMap::new();
                for f in safetensors_files(&dir)? {
                    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&f) }
                        .map_err(|e| {
                            Error::model(&f, format!("not a readable safetensors file: {e}"))
                        })?;
                    for (name, _) in st.tensors() {
                        let t = st
                            .load(&name, device)
                            .map_err(|e| Error::model(&f, format!("tensor `{name}`: {e}")))?
                            .to_dtype(DType::F32)?;
                        tensors.insert(name, t);
                    }
                }
                Ok(Self {
                    config,
                    tensors,
                    quantized: HashMap::new(),
                    freq_factors: None,
                    source: dir,
                    format: "safetensors",
                })
            }
        }
    }

    /// Take a tensor out by name, or say which one is missing.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| Error::model(&self.source, format!("tensor `{name}` is missing")))
    }

    /// Borrow a tensor by name.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::model(&self.source, format!("tensor `{name}` is missing")))
    }
}

/// For llama.cpp's permuted q/k rows: `perm[hf_row] = gguf_row`, so that
/// `y_gguf.index_select(perm, last)` is the product in Hugging Face row order.
pub fn hf_row_order(out: usize, heads: usize) -> Vec<u32> {
    let hd = out / heads;
    let mut perm = Vec::with_capacity(out);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                perm.push((h * hd + 2 * i + j) as u32);
            }
        }
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_order_is_the_converters_unpermute() {
        let (heads, hd, inp) = (3, 8, 2);
        let out = heads * hd;
        let v: Vec<f32> = (0..out * inp).map(|x| x as f32).collect();
        let w = Tensor::from_vec(v, (out, inp), &Device::Cpu).unwrap();
        let dense = flotilla_engine::convert::unpermute(&w, heads).unwrap();
        let idx = Tensor::new(hf_row_order(out, heads).as_slice(), &Device::Cpu).unwrap();
        let picked = w.index_select(&idx, 0).unwrap();
        assert_eq!(
            dense.to_vec2::<f32>().unwrap(),
            picked.to_vec2::<f32>().unwrap()
        );
    }
}
