//! `flotilla model inspect|convert`.

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::loader::{resolve, ModelSource};
use flotilla_engine::{LanguageModel, LoadOptions};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Architecture, parameters, dtypes, context length and chat template of a model.
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
}

pub fn run(cmd: Command, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        Command::Inspect { model } => {
            let pb = spinner(format!("loading {model}"));
            let lm = LanguageModel::load(&model, &LoadOptions::default())
                .with_context(|| format!("model {model}"))?;
            pb.finish_and_clear();
            let i = &lm.info;
            match out {
                OutputFormat::Json => print_json(&serde_json::to_value(i)?)?,
                OutputFormat::Text => {
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
                        .map(|(k, v)| format!("{k} x{v}"))
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
