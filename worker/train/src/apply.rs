//! Using an adapter: unmerged on a loaded model (`--adapter DIR` on generate / eval / serve),
//! or merged into the base weights and written as a Hugging Face directory
//! (`flotilla adapter merge`).
//!
//! Adapters are always in Hugging Face layout. A llama GGUF stores its q/k rows permuted for
//! interleaved RoPE, so B's rows are permuted the same way before an adapter rides on it.

use super::config::TargetModule;
use super::lora::{LoraAdapter, LoraKey};
use candle_core::{DType, Tensor};
use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::{resolve, safetensors_files, LanguageModel, ModelSource};
use flotilla_engine::models::llama::Linear;
use flotilla_engine::models::Projection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Hugging Face (rotate-half) row order -> llama.cpp's interleaved order, for the rows of a
/// q or k projection (or of its LoRA B).
fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, cols) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, cols))?)
}

/// `lm` with `adapter` riding on its projections, unmerged. The base weights are shared, not
/// copied.
pub fn apply_adapter(lm: &LanguageModel, adapter: &LoraAdapter) -> Result<LanguageModel> {
    let cfg = lm.model.config();
    adapter.check_fits(cfg, &lm.info.path)?;
    let mut model = (*lm.model).clone();
    let device = model.device().clone();
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        model.dtype()
    };
    let interleaved = model.rope_interleaved();
    for (key, (a, b)) in &adapter.weights {
        let mut b = b.clone();
        if interleaved {
            match key.module {
                TargetModule::QProj => b = permute_rows(&b, cfg.num_heads)?,
                TargetModule::KProj => b = permute_rows(&b, cfg.num_kv_heads)?,
                _ => {}
            }
        }
        let which = match key.module {
            TargetModule::QProj => Projection::Q,
            TargetModule::KProj => Projection::K,
            TargetModule::VProj => Projection::V,
            TargetModule::OProj => Projection::O,
            TargetModule::GateProj => Projection::Gate,
            TargetModule::UpProj => Projection::Up,
            TargetModule::DownProj => Projection::Down,
        };
        let slot = model.projection_mut(key.layer, which).ok_or_else(|| {
            Error::model(
                &lm.info.path,
                format!(
                    "the adapter names layer {}, past the model's last",
                    key.layer
                ),
            )
        })?;
        let base = std::mem::replace(slot, Linear::Dense(candle_nn::Linear::new(a.clone(), None)));
        *slot = Linear::Lora {
            base: Box::new(base),
            a: a.to_device(&device)?.to_dtype(dtype)?,
            b: b.to_device(&device)?.to_dtype(dtype)?,
            scale: adapter.scaling(key),
        };
    }
    Ok(LanguageModel {
        model: Arc::new(model),
        tokenizer: lm.tokenizer.clone(),
        template: lm.template.clone(),
        info: lm.info.clone(),
    })
}

/// Load a model and put the adapter in `adapter_dir` on it.
pub fn load_with_adapter(lm: &LanguageModel, adapter_dir: &Path) -> Result<LanguageModel> {
    let adapter = LoraAdapter::load(adapter_dir)?;
    apply_adapter(lm, &adapter)
}

/// Merge `adapter` into the weights of `model_spec` and write a Hugging Face directory at
/// `out` (config, tokenizer, chat template, one `model.safetensors`). Weights keep the
/// base's dtype (f32 for GGUF sources, which are dequantized). Returns the files written.
pub fn merge_to_hf_dir(
    model_spec: &str,
    adapter: &LoraAdapter,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let st_out = out.join("model.safetensors");
    let (mut tensors, dtype, written) = match resolve(model_spec)? {
        ModelSource::Gguf(p) => {
            let written = gguf_to_hf(&p, out, OutDType::F32)?;
            let t = candle_core::safetensors::load(&st_out, &candle_core::Device::Cpu)
                .map_err(|e| Error::model(&st_out, e))?;
            (t, DType::F32, written)
        }
        ModelSource::HfDir(dir) => {
            if dir.canonicalize().ok() == out.canonicalize().ok() {
                return Err(Error::input(
                    "--out is the base model's own directory; choose another so the base is kept",
                ));
            }
            let mut written = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                let p = entry.path();
                if p.is_file()
                    && !name.ends_with(".safetensors")
                    && name != "model.safetensors.index.json"
                {
                    let dst = out.join(&name);
                    std::fs::copy(&p, &dst).map_err(|e| Error::io(&dst, e))?;
                    written.push(dst);
                }
            }
            let mut tensors = HashMap::new();
            let mut dtype = DType::F32;
            for f in safetensors_files(&dir)? {
                for (k, v) in candle_core::safetensors::load(&f, &candle_core::Device::Cpu)
                    .map_err(|e| Error::model(&f, e))?
                {
                    if k == "model.embed_tokens.weight" {
                        dtype = v.dtype();
                    }
                    tensors.insert(k, v);
                }
            }
            written.push(st_out.clone());
            (tensors, dtype, written)
        }
    };
    for (key, _) in &adapter.weights {
        let name = format!("model.layers.{}.{}.weight", key.layer, key.module.path());
        let w = tensors
            .get(&name)
            .ok_or_else(|| Error::model(out, format!("base model has no tensor `{name}`")))?;
        let delta = adapter_delta(adapter, key)?;
        if delta.dims() != w.dims() {
            return Err(Error::input(format!(
                "adapter update for `{name}` is {:?} but the weight is {:?}: was the adapter \
                 trained on another base model?",
                delta.dims(),
                w.dims()
            )));
        }
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        tensors.insert(name, merged);
    }
    candle_core::safetensors::save(&tensors, &st_out).map_err(|e| Error::model(&st_out, e))?;
    Ok(written)
}

fn adapter_delta(adapter: &LoraAdapter, key: &LoraKey) -> Result<Tensor> {
    adapter
        .delta(key)?
        .ok_or_else(|| Error::input(format!("adapter has no `{}`", key.peft_name("lora_A"))))
}
