//! Finding and loading models: a GGUF file, a local Hugging Face directory, or a hub id
//! (`hf:org/name[@revision]`) resolved through the Hugging Face cache.
//!
//! Hub ids are resolved offline: flotilla reads the standard cache (`HF_HOME`, default
//! `~/.cache/huggingface`) and never downloads. A model that is not cached is a clear error
//! that says how to fetch it.

use crate::chat::ChatTemplate;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::models::config::{Architecture, ModelConfig};
use crate::models::gemma3::{self, Gemma3};
use crate::models::llama::{Block, Embedding, Linear, Llama};
use crate::models::qwen3::Qwen3;
use crate::models::Model;
use crate::tokenizer::TextTokenizer;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod weights;

pub use flotilla_contract::model_ref::{
    flotilla_home, model_cache, resolve, ModelSource, DEMO_ALIASES,
};

/// The model's chat template, if it ships one, with its tokenizer's BOS and EOS strings.
fn chat_template(src: Option<&str>, tokenizer: &TextTokenizer) -> Result<Option<ChatTemplate>> {
    src.map(|src| {
        ChatTemplate::new(
            src,
            tokenizer.bos_token.as_deref(),
            tokenizer.eos_token.as_deref(),
        )
    })
    .transpose()
}

/// A loaded model with its tokenizer, chat template and the facts `model inspect` shows:
/// the last step of loading, the same for every format. `source` is (path, format, parameter
/// count, weight dtypes with tensor counts).
fn assemble(
    model: Model,
    tokenizer: TextTokenizer,
    template_src: Option<String>,
    source: (&Path, &str, u64, BTreeMap<String, usize>),
    config: ModelConfig,
) -> Result<LanguageModel> {
    let (path, format, parameters, weight_dtypes) = source;
    let template = chat_template(template_src.as_deref(), &tokenizer)?;
    let kernels = kernel_paths(format, &weight_dtypes);
    let info = ModelInfo {
        path: path.to_path_buf(),
        format: format.into(),
        architecture: config.architecture.name().into(),
        parameters,
        weight_dtypes,
        kernels,
        context_length: config.max_position_embeddings,
        chat_template: template_src,
        bos_token: tokenizer.bos_token.clone(),
        eos_tokens: eos_texts(&tokenizer),
        config,
    };
    Ok(LanguageModel {
        model: Arc::new(model),
        tokenizer,
        template,
        info,
    })
}

/// What `flotilla model inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: String,
    pub architecture: String,
    pub parameters: u64,
    /// Weight dtypes with tensor counts, e.g. `{"Q4_1": 210, "F32": 61}`.
    pub weight_dtypes: BTreeMap<String, usize>,
    /// For a GGUF model on the CPU, the code that multiplies each quantized weight dtype:
    /// `flotilla avx2` (flotilla's kernels and the instruction set they run with), `candle
    /// QMatMul` (candle's portable path), or `dense`.
    pub kernels: BTreeMap<String, String>,
    pub context_length: usize,
    pub config: ModelConfig,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_tokens: Vec<String>,
}

/// A language model with everything needed to talk to it. Cloning shares the weights.
#[derive(Clone)]
pub struct LanguageModel {
    pub model: Arc<Model>,
    pub tokenizer: TextTokenizer,
    pub template: Option<ChatTemplate>,
    pub info: ModelInfo,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel")
            .field("info", &self.info)
            .finish()
    }
}

/// Options for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// The dtype of a Hugging Face directory's weights and activations
    /// ([`crate::device::precision_dtype`]). A GGUF model keeps its quantized weights and
    /// computes in f32 around them, so only `auto` and `f32` apply to it.
    pub precision: Precision,
}

impl LoadOptions {
    /// Load on `device` with `precision: auto`.
    pub fn on(device: Device) -> Self {
        Self {
            device,
            precision: Precision::Auto,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::on(Device::Cpu)
    }
}

impl LanguageModel {
    /// Resolve `spec` and load it.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        match resolve(spec)? {
            ModelSource::Gguf(p) => load_gguf(&p, opts),
            ModelSource::HfDir(p) => load_hf_dir(&p, opts),
        }
    }
}

/// The GGUF / Hugging Face name of each block tensor, in one table so loading and converting
/// cannot drift apart.
pub const BLOCK_TENSORS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Open a GGUF file, read its header and check that every tensor lies inside the file.
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| Error::model(path, format!("not a readable GGUF file: {e}")))?;
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        // A row of a quantized tensor is whole blocks (256 values for K-quants): a header
        // that says otherwise is corrupt, and its data cannot be read as that type.
        let row = info.shape.dims().last().copied().unwrap_or(0);
        if !row.is_multiple_of(block) {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{name}` is corrupt: its rows of {row} values are not whole {:?} \
                     blocks of {block}",
                    info.ggml_dtype
                ),
            ));
        }
        let bytes = elems / block * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > file_len {
            return Err(Error::model(
                path,
                format!(
                    "file is truncated: tensor `{name}` ends at byte {end} but the file has {file_len}"
                ),
            ));
        }
    }
    Ok((content, reader))
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LanguageModel> {
    let (content, mut reader) = read_gguf(path)?;
    // Architecture and tokenizer are checked before any weight is read.
    let config = ModelConfig::from_gguf(&content, path)?;
    let tokenizer = TextTokenizer::from_gguf(&content, path)?;
    if opts.precision == Precision::Bf16 {
        return Err(Error::input(format!(
            "precision bf16 applies to Hugging Face directories; {} is a GGUF model, which \
             keeps its quantized weights and computes in f32 around them (use auto or f32)",
            path.display()
        )));
    }
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for info in content.tensor_infos.values() {
        *dtypes.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    let mut source = weights::GgufWeights {
        content: &content,
        reader: &mut reader,
        path,
        device: &opts.device,
    };
    let model = match config.architecture {
        Architecture::Gemma3 => {
            Model::Gemma3(Gemma3::load(config.clone(), &mut source, DType::F32)?)
        }
        Architecture::Qwen3 => Model::Qwen3(Qwen3::load(config.clone(), &mut source, DType::F32)?),
        Architecture::Llama | Architecture::Qwen2 => Model::Llama(llama_from_gguf(
            &content,
            source.reader,
            path,
            &config,
            &opts.device,
        )?),
    };
    let template_src = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .or_else(|| builtin_template(config.architecture));
    let parameters = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum();
    assemble(
        model,
        tokenizer,
        template_src,
        (path, "gguf", parameters, dtypes),
        config,
    )
}

/// The chat template of a family whose GGUF files may ship none (llama.cpp has the same
/// built in): Gemma's turns.
pub(crate) fn builtin_template(arch: Architecture) -> Option<String> {
    match arch {
        Architecture::Gemma3 => Some(gemma3::CHAT_TEMPLATE.to_string()),
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 => None,
    }
}

/// The llama / qwen2 weights of an open GGUF file.
fn llama_from_gguf(
    content: &gguf_file::Content,
    reader: &mut BufReader<File>,
    path: &Path,
    config: &ModelConfig,
    device: &Device,
) -> Result<Llama> {
    let mut qtensor = |name: &str| -> Result<QTensor> {
        if !content.tensor_infos.contains_key(name) {
            return Err(Error::model(path, format!("tensor `{name}` is missing")));
        }
        content
            .tensor(reader, name, device)
            .map_err(|e| Error::model(path, format!("tensor `{name}`: {e}")))
    };
    let dtype = DType::F32;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let mut dense = |suffix: &str| -> Result<Tensor> {
            Ok(qtensor(&format!("blk.{i}.{suffix}.weight"))?.dequantize(device)?)
        };
        let attn_norm = dense("attn_norm")?;
        let ffn_norm = dense("ffn_norm")?;
        let mut lin = |suffix: &str, bias: bool| -> Result<Linear> {
            let w = qtensor(&format!("blk.{i}.{suffix}.weight"))?;
            let b = if bias {
                Some(qtensor(&format!("blk.{i}.{suffix}.bias"))?.dequantize(device)?)
            } else {
                None
            };
            linear_from_qtensor(w, b, device)
        };
        let ab = config.attention_bias;
        blocks.push(Block {
            attn_norm,
            q_proj: lin("attn_q", ab)?,
            k_proj: lin("attn_k", ab)?,
            v_proj: lin("attn_v", ab)?,
            o_proj: lin("attn_output", false)?,
            ffn_norm,
            gate_proj: lin("ffn_gate", false)?,
            up_proj: lin("ffn_up", false)?,
            down_proj: lin("ffn_down", false)?,
        });
    }
    let embed = Embedding::from_qtensor(qtensor("token_embd.weight")?, device)?;
    let norm = qtensor("output_norm.weight")?.dequantize(device)?;
    let lm_head = if content.tensor_infos.contains_key("output.weight") {
        linear_from_qtensor(qtensor("output.weight")?, None, device)?
    } else {
        linear_from_qtensor(qtensor("token_embd.weight")?, None, device)?
    };
    let freq_factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
        Some(
            qtensor("rope_freqs.weight")?
                .dequantize(device)?
                .to_vec1::<f32>()?,
        )
    } else {
        None
    };
    // llama.cpp's converter permutes llama q/k rows for interleaved rotation; qwen2 keeps the
    // Hugging Face (rotate-half) layout.
    let interleaved = config.architecture == Architecture::Llama;
    let mut model = Llama::new(
        config.clone(),
        embed,
        blocks,
        norm,
        lm_head,
        interleaved,
        freq_factors.as_deref(),
        dtype,
    )?;
    model.f16_attention = true;
    Ok(model)
}

/// [`ModelInfo::kernels`]: per GGUF dtype (named as in `weight_dtypes`), the CPU path.
fn kernel_paths(format: &str, dtypes: &BTreeMap<String, usize>) -> BTreeMap<String, String> {
    use GgmlDType::*;
    let all = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
    ];
    if format != "gguf" {
        return BTreeMap::new();
    }
    all.into_iter()
        .map(|dt| (format!("{dt:?}"), dt))
        .filter(|(name, _)| dtypes.contains_key(name))
        .map(|(name, dt)| (name, crate::kernels::cpu_path(dt)))
        .collect()
}

fn eos_texts(t: &TextTokenizer) -> Vec<String> {
    t.eos_ids.iter().filter_map(|&i| t.id_to_token(i)).collect()
}

fn linear_from_qtensor(w: QTensor, bias: Option<Tensor>, device: &Device) -> Result<Linear> {
    Ok(match w.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            let w = w.dequantize(device)?;
            Linear::Dense(candle_nn::Linear::new(w, bias))
        }
        dt if device.is_cpu() && crate::kernels::QuantMatrix::supports(dt) => {
            match crate::kernels::QuantMatrix::from_qtensor(&w)? {
                Some(q) => Linear::Kernel {
                    weight: Arc::new(q),
                    bias,
                },
                None => Linear::Quantized {
                    weight: QMatMul::from_arc(Arc::new(w))?,
                    bias,
                },
            }
        }
        _ => Linear::Quantized {
            weight: QMatMul::from_arc(Arc::new(w))?,
            bias,
        },
    })
}

/// The safetensors files of a Hugging Face directory: `model.safetensors`, or every shard
/// named by `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::model(&index, "field `weight_map` is missing"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(Error::model(
                    f,
                    "shard named in model.safetensors.index.json is missing",
                ));
            }
        }
        return Ok(files);
    }
    Err(Error::model(
        dir,
        "no model.safetensors or model.safetensors.index.json in this directory",
    ))
}

/// Read a JSON file if it exists.
fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))
}

/// The chat template of a Hugging Face directory: `chat_template.jinja`, or the
/// `chat_template` field of `tokenizer_config.json` (a string, or a list of named templates).
fn hf_chat_template(dir: &Path, tok_config: Option<&serde_json::Value>) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    Ok(match tok_config.and_then(|c| c.get("chat_template")) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Load tokenizer and chat template from a Hugging Face directory.
pub fn load_hf_tokenizer(dir: &Path) -> Result<(TextTokenizer, Option<String>)> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(Error::model(
            dir,
            "no tokenizer.json in this model directory",
        ));
    }
    let tok_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
    let gen_config = read_json_opt(&dir.join("generation_config.json"))?;
    let extra_eos: Vec<u32> = match gen_config.as_ref().and_then(|g| g.get("eos_token_id")) {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    };
    let tokenizer = TextTokenizer::from_file(&tok_path, tok_config.as_ref(), &extra_eos)?;
    let template = hf_chat_template(dir, tok_config.as_ref())?;
    Ok((tokenizer, template))
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LanguageModel> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::model(dir, "no config.json in this model directory"));
    }
    let config = ModelConfig::from_hf_json(&config_path)?;
    let (tokenizer, template_src) = load_hf_tokenizer(dir)?;
    let files = safetensors_files(dir)?;
    let device = &opts.device;
    let dtype = crate::device::precision_dtype(opts.precision, device);
    // Read headers first so a corrupt or truncated file is named before anything is mapped.
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut parameters = 0u64;
    for f in &files {
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
            .map_err(|e| Error::model(f, format!("not a readable safetensors file: {e}")))?;
        for (_, view) in st.tensors() {
            *dtypes.entry(format!("{:?}", view.dtype())).or_default() += 1;
            parameters += view.shape().iter().product::<usize>() as u64;
        }
    }
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
        .map_err(|e| Error::model(dir, format!("cannot map safetensors: {e}")))?;
    let model = match config.architecture {
        Architecture::Gemma3 => {
            let mut source = weights::HfWeights { vb, dir };
            Model::Gemma3(Gemma3::load(config.clone(), &mut source, dtype)?)
        }
        Architecture::Qwen3 => {
            let mut source = weights::HfWeights { vb, dir };
            Model::Qwen3(Qwen3::load(config.clone(), &mut source, dtype)?)
        }
        Architecture::Llama | Architecture::Qwen2 => {
            Model::Llama(llama_from_hf(vb, dir, &config, dtype)?)
        }
    };
    assemble(
        model,
        tokenizer,
        template_src,
        (dir, "safetensors", parameters, dtypes),
        config,
    )
}

/// The llama / qwen2 weights of a Hugging Face folder.
fn llama_from_hf(
    vb: candle_nn::VarBuilder,
    dir: &Path,
    config: &ModelConfig,
    dtype: DType,
) -> Result<Llama> {
    let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        vb.get(shape, name)
            .map_err(|e| Error::model(dir, format!("tensor `{name}`: {e}")))
    };
    let h = config.hidden_size;
    let qd = config.num_heads * config.head_dim;
    let kvd = config.num_kv_heads * config.head_dim;
    let ff = config.intermediate_size;
    let lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        let w = get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::Dense(candle_nn::Linear::new(w, b)))
    };
    let mut blocks = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let ab = config.attention_bias;
        blocks.push(Block {
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
            q_proj: lin(&format!("{p}.self_attn.q_proj"), qd, h, ab)?,
            k_proj: lin(&format!("{p}.self_attn.k_proj"), kvd, h, ab)?,
            v_proj: lin(&format!("{p}.self_attn.v_proj"), kvd, h, ab)?,
            o_proj: lin(&format!("{p}.self_attn.o_proj"), h, qd, false)?,
            ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate_proj: lin(&format!("{p}.mlp.gate_proj"), ff, h, false)?,
            up_proj: lin(&format!("{p}.mlp.up_proj"), ff, h, false)?,
            down_proj: lin(&format!("{p}.mlp.down_proj"), h, ff, false)?,
        });
    }
    let embed = get("model.embed_tokens.weight", &[config.vocab_size, h])?;
    let norm = get("model.norm.weight", &[h])?;
    let lm_head = if config.tie_word_embeddings {
        Linear::Dense(candle_nn::Linear::new(embed.clone(), None))
    } else {
        lin("lm_head", config.vocab_size, h, false)?
    };
    Llama::new(
        config.clone(),
        Embedding::Dense(embed),
        blocks,
        norm,
        lm_head,
        false,
        None,
        dtype,
    )
}

/// The configuration of model `spec` (GGUF metadata or `config.json`) without its weights.
pub fn model_config(spec: &str) -> Result<ModelConfig> {
    match resolve(spec)? {
        ModelSource::Gguf(p) => {
            let (content, _) = read_gguf(&p)?;
            ModelConfig::from_gguf(&content, &p)
        }
        ModelSource::HfDir(dir) => ModelConfig::from_hf_json(&dir.join("config.json")),
    }
}
