//! The frozen base model for training and merging: every tensor dense (f32), named and laid
//! out as in a Hugging Face checkpoint, whatever the source (GGUF dequantized at load, or
//! safetensors in f32 / bf16 / f16). PEFT adapters address these names, so training in this
//! layout gives adapters that load anywhere.

use candle_core::{DType, Device, Tensor};
use flotilla_engine::convert::gguf_hf_tensors;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::{read_gguf, resolve, safetensors_files, ModelSource};
use flotilla_engine::models::config::ModelConfig;
use std::collections::HashMap;
use std::path::PathBuf;

/// A base model's dense weights.
pub struct BaseWeights {
    pub config: ModelConfig,
    /// Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub tensors: HashMap<String, Tensor>,
    /// Llama 3.1 GGUF `rope_freqs` (scaled RoPE frequencies), when present.
    pub freq_factors: Option<Vec<f32>>,
    /// The file or directory the weights came from.
    pub source: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
}

impl BaseWeights {
    /// Resolve `spec` (path, `hf:` id, demo alias) and read its weights as f32 on `device`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
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
