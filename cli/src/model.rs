//! `flotilla model list|inspect|convert|push|pushed`.

pub mod cache;
pub mod push;

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::loader::{resolve, safetensors_files, ModelSource};
use flotilla_engine::{EmbeddingModel, LanguageModel, LoadOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// The model cache ($FLOTILLA_HOME/models): the demo aliases and whether each is
    /// fetched, and every other GGUF file or Hugging Face folder there, with sizes.
    List,
    /// A model's architecture, parameters, dtypes, context length and chat template; for an
    /// embedding model (such as `minilm`), its dimensions, max tokens and vocabulary.
    Inspect {
        /// GGUF file, Hugging Face directory, hf:org/name or demo alias.
        model: String,
    },
    /// Write a GGUF model as a dequantized Hugging Face directory.
    Convert {
        /// The GGUF file (or demo alias).
        gguf: String,
        /// Output directory.
        out: PathBuf,
        /// Weight dtype: f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Upload a model to the cluster's coordinator, for workers that lack it: sweeps name it
    /// `coordinator:NAME`, workers fetch it by hash and keep it.
    Push(push::PushArgs),
    /// The models pushed to the cluster's coordinator.
    Pushed(push::PushedArgs),
}

pub fn run(cmd: Command, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        Command::Push(a) => push::push(a, out)?,
        Command::Pushed(a) => push::pushed(a, out)?,
        Command::List => list(out)?,
        Command::Inspect { model } => {
            if let Ok(ModelSource::HfDir(dir)) = resolve(&model) {
                if cache::is_embedding_dir(&dir) {
                    return inspect_embedder(&model, &dir, out);
                }
            }
            let pb = spinner(format!("loading {model}"));
            let lm = LanguageModel::load(&model, &LoadOptions::default())
                .with_context(|| format!("model {model}"))?;
            pb.finish_and_clear();
            let i = &lm.info;
            match out {
                OutputFormat::Json => {
                    let mut v = serde_json::to_value(i)?;
                    if let Some(m) = v.as_object_mut() {
                        m.insert("kind".into(), "language".into());
                    }
                    print_json(&v)?
                }
                OutputFormat::Text => {
                    println!("kind:          language model");
                    println!("path:          {}", i.path.display());
                    println!("format:        {}", i.format);
                    println!("architecture:  {}", i.architecture);
                    println!(
                        "parameters:    {} ({:.1} M)",
                        i.parameters,
                        i.parameters as f64 / 1e6
                    );
                    let dt: Vec<String> = i
                        .weight_dtypes
                        .iter()
                        .map(|(k, v)| match i.kernels.get(k) {
                            Some(path) => format!("{k} x{v} ({path})"),
                            None => format!("{k} x{v}"),
                        })
                        .collect();
                    println!("weight dtypes: {}", dt.join(", "));
                    println!("context:       {}", i.context_length);
                    let c = &i.config;
                    println!(
                        "shape:         {} layers, hidden {}, {} heads ({} kv), head dim {}, vocab {}",
                        c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
                    );
                    println!("bos / eos:     {:?} / {:?}", i.bos_token, i.eos_tokens);
                    match &i.chat_template {
                        Some(t) => println!("chat template:\n{t}"),
                        None => println!("chat template: none"),
                    }
                }
            }
        }
        Command::Convert {
            gguf,
            out: dir,
            dtype,
        } => {
            let dtype = OutDType::parse(&dtype)?;
            let path = match resolve(&gguf)? {
                ModelSource::Gguf(p) => p,
                ModelSource::HfDir(p) => {
                    anyhow::bail!("{}: is a directory, not a GGUF file", p.display())
                }
            };
            let pb = spinner(format!("converting {}", path.display()));
            let files = gguf_to_hf(&path, &dir, dtype)?;
            pb.finish_and_clear();
            match out {
                OutputFormat::Json => print_json(&serde_json::json!({ "files": files }))?,
                OutputFormat::Text => {
                    for f in files {
                        println!("{}", f.display());
                    }
                }
            }
        }
    }
    Ok(())
}

/// `flotilla model list`.
fn list(out: OutputFormat) -> anyhow::Result<()> {
    let dir = cache::cache_dir();
    let models = cache::list(&dir);
    match out {
        OutputFormat::Json => print_json(&json!({
            "cache": dir.display().to_string(),
            "models": models,
        })),
        OutputFormat::Text => {
            println!("model cache: {}", dir.display());
            let width = models
                .iter()
                .map(|m| m.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<width$}  {:<9}  {:<6}  {:>10}  status",
                "name", "kind", "format", "size"
            );
            for m in &models {
                let size = m
                    .size_bytes
                    .map(cache::human_bytes)
                    .unwrap_or_else(|| "-".into());
                let status = match (&m.alias, m.fetched) {
                    (Some(_), true) => format!("fetched ({})", m.path.display()),
                    (Some(_), false) => "not fetched: run scripts/fetch-models.sh".to_string(),
                    (None, _) => String::new(),
                };
                println!(
                    "{:<width$}  {:<9}  {:<6}  {:>10}  {status}",
                    m.name, m.kind, m.format, size
                );
            }
            Ok(())
        }
    }
}

/// `flotilla model inspect` of an embedding model: loaded as `flotilla embed` loads it (so a
/// folder that inspects also embeds), described from its config.
fn inspect_embedder(spec: &str, dir: &Path, out: OutputFormat) -> anyhow::Result<()> {
    let pb = spinner(format!("loading {spec}"));
    let model = EmbeddingModel::load(spec, &LoadOptions::default())
        .with_context(|| format!("model {spec}"))?;
    let mut parameters = 0u64;
    for f in safetensors_files(dir)? {
        let tensors = candle_core::safetensors::load(&f, &candle_core::Device::Cpu)
            .with_context(|| format!("cannot read the weights {}", f.display()))?;
        parameters += tensors.values().map(|t| t.elem_count() as u64).sum::<u64>();
    }
    pb.finish_and_clear();
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?,
    )
    .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let field = |k: &str| config.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let architecture = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| cache::hf_model_type(dir).unwrap_or_default());
    let pooling = model.pooling.name();
    let v = json!({
        "kind": "embedding",
        "path": model.path.display().to_string(),
        "format": "hf",
        "architecture": architecture,
        "model_type": field("model_type"),
        "parameters": parameters,
        "dimensions": model.dimension,
        "max_tokens": model.max_tokens,
        "max_position_embeddings": field("max_position_embeddings"),
        "vocab_size": field("vocab_size"),
        "layers": field("num_hidden_layers"),
        "heads": field("num_attention_heads"),
        "pooling": pooling,
        "normalized": true,
    });
    match out {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Text => {
            let s = |k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("kind:          embedding model");
            println!("path:          {}", s("path"));
            println!("format:        hf");
            println!("architecture:  {} ({})", s("architecture"), s("model_type"));
            println!(
                "parameters:    {parameters} ({:.1} M)",
                parameters as f64 / 1e6
            );
            println!("dimensions:    {}", model.dimension);
            println!(
                "max tokens:    {} (longer input is truncated; position embeddings {})",
                model.max_tokens,
                s("max_position_embeddings")
            );
            println!("vocab:         {}", s("vocab_size"));
            println!(
                "shape:         {} layers, {} heads",
                s("layers"),
                s("heads")
            );
            println!("pooling:       {pooling}, L2-normalised");
            Ok(())
        }
    }
}
